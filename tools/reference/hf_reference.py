#!/usr/bin/env python3
r"""Reference fixtures for kvdial from an independent implementation.

Hugging Face transformers loads the same GGUF file that kvdial reads (the GGUF tokenizer is
converted by transformers' GGUF converter into a `tokenizers` BPE tokenizer, and the weights are
dequantized to fp32 by the `gguf` package), and this script writes the JSON fixtures that the C++
tests compare against:

  tokenizer   tests/fixtures/tokenizer_ref.json   token ids for every case of tokenizer_cases.json
  logits      tests/fixtures/logits_ref.json      per-position argmax, top-32, probe logits, logsumexp
  perplexity  tests/fixtures/perplexity_ref.json  llama-perplexity-style PPL on wiki.test.raw
  config      config_check.json                   facts about the config transformers derived
  cases       tests/fixtures/tokenizer_cases.json (re)generates the case list (no model needed)

No text from the data directory is written to any fixture: data-derived cases are referenced by
file (relative to --data-dir), 1-based line number and field.  See tools/reference/README.md.

Example (what produced the committed fixtures, on an NVIDIA H200):
  python3 tools/reference/hf_reference.py --model /root/models/model.gguf \
      --data-dir .devcarry/data --out-dir $OUT --device cuda \
      --modes config,tokenizer,logits,perplexity
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import sys
import time

HELLASWAG = "hellaswag/hellaswag_val_dev600.jsonl"
WIKITEXT = "wikitext-2/wiki.test.raw"

# ---------------------------------------------------------------------------------------------
# Edge cases for the tokenizer, written for this project (not taken from any data set).
# ---------------------------------------------------------------------------------------------
EDGE_CASES = [
    "",
    "a",
    "I",
    "Hello world",
    "Hello, world!",
    " ",
    "  ",
    " " * 16,
    "     leading spaces",
    "trailing spaces   ",
    "  both sides  ",
    "\n",
    "\n\n\n",
    "\n" * 8,
    "line one\nline two\n\nline four",
    "word   \nnext line",
    "a\r\nb\r\n",
    "\ttab\tseparated\tvalues",
    "mixed \t \n whitespace  \n\n  end",
    "\u00a0non-breaking\u00a0space and ideographic\u3000space",
    "0",
    "1234567890",
    "3.14159265358979323846",
    "The year 2024 had 366 days; 1,000,000 people attended.",
    "-42 +17 1e-5 0x1F 0b1010 12:30 2025-01-31",
    "abc123def 4x4 mp3 v2.0.1",
    "café naïve résumé déjà vu",
    "El niño jugó en la montaña con su pequeño señor.",
    "Über größe Straße: Müller, Jürgen, Öl",
    "e\u0301 versus \u00e9, n\u0303 versus \u00f1, u\u0308 versus \u00fc",
    "Zoë and Chloë visited Ålesund and Kraków.",
    "ß ẞ ﬁ ﬂ æ œ ø",
    "你好，世界！今天天气很好。",
    "こんにちは、世界。カタカナとひらがな",
    "안녕하세요 세계",
    "Привет, мир! Как дела?",
    "مرحبا بالعالم",
    "Hindi: नमस्ते दुनिया",
    "Thai: สวัสดีชาวโลก",
    "I love pizza 🍕🍕!",
    "👨\u200d👩\u200d👧\u200d👦 family and 👩\u200d💻 coder",
    "🇫🇷🇯🇵🇺🇸 flags",
    "👍🏽 thumbs up, ❤️ heart, ☺️ smile",
    "don't won't can't I'm you're it's",
    "I'M YOU'RE THEY'RE WE'VE SHE'LL HE'D DON'T",
    "they're we'll you'd it's I've",
    "Mr. O'Neil's dog's bone",
    "\u2019curly\u2019 quotes \u201clike this\u201d \u2014 and dashes \u2013 too",
    "def add(a, b):\n    return a + b\n",
    "int main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
    "for (int i = 0; i < n; ++i) { sum += x[i] * y[i]; }",
    '{"key": [1, 2, 3], "nested": {"a": null, "b": true}}',
    "<div class=\"x\">Hi &amp; bye</div>",
    "# Title\n\n* item one\n* item two\n\n**bold** _italic_ `code`",
    "https://example.com/path/to/page?query=1&lang=en#section",
    "contact: someone@example.org, @user #hashtag $100 50% 3rd 21st",
    "Wait... what?!?! No way!!! ---- *** ;;; ...",
    "((([[[{{{}}}]]])))",
    "∑ x² + √y ≤ ∞ ± π",
    "©®™ §¶ • € £ ¥ ₹",
    "a @-@ b @,@ c @.@ d",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    "<|im_start|>assistant\n",
    "<|endoftext|>",
    "text<|im_end|>more",
    "<|im_start not closed",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a" * 256,
    "thequickbrownfoxjumpsoverthelazydog" * 4,
    # Digits after two or more whitespace characters, and non-ASCII numerals (\p{N}): here the
    # converter's plain ByteLevel pre-tokenizer and llama.cpp's "smollm" pre-tokenizer disagree.
    "  2",
    "x  42",
    "\n\n1",
    "a\r\n 2",
    "total:   100 items",
    "\t\t7 tabs before a digit",
    "line\n\n2024 starts here",
    "cook for 1 \u00bd hours, then add \u00bc cup",
    "chapter \u216b, item \u2460, x\u00b2 and y\u00b3",
]

# ---------------------------------------------------------------------------------------------
# Logit prompts, written for this project.
# ---------------------------------------------------------------------------------------------
LOGIT_PROMPTS = [
    "The capital of France is Paris, and the capital of Germany is",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "What is the boiling point of water at sea level?<|im_end|>\n<|im_start|>assistant\n",
    "1, 2, 3, 5, 8, 13, 21, 34, 55,",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "Hello",
    "The history of the bicycle begins in the early nineteenth century, when inventors in Europe "
    "experimented with two-wheeled machines that riders pushed along with their feet. Later designs "
    "added pedals attached to the front wheel, and by the 1880s the safety bicycle, with a chain "
    "driving the rear wheel and two wheels of similar size, had become popular. Cheap and easy to "
    "ride, it changed how people in towns and cities travelled to work, and it also",
]

PROBE_STRIDE = 97
TOP_K = 32


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------
# Data access (by file, 1-based line number and field; never copied into fixtures)
# ---------------------------------------------------------------------------------------------
def read_lines_raw(path: str) -> list[str]:
    """Lines of a UTF-8 file split after each '\\n', without newline translation."""
    with open(path, "rb") as f:
        data = f.read().decode("utf-8")
    lines = data.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def strip_terminator(line: str) -> str:
    # The line's terminator is '\n' (already removed by the split) or '\r\n'.
    return line[:-1] if line.endswith("\r") else line


def resolve_source(data_dir: str, src: dict, cache: dict) -> str:
    path = os.path.join(data_dir, src["file"])
    if path not in cache:
        cache[path] = read_lines_raw(path)
    line = cache[path][src["line"] - 1]
    field = src["field"]
    if field == "line":
        return strip_terminator(line)
    obj = json.loads(line)
    if field.startswith("endings[") and field.endswith("]"):
        return obj["endings"][int(field[len("endings["):-1])]
    return obj[field]


def case_text(data_dir: str, case: dict, cache: dict) -> str:
    if "text" in case:
        return case["text"]
    return resolve_source(data_dir, case["source"], cache)


# ---------------------------------------------------------------------------------------------
# Modes
# ---------------------------------------------------------------------------------------------
def generator_string(torch_mod=None, device_name: str | None = None) -> str:
    import gguf
    import tokenizers
    import transformers

    try:
        from importlib.metadata import version

        gguf_v = version("gguf")
    except Exception:  # pragma: no cover
        gguf_v = getattr(gguf, "__version__", "?")
    s = f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, gguf {gguf_v}"
    if torch_mod is not None:
        s += f", torch {torch_mod.__version__}"
    if device_name:
        s += f" on {device_name}"
    return s


def mode_cases(args) -> None:
    """Writes the case list (deterministic selection from the data files)."""
    hs_path = os.path.join(args.data_dir, HELLASWAG)
    wt_path = os.path.join(args.data_dir, WIKITEXT)
    hs_lines = read_lines_raw(hs_path)
    wt_lines = read_lines_raw(wt_path)
    cases: list[dict] = []
    # 120 HellaSwag contexts: lines 1, 6, 11, ..., 596.
    for line in range(1, len(hs_lines) + 1, 5):
        cases.append({"source": {"file": HELLASWAG, "line": line, "field": "ctx"}})
    # 60 HellaSwag endings: lines 3, 13, ..., 593, ending k = (line // 10) % 4.
    for line in range(3, len(hs_lines) + 1, 10):
        k = (line // 10) % 4
        cases.append({"source": {"file": HELLASWAG, "line": line, "field": f"endings[{k}]"}})
    # 60 non-empty WikiText-2 lines, evenly spaced over the non-empty ones.
    nonempty = [i + 1 for i, l in enumerate(wt_lines) if strip_terminator(l) != ""]
    step = len(nonempty) / 60.0
    for j in range(60):
        cases.append({"source": {"file": WIKITEXT, "line": nonempty[int(j * step)], "field": "line"}})
    # Data lines on which the two pre-tokenizers disagree (found by comparing them over both files).
    cases.append({"source": {"file": HELLASWAG, "line": 223, "field": "endings[0]"}})
    cases.append({"source": {"file": WIKITEXT, "line": 8817, "field": "line"}})
    for t in EDGE_CASES:
        cases.append({"text": t})
    out = {
        "description": "Tokenizer cases for kvdial. A case is either literal text or a reference to "
        "data: file (relative to the data dir, e.g. /work/shared/data), 1-based line number, and "
        "field: a JSON key ('ctx'), 'endings[k]' (k-th element of the 'endings' array), or 'line' "
        "(the whole line without its terminator; wiki.test.raw uses CRLF, so both '\\r' and '\\n' "
        "are removed). HellaSwag fields are taken exactly as stored in the JSON, no preprocessing.",
        "data_files": {HELLASWAG: sha256_file(hs_path), WIKITEXT: sha256_file(wt_path)},
        "cases": cases,
    }
    path = args.cases_out or os.path.join(args.out_dir, "tokenizer_cases.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write(dump_list_doc(out, "cases"))
    log(f"cases: wrote {len(cases)} cases to {path}")


def dump_list_doc(doc: dict, list_key: str) -> str:
    """JSON with one list element per line (compact inside), for readable diffs."""
    head = {k: v for k, v in doc.items() if k != list_key}
    parts = ["{"]
    for k, v in head.items():
        parts.append(f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)},")
    parts.append(f"{json.dumps(list_key)}: [")
    items = doc[list_key]
    for i, item in enumerate(items):
        sep = "," if i + 1 < len(items) else ""
        parts.append(json.dumps(item, ensure_ascii=False, separators=(",", ":")) + sep)
    parts.append("]")
    parts.append("}")
    return "\n".join(parts) + "\n"


def load_tokenizer(args):
    from transformers import AutoTokenizer

    d, f = os.path.split(os.path.abspath(args.model))
    return AutoTokenizer.from_pretrained(d, gguf_file=f)


def encode(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def smollm_pre_tokenizer(tok):
    """The converted tokenizer with the pre-tokenizer that the GGUF asks for.

    The GGUF says tokenizer.ggml.pre = "smollm": llama.cpp splits every \\p{N} character out
    first, then applies the GPT-2 regex (the original SmolLM2 tokenizer.json does the same with
    Digits(individual_digits=True) + ByteLevel).  transformers' GGUF converter ignores that key and
    uses a plain ByteLevel pre-tokenizer.  Same vocabulary, merges and added tokens; only the
    pre-tokenizer differs.
    """
    from tokenizers import Tokenizer, pre_tokenizers

    t = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    return t


def encode_smollm(tok2, text: str) -> list[int]:
    return list(tok2.encode(text, add_special_tokens=False).ids)


def mode_tokenizer(args, ctx) -> None:
    tok = ctx["tok"]
    with open(args.cases, encoding="utf-8") as f:
        cases_doc = json.load(f)
    tok2 = ctx["tok_smollm"]
    cache: dict = {}
    out_cases = []
    n_tokens = 0
    n_diff = 0
    for case in cases_doc["cases"]:
        text = case_text(args.data_dir, case, cache)
        ids = encode(tok, text)
        ids2 = encode_smollm(tok2, text)
        n_tokens += len(ids)
        item = dict(case)
        if "source" in case:
            item["text_sha256"] = sha256_text(text)
        item["ids"] = ids
        if ids2 != ids:
            item["ids_smollm_pre"] = ids2
            n_diff += 1
        out_cases.append(item)
    doc = {
        "command": ctx["command"],
        "generator": ctx["generator"],
        "model_sha256": ctx["model_sha256"],
        "note": "ids from AutoTokenizer.from_pretrained(dir, gguf_file=...) with "
        "add_special_tokens=False (the model's add_bos_token is false). Added/special tokens "
        "spelled in the text (e.g. <|im_start|>) are matched as special tokens. text_sha256 is the "
        "SHA-256 of the UTF-8 text a source case resolves to. transformers' GGUF converter "
        "ignores tokenizer.ggml.pre = smollm and pre-tokenizes with plain ByteLevel (GPT-2 regex); "
        "where the GGUF's own pre-tokenizer (llama.cpp smollm: split each \\p{N} char first, then "
        "the GPT-2 regex; = Digits(individual_digits=True) + ByteLevel in tokenizers) gives other "
        "ids, the case also has ids_smollm_pre. An implementation of the GGUF tokenizer as "
        "llama.cpp does it should match ids_smollm_pre where present, else ids.",
        "data_files": cases_doc.get("data_files", {}),
        "cases": out_cases,
    }
    path = os.path.join(args.out_dir, "tokenizer_ref.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write(dump_list_doc(doc, "cases"))
    log(f"tokenizer: {len(out_cases)} cases, {n_tokens} tokens, {n_diff} cases where the smollm "
        f"pre-tokenizer differs -> {path}")


def load_model(args, torch):
    from transformers import AutoModelForCausalLM

    d, f = os.path.split(os.path.abspath(args.model))
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(
        d, gguf_file=f, dtype=torch.float32, attn_implementation=args.attn
    )
    model.eval().to(args.device)
    log(f"model loaded in {time.time() - t0:.1f} s (attn_implementation={args.attn})")
    return model


def rope_pairing_check(args, ctx) -> dict:
    """Shows which RoPE pairing goes with which weight order, on one prompt.

    (a) transformers as loaded: Q/K rows in HF order (GGUF permutation reversed) + rotate_half
        (NeoX-style pairs (i, i + head_dim/2)).
    (b) Q/K rows put back in GGUF order + adjacent pairs (2i, 2i+1) (llama.cpp's "normal" rope).
    (c) Q/K rows in GGUF order + rotate_half (the wrong combination).
    Reports max |logit difference| of (b) and (c) against (a).
    """
    torch = ctx["torch"]
    model = ctx["model"]
    from transformers.models.llama import modeling_llama as ml

    cfg = model.config
    ids = encode(ctx["tok"], LOGIT_PROMPTS[0])
    x = torch.tensor([ids], device=args.device)

    def adjacent_pairs(q, k, cos, sin, unsqueeze_dim=1):
        half = cos.shape[-1] // 2
        c = cos[..., :half].unsqueeze(unsqueeze_dim)
        s = sin[..., :half].unsqueeze(unsqueeze_dim)

        def rot(t):
            t1, t2 = t[..., 0::2], t[..., 1::2]
            return torch.stack((t1 * c - t2 * s, t1 * s + t2 * c), dim=-1).flatten(-2)

        return rot(q), rot(k)

    def to_gguf_order(w, nh):
        hd = w.shape[0] // nh
        return w.reshape(nh, 2, hd // 2, w.shape[1]).transpose(1, 2).reshape(w.shape)

    with torch.no_grad():
        ref = model(input_ids=x).logits.float()
        saved = []
        for layer in model.model.layers:
            at = layer.self_attn
            saved.append((at.q_proj.weight.clone(), at.k_proj.weight.clone()))
            at.q_proj.weight.copy_(to_gguf_order(at.q_proj.weight, cfg.num_attention_heads))
            at.k_proj.weight.copy_(to_gguf_order(at.k_proj.weight, cfg.num_key_value_heads))
        orig = ml.apply_rotary_pos_emb
        try:
            ml.apply_rotary_pos_emb = adjacent_pairs
            b = model(input_ids=x).logits.float()
            ml.apply_rotary_pos_emb = orig
            c = model(input_ids=x).logits.float()
        finally:
            ml.apply_rotary_pos_emb = orig
            for layer, (wq, wk) in zip(model.model.layers, saved):
                layer.self_attn.q_proj.weight.copy_(wq)
                layer.self_attn.k_proj.weight.copy_(wk)
        again = model(input_ids=x).logits.float()
    return {
        "prompt_tokens": len(ids),
        "max_abs_diff_gguf_order_adjacent_pairs": float((b - ref).abs().max()),
        "max_abs_diff_gguf_order_rotate_half": float((c - ref).abs().max()),
        "restored_max_abs_diff": float((again - ref).abs().max()),
    }


def mode_config(args, ctx) -> None:
    torch = ctx["torch"]
    model = ctx["model"]
    import inspect

    import transformers.modeling_gguf_pytorch_utils as gu
    from transformers.models.llama import modeling_llama as ml

    cfg = model.config
    rope = getattr(cfg, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta", getattr(cfg, "rope_theta", None))
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    src_apply = inspect.getsource(ml.apply_rotary_pos_emb)
    src_rot = inspect.getsource(ml.rotate_half)
    proc = gu.TENSOR_PROCESSORS.get("llama")
    facts = {
        "model_type": cfg.model_type,
        "rope_theta": rope_theta,
        "rope_parameters": rope,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "lm_head_shares_embedding_storage": emb.data_ptr() == head.data_ptr(),
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": getattr(cfg, "head_dim", None),
        "intermediate_size": cfg.intermediate_size,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "attention_class": type(model.model.layers[0].self_attn).__name__,
        "attn_implementation": cfg._attn_implementation,
        "apply_rotary_pos_emb_uses_rotate_half": "rotate_half(q)" in src_apply,
        "rotate_half_source": src_rot.strip().splitlines()[-3:],
        "gguf_tensor_processor_for_llama": proc.__name__ if proc else None,
        "gguf_qk_reverse_permute": bool(proc and hasattr(proc, "_reverse_permute_weights")),
    }
    # Numeric check that the loaded q/k weights are the GGUF ones with the permutation reversed.
    try:
        from gguf import GGUFReader, dequantize
        import numpy as np

        reader = GGUFReader(args.model)
        tensors = {t.name: t for t in reader.tensors}
        checks = {}
        for name, hf, nh in (
            ("blk.0.attn_q.weight", model.model.layers[0].self_attn.q_proj.weight, cfg.num_attention_heads),
            ("blk.0.attn_k.weight", model.model.layers[0].self_attn.k_proj.weight, cfg.num_key_value_heads),
        ):
            g = dequantize(tensors[name].data, tensors[name].tensor_type).astype(np.float32)
            hf_np = hf.detach().float().cpu().numpy()
            hd = g.shape[0] // nh // 2
            rev = g.reshape(nh, hd, 2, g.shape[1]).swapaxes(2, 1).reshape(g.shape)
            checks[name] = {
                "equal_to_gguf_as_stored": bool(np.array_equal(hf_np, g)),
                "equal_to_gguf_reverse_permuted": bool(np.array_equal(hf_np, rev)),
            }
        facts["qk_weight_checks"] = checks
    except Exception as e:  # pragma: no cover
        facts["qk_weight_checks"] = f"failed: {e!r}"
    facts["rope_pairing_check"] = rope_pairing_check(args, ctx)
    facts["command"] = ctx["command"]
    facts["generator"] = ctx["generator"]
    facts["model_sha256"] = ctx["model_sha256"]
    path = os.path.join(args.out_dir, "config_check.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(facts, f, indent=1, ensure_ascii=False, default=str)
        f.write("\n")
    log("config: " + json.dumps({k: facts[k] for k in (
        "rope_theta", "rms_norm_eps", "tie_word_embeddings", "lm_head_shares_embedding_storage",
        "apply_rotary_pos_emb_uses_rotate_half", "gguf_qk_reverse_permute", "qk_weight_checks",
        "rope_pairing_check")},
        default=str))


def mode_logits(args, ctx) -> None:
    torch = ctx["torch"]
    model = ctx["model"]
    tok = ctx["tok"]
    vocab = model.config.vocab_size
    probe_ids = list(range(0, vocab, PROBE_STRIDE))
    probe_t = torch.tensor(probe_ids, device=args.device)
    prompts_out = []
    n_pos = 0
    for text in LOGIT_PROMPTS:
        ids = encode(tok, text)
        if encode_smollm(ctx["tok_smollm"], text) != ids:
            raise SystemExit(f"logits: prompt tokenizes differently under the smollm pre-tokenizer: {text!r}")
        x = torch.tensor([ids], device=args.device)
        with torch.no_grad():
            logits = model(input_ids=x).logits[0].float()  # [T, V]
        lse = torch.logsumexp(logits.double(), dim=-1)
        top_v, top_i = torch.topk(logits, TOP_K, dim=-1)
        am = torch.argmax(logits, dim=-1)
        probe = logits[:, probe_t]
        lse, top_v, top_i, am, probe = (t.cpu().tolist() for t in (lse, top_v, top_i, am, probe))
        positions = []
        for p in range(len(ids)):
            positions.append({
                "argmax": am[p],
                "top": [[i, round(v, 5)] for i, v in zip(top_i[p], top_v[p])],
                "probe": [round(v, 5) for v in probe[p]],
                "logsumexp": round(lse[p], 5),
            })
        n_pos += len(ids)
        prompts_out.append({"text": text, "ids": ids, "positions": positions})
        log(f"logits: {len(ids):4d} tokens, argmax after last = {am[-1]} "
            f"{tok.convert_ids_to_tokens(am[-1])!r}: {text[:50]!r}")
    # Hand-formatted: one position per line.
    lines = ["{"]
    for k in ("command", "generator", "model_sha256"):
        lines.append(f"{json.dumps(k)}: {json.dumps(ctx[k])},")
    lines.append('"note": ' + json.dumps(
        "fp32 forward over each full prompt (no BOS added; ids without special tokens added; each "
        "prompt's ids are the same under transformers' GGUF tokenizer and the smollm pre-tokenizer), "
        f"attn_implementation={args.attn}, device={args.device}. Per position: argmax id, top-{TOP_K} "
        "(id, logit) pairs in descending order, logits at probe_ids, logsumexp over the vocab. "
        "Logits rounded to 5 decimals.") + ",")
    lines.append(f'"probe_ids": {json.dumps(probe_ids, separators=(",", ":"))},')
    lines.append('"prompts": [')
    for pi, pr in enumerate(prompts_out):
        lines.append("{" + f'"text": {json.dumps(pr["text"], ensure_ascii=False)},')
        lines.append(f'"ids": {json.dumps(pr["ids"], separators=(",", ":"))},')
        lines.append('"positions": [')
        for qi, pos in enumerate(pr["positions"]):
            sep = "," if qi + 1 < len(pr["positions"]) else ""
            lines.append(json.dumps(pos, separators=(",", ":")) + sep)
        lines.append("]}" + ("," if pi + 1 < len(prompts_out) else ""))
    lines.append("]")
    lines.append("}")
    path = os.path.join(args.out_dir, "logits_ref.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    log(f"logits: {len(prompts_out)} prompts, {n_pos} positions -> {path} "
        f"({os.path.getsize(path)} bytes)")


def perplexity_of(args, ctx, tokens: list[int], label: str) -> list[dict]:
    torch = ctx["torch"]
    model = ctx["model"]
    all_tokens = torch.tensor(tokens, dtype=torch.long)
    results = []
    for n_ctx in args.n_ctx:
        t0 = time.time()
        n_chunks = len(tokens) // n_ctx
        if args.max_chunks:
            n_chunks = min(n_chunks, args.max_chunks)
        first = n_ctx // 2
        n_scored = n_ctx - 1 - first  # per chunk
        bs = max(1, args.batch_tokens // n_ctx)
        nll_sum = 0.0
        nll2_sum = 0.0
        count = 0
        running = []
        for c0 in range(0, n_chunks, bs):
            c1 = min(n_chunks, c0 + bs)
            x = all_tokens[c0 * n_ctx : c1 * n_ctx].view(c1 - c0, n_ctx).to(args.device)
            with torch.no_grad():
                # Only the scored positions go through lm_head (same per-row math as full logits).
                h = model.model(input_ids=x).last_hidden_state[:, first : n_ctx - 1, :]
                logits = model.lm_head(h).float()
                logp = torch.log_softmax(logits, dim=-1)
                tgt = x[:, first + 1 :]
                nll = -logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1).double()  # [B, n_scored]
            sums = nll.sum(dim=1).cpu().tolist()
            sq = (nll * nll).sum(dim=1).cpu().tolist()
            for s1, s2 in zip(sums, sq):
                nll_sum += s1
                nll2_sum += s2
                count += n_scored
                if len(running) < 5:
                    running.append(round(math.exp(nll_sum / count), 4))
        mean = nll_sum / count
        ppl = math.exp(mean)
        var = nll2_sum / count - mean * mean
        stderr = ppl * math.sqrt(var / (count - 1)) if var > 0 and count > 1 else 0.0
        dt = time.time() - t0
        log(f"perplexity [{label}] n_ctx={n_ctx}: "
            + ",".join(f"[{i + 1}]{v:.4f}" for i, v in enumerate(running)) + ",...")
        log(f"perplexity [{label}] n_ctx={n_ctx}: n_chunks={n_chunks} scored={count} "
            f"PPL = {ppl:.4f} +/- {stderr:.5f} ({dt:.1f} s, {bs} chunks a batch)")
        results.append({
            "n_ctx": n_ctx,
            "n_chunks": n_chunks,
            "n_scored": count,
            "mean_nll": round(mean, 8),
            "ppl": round(ppl, 6),
            "ppl_stderr": round(stderr, 6),
            "running_ppl_first5": running,
        })
    return results


def mode_perplexity(args, ctx) -> None:
    path = os.path.join(args.data_dir, WIKITEXT)
    with open(path, "rb") as f:
        text = f.read().decode("utf-8")  # no newline translation: the CRLFs stay
    t0 = time.time()
    tokens = encode(ctx["tok"], text)
    tokens2 = encode_smollm(ctx["tok_smollm"], text)
    log(f"perplexity: {len(text)} chars -> {len(tokens)} tokens (transformers GGUF tokenizer), "
        f"{len(tokens2)} tokens (smollm pre-tokenizer), in {time.time() - t0:.1f} s")
    results = perplexity_of(args, ctx, tokens, "hf-gguf")
    results2 = perplexity_of(args, ctx, tokens2, "smollm-pre")
    doc = {
        "command": ctx["command"],
        "generator": ctx["generator"],
        "model_sha256": ctx["model_sha256"],
        "file": WIKITEXT,
        "file_sha256": sha256_file(path),
        "n_tokens": len(tokens),
        "method": "llama-perplexity convention: the whole file (bytes as stored, CRLF kept) "
        "tokenized once without BOS (add_bos_token is false) and without special tokens added; "
        "n_chunks = n_tokens // n_ctx independent sequences of n_ctx tokens starting at "
        "chunk*n_ctx; the logits at positions n_ctx/2 .. n_ctx-2 predict tokens n_ctx/2+1 .. "
        "n_ctx-1; ppl = exp(mean NLL over all scored tokens); ppl_stderr = ppl * sqrt((E[nll^2] - "
        "E[nll]^2) / (count - 1)) as llama-perplexity prints it; running_ppl_first5 = "
        "exp(mean NLL so far) after chunks 1..5 (llama-perplexity's [i] values). fp32, "
        f"attn_implementation={args.attn}, device={args.device}. 'results' uses transformers' GGUF "
        "tokenizer (plain ByteLevel pre-tokenizer); 'smollm_pre' repeats it with the tokens of the "
        "pre-tokenizer the GGUF names (tokenizer.ggml.pre = smollm, as llama.cpp tokenizes).",
        "results": results,
        "smollm_pre": {
            "n_tokens": len(tokens2),
            "results": results2,
        },
    }
    out = os.path.join(args.out_dir, "perplexity_ref.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    log(f"perplexity -> {out}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf", help="GGUF file")
    ap.add_argument("--data-dir", default="/work/shared/data",
                    help="folder holding hellaswag/ and wikitext-2/")
    ap.add_argument("--out-dir", default="tests/fixtures")
    ap.add_argument("--device", default="cpu", choices=["cuda", "cpu"])
    ap.add_argument("--modes", default="config,tokenizer,logits,perplexity",
                    help="comma list of: cases, config, tokenizer, logits, perplexity")
    ap.add_argument("--cases", default="tests/fixtures/tokenizer_cases.json",
                    help="case list read by the tokenizer mode")
    ap.add_argument("--cases-out", default=None, help="where the cases mode writes (default: out-dir)")
    ap.add_argument("--n-ctx", default="512,2048", help="comma list of context sizes for perplexity")
    ap.add_argument("--max-chunks", type=int, default=0, help="limit chunks (testing only; 0 = all)")
    ap.add_argument("--batch-tokens", type=int, default=32768,
                    help="tokens per perplexity batch (chunks per batch = this // n_ctx)")
    ap.add_argument("--attn", default="eager", help="transformers attn_implementation")
    args = ap.parse_args()
    args.n_ctx = [int(v) for v in args.n_ctx.split(",") if v]
    modes = [m for m in args.modes.split(",") if m]
    os.makedirs(args.out_dir, exist_ok=True)
    command = "python3 tools/reference/hf_reference.py " + shlex.join(sys.argv[1:])

    if modes == ["cases"]:
        mode_cases(args)
        return 0

    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    if args.device == "cuda":
        device_name = torch.cuda.get_device_name(0)
    else:
        device_name = "CPU"
    ctx = {
        "torch": torch,
        "command": command,
        "generator": generator_string(torch, device_name),
        "model_sha256": sha256_file(args.model),
    }
    log(f"generator: {ctx['generator']}")
    log(f"model: {args.model} sha256 {ctx['model_sha256']}")
    timings = {}
    t0 = time.time()
    ctx["tok"] = load_tokenizer(args)
    ctx["tok_smollm"] = smollm_pre_tokenizer(ctx["tok"])
    timings["load_tokenizer"] = time.time() - t0
    if "cases" in modes:
        mode_cases(args)
    if "tokenizer" in modes:
        t0 = time.time()
        mode_tokenizer(args, ctx)
        timings["tokenizer"] = time.time() - t0
    if any(m in modes for m in ("config", "logits", "perplexity")):
        t0 = time.time()
        ctx["model"] = load_model(args, torch)
        timings["load_model"] = time.time() - t0
    for m, fn in (("config", mode_config), ("logits", mode_logits), ("perplexity", mode_perplexity)):
        if m in modes:
            t0 = time.time()
            fn(args, ctx)
            timings[m] = time.time() - t0
    log("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
