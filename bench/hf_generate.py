#!/usr/bin/env python3
"""Hugging Face transformers on the same GGUF, timed as llama-bench times: tgN (greedy `generate()` of N
new tokens after a 1-token prompt, batch 1) and ppN (one forward pass over N prompt tokens), and decode
after D tokens of context (`generate()` of G tokens after a D-token prompt, minus the prompt's time).

transformers dequantizes the GGUF to the dtype given (default fp16 on the GPU). Prints one JSON list
in the shape of `kvdial bench -o json` rows (test, avg_ts, stddev_ts), for bench/compare_gpu.py.
Needs torch, transformers and the `gguf` package (on the GPU machine its wheel travels: tools/reference/README.md).
"""
import argparse
import json
import os
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-d", "--depth", type=int, default=0, help="also decode after this many tokens (0: skip)")
    ap.add_argument("--depth-gen", type=int, default=64)
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--attn", default="sdpa", help="attn_implementation (sdpa, eager)")
    a = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("hf_generate: no CUDA device visible to torch")
    d, f = os.path.split(os.path.abspath(a.model))
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=getattr(torch, a.dtype),
                                                 attn_implementation=a.attn).eval().to(a.device)
    print(f"hf_generate: loaded in {time.time() - t0:.1f} s ({a.dtype}, {a.attn})", file=sys.stderr)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)

    def sync():
        if a.device == "cuda":
            torch.cuda.synchronize()

    def prompt(n):
        return torch.randint(100, vocab - 100, (1, n), generator=g).to(a.device)

    def gen_time(ids, n_new):
        sync()
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                                 pad_token_id=0, eos_token_id=None)
        sync()
        assert out.shape[1] == ids.shape[1] + n_new, out.shape
        return time.perf_counter() - t

    def fwd_time(ids):
        sync()
        t = time.perf_counter()
        with torch.no_grad():
            model(ids, use_cache=False)
        sync()
        return time.perf_counter() - t

    rows = []

    def row(test, rates, extra=None):
        r = {"test": test, "avg_ts": statistics.mean(rates),
             "stddev_ts": statistics.stdev(rates) if len(rates) > 1 else 0.0, "engine": "transformers",
             "dtype": a.dtype, "attn": a.attn}
        r.update(extra or {})
        rows.append(r)
        print(f"hf_generate: {test} {r['avg_ts']:.2f} ± {r['stddev_ts']:.2f} t/s", file=sys.stderr)

    if a.n_prompt > 0:
        fwd_time(prompt(a.n_prompt))  # warm-up
        row(f"pp{a.n_prompt}", [a.n_prompt / fwd_time(prompt(a.n_prompt)) for _ in range(a.reps)])
    if a.n_gen > 0:
        gen_time(prompt(1), 8)  # warm-up
        # tgN as llama-bench counts it: N generated tokens; the 1-token prompt's forward is one of them.
        row(f"tg{a.n_gen}", [a.n_gen / gen_time(prompt(1), a.n_gen) for _ in range(a.reps)])
    if a.depth > 0:
        rates = []
        for _ in range(a.reps):
            ids = prompt(a.depth)
            t_prefill = gen_time(ids, 1)
            t_all = gen_time(ids, a.depth_gen + 1)
            rates.append(a.depth_gen / max(t_all - t_prefill, 1e-9))
        row(f"tg{a.depth_gen}@d{a.depth}", rates, {"depth": a.depth})
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
