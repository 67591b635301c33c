#!/usr/bin/env python3
"""kvdial against llama.cpp on the same GGUF, side by side in one run, with ratios.

Short context: `kvdial bench -p P -n N` (for each --backends) and `llama-bench -p P -n N` (with and without -fa).
Long context (--depth D > 0): decode after D tokens already in the cache: `kvdial bench -p 0 -n G -d D`
for each --kv-policy, and, when --llamacpp-batched is given, `llama-batched-bench -npp D -ntg G -npl 1`
(f16 KV with and without flash attention, q8_0 and q4_0 KV with flash attention).
Beside each decode figure: bytes read per token (weights + KV cache) and the implied GB/s.
This script never downloads or builds llama.cpp: pass the paths of binaries you built.
"""
import argparse
import json
import os
import sys

from benchlib import emit_table, llama_batched_decode, machine_line, sh


def kvdial_bench(a, args, backend="cpu"):
    return json.loads(sh([a.kvdial, "bench", "-m", a.model, "-t", str(a.threads), "-r", str(a.reps), "-o", "json",
                          "--backend", backend] + args))


def llama_bench(a, args):
    out = sh([a.llamacpp, "-m", a.model, "-t", str(a.threads), "-r", str(a.reps), "-o", "json"] + args)
    return json.loads(out)


def batched_bench(a, depth, gen, extra):
    return llama_batched_decode(a.llamacpp_batched, a.model, depth, gen, ["-t", str(a.threads)] + extra)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kvdial", default="build/kvdial")
    ap.add_argument("--llamacpp", help="path of llama.cpp's llama-bench")
    ap.add_argument("--llamacpp-batched", help="path of llama.cpp's llama-batched-bench (long-context decode)")
    ap.add_argument("--llamacpp-version", help="name of the llama.cpp build in the table (e.g. b4747), for builds "
                    "made without git metadata")
    ap.add_argument("--kvdial-version", default="unknown", help="kvdial version for the table when git is absent")
    ap.add_argument("-m", "--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--depth", type=int, default=4096)
    ap.add_argument("--depth-gen", type=int, default=64)
    ap.add_argument("--kv-policies", default="static:16,static:8,static:4,static:2")
    ap.add_argument("--backends", default="cpu,cpu-q8",
                    help="kvdial backends to run (cpu: fp32 activations; cpu-q8: 8-bit activations in decode, as llama.cpp)")
    ap.add_argument("--out", default="results/compare_llamacpp.md")
    a = ap.parse_args()
    weights = os.path.getsize(a.model)
    lines = [machine_line(a.kvdial_version), ""]

    # Short context.
    rows = []
    for be in a.backends.split(","):
        kv = kvdial_bench(a, ["-p", str(a.n_prompt), "-n", str(a.n_gen)], be)
        rows += [(f"kvdial {be}", r["test"], r["avg_ts"], r["stddev_ts"]) for r in kv]
    if a.llamacpp:
        for fa in ("0", "1"):
            for r in llama_bench(a, ["-p", str(a.n_prompt), "-n", str(a.n_gen), "-fa", fa]):
                test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
                build = a.llamacpp_version or f"{r.get('build_commit', '?')} b{r.get('build_number', '?')}"
                rows.append((f"llama.cpp {build} fa={fa}", test, r["avg_ts"], r["stddev_ts"]))
    lines += [f"Short context, {a.threads} threads, {os.path.basename(a.model)}", "",
              "| engine | test | t/s | vs best llama.cpp |", "| --- | --- | ---: | ---: |"]
    best = {}
    for eng, test, ts, sd in rows:
        if eng.startswith("llama.cpp"):
            best[test] = max(best.get(test, 0), ts)
    for eng, test, ts, sd in rows:
        ratio = f"{ts / best[test]:.2f}x" if test in best else "-"
        lines.append(f"| {eng} | {test} | {ts:.2f} ± {sd:.2f} | {ratio} |")

    # Long context.
    if a.depth > 0:
        lrows = []
        for be in a.backends.split(","):
            kv = kvdial_bench(a, ["-p", "0", "-n", str(a.depth_gen), "-d", str(a.depth),
                                  "--kv-policy", a.kv_policies], be)
            for r in kv:
                kv_per_token = r["kv_bytes"] / (a.depth + a.depth_gen)  # bytes stored per token (all layers)
                read = weights + kv_per_token * (a.depth + a.depth_gen / 2)
                lrows.append((f"kvdial {be} {r['kv_policy']}", r["avg_ts"], r["stddev_ts"], read))
        if a.llamacpp_batched:
            # Bytes per cached token of the default model's shapes, from llama.cpp's type sizes (f16: 2 B,
            # q8_0: 34/32, q4_0: 18/32 per element), K and V, all layers; read from the model metadata by kvdial.
            info = json.loads(sh([a.kvdial, "bench", "-m", a.model, "-p", "0", "-n", "1", "-r", "1", "-o", "json",
                                  "--kv-policy", "static:16"]))[0]
            f16_per_token = info["kv_bytes"] / 1  # one token in the cache at 16 bits
            for name, extra, ratio in (("f16", [], 1.0), ("f16 fa", ["-fa"], 1.0),
                                       ("q8_0 fa", ["-fa", "-ctk", "q8_0", "-ctv", "q8_0"], 34 / 64),
                                       ("q4_0 fa", ["-fa", "-ctk", "q4_0", "-ctv", "q4_0"], 18 / 64)):
                ts = batched_bench(a, a.depth, a.depth_gen, extra)
                read = weights + f16_per_token * ratio * (a.depth + a.depth_gen / 2)
                lrows.append((f"llama.cpp {name}", ts, 0.0, read))
        best_f16 = max([ts for n, ts, _, _ in lrows if n.startswith("llama.cpp f16")] or [0])
        lines += ["", f"Decode after {a.depth} tokens of context ({a.depth_gen} generated), {a.threads} threads", "",
                  "| engine / KV | t/s | vs best llama.cpp f16 | MB read per token | implied GB/s |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for name, ts, sd, read in lrows:
            ratio = f"{ts / best_f16:.2f}x" if best_f16 else "-"
            lines.append(f"| {name} | {ts:.2f} ± {sd:.2f} | {ratio} | {read / 1e6:.1f} | {read * ts / 1e9:.1f} |")
    emit_table(lines, a.out)


if __name__ == "__main__":
    main()
