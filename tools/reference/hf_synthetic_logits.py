#!/usr/bin/env python3
"""Reference logits of the synthetic GGUF models (make_synthetic_gguf.py) from Hugging Face transformers,
which loads each GGUF with its own converter (config from the metadata, weights dequantized by gguf-py,
Llama/Mistral Q/K rows un-permuted) and runs its own modeling code (LlamaForCausalLM, MistralForCausalLM,
Qwen2ForCausalLM, Qwen3ForCausalLM) in fp32 on the CPU. The mistral model is loaded from a twin file
with the same weights written as 'llama' (transformers' GGUF loader knows no 'mistral'). transformers' GGUF converter does not read RoPE
scaling from the metadata, so for the llama_rope_* models the script sets the config's RoPE parameters
to what the generator wrote (the HF form of the same scaling: rope_type linear / yarn / llama3).

    python3 tools/reference/hf_synthetic_logits.py --dir tests/fixtures/synthetic \\
        --out tests/fixtures/synthetic_logits_ref.json

Per model: the GGUF's sha256, and per prompt (token ids, no BOS) the argmax and the gap between the two
largest logits at every position, and all logits at every 8th position and the last (4 decimals).
"""
import argparse
import hashlib
import importlib.metadata
import json
import os
import sys
import tempfile

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_synthetic_gguf import MODELS, ROPE_THETA, seed_of, vocabulary, write_model  # noqa: E402

STRIDE = 8


def prompts(vocab):
    rng = np.random.default_rng(7)
    return [rng.integers(0, vocab - 1, n).tolist() for n in (150, 13, 1)]


def rope_parameters(rope):
    p = {"rope_type": rope["type"], "factor": rope["factor"], "rope_theta": ROPE_THETA}
    for k in ("original_context_length",):
        if k in rope:
            p["original_max_position_embeddings"] = rope[k]
    for k in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
        if k in rope:
            p[k] = rope[k]
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="tests/fixtures/synthetic")
    ap.add_argument("--out", default="tests/fixtures/synthetic_logits_ref.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    vocab = len(vocabulary()[0])
    doc = {"what": "Hugging Face transformers logits of the synthetic GGUF models (fp32, CPU)",
           "command": "python3 tools/reference/hf_synthetic_logits.py --dir tests/fixtures/synthetic "
                      "--out tests/fixtures/synthetic_logits_ref.json",
           "versions": {k: importlib.metadata.version(k) for k in ("torch", "transformers", "gguf")},
           "stride": STRIDE, "models": {}}
    for name, spec in MODELS.items():
        fname = name + ".gguf"
        path = os.path.join(args.dir, fname)
        load_dir, load_name = args.dir, fname
        if spec["arch"] == "mistral":
            # gguf-py 0.19 / transformers 5.24 know no GGUF architecture 'mistral' (llama.cpp writes Mistral
            # models as 'llama'); HF gets the same weights (same seed) written as 'llama': LlamaForCausalLM,
            # which is Mistral's computation at these lengths (no sliding window below 4096 tokens).
            load_dir, load_name = tempfile.mkdtemp(), "twin.gguf"
            write_model(os.path.join(load_dir, load_name), name, dict(spec, arch="llama"), seed=seed_of(name))
        cfg = AutoConfig.from_pretrained(load_dir, gguf_file=load_name)
        # transformers' GGUF converter does not map attention.key_length (Qwen3's Config then defaults
        # head_dim to 128); set it from the file's shape.
        cfg.head_dim = spec["hd"]
        if "rope" in spec:
            rp = rope_parameters(spec["rope"])
            if hasattr(cfg, "rope_parameters"):
                cfg.rope_parameters = rp
            else:
                cfg.rope_scaling = rp
        model = AutoModelForCausalLM.from_pretrained(load_dir, gguf_file=load_name, config=cfg, dtype=torch.float32)
        model.eval()
        entry = {"file": fname, "sha256": hashlib.sha256(open(path, "rb").read()).hexdigest(),
                 "hf_class": type(model).__name__, "prompts": []}
        for ids in prompts(vocab):
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0].double().numpy()
            top2 = np.sort(logits, axis=-1)[:, -2:]
            full = {str(i): np.round(logits[i], 4).tolist() for i in range(len(ids))
                    if i % STRIDE == 0 or i == len(ids) - 1}
            entry["prompts"].append({"ids": ids, "argmax": logits.argmax(-1).tolist(),
                                     "top2_gap": np.round(top2[:, 1] - top2[:, 0], 5).tolist(), "logits": full})
        doc["models"][name] = entry
        print(f"{name}: {entry['hf_class']}, max |logit| {max(np.abs(v).max() for p in entry['prompts'] for v in map(np.array, p['logits'].values())):.2f}",
              flush=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
