#!/usr/bin/env python3
"""KV memory at a given context, per policy, each in its own process so peak RSS is its own.

Runs `kvdial bench -p 0 -n 16 -d DEPTH --kv-policy P -o json` for every policy and prints a Markdown
table: KV bytes stored, ratio to static:16, bits per element, peak RSS and how much it fell against
static:16 next to how much the KV bytes fell. Writes the table to --out (default results/kv_memory.md).
"""
import argparse
import json
import os
import subprocess
import sys

from benchlib import emit_table


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kvdial", default="build/kvdial")
    ap.add_argument("-m", "--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("-d", "--depth", type=int, default=4096)
    ap.add_argument("-t", "--threads", type=int, default=0)
    ap.add_argument("--policies", default="static:16,static:8,static:4,static:2,rule")
    ap.add_argument("--kv-residual", type=int, default=0)
    ap.add_argument("--out", default="results/kv_memory.md")
    a = ap.parse_args()
    rows = []
    for pol in a.policies.split(","):
        # "SPEC;rotate=0" (or ;clip=0/1, ;ladder=L): quantizer options for this row alone.
        spec, *opts = pol.split(";")
        cmd = [a.kvdial, "bench", "-m", a.model, "-p", "0", "-n", "16", "-d", str(a.depth), "-r", "1",
               "-o", "json", "--kv-policy", spec, "--kv-residual", str(a.kv_residual)]
        for o in opts:
            k, v = o.split("=", 1)
            cmd += ["--kv-" + k, v]
        if a.threads:
            cmd += ["-t", str(a.threads)]
        print("running:", " ".join(cmd), file=sys.stderr)
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out)[0]
        r["spec"] = pol  # static:K5V4g64 runs as static:4 over that setting: name rows as asked
        rows.append(r)
    base = next((r for r in rows if r["spec"] == "static:16"), rows[0])
    model_bytes = os.path.getsize(a.model)
    lines = [f"KV memory after {a.depth} tokens of context + 16 generated (kv-residual {a.kv_residual}); "
             f"each policy in its own process. Budget = model file ({model_bytes / 2**20:.1f} MiB) + KV bytes "
             f"+ 64 MiB.",
             "",
             "| kv | KV bytes | vs static:16 | bits/elem | avg width | peak RSS | RSS saved vs static:16 "
             "| KV bytes saved | RSS budget | under budget by |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        kv_saved = base["kv_bytes"] - r["kv_bytes"]
        rss_saved = base["peak_rss_bytes"] - r["peak_rss_bytes"]
        budget = model_bytes + r["kv_bytes"] + 64 * 2**20
        lines.append(f"| {r['spec']} | {int(r['kv_bytes']):,} | {r['kv_bytes'] / base['kv_bytes']:.4f} | "
                     f"{r['kv_bits_per_elem']:.3f} | {r['kv_avg_width']:.2f} | {r['peak_rss_bytes'] / 2**20:.1f} MiB | "
                     f"{rss_saved / 2**20:.1f} MiB | {kv_saved / 2**20:.1f} MiB | "
                     f"{budget / 2**20:.1f} MiB | {(budget - r['peak_rss_bytes']) / 2**20:.1f} MiB |")
    emit_table(lines, a.out)


if __name__ == "__main__":
    main()
