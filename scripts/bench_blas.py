#!/usr/bin/env python3
"""Matrix-product throughput of LibTorch's BLAS on this machine, per OpenBLAS core type.

usage: /usr/bin/python3 scripts/bench_blas.py [--cores auto,Prescott,Haswell,SkylakeX]
Each core type runs in a fresh process (OpenBLAS picks its kernels when it loads).
The shape is a DiT-S MLP product at batch 32 (2048 tokens x 192 -> 768).
"""
import argparse
import os
import subprocess
import sys

CHILD = r"""
import time, torch
torch.manual_seed(0)
for threads in (1, 2):
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 192), torch.randn(192, 768)
    for _ in range(5):
        a @ b
    n = 100
    t0 = time.perf_counter()
    for _ in range(n):
        a @ b
    dt = time.perf_counter() - t0
    err = float(((a @ b).double() - a.double() @ b.double()).abs().max())
    print(f"  {threads} thread(s): {2 * 2048 * 192 * 768 * n / dt / 1e9:7.1f} GFLOP/s  (max error vs float64 {err:.1e})")
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", default="auto,Prescott,Haswell,SkylakeX")
    args = parser.parse_args()
    for core in args.cores.split(","):
        env = dict(os.environ)
        env.pop("OPENBLAS_CORETYPE", None)
        if core != "auto":
            env["OPENBLAS_CORETYPE"] = core
        env["OPENBLAS_VERBOSE"] = "2"
        out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True)
        chosen = [l for l in (out.stdout + out.stderr).splitlines() if l.startswith("Core:")]
        print(f"OPENBLAS_CORETYPE={core}  ({chosen[0] if chosen else 'core not reported'})")
        print("\n".join(l for l in out.stdout.splitlines() if not l.startswith("Core:")))
        if out.returncode != 0:
            print(out.stderr)


if __name__ == "__main__":
    main()
