#!/usr/bin/env python3
"""kvdial's CUDA engine against llama.cpp's CUDA build and Hugging Face transformers on the same GGUF and
GPU, side by side in one run, with ratios.

Short context: `kvdial bench -dev cuda -p P -n N` per --kv-policies; `llama-bench -ngl 99 -p P -n N` with
f16 KV (flash attention off and on) and q8_0 / q4_0 KV (flash attention on, which llama.cpp needs for a
quantized V); transformers `generate()` (bench/hf_generate.py). Decode after --depth tokens: `kvdial bench
-p 0 -n G -d D`, `llama-batched-bench -npp D -ntg G -npl 1` for the same KV types, transformers.
This script never downloads or builds llama.cpp: pass the paths of binaries you built.
"""
import argparse
import json
import os
import sys

from benchlib import emit_table, git_commit, llama_batched_decode, sh

HERE = os.path.dirname(os.path.abspath(__file__))
LLAMA_KV = (("f16", ["-fa", "0"]), ("f16 fa", ["-fa", "1"]), ("q8_0 fa", ["-fa", "1", "-ctk", "q8_0", "-ctv", "q8_0"]),
            ("q4_0 fa", ["-fa", "1", "-ctk", "q4_0", "-ctv", "q4_0"]))


def mib(b):
    return f"{b / 2**20:.1f}" if b else "-"


def batched_bench(a, depth, gen, extra):
    return llama_batched_decode(a.llamacpp_batched, a.model, depth, gen, ["-ngl", "99"] + extra)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kvdial", default="build/kvdial")
    ap.add_argument("--llamacpp", help="llama.cpp's llama-bench (CUDA build)")
    ap.add_argument("--llamacpp-batched", help="llama.cpp's llama-batched-bench (CUDA build), for --depth")
    ap.add_argument("--llamacpp-version", default="b4747")
    ap.add_argument("--hf", action="store_true", help="also time transformers (bench/hf_generate.py)")
    ap.add_argument("--hf-dtype", default="float16")
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-r", "--reps", type=int, default=5)
    ap.add_argument("--depth", type=int, default=4096)
    ap.add_argument("--depth-gen", type=int, default=64)
    ap.add_argument("--kv-policies", default="static:16,static:8,static:4,static:2")
    ap.add_argument("--kvdial-version", default=None)
    ap.add_argument("--kvdial-args", default="--kv-rotate 0 --kv-ladder 2=K2V2g32,4=K4V4g32,8=K8V8g32,16=F16",
                    help="extra kvdial options (the GPU cache stores the original K = V format)")
    ap.add_argument("--out", default="results/compare_gpu.md")
    a = ap.parse_args()

    gpu = sh(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.mem", "--format=csv,noheader"]).strip()
    lines = [f"GPU: {gpu}; model {os.path.basename(a.model)}; kvdial {a.kvdial_version or git_commit()}; "
             f"llama.cpp {a.llamacpp_version}; {a.reps} repetitions, mean ± sd", ""]

    # Short context.
    short = []  # (engine, kv, test, ts, sd, vram)
    for r in json.loads(sh([a.kvdial, "bench", "-m", a.model, "-dev", "cuda", *a.kvdial_args.split(), "-p", str(a.n_prompt), "-n", str(a.n_gen),
                            "-r", str(a.reps), "-o", "json", "--kv-policy", a.kv_policies])):
        short.append(("kvdial", r["kv_policy"], r["test"], r["avg_ts"], r["stddev_ts"],
                      r.get("vram_device_used_peak_bytes", 0)))
    if a.llamacpp:
        for name, extra in LLAMA_KV:
            for r in json.loads(sh([a.llamacpp, "-m", a.model, "-ngl", "99", "-p", str(a.n_prompt), "-n", str(a.n_gen),
                                    "-r", str(a.reps), "-o", "json"] + extra)):
                test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
                short.append((f"llama.cpp {a.llamacpp_version}", name, test, r["avg_ts"], r["stddev_ts"], 0))
    hf_rows = []
    if a.hf:
        hf_rows = json.loads(sh([sys.executable, os.path.join(HERE, "hf_generate.py"), "-m", a.model, "-p",
                                 str(a.n_prompt), "-n", str(a.n_gen), "-d", str(a.depth), "--depth-gen",
                                 str(a.depth_gen), "-r", str(a.reps), "--dtype", a.hf_dtype]).strip().splitlines()[-1])
        for r in hf_rows:
            if "@" not in r["test"]:
                short.append(("transformers", f"{a.hf_dtype} DynamicCache", r["test"], r["avg_ts"], r["stddev_ts"], 0))

    def best(test, kv_prefix=""):
        v = [ts for eng, kv, t, ts, _, _ in short if eng.startswith("llama.cpp") and t == test and kv.startswith(kv_prefix)]
        return max(v) if v else 0

    pp, tg = f"pp{a.n_prompt}", f"tg{a.n_gen}"
    lines += [f"Short context ({pp}, {tg}), batch 1", "",
              f"| engine | KV | test | t/s | vs best llama.cpp | vs llama.cpp same KV type |",
              "| --- | --- | --- | ---: | ---: | ---: |"]
    for eng, kv, test, ts, sd, _ in short:
        b = best(test)
        same = {"static:16": "f16", "static:8": "q8_0", "static:4": "q4_0"}.get(kv, kv if eng.startswith("llama") else None)
        bs = best(test, same) if same else 0
        lines.append(f"| {eng} | {kv} | {test} | {ts:,.2f} ± {sd:,.2f} | {f'{ts / b:.2f}x' if b else '-'} | "
                     f"{f'{ts / bs:.2f}x' if bs else '-'} |")

    # Long context.
    if a.depth > 0:
        longr = []  # (engine, kv, ts, sd, vram)
        for r in json.loads(sh([a.kvdial, "bench", "-m", a.model, "-dev", "cuda", *a.kvdial_args.split(), "-p", "0", "-n", str(a.depth_gen),
                                "-d", str(a.depth), "-r", str(a.reps), "-o", "json", "--kv-policy", a.kv_policies])):
            longr.append(("kvdial", r["kv_policy"], r["avg_ts"], r["stddev_ts"], r.get("vram_device_used_peak_bytes", 0),
                          r.get("vram_engine_peak_bytes", 0), r.get("kv_bytes", 0)))
        if a.llamacpp_batched:
            for name, extra in LLAMA_KV:
                fa = ["-fa"] if "fa" in name else []
                kvx = extra[2:]
                longr.append((f"llama.cpp {a.llamacpp_version}", name, batched_bench(a, a.depth, a.depth_gen, fa + kvx),
                              0.0, 0, 0, 0))
        for r in hf_rows:
            if "@" in r["test"]:
                longr.append(("transformers", f"{a.hf_dtype} DynamicCache", r["avg_ts"], r["stddev_ts"], 0, 0, 0))
        ref16 = next((ts for eng, kv, ts, *_ in longr if eng == "kvdial" and kv == "static:16"), 0)
        lf16 = max([ts for eng, kv, ts, *_ in longr if eng.startswith("llama.cpp") and kv.startswith("f16")] or [0])
        lines += ["", f"Decode after {a.depth} tokens of context ({a.depth_gen} generated), batch 1", "",
                  "| engine | KV | t/s | vs kvdial static:16 | vs best llama.cpp f16 | KV MiB stored | engine VRAM peak MiB "
                  "| device VRAM peak MiB |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for eng, kv, ts, sd, vdev, veng, kvb in longr:
            lines.append(f"| {eng} | {kv} | {ts:,.2f} ± {sd:,.2f} | {f'{ts / ref16:.2f}x' if ref16 else '-'} | "
                         f"{f'{ts / lf16:.2f}x' if lf16 else '-'} | {mib(kvb)} | {mib(veng)} | {mib(vdev)} |")
    emit_table(lines, a.out)


if __name__ == "__main__":
    main()
