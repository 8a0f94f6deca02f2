#!/usr/bin/env python3
"""Plots a run's training curves from <run_dir>/metrics.jsonl into a PNG; given several runs (an
ablation, a sweep), one curve per run of each key. With --evals, plots the evaluations of
<run_dir>/evals.jsonl against the step instead (dit eval --checkpoint STEP for each kept
checkpoint, then dit eval for the final weights): the FID over training.

usage: scripts/plot_metrics.py RUN_DIR [RUN_DIR ...] [--out FILE.png] [--keys loss,mse,vb]
       scripts/plot_metrics.py RUN_DIR [RUN_DIR ...] --evals [--keys fid] [--out FILE.png]
Runs with Debian's python3-matplotlib (/usr/bin/python3).
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt


def read_metrics(path):
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{number}: not a JSON object ({e})")
    if not records:
        sys.exit(f"{path}: no records")
    return records


# What makes two evaluations comparable: the same feature network, sample count and sampler.
SETTINGS = ("weights", "features", "num_samples", "reference_images", "sampler", "sample_steps", "cfg_scale")


def eval_series(path, key):
    """(step, value) of the evaluations made with the settings of the newest one, one per step
    (the newest at that step), in step order; and those settings."""
    records = read_metrics(path)
    latest = records[-1]
    settings = {k: latest.get(k) for k in SETTINGS}
    by_step = {}
    for r in records:
        if all(r.get(k) == v for k, v in settings.items()) and r.get(key) is not None:
            by_step[r["step"]] = r[key]
    if key not in latest:
        sys.exit(f"{path}: no values for '{key}' (available: {', '.join(latest)})")
    return sorted(by_step.items()), settings


def plot_evals(args, keys):
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for run_dir in args.run_dirs:
        path = os.path.join(run_dir, "evals.jsonl")
        if not os.path.exists(path):
            sys.exit(f"{path}: not found (run dit eval --run-dir {run_dir} [--checkpoint STEP] first)")
        name = os.path.basename(os.path.normpath(run_dir))
        for key in keys:
            points, settings = eval_series(path, key)
            label = f"{name} {key}" if len(args.run_dirs) > 1 or len(keys) > 1 else key
            ax.plot(*zip(*points), marker="o", label=label)
            print(f"{name}: {key} at steps " + ", ".join(f"{step} {value:.4g}" for step, value in points))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(", ".join(keys))
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title("{features}, {num_samples} samples, {sampler} {sample_steps} steps, guidance {cfg_scale}"
                 .format(**settings), fontsize=9)
    fig.tight_layout()
    out = args.out or os.path.join(args.run_dirs[0], keys[0] + ".png")
    fig.savefig(out)
    print(f"wrote {out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", metavar="run_dir")
    parser.add_argument("--out", default=None, help="PNG path (default RUN_DIR/loss.png, of the first run)")
    parser.add_argument("--keys", default=None,
                        help="comma-separated metrics (default loss,mse,vb; several runs: loss; --evals: fid)")
    parser.add_argument("--evals", action="store_true", help="plot evals.jsonl (FID ... against the step)")
    args = parser.parse_args()
    if args.evals:
        plot_evals(args, [k for k in (args.keys or "fid").split(",") if k])
        return
    several = len(args.run_dirs) > 1
    keys = [k for k in (args.keys or ("loss" if several else "loss,mse,vb")).split(",") if k]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for run_dir in args.run_dirs:
        path = os.path.join(run_dir, "metrics.jsonl")
        if not os.path.exists(path):
            sys.exit(f"{path}: not found (is {run_dir} a ditlab run directory?)")
        records = read_metrics(path)
        name = os.path.basename(os.path.normpath(run_dir))
        for key in keys:
            points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            if not points:
                sys.exit(f"{path}: no values for '{key}' (available: {', '.join(records[0])})")
            label = (f"{name} {key}" if len(keys) > 1 else name) if several else key
            ax.plot(*zip(*points), label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("per-sample loss (window mean)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if not several:
        ax.set_title(os.path.basename(os.path.normpath(args.run_dirs[0])))
    fig.tight_layout()
    out = args.out or os.path.join(args.run_dirs[0], "loss.png")
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
