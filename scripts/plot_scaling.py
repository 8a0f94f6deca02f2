#!/usr/bin/env python3
"""Scaling plots of a `dit sweep` (results.csv): the final training loss and the FID against
compute, one marker series per value of a grid column, and a power-law fit over all finished
runs,
    y = a * C^-b          (--offset: y = a * C^-b + c, the irreducible part c fitted too),
printed with its R^2 (in y, not log y) and drawn on log-log axes, as the DiT paper's Figures 2
and 6 plot loss and FID against training or model Gflops.

usage: scripts/plot_scaling.py RESULTS.csv [--x training_flops|gmacs] [--group COLUMN]
                               [--offset] [--out-prefix PREFIX]
Writes PREFIX_loss.png and PREFIX_fid.png (default prefix: scaling, beside the CSV).
Runs with Debian's python3-matplotlib and python3-numpy (/usr/bin/python3).
"""
import argparse
import csv
import os
import sys

import numpy as np


def power_law_fit(x, y, offset):
    """(a, b, c, r2) of y = a x^-b + c by least squares in log space; c = 0 without offset, else
    the c in [0, min y) whose fit explains y best."""
    x, y = np.asarray(x, float), np.asarray(y, float)

    def fit(c):
        slope, intercept = np.polyfit(np.log(x), np.log(y - c), 1)
        a, b = np.exp(intercept), -slope
        predicted = a * x ** -b + c
        r2 = 1.0 - np.sum((y - predicted) ** 2) / np.sum((y - y.mean()) ** 2)
        return a, b, c, r2

    if not offset:
        return fit(0.0)
    candidates = np.linspace(0.0, y.min() * 0.999, 400)
    return max((fit(c) for c in candidates), key=lambda result: result[3])


def read_rows(path, x_column):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        sys.exit(f"{path}: no runs")
    for column in (x_column, "loss", "fid", "status"):
        if column not in rows[0]:
            sys.exit(f"{path}: no column '{column}' (is it a dit sweep results.csv?)")
    return [r for r in rows if r["status"] == "done" and r[x_column]]


def plot(rows, x_column, y_column, group, offset, target):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(float(r[x_column]), float(r[y_column]), r.get(group, "")) for r in rows if r.get(y_column)]
    if len(points) < 2:
        print(f"{y_column}: fewer than 2 finished runs with a value; no plot")
        return
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for value in sorted({p[2] for p in points}, key=lambda v: (len(v), v)):
        xs = [p[0] for p in points if p[2] == value]
        ys = [p[1] for p in points if p[2] == value]
        ax.scatter(xs, ys, label=f"{group} {value}" if group else None, s=36)
    x = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points])
    if len(points) >= 3:
        a, b, c, r2 = power_law_fit(x, y, offset)
        grid = np.geomspace(x.min(), x.max(), 100)
        label = f"{a:.3g} C^-{b:.3f}" + (f" + {c:.3g}" if offset else "") + f"  (R^2 {r2:.3f})"
        ax.plot(grid, a * grid ** -b + c, "k--", linewidth=1, label=label)
        print(f"{y_column} = {label}  over {len(points)} runs")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel({"training_flops": "training compute (FLOPs)", "gmacs": "model GMACs per image"}.get(x_column, x_column))
    ax.set_ylabel({"loss": "training loss", "fid": "FID"}.get(y_column, y_column))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(target, dpi=120)
    print(f"wrote {target}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results")
    parser.add_argument("--x", default="training_flops", choices=["training_flops", "gmacs"])
    parser.add_argument("--group", default="", help="grid column for the marker series (default: the last grid column)")
    parser.add_argument("--offset", action="store_true", help="fit y = a C^-b + c")
    parser.add_argument("--out-prefix", default="")
    args = parser.parse_args()
    rows = read_rows(args.results, args.x)
    group = args.group
    if not group:
        with open(args.results) as f:
            header = next(csv.reader(f))
        grid_columns = header[1:header.index("status")]
        group = grid_columns[-1] if grid_columns else ""
    prefix = args.out_prefix or os.path.join(os.path.dirname(os.path.abspath(args.results)), "scaling")
    for y_column in ("loss", "fid"):
        plot(rows, args.x, y_column, group, args.offset, f"{prefix}_{y_column}.png")


if __name__ == "__main__":
    main()
