#!/usr/bin/env python3
"""Plots a run's training curves from <run_dir>/metrics.jsonl into a PNG; given several runs (an
ablation, a sweep), one curve per run of each key. With --evals, plots the evaluations of
<run_dir>/evals.jsonl against the step instead (dit eval --checkpoint STEP for each kept
checkpoint, then dit eval for the final weights): the FID over training.

usage: scripts/plot_metrics.py RUN_DIR [RUN_DIR ...] [--out FILE.png] [--keys loss,mse,vb]
       scripts/plot_metrics.py RUN_DIR [RUN_DIR ...] --evals [--keys fid] [--out FILE.png]
A null or non-finite value leaves out its point; a key with no finite value at all is an error
naming the key and the file. A cut last line (a run killed while writing) is skipped with a
warning.
Runs with Debian's python3-matplotlib (/usr/bin/python3).
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plotting import pyplot  # noqa: E402  (scripts/plotting.py)

plt = pyplot()


def read_metrics(path):
    """The records of a JSON-lines file. A malformed last line is what a run killed while writing
    leaves (`{"step": 450, "lo`): skipped with a warning. A malformed line before it is an error."""
    with open(path) as f:
        lines = [(number, line.strip()) for number, line in enumerate(f, 1) if line.strip()]
    records = []
    for k, (number, line) in enumerate(lines):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"a JSON {type(record).__name__}, not an object")
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            if k == len(lines) - 1:
                print(f"warning: {path}:{number}: skipping the last line, which is not a JSON object "
                      f"(cut off when the run was killed?): {e}", file=sys.stderr)
                continue
            sys.exit(f"{path}:{number}: not a JSON object ({e})")
        records.append(record)
    if not records:
        sys.exit(f"{path}: no records")
    return records


def finite(value):
    """Whether a metric's value can be plotted: a finite number (null, NaN and text cannot)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# What makes two evaluations comparable: the same feature network, sample count and sampler.
SETTINGS = ("weights", "features", "num_samples", "reference_images", "sampler", "sample_steps", "cfg_scale")


def eval_series(path, key):
    """(step, value) of the evaluations made with the settings of the newest one, one per step
    (the newest at that step), in step order; and those settings."""
    records = read_metrics(path)
    latest = records[-1]
    settings = {k: latest.get(k) for k in SETTINGS}
    by_step = {}
    for r in records:  # a null (or NaN) value leaves its point out, not the series
        if all(r.get(k) == v for k, v in settings.items()) and finite(r.get(key)) and "step" in r:
            by_step[r["step"]] = r[key]
    if not by_step:
        available = [k for k, v in latest.items() if finite(v) and k not in SETTINGS and k != "step"]
        sys.exit(f"{path}: no finite value of '{key}' in the evaluations with the newest one's settings "
                 f"(keys with values: {', '.join(available) or 'none'})")
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
            points = [(r["step"], r[key]) for r in records if finite(r.get(key)) and "step" in r]
            if not points:
                sys.exit(f"{path}: no finite value of '{key}' (available: {', '.join(records[0])})")
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
