#!/usr/bin/env python3
"""Plots a µP coordinate check (`dit mup coord-check`): mean |activation| against width, one
panel per layer kind and parametrization, one line per training step. Flat lines: the
activations keep their size as the model widens (µP); rising lines: they grow (SP).

usage: scripts/plot_coord_check.py COORD_CHECK.csv OUT.png
Runs with Debian's python3-matplotlib (/usr/bin/python3).
"""
import csv
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
    series = defaultdict(lambda: defaultdict(list))  # (param, kind) -> step -> [(width, value)]
    with open(source) as f:
        for number, row in enumerate(csv.DictReader(f), 2):
            try:
                key = (row["parametrization"], row["kind"])
                series[key][int(row["step"])].append((int(row["width"]), float(row["mean_abs"])))
            except (KeyError, ValueError) as e:
                sys.exit(f"{source}:{number}: not a coord-check row ({e})")
    if not series:
        sys.exit(f"{source}: no rows")
    parametrizations = sorted({p for p, _ in series}, key=lambda p: p != "mup")
    kinds = sorted({k for _, k in series})
    fig, axes = plt.subplots(len(parametrizations), len(kinds), squeeze=False,
                             figsize=(2.6 * len(kinds), 2.6 * len(parametrizations)), sharex=True)
    for i, p in enumerate(parametrizations):
        for j, kind in enumerate(kinds):
            ax = axes[i][j]
            steps = series.get((p, kind), {})
            values = [v for points in steps.values() for _, v in points if v > 0]
            for step in sorted(steps):
                points = sorted(steps[step])
                ax.plot([w for w, _ in points], [v for _, v in points], marker="o", ms=3,
                        color=plt.cm.viridis(step / max(1, max(steps))), label=f"step {step}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            if values and max(values) / min(values) < 4:
                # At least a factor 4 on the axis, so flat lines look flat rather than noisy.
                centre = (max(values) * min(values)) ** 0.5
                ax.set_ylim(centre / 2, centre * 2)
            ax.set_title(f"{'µP' if p == 'mup' else 'SP'}: {kind}", fontsize=9)
            if i == len(parametrizations) - 1:
                ax.set_xlabel("width")
            if j == 0:
                ax.set_ylabel("mean |activation|")
            ax.tick_params(labelsize=7)
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(target, dpi=110)


if __name__ == "__main__":
    main()
