#!/usr/bin/env python3
"""Compares the operator counts of two steps (`dit bench --count-ops FILE`,
`bench_reference.py --count-ops FILE`): the totals, and the operators whose counts differ most.

  /usr/bin/python3 scripts/compare_ops.py ditlab.json pytorch.json [--top 20] [--names A B]
"""
import argparse, json, os


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs=2, metavar="FILE")
    ap.add_argument("--top", type=int, default=20, help="operators listed (default 20)")
    ap.add_argument("--names", nargs=2, metavar="NAME", help="column titles (default: the file names)")
    a = ap.parse_args()
    counts = []
    for path in a.files:
        with open(path) as f:
            counts.append(json.load(f))
    left, right = a.names or (os.path.splitext(os.path.basename(p))[0] for p in a.files)
    names = set(counts[0]) | set(counts[1])
    rows = sorted(names, key=lambda n: (-abs(counts[0].get(n, 0) - counts[1].get(n, 0)), n))
    width = max([len(n) for n in rows[:a.top]] + [len("total")])
    print(f"{'operator':<{width}} {left:>12} {right:>12} {'difference':>11}")
    for n in rows[:a.top]:
        l, r = counts[0].get(n, 0), counts[1].get(n, 0)
        if l == r:
            break
        print(f"{n:<{width}} {l:>12} {r:>12} {l - r:>+11}")
    l, r = sum(counts[0].values()), sum(counts[1].values())
    print(f"{'total':<{width}} {l:>12} {r:>12} {l - r:>+11}")


if __name__ == "__main__":
    main()
