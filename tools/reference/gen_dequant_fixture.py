#!/usr/bin/env python3
"""Writes tests/fixtures/dequant_ref.json: random blocks of every weight type kvdial supports, and the
floats gguf-py (the Python `gguf` package, an implementation independent of ours) dequantizes them to.
tests/test_kernels.cpp checks ref::dequantize_row against it bit for bit (1 ulp allowed).

Regenerate (deterministic; needs numpy and gguf, tested with gguf 0.19.0):
    python3 tools/reference/gen_dequant_fixture.py tests/fixtures/dequant_ref.json
"""
import importlib.metadata
import json
import sys

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGML_QUANT_SIZES
from gguf.quants import dequantize

COMMAND = "python3 tools/reference/gen_dequant_fixture.py tests/fixtures/dequant_ref.json"


def halves(rng, n, lo, hi, neg_frac=0.0):
    """n float16 scales, |v| log-uniform in [lo, hi), a fraction of them negative, as raw bytes (n, 2)."""
    v = np.exp(rng.uniform(np.log(lo), np.log(hi), n)).astype(np.float16)
    v = np.where(rng.random(n) < neg_frac, -v, v).astype(np.float16)
    return v.view(np.uint8).reshape(n, 2)


def special_halves():
    """Edge cases for the scale conversion: zero, -0, smallest/largest subnormal, smallest normal, max."""
    return np.array([0x0000, 0x8000, 0x0001, 0x03FF, 0x0400, 0x7BFF, 0x3C00, 0xBC00], dtype=np.uint16)


def make_blocks(rng, qtype, n_blocks):
    _, type_size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    sp = special_halves().view(np.uint8).reshape(-1, 2)
    if qtype in (Q.Q4_0, Q.Q8_0, Q.Q5_0, Q.IQ4_NL):
        raw[:, 0:2] = halves(rng, n_blocks, 1e-4, 0.1, neg_frac=0.3)
        raw[: len(sp), 0:2] = sp
        if qtype == Q.Q8_0:
            raw[0, 2:6] = [0x80, 0x7F, 0x81, 0x00]  # -128, 127, -127, 0
    elif qtype in (Q.Q4_1, Q.Q5_1):
        raw[:, 0:2] = halves(rng, n_blocks, 1e-4, 0.1)
        raw[:, 2:4] = halves(rng, n_blocks, 1e-3, 1.0, neg_frac=0.8)  # m: usually the (negative) minimum
        raw[: len(sp), 0:2] = sp
    elif qtype in (Q.Q4_K, Q.Q5_K):
        raw[:, 0:2] = halves(rng, n_blocks, 1e-5, 1e-2)
        raw[:, 2:4] = halves(rng, n_blocks, 1e-5, 1e-2)
        raw[0, 0:2] = sp[2]  # subnormal d
    elif qtype == Q.Q2_K:
        raw[:, 80:82] = halves(rng, n_blocks, 1e-5, 1e-2)
        raw[:, 82:84] = halves(rng, n_blocks, 1e-5, 1e-2)
        raw[1, 80:82] = sp[2]
    elif qtype == Q.Q3_K:
        raw[:, 108:110] = halves(rng, n_blocks, 1e-5, 1e-2, neg_frac=0.2)
        raw[1, 108:110] = sp[2]
    elif qtype == Q.IQ4_XS:
        raw[:, 0:2] = halves(rng, n_blocks, 1e-5, 1e-2, neg_frac=0.2)
        raw[1, 0:2] = sp[2]
    elif qtype == Q.Q6_K:
        raw[:, 208:210] = halves(rng, n_blocks, 1e-5, 1e-2, neg_frac=0.2)
        raw[0, 192:196] = [0x80, 0x7F, 0x00, 0xFF]  # scales -128, 127, 0, -1
        raw[1, 208:210] = sp[2]
    elif qtype == Q.F16:
        v = rng.standard_normal(n_blocks).astype(np.float16).view(np.uint16)
        v[:8] = special_halves()
        v[8:12] = [0x7C00, 0xFC00, 0x7E00, 0x8001]  # +inf, -inf, NaN, -smallest subnormal
        raw = v.view(np.uint8).reshape(n_blocks, 2)
    elif qtype == Q.BF16:
        v = (rng.standard_normal(n_blocks).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        v[:4] = [0x0000, 0x8000, 0x0001, 0x7F80]  # zero, -0, subnormal, inf
        raw = v.view(np.uint8).reshape(n_blocks, 2)
    elif qtype == Q.F32:
        raw = rng.standard_normal(n_blocks).astype(np.float32).view(np.uint8).reshape(n_blocks, 4)
    return raw


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/dequant_ref.json"
    rng = np.random.default_rng(20240611)
    # Block counts keep the fixture small (~110 KB) while covering many random scales and nibbles.
    plan = [(Q.F32, 64), (Q.F16, 512), (Q.BF16, 512), (Q.Q4_0, 24), (Q.Q4_1, 24), (Q.Q8_0, 24),
            (Q.Q4_K, 4), (Q.Q6_K, 4),
            (Q.Q5_0, 24), (Q.Q5_1, 24), (Q.IQ4_NL, 24), (Q.Q2_K, 4), (Q.Q3_K, 4), (Q.Q5_K, 4), (Q.IQ4_XS, 4)]
    cases = []
    for qtype, n_blocks in plan:
        block_elems, _ = GGML_QUANT_SIZES[qtype]
        raw = make_blocks(rng, qtype, n_blocks)
        with np.errstate(all="ignore"):  # inf/NaN inputs on purpose
            y = np.asarray(dequantize(raw.reshape(-1), qtype), dtype=np.float32).reshape(-1)
        assert y.size == n_blocks * block_elems, (qtype.name, y.size)
        cases.append({
            "type": qtype.name,
            "type_id": int(qtype),
            "n": int(y.size),
            "blocks_hex": raw.tobytes().hex(),
            "expected_f32le_hex": y.astype("<f4").tobytes().hex(),
        })
    doc = {
        "what": "Random ggml blocks and their gguf-py dequantization (expected = float32, little endian).",
        "command": COMMAND,
        "gguf_py_version": importlib.metadata.version("gguf"),
        "cases": cases,
    }
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
