#!/usr/bin/env python3
"""Plots of a `kvdial compare` run, from its compare.json.

  pareto.png     KL vs static:16, next-token accuracy and HellaSwag acc_norm against stored bits per
                 element: static policies joined as a line, every other policy family (rule, learned,
                 random, pattern, ...) with its own marker and line
  widths.png     the bit-width each policy gave every token of one sample text, the text under it
  latency.png    distribution of the decode-step latency per policy

Usage: python3 scripts/plot_compare.py results/compare/compare.json [-o DIR]   (DIR: beside the JSON)
"""
import argparse
import json
import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]


def short_name(p):
    """The policy's short name (compare's `policy`: a controller's directory left out)."""
    return re.sub(r"^learned:[^@]*", "learned", p.get("policy", p["spec"]))


def family(p):
    """static, rule, learned, random, pattern, ...: the part of the spec before ':' or '@'."""
    f = re.split(r"[:@;]", p["spec"])[0]
    # The original (unrotated) cache is its own line beside the v2 quantizer's static settings.
    return f + " (original cache)" if "rotate=0" in p["spec"] else f


def families(policies):
    out = {}
    for p in policies:
        out.setdefault(family(p), []).append(p)
    return out


def title_of(meta):
    hs = meta["hellaswag"]
    return (f"{meta['model'].get('name', '')} · HellaSwag {os.path.basename(hs['path'])} split {hs['split']} "
            f"({hs['rows']} rows) · {meta['date'][:10]}")


def pareto(report, path):
    pol = report["policies"]
    metrics = [("kl", "mean KL vs static:16 (nats, log; < 1e-6 drawn at 1e-6)", True),
               ("next_token_accuracy", "next-token accuracy (top-1 = actual)", False),
               ("acc_norm", "HellaSwag acc_norm (±1 SE)", False)]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    for ax, (key, label, logy) in zip(axes, metrics):
        for i, (fam, ps) in enumerate(families(pol).items()):
            ps = sorted((p for p in ps if p.get(key) is not None), key=lambda p: p["avg_bits"])
            if not ps:
                continue
            xs = [p["avg_bits"] for p in ps]
            ys = [p[key] for p in ps]
            if logy:
                ys = [max(y, 1e-6) for y in ys]  # static:16 sits at the floor
            style = "-" if fam == "static" else "--"
            if key == "acc_norm":
                ax.errorbar(xs, ys, yerr=[p.get("acc_norm_se", 0) for p in ps], fmt=MARKERS[i % len(MARKERS)] + style,
                            capsize=3, label=fam)
            else:
                ax.plot(xs, ys, MARKERS[i % len(MARKERS)] + style, label=fam)
            for p, x, y in zip(ps, xs, ys):
                ax.annotate(short_name(p), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("stored bits per K/V element (scales included)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(title="policy family", fontsize=8)
    fig.suptitle("Quality against KV memory — " + title_of(report["meta"]), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def widths(report, path):
    pol = [p for p in report["policies"] if p.get("sample_widths")]
    pieces = report["meta"]["sample"]["pieces"]
    n = len(pieces)
    if not pol or n == 0:
        return False
    fig_w = max(10, min(40, 0.28 * n))
    fig, ax = plt.subplots(figsize=(fig_w, 1.0 + 0.45 * len(pol) + 1.6))
    cmap = {2: "#d73027", 3: "#f46d43", 4: "#fdae61", 5: "#fee08b", 6: "#d9ef8b", 8: "#91cf60", 16: "#1a9850"}
    for row, p in enumerate(pol):
        for t, w in enumerate(p["sample_widths"][:n]):
            ax.add_patch(plt.Rectangle((t, row), 1, 0.9, color=cmap.get(w, "#999999")))
            ax.text(t + 0.5, row + 0.45, str(w), ha="center", va="center", fontsize=6)
    ax.set_xlim(0, n)
    ax.set_ylim(-0.1, len(pol))
    ax.set_yticks([r + 0.45 for r in range(len(pol))])
    ax.set_yticklabels([short_name(p) for p in pol], fontsize=8)
    ax.set_xticks([t + 0.5 for t in range(n)])
    ax.set_xticklabels([repr(s)[1:-1] if s.strip() != s or not s.isprintable() else s for s in pieces],
                       rotation=90, fontsize=7, family="monospace")
    ax.invert_yaxis()
    for s in ("top", "right", "left", "bottom"):
        ax.spines[s].set_visible(False)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in cmap.values()]
    ax.legend(handles, [f"{w} bits" for w in cmap], ncol=len(cmap), fontsize=7, loc="lower left",
              bbox_to_anchor=(0, 1.0), frameon=False)
    ax.set_title(f"KV bit-width of every token of HellaSwag line {report['meta']['sample']['line']} "
                 "(the tokens' text below)", fontsize=10, pad=22)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def latency(report, path):
    pol = [p for p in report["policies"] if p.get("latency_ms_samples")]
    if not pol:
        return False
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(pol)), 4.5))
    data = [p["latency_ms_samples"] for p in pol]
    ax.boxplot(data, showfliers=False, whis=(5, 95))
    ax.set_xticks(range(1, len(pol) + 1))
    ax.set_xticklabels([short_name(p) for p in pol], rotation=30, ha="right", fontsize=8)
    for i, p in enumerate(pol, start=1):
        ax.plot(i, p["latency_ms_mean"], "k^", markersize=5)
    ax.set_ylabel("decode step (ms): box = p25–p75, line = p50, whiskers = p5–p95, ▲ = mean")
    m = report["meta"]["machine"]
    ax.set_title(f"Decode latency per token, HellaSwag texts — {m.get('cpu', '')}, {m.get('threads', '?')} threads",
                 fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", help="compare.json")
    ap.add_argument("-o", "--out", help="directory for the PNGs (default: beside the JSON)")
    a = ap.parse_args()
    with open(a.json) as f:
        report = json.load(f)
    out = a.out or os.path.dirname(os.path.abspath(a.json))
    os.makedirs(out, exist_ok=True)
    written = []
    p = os.path.join(out, "pareto.png")
    pareto(report, p)
    written.append(p)
    p = os.path.join(out, "widths.png")
    if widths(report, p):
        written.append(p)
    p = os.path.join(out, "latency.png")
    if latency(report, p):
        written.append(p)
    for w in written:
        print(w)


if __name__ == "__main__":
    main()
