#!/usr/bin/env python3
"""Plots a µP learning-rate sweep (`dit mup lr-sweep`): final training loss against learning
rate, one line per width, one panel per parametrization. Under µP the minimum stays at the same
learning rate as the width grows; under SP it moves.

usage: scripts/plot_lr_sweep.py LR_SWEEP.csv OUT.png
Runs with Debian's python3-matplotlib (/usr/bin/python3).
"""
import csv
import math
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plotting import pyplot  # noqa: E402  (scripts/plotting.py)

plt = pyplot()


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    source, target = sys.argv[1], sys.argv[2]
    curves = defaultdict(lambda: defaultdict(list))  # param -> width -> [(lr, loss)]
    with open(source) as f:
        for number, row in enumerate(csv.DictReader(f), 2):
            try:
                loss = float(row["loss"])
                curves[row["parametrization"]][int(row["width"])].append((float(row["lr"]), loss))
            except (KeyError, ValueError) as e:
                sys.exit(f"{source}:{number}: not an lr-sweep row ({e})")
    if not curves:
        sys.exit(f"{source}: no rows")
    parametrizations = sorted(curves, key=lambda p: p != "mup")
    fig, axes = plt.subplots(1, len(parametrizations), squeeze=False, sharey=True,
                             figsize=(4.5 * len(parametrizations), 3.6))
    for ax, p in zip(axes[0], parametrizations):
        widths = sorted(curves[p])
        for k, width in enumerate(widths):
            points = sorted((lr, loss) for lr, loss in curves[p][width] if not math.isnan(loss))
            if not points:
                continue
            color = plt.cm.plasma(k / max(1, len(widths) - 1) * 0.85)
            ax.plot([lr for lr, _ in points], [loss for _, loss in points], marker="o", ms=3,
                    color=color, label=f"width {width}")
            best = min(points, key=lambda q: q[1])
            ax.plot([best[0]], [best[1]], marker="*", ms=11, color=color)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")  # a diverged width does not flatten the others
        ax.set_xlabel("learning rate")
        ax.set_title("µP" if p == "mup" else "standard parametrization")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("training loss (last fifth of the steps)")
    fig.tight_layout()
    fig.savefig(target, dpi=110)


if __name__ == "__main__":
    main()
