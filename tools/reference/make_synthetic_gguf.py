#!/usr/bin/env python3
"""Writes small random-weight GGUF models in the shapes of each architecture kvdial runs (llama, mistral,
qwen2, qwen3, and llama with each RoPE scaling kind), with the `gguf` package, so the forward pass can be
checked against Hugging Face transformers where no small real file of the architecture is at hand.

Each model: 2 layers (1 for the RoPE variants), real head dims (64, 128), GQA with 1 to 8 KV heads, weights in several ggml types
(F32 norms, F16 / Q8_0 / Q5_0 / Q5_1 / Q4_0 / Q4_1 matrices: gguf-py quantizes them, transformers dequantizes them
with gguf-py again, kvdial with its own code), a tiny byte-level BPE vocabulary (256 bytes, 63 merges,
one control token). Deterministic (fixed seeds).

    python3 tools/reference/make_synthetic_gguf.py --out-dir tests/fixtures/synthetic

Then `hf_synthetic_logits.py` writes the reference logits next to them.
"""
import argparse
import math
import os

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf.quants import quantize

# name: architecture, dim, heads, kv heads, head dim, ffn, tied output, rope scaling, matrix types, extras
MODELS = {
    # SmolLM2 / Llama shapes: head dim 64, 4 heads sharing 2 KV heads, tied output.
    "llama_hd64_kv2": dict(arch="llama", dim=256, heads=4, kv=2, hd=64, ffn=256, tied=True, pre="smollm",
                           types=dict(q=Q.Q8_0, k=Q.Q5_0, v=Q.Q5_1, o=Q.Q4_0, gate=Q.Q4_0, up=Q.Q5_0, down=Q.Q4_1)),
    # Mistral: head dim 128, one KV head (MQA), separate output matrix.
    "mistral_hd128_kv1": dict(arch="mistral", dim=256, heads=2, kv=1, hd=128, ffn=256, tied=False,
                              pre="llama-bpe", types=dict(q=Q.Q5_0, k=Q.F16, v=Q.Q8_0, o=Q.Q5_1, gate=Q.Q4_0,
                                                          up=Q.Q4_1, down=Q.Q5_0)),
    # Qwen2: q/k/v biases (the k bias with large channels, as Qwen's), head dim 64, 4 KV heads.
    "qwen2_hd64_kv4_bias": dict(arch="qwen2", dim=256, heads=4, kv=4, hd=64, ffn=256, tied=True, pre="qwen2",
                                bias=True, types=dict(q=Q.Q5_0, k=Q.Q8_0, v=Q.Q5_1, o=Q.Q5_0, gate=Q.Q4_0,
                                                      up=Q.Q5_0, down=Q.Q5_1)),
    # Qwen3: per-head q/k RMSNorm, n_heads * head_dim (512) != dim (128), 8 KV heads (no sharing).
    "qwen3_hd64_kv8_qknorm": dict(arch="qwen3", dim=128, heads=8, kv=8, hd=64, ffn=256, tied=False, pre="qwen2",
                                  qk_norm=True, types=dict(q=Q.Q5_0, k=Q.Q5_1, v=Q.Q8_0, o=Q.Q4_0, gate=Q.Q5_0,
                                                           up=Q.Q4_1, down=Q.Q5_0)),
    # Llama with each RoPE scaling kind kvdial reads from metadata (one layer each).
    "llama_rope_linear": dict(arch="llama", dim=128, heads=2, kv=1, hd=64, ffn=128, tied=True, pre="llama-bpe",
                              layers=1, rope=dict(type="linear", factor=4.0)),
    "llama_rope_yarn": dict(arch="llama", dim=128, heads=2, kv=1, hd=64, ffn=128, tied=True, pre="llama-bpe",
                            layers=1, rope=dict(type="yarn", factor=4.0, original_context_length=64)),
    "llama_rope_llama3": dict(arch="llama", dim=128, heads=2, kv=1, hd=64, ffn=128, tied=True, pre="llama-bpe",
                              layers=1, rope=dict(type="llama3", factor=8.0, low_freq_factor=1.0,
                                                  high_freq_factor=4.0, original_max_position_embeddings=64)),
}
N_LAYERS = 2
ROPE_THETA = 10000.0
RMS_EPS = 1e-5
CTX = 256


def byte_to_unicode():
    """GPT-2's printable stand-ins for the 256 bytes (as in every byte-level BPE vocabulary)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def vocabulary():
    """256 byte tokens, 63 merges of frequent English pairs, and one control token."""
    b2u = byte_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    sp = b2u[ord(" ")]
    pairs = [(sp, c) for c in "taoiswbcmhfdplnegr"] + [(a, b) for a, b in
             ["th", "he", "in", "er", "an", "re", "on", "at", "en", "nd", "ti", "es", "or", "te", "of", "ed",
              "is", "it", "al", "ar", "st", "to", "nt", "ng", "se", "ha", "as", "ou", "io", "le", "ve", "co",
              "me", "de", "hi", "ri", "ro", "ic", "ne", "ea", "ra", "ce"]]
    pairs += [(sp + "t", "he"), (sp + "a", "nd"), (sp + "o", "f")]
    merges = []
    for a, b in pairs:
        if a in tokens and b in tokens and a + b not in tokens:
            merges.append(f"{a} {b}")
            tokens.append(a + b)
    tokens = tokens[:319]
    merges = [m for m in merges if m.replace(" ", "") in tokens]
    tokens.append("<|endoftext|>")
    types = [1] * (len(tokens) - 1) + [3]
    return tokens, merges, types


def llama3_factors(rope, hd, theta):
    """Llama 3 frequency factors as llama.cpp's converter stores them in rope_freqs.weight."""
    factor, lo, hi = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    freqs = 1.0 / (theta ** (np.arange(0, hd, 2, dtype=np.float32) / hd))
    low_wl, high_wl = old / lo, old / hi
    out = []
    for f in freqs:
        wl = 2 * math.pi / f
        if wl < high_wl:
            out.append(1.0)
        elif wl > low_wl:
            out.append(factor)
        else:
            smooth = (old / wl - lo) / (hi - lo)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def add_matrix(w, name, arr, qtype):
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if qtype == Q.F32:
        w.add_tensor(name, arr)
    elif qtype == Q.F16:
        w.add_tensor(name, arr.astype(np.float16))
    else:
        w.add_tensor(name, quantize(arr, qtype), raw_dtype=qtype)


def write_model(path, name, spec, seed):
    rng = np.random.default_rng(seed)
    arch, dim, heads, kv, hd, ffn = spec["arch"], spec["dim"], spec["heads"], spec["kv"], spec["hd"], spec["ffn"]
    types = spec.get("types", {})
    tokens, merges, token_types = vocabulary()
    vocab = len(tokens)
    w = gguf.GGUFWriter(path, arch)
    w.add_name(name)
    n_layers = spec.get("layers", N_LAYERS)
    w.add_block_count(n_layers)
    w.add_context_length(CTX)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    if heads * hd != dim:
        w.add_key_length(hd)
        w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    rope = spec.get("rope")
    if rope and rope["type"] in ("linear", "yarn"):
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR if rope["type"] == "linear" else gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rope["factor"])
        if rope["type"] == "yarn":
            w.add_rope_scaling_orig_ctx_len(rope["original_context_length"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(spec["pre"])
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges(merges)
    w.add_eos_token_id(vocab - 1)
    w.add_bos_token_id(vocab - 1)
    w.add_add_bos_token(False)

    def normal(*shape, scale):
        return rng.standard_normal(shape).astype(np.float32) * np.float32(scale)

    def norm_weight(n):
        return (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)

    # Logits of magnitude ~10 either way (tied: the embedding is the output matrix).
    add_matrix(w, "token_embd.weight", normal(vocab, dim, scale=0.25 if spec["tied"] else 1.0), Q.Q8_0)
    w.add_tensor("output_norm.weight", norm_weight(dim))
    if not spec["tied"]:
        add_matrix(w, "output.weight", normal(vocab, dim, scale=4.0 / math.sqrt(dim)), Q.Q8_0)
    if rope and rope["type"] == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_factors(rope, hd, ROPE_THETA))
    for l in range(n_layers):
        p = f"blk.{l}."
        w.add_tensor(p + "attn_norm.weight", norm_weight(dim))
        # Weights scaled for O(1) activations; q and k a little larger so attention is not uniform.
        add_matrix(w, p + "attn_q.weight", normal(heads * hd, dim, scale=2.0 / math.sqrt(dim)), types.get("q", Q.Q8_0))
        add_matrix(w, p + "attn_k.weight", normal(kv * hd, dim, scale=2.0 / math.sqrt(dim)), types.get("k", Q.Q8_0))
        add_matrix(w, p + "attn_v.weight", normal(kv * hd, dim, scale=1.0 / math.sqrt(dim)), types.get("v", Q.Q8_0))
        add_matrix(w, p + "attn_output.weight", normal(dim, heads * hd, scale=1.0 / math.sqrt(heads * hd)),
                   types.get("o", Q.Q8_0))
        if spec.get("bias"):
            w.add_tensor(p + "attn_q.bias", normal(heads * hd, scale=0.5))
            k_bias = normal(kv * hd, scale=0.5)
            k_bias[rng.choice(kv * hd, 4, replace=False)] = 20.0  # Qwen-like outlier key channels
            w.add_tensor(p + "attn_k.bias", k_bias)
            w.add_tensor(p + "attn_v.bias", normal(kv * hd, scale=0.5))
        if spec.get("qk_norm"):
            w.add_tensor(p + "attn_q_norm.weight", norm_weight(hd))
            w.add_tensor(p + "attn_k_norm.weight", norm_weight(hd))
        w.add_tensor(p + "ffn_norm.weight", norm_weight(dim))
        add_matrix(w, p + "ffn_gate.weight", normal(ffn, dim, scale=1.0 / math.sqrt(dim)), types.get("gate", Q.Q8_0))
        add_matrix(w, p + "ffn_up.weight", normal(ffn, dim, scale=1.0 / math.sqrt(dim)), types.get("up", Q.Q8_0))
        add_matrix(w, p + "ffn_down.weight", normal(dim, ffn, scale=1.0 / math.sqrt(ffn)), types.get("down", Q.Q8_0))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def seed_of(name):
    return 1000 + list(MODELS).index(name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", default="tests/fixtures/synthetic")
    ap.add_argument("--only", default="", help="comma-separated model names (default: all)")
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    for name, spec in MODELS.items():
        if args.only and name not in args.only.split(","):
            continue
        path = os.path.join(args.out_dir, name + ".gguf")
        write_model(path, name, spec, seed=seed_of(name))
        print(f"{path}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
