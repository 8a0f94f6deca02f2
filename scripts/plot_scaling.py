#!/usr/bin/env python3
"""Scaling plots of a `dit sweep` (results.csv): the final training loss and the FID against
compute, one marker series per value of a grid column, and a power-law fit over the finished
runs,
    y = a * C^-b          (--offset: y = a * C^-b + c, the irreducible part c fitted too),
drawn on log-log axes, as the DiT paper's Figures 2 and 6 plot loss and FID against training or
model Gflops.

One objective fits every parameter: the sum of squared log residuals,
    S = sum_i (log y_i - log(a C_i^-b + c))^2,
as Chinchilla's approach 3 (which uses a Huber loss on the same residuals). Without --offset that
is linear least squares of log y on log C. With --offset, c is profiled: for each c on a fine grid
in [0, min y), a and b minimise S (Levenberg-Marquardt from the fit of log(y - c)), and the c of
the lowest S wins. The printed R^2 is that of log y: 1 - S / sum (log y - mean log y)^2.

Uncertainty is printed with every fit. Without --offset: b's 95% interval from the regression.
With --offset: the profile interval, every c whose best S is within the F bound of the lowest,
    S(c) <= S_min * (1 + F(1, n-3; 0.95) / (n-3)),
and the range of b over those c (Bates and Watts' profile region). A wide range means the runs do
not identify the parameters, and the script says so.

--frontier fits only the compute-optimal frontier: the runs whose y is lower than that of every
run at smaller or equal compute. The fit there keeps b >= 0, so the curve never rises.

usage: scripts/plot_scaling.py RESULTS.csv [--x training_flops|gmacs] [--group COLUMN]
                               [--offset] [--frontier] [--out-prefix PREFIX]
Writes PREFIX_loss.png and PREFIX_fid.png (default prefix: scaling, beside the CSV).
Runs with Debian's python3-matplotlib and python3-numpy (/usr/bin/python3).
"""
import argparse
import csv
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plotting import pyplot, require  # noqa: E402  (scripts/plotting.py)

(np,) = require("numpy")
plt = pyplot()

# Student's t, 97.5% quantile, for 1..30 degrees of freedom (two-sided 95%); F(1, df) = t^2.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


def t975(df):
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964  # Cornish-Fisher's first correction to the normal quantile: within 0.001 above 30
    return z + (z ** 3 + z) / (4 * df)


# A b range wider than this fraction of b (+-10%) is reported as not identified.
WIDE_B = 0.2


class PowerLaw:
    """y = a x^-b + c, fitted with the sum of squared log residuals `objective`."""

    def __init__(self, a, b, c, objective, r2):
        self.a, self.b, self.c, self.objective, self.r2 = a, b, c, objective, r2

    def __call__(self, x):
        return self.a * np.asarray(x, float) ** -self.b + self.c

    def label(self, offset):
        r2 = "n/a" if not math.isfinite(self.r2) else f"{self.r2:.3f}"
        exponent = -self.b if abs(self.b) >= 5e-4 else 0.0  # no "-0.000"
        return f"{self.a:.3g} C^{exponent:+.3f}" + (f" + {self.c:.3g}" if offset else "") + f"  (R^2 {r2})"


def fit_at_c(u, ly, c, nonneg_b):
    """(alpha, b, objective) minimising sum (ly - log(exp(alpha - b u) + c))^2 at fixed c, where u
    is log x centred (so alpha and b are nearly uncorrelated). Levenberg-Marquardt from the linear
    fit of log(y - c), which is exact for c = 0."""
    y = np.exp(ly)

    def objective(theta):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            m = np.exp(np.minimum(theta[0] - theta[1] * u, 700.0))
            r = ly - np.log(m + c)
        return float(np.sum(r * r)), r, m

    slope, alpha = np.polyfit(u, np.log(y - c), 1)  # u has mean 0: alpha is the mean of log(y - c)
    theta = np.array([alpha, -slope])
    if nonneg_b and theta[1] < 0:
        theta[1] = 0.0
        theta[0] = float(np.mean(np.log(y - c)))
    s, r, m = objective(theta)
    if c == 0.0:
        return theta[0], theta[1], s
    damping = 1e-3
    for _ in range(200):
        w = m / (m + c)  # d log(m + c) / d alpha
        jac = np.stack([w, -u * w], axis=1)  # [n, 2]: derivatives of the model in alpha and b
        jtj, jtr = jac.T @ jac, jac.T @ r
        improved = False
        while damping < 1e12:
            step = np.linalg.solve(jtj + damping * np.diag(np.diag(jtj) + 1e-12), jtr)
            trial = theta + step
            if nonneg_b:
                trial[1] = max(trial[1], 0.0)
            s_trial, r_trial, m_trial = objective(trial)
            if math.isfinite(s_trial) and s_trial < s:
                converged = s - s_trial <= 1e-14 * max(s, 1e-300)
                theta, s, r, m = trial, s_trial, r_trial, m_trial
                damping = max(damping / 3, 1e-12)
                improved = True
                break
            damping *= 4
        if not improved or converged:
            break
    return theta[0], theta[1], s


def power_law_fit(x, y, offset, nonneg_b=False):
    """The fit of y = a x^-b (+ c with offset, 0 <= c < min y) minimising the sum of squared log
    residuals, and with offset the profile of that objective over the c grid: (fit, profile),
    profile a list of (c, b, objective) with finite objectives. None where no c gives a finite
    objective."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    mu = float(np.mean(np.log(x)))
    u, ly = np.log(x) - mu, np.log(y)
    total = float(np.sum((ly - ly.mean()) ** 2))

    def make(c, alpha, b, s):
        with np.errstate(over="ignore"):  # an absurd fit gives a = inf, not an exception
            a = float(np.exp(alpha + b * mu))
        return PowerLaw(a, b, c, s, 1.0 - s / total if total > 0 else float("nan"))

    if not offset:
        alpha, b, s = fit_at_c(u, ly, 0.0, nonneg_b)
        return make(0.0, alpha, b, s), []
    # c in [0, min y): 400 steps, the last one 1/400 of min y below it (log(y - c) must exist).
    grid = y.min() * np.arange(400) / 400.0
    profile = []
    for c in grid:
        alpha, b, s = fit_at_c(u, ly, float(c), nonneg_b)
        if math.isfinite(s):  # a NaN objective never wins the minimum
            profile.append((float(c), float(b), s, alpha))
    if not profile:
        return None, []
    best = min(range(len(profile)), key=lambda k: profile[k][2])
    # Refine c between the grid neighbours of the best by golden-section search.
    lo = profile[max(best - 1, 0)][0]
    hi = profile[best + 1][0] if best + 1 < len(profile) else min(y.min() * 0.9999, 2 * profile[best][0] - lo)
    c_best, b_best, s_best, alpha_best = profile[best]
    golden = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        if hi - lo <= 1e-12 * max(hi, 1e-300):
            break
        c1, c2 = hi - golden * (hi - lo), lo + golden * (hi - lo)
        f1, f2 = fit_at_c(u, ly, c1, nonneg_b), fit_at_c(u, ly, c2, nonneg_b)
        for c, (alpha, b, s) in ((c1, f1), (c2, f2)):
            if math.isfinite(s) and s < s_best:
                c_best, b_best, s_best, alpha_best = c, b, s, alpha
        if not math.isfinite(f2[2]) or (math.isfinite(f1[2]) and f1[2] < f2[2]):
            hi = c2
        else:
            lo = c1
    return make(c_best, alpha_best, b_best, s_best), [(c, b, s) for c, b, s, _ in profile]


def report_uncertainty(x, y, fit, profile, offset):
    """Lines saying how well the runs pin the parameters down, warnings included, and the 95%
    ranges in a few words for the plot's legend ("" where there are none)."""
    n = len(x)
    if not offset:
        if n < 3:
            return ["  b: no interval from 2 runs (no residual degrees of freedom)"], ""
        u = np.log(np.asarray(x, float))
        sxx = float(np.sum((u - u.mean()) ** 2))
        se = math.sqrt(fit.objective / (n - 2) / sxx)
        half = t975(n - 2) * se
        return ([f"  b: 95% interval [{fit.b - half:.3f}, {fit.b + half:.3f}] (t({n - 2}) = {t975(n - 2):.2f})"],
                f"95%: b {fit.b - half:.3f} to {fit.b + half:.3f}")
    if n <= 3:
        return [f"  no profile interval: {n} runs for 3 parameters (a, b, c) leave no degrees of freedom"], ""
    f = t975(n - 3) ** 2
    bound = fit.objective * (1 + f / (n - 3))
    inside = [(c, b) for c, b, s in profile if s <= bound] + [(fit.c, fit.b)]
    c_lo, c_hi = min(c for c, _ in inside), max(c for c, _ in inside)
    b_lo, b_hi = min(b for _, b in inside), max(b for _, b in inside)
    lines = [f"  profile over c (95%: objective <= {bound / max(fit.objective, 1e-300):.3f} x the best, "
             f"F(1, {n - 3}) = {f:.2f}): c in [{c_lo:.3g}, {c_hi:.3g}], b in [{b_lo:.3f}, {b_hi:.3f}]"]
    at_zero = c_lo <= 0.0
    at_top = c_hi >= float(np.min(y)) * (1 - 1.5 / 400)  # the last c of the grid
    if at_zero and at_top:
        lines.append("  WARNING: c is not identified: every floor from 0 to just below the lowest run's value "
                     "fits within the bound")
    elif at_zero and fit.c > 0:
        lines.append(f"  WARNING: the floor c = {fit.c:.3g} is not distinguishable from 0: no floor fits "
                     "within the bound")
    elif at_top:
        lines.append("  WARNING: c is not bounded above: floors up to the lowest run's value fit within "
                     "the bound")
    if b_hi - b_lo > WIDE_B * abs(fit.b):
        lines.append(f"  WARNING: b is not identified: every b from {b_lo:.3f} to {b_hi:.3f} fits within the "
                     f"bound (wider than +-{WIDE_B / 2:.0%} of {fit.b:.3f}); b and c trade off, so quote the "
                     f"range, not {fit.b:.3f}")
    return lines, f"95%: b {b_lo:.3f} to {b_hi:.3f}, c {c_lo:.3g} to {c_hi:.3g}"


def compute_frontier(points):
    """The points (x, y, ...) whose y is lower than every point's at smaller or equal x, by x."""
    frontier, lowest = [], math.inf
    for p in sorted(points, key=lambda p: (p[0], p[1])):
        if p[1] < lowest:  # the first of equal x is its lowest y; later ones are not lower
            frontier.append(p)
            lowest = p[1]
    return frontier


def read_rows(path, x_column):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        sys.exit(f"{path}: no runs")
    for column in (x_column, "loss", "fid", "status"):
        if column not in rows[0]:
            sys.exit(f"{path}: no column '{column}' (is it a dit sweep results.csv?)")
    return [r for r in rows if r["status"] == "done"]


def usable_points(rows, x_column, y_column, group):
    """(x, y, group value) of the rows with a value of y_column, dropping (and saying so) those with
    a non-finite or non-positive x or y, which have no place on log axes."""
    points, dropped, missing = [], [], 0
    for r in rows:
        if not (r.get(y_column) or "").strip():
            missing += 1
            continue
        try:
            x, y = float(r[x_column]), float(r[y_column])
        except (TypeError, ValueError):
            x = y = math.nan
        if math.isfinite(x) and math.isfinite(y) and x > 0 and y > 0:
            points.append((x, y, r.get(group, "")))
        else:
            dropped.append(r.get("run", "?"))
    if missing:
        print(f"{y_column}: {missing} finished run(s) have no value, left out")
    if dropped:
        print(f"{y_column}: dropped {len(dropped)} of {len(dropped) + len(points)} run(s) with a non-finite or "
              f"non-positive {x_column} or {y_column}: {', '.join(dropped)}")
    return points


def plot(rows, x_column, y_column, group, offset, frontier_only, target):
    points = usable_points(rows, x_column, y_column, group)
    if not points:
        print(f"{y_column}: no finished run with a usable value; no plot")
        return
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for value in sorted({p[2] for p in points}, key=lambda v: (len(v), v)):
        xs = [p[0] for p in points if p[2] == value]
        ys = [p[1] for p in points if p[2] == value]
        ax.scatter(xs, ys, label=f"{group} {value}" if group else None, s=36)
    fitted = points
    name = y_column
    if frontier_only:
        fitted = compute_frontier(points)
        name = f"{y_column} frontier"
        fx, fy = [p[0] for p in fitted], [p[1] for p in fitted]
        ax.step(fx, fy, where="post", color="0.35", linewidth=1, zorder=1)
        ax.scatter(fx, fy, s=110, facecolors="none", edgecolors="k", linewidths=1.2,
                   label=f"compute-optimal frontier ({len(fitted)} of {len(points)})")
        print(f"{name}: {len(fitted)} of {len(points)} runs: "
              + ", ".join(f"{x:.3g} {y:.4g}" for x, y, _ in fitted))
    x = np.array([p[0] for p in fitted])
    y = np.array([p[1] for p in fitted])
    needed = 3 if offset else 2
    if len(points) >= 2 and np.ptp(np.array([p[0] for p in points])) == 0:
        print(f"{y_column}: no fit: compute does not vary (all {len(points)} runs at {points[0][0]:.4g})")
    elif len(fitted) < needed:
        print(f"{name}: {len(fitted)} usable run(s)" + (" on the frontier" if frontier_only else "")
              + f", a fit needs {needed}"
              + (" (--offset fits 3 parameters)" if offset else "") + "; no fit")
    else:
        fit, profile = power_law_fit(x, y, offset, nonneg_b=frontier_only)
        grid = np.geomspace(x.min(), x.max(), 100)
        with np.errstate(over="ignore", invalid="ignore"):
            curve = fit(grid) if fit is not None else None
        if curve is None or not np.all(np.isfinite(curve)):
            print(f"{name}: no fit: the objective or the fitted curve is not finite")
        else:
            # The frontier's curve keeps b >= 0 (and a > 0, c >= 0): it cannot rise.
            assert not frontier_only or np.all(np.diff(curve) <= 1e-12 * curve[:-1]), "frontier fit rises"
            label = fit.label(offset)
            print(f"{name} = {label}  over {len(fitted)} runs (R^2 of log y, the fitted objective)")
            lines, ranges = report_uncertainty(x, y, fit, profile, offset)
            for line in lines:
                print(line)
            ax.plot(grid, curve, "r--" if frontier_only else "k--", linewidth=1,
                    label=("frontier: " if frontier_only else "") + label + (f"\n{ranges}" if ranges else ""))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel({"training_flops": "training compute (FLOPs)", "gmacs": "model GMACs per image"}.get(x_column, x_column))
    ax.set_ylabel({"loss": "training loss", "fid": "FID"}.get(y_column, y_column))
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(target, dpi=120)
    plt.close(fig)
    print(f"wrote {target}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results")
    parser.add_argument("--x", default="training_flops", choices=["training_flops", "gmacs"])
    parser.add_argument("--group", default="", help="grid column for the marker series (default: the last grid column)")
    parser.add_argument("--offset", action="store_true", help="fit y = a C^-b + c")
    parser.add_argument("--frontier", action="store_true",
                        help="fit only the compute-optimal frontier (runs lower than every run of less compute)")
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
        plot(rows, args.x, y_column, group, args.offset, args.frontier, f"{prefix}_{y_column}.png")


if __name__ == "__main__":
    main()
