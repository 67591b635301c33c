#!/usr/bin/env python3
"""Quality of each KV policy: WikiText-2 perplexity and mean KL divergence against the 16-bit cache.

Runs `kvdial perplexity --kl-divergence` for every (policy, residual, context) and prints a Markdown
table (also written to --out). Runs several kvdial processes at once (--jobs) on machines with many
cores; results do not depend on the thread count (every dot product is computed by one thread).
"""
import argparse
import concurrent.futures as cf
import os
import re
import subprocess
import sys

from benchlib import emit_table


def run(kvdial, model, text, policy, residual, ctx, chunks, threads):
    # "SPEC;rotate=0" (or ;clip=0/1, ;ladder=L): quantizer options for this row alone.
    spec, *opts = policy.split(";")
    cmd = [kvdial, "perplexity", "-m", model, "-f", text, "-c", str(ctx), "--kv-policy", spec,
           "--kv-residual", str(residual), "--kl-divergence", "-t", str(threads)]
    for o in opts:
        k, v = o.split("=", 1)
        cmd += ["--kv-" + k, v]
    if chunks:
        cmd += ["--chunks", str(chunks)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr.strip().splitlines()[-1:]}")
    out = p.stdout
    ppl = re.search(r"PPL = ([0-9.]+) \+/- ([0-9.]+)", out)
    kl = re.search(r"KL divergence vs 16-bit cache: mean ([0-9.e-]+); same top-1 ([0-9.]+)", out)
    bits = re.search(r"stored ([0-9.]+) bits/elem", out)
    ch = re.search(r"chunks (\d+) x (\d+) tokens, (\d+) scored, ([0-9.]+) s", out)
    return dict(policy=policy, residual=residual, ctx=ctx, ppl=float(ppl.group(1)), ppl_err=float(ppl.group(2)),
                kl=float(kl.group(1)), top1=float(kl.group(2)), width=float(bits.group(1)),
                chunks=int(ch.group(1)), scored=int(ch.group(3)), seconds=float(ch.group(4)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kvdial", default="build/kvdial")
    ap.add_argument("-m", "--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("-f", "--file", required=True, help="wiki.test.raw")
    ap.add_argument("--policies", default="static:16,static:8,static:4,static:2,rule")
    ap.add_argument("--residuals", default="0,32")
    ap.add_argument("--ctx", default="512,2048")
    ap.add_argument("--chunks", default="0", help="chunks per context, comma-separated like --ctx (0 = all)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="threads per kvdial process")
    ap.add_argument("--out", default="results/quality.md")
    a = ap.parse_args()
    ctxs = [int(c) for c in a.ctx.split(",")]
    chunks = [int(c) for c in a.chunks.split(",")]
    chunks = chunks * len(ctxs) if len(chunks) == 1 else chunks
    jobs = [(p, int(r), c, n) for c, n in zip(ctxs, chunks) for r in a.residuals.split(",") for p in a.policies.split(",")]
    results = []
    with cf.ThreadPoolExecutor(a.jobs) as ex:
        futs = {ex.submit(run, a.kvdial, a.model, a.file, p, r, c, n, a.threads): (p, r, c) for p, r, c, n in jobs}
        for f in cf.as_completed(futs):
            r = f.result()
            print(f"done {r['policy']} r{r['residual']} c{r['ctx']}: ppl {r['ppl']:.4f} KL {r['kl']:.5f}",
                  file=sys.stderr, flush=True)
            results.append(r)
    order = {j[:3]: i for i, j in enumerate(jobs)}
    results.sort(key=lambda r: order[(r["policy"], r["residual"], r["ctx"])])
    lines = ["| n_ctx | chunks | kv | residual | stored bits/elem | PPL | ± | mean KL vs 16-bit | same top-1 |",
             "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        lines.append(f"| {r['ctx']} | {r['chunks']} | {r['policy']} | {r['residual']} | {r['width']:.3f} | "
                     f"{r['ppl']:.4f} | {r['ppl_err']:.4f} | {r['kl']:.6f} | {r['top1']:.4f} |")
    emit_table(lines, a.out)


if __name__ == "__main__":
    main()
