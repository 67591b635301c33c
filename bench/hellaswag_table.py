#!/usr/bin/env python3
"""HellaSwag table of several KV settings against a reference run on the same rows (paired).

Reads the row files `kvdial hellaswag --rows-out FILE` writes (one per setting, same --data/--split/--limit)
and prints one Markdown row per setting: acc, acc_norm (with their standard errors), the paired difference of
acc_norm from the reference (mean of per-row differences and its standard error, as `kvdial hellaswag --ref`
prints it), rows gained and lost, and the mean change of the endings' summed log-likelihood.

    python3 bench/hellaswag_table.py --ref f16.json K5V4g64.json K3V2g64.json --out results/hellaswag_v2.md
"""
import argparse
import json
import math
import sys

from benchlib import emit_table


def mean_se(x):
    n = len(x)
    m = sum(x) / n
    if n < 2:
        return m, 0.0
    var = sum((v - m) ** 2 for v in x) / (n - 1)
    return m, math.sqrt(var / n)


def load(path):
    with open(path) as f:
        d = json.load(f)
    rows = d.get("rows")
    if not isinstance(rows, list) or not rows:
        sys.exit(f"{path}: no 'rows' (write it with kvdial hellaswag --rows-out)")
    return d, rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", required=True, help="row file of the reference setting (e.g. static:16)")
    ap.add_argument("runs", nargs="+", help="row files of the settings to compare")
    ap.add_argument("--name", action="append", help="name of a run in the table, once per run file, in order "
                    "(default: the policy in each file)")
    ap.add_argument("--out", default="results/hellaswag_table.md")
    a = ap.parse_args()
    ref, ref_rows = load(a.ref)
    names = a.name
    if names and len(names) != len(a.runs):
        sys.exit("--name: once per run file")
    ref_ok = [r["pred_norm"] == r["label"] for r in ref_rows]
    lines = [f"HellaSwag, {len(ref_rows)} rows of {ref['data']} (split {ref['split']}); paired against "
             f"{ref['policy']} on the same rows", "",
             "| setting | acc | acc_norm | acc_norm - ref (paired) | rows gained / lost | "
             "ending ll change, mean (mean abs) nats |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    m, se = mean_se([float(v) for v in ref_ok])
    am, ase = mean_se([float(r["pred"] == r["label"]) for r in ref_rows])
    lines.append(f"| {ref['policy']} (reference) | {am:.4f} ± {ase:.4f} | {m:.4f} ± {se:.4f} | | | |")
    for i, path in enumerate(a.runs):
        d, rows = load(path)
        if [r["line"] for r in rows] != [r["line"] for r in ref_rows]:
            sys.exit(f"{path}: not the reference's rows (different lines or order)")
        ok = [r["pred_norm"] == r["label"] for r in rows]
        m, se = mean_se([float(v) for v in ok])
        am, ase = mean_se([float(r["pred"] == r["label"]) for r in rows])
        dm, dse = mean_se([float(x) - float(y) for x, y in zip(ok, ref_ok)])
        gained = sum(1 for x, y in zip(ok, ref_ok) if x and not y)
        lost = sum(1 for x, y in zip(ok, ref_ok) if y and not x)
        ch = [a_ - b_ for r, q in zip(rows, ref_rows) for a_, b_ in zip(r["ll"], q["ll"])]
        name = names[i] if names else d["policy"]
        lines.append(f"| {name} | {am:.4f} ± {ase:.4f} | {m:.4f} ± {se:.4f} | {dm:+.4f} ± {dse:.4f} | "
                     f"{gained} / {lost} | {sum(ch) / len(ch):+.4f} ({sum(abs(c) for c in ch) / len(ch):.4f}) |")
    emit_table(lines, a.out)


if __name__ == "__main__":
    main()
