#!/usr/bin/env python3
"""Plot a controller's learning curve (the CURVE.csv that `kvdial train` writes beside the controller).

    python3 scripts/plot_training.py controller.json.curve.csv [-o controller.json.curve.png]

Left: training and validation loss per epoch (the kept epoch marked); right: training and validation
accuracy of the implied width class and validation macro-F1. Needs matplotlib (installs nothing).
"""
import argparse
import csv
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("curve", help="CSV written by kvdial train (epoch,train_loss,val_loss,...)")
    ap.add_argument("-o", "--output", help="PNG to write (default: CURVE with .png instead of .csv)")
    ap.add_argument("--title", default=None, help="plot title (default: the CSV's name)")
    a = ap.parse_args()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_training.py: matplotlib is missing (pip install matplotlib)", file=sys.stderr)
        return 1
    try:
        with open(a.curve, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        print(f"plot_training.py: {a.curve}: {e.strerror}", file=sys.stderr)
        return 1
    need = ["epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy", "val_macro_f1"]
    if not rows or any(k not in rows[0] for k in need):
        print(f"plot_training.py: {a.curve}: not a kvdial train curve (columns {', '.join(need)})", file=sys.stderr)
        return 1
    try:
        col = {k: [float(r[k]) for r in rows] for k in need}
    except ValueError as e:
        print(f"plot_training.py: {a.curve}: {e}", file=sys.stderr)
        return 1
    best = min(range(len(rows)), key=lambda i: col["val_loss"][i])
    out = a.output or (a.curve[:-4] if a.curve.endswith(".csv") else a.curve) + ".png"
    fig, (l, r) = plt.subplots(1, 2, figsize=(11, 4))
    l.plot(col["epoch"], col["train_loss"], label="train")
    l.plot(col["epoch"], col["val_loss"], label="validation")
    l.axvline(col["epoch"][best], color="gray", linestyle=":", label=f"kept (epoch {int(col['epoch'][best])})")
    l.set_xlabel("epoch")
    l.set_ylabel("loss")
    l.legend()
    r.plot(col["epoch"], col["train_accuracy"], label="train accuracy")
    r.plot(col["epoch"], col["val_accuracy"], label="validation accuracy")
    r.plot(col["epoch"], col["val_macro_f1"], label="validation macro-F1")
    r.axvline(col["epoch"][best], color="gray", linestyle=":")
    r.set_xlabel("epoch")
    r.set_ylabel("implied width class")
    r.legend()
    fig.suptitle(a.title or a.curve)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
