"""This checkout's step cost against an earlier revision's, on the same machine in the same run (issue 23: a
512-chip step must not get slower while large ones get faster).

    python benchmarks/bench_against.py e59ea60            # against that commit (any revision git knows)
    python benchmarks/bench_against.py HEAD~3 --repeats 7

Each revision is checked out into a temporary git worktree and timed in its own fresh processes, alternating, with
one BLAS thread; each figure is the best of --repeats warm steps (the least disturbed by other load), and the table
prints old, new and new/old per workload. The placement is fixed (round_robin) so a change of default placement
does not pass for a change of cost.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = [("tpu-v4-8x8x8", "switch-base-128"), ("tpu-v4-8x8x8", "pathways-multitask"), ("tpu-v4-8x8x8", "bench-2048E"),
         ("dgx-h100-32", "mixtral-8x7b"), ("tpu-v4-16x16x16", "switch-base-128")]

CHILD = r"""
import sys, time
sys.path.insert(0, sys.argv[1] + "/benchmarks")
import pathsim
from bench_step import WORKLOAD
cluster = pathsim.load_cluster(sys.argv[2])
workload = WORKLOAD if sys.argv[3] == "bench-2048E" else pathsim.load_workload(sys.argv[3])
pathsim.simulate(cluster, workload, placement="round_robin")
best = float("inf")
for _ in range(int(sys.argv[4])):
    start = time.perf_counter()
    pathsim.simulate(cluster, workload, placement="round_robin")
    best = min(best, time.perf_counter() - start)
print(best)
"""


def timed(tree: Path, cluster: str, workload: str, repeats: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(tree), cluster, workload, str(repeats)], env=env,
                          capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revision", help="the revision to compare with (a commit, tag or HEAD~N)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(old), args.revision], check=True)
        try:
            print(f"{'cluster':18s} {'workload':20s} {'old s':>8s} {'new s':>8s} {'new/old':>8s}")
            for cluster, workload in CASES:
                before = timed(old, cluster, workload, args.repeats)
                after = timed(ROOT, cluster, workload, args.repeats)
                print(f"{cluster:18s} {workload:20s} {before:8.3f} {after:8.3f} {after / before:8.2f}", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)


if __name__ == "__main__":
    main()
