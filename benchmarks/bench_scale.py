"""How one simulated training step's cost grows with the cluster, from 4K chips up (issue 23).

    python benchmarks/bench_scale.py                      # every family and workload (tens of minutes)
    python benchmarks/bench_scale.py --family torus --workload switch-base-128 --max-chips 16384

Each point runs in a fresh process with one BLAS thread (as the issue measured) and prints the wall time of the
`simulate` call (imports and config loading excluded), the process's peak resident memory, and, per family and
workload, the exponent b of time ~ chips^b fitted over the points: the goal is b <= 1 and under 1 s and 1 GB at
65,536 chips. A point over --timeout seconds is cut and shown as such; a refused size shows pathsim's message.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

# (family, chips) -> cluster spec: TPU v5p tori grown a dimension at a time, DGX H100 fat trees of more nodes
# (three tiers past one pod's 3,072 GPUs, as Llama 3's cluster).
TORUS_DIMS = {4096: [16, 16, 16], 8192: [16, 16, 32], 16384: [16, 32, 32], 32768: [32, 32, 32], 65536: [32, 32, 64],
              131072: [32, 64, 64]}
FAT_TREE_NODES = {4096: 512, 8192: 1024, 16384: 2048, 32768: 4096, 65536: 8192, 98304: 12288}
WORKLOADS = ("switch-base-128", "pathways-multitask", "deepseek-v3")


def cluster(family: str, chips: int) -> dict:
    if family == "torus":
        return {"preset": "tpu-v5p-16x16x16", "name": f"tpu-v5p-{chips}", "topology": {"dims": TORUS_DIMS[chips]}}
    return {"preset": "llama3-h100-16k", "name": f"h100-{chips}", "topology": {"nodes": FAT_TREE_NODES[chips]}}


CHILD = r"""
import json, resource, sys, time
import pathsim
spec = json.loads(sys.argv[1])
grown = spec["cluster"]
config = pathsim.load_cluster(grown["preset"]).model_dump(mode="json", exclude_none=True)
config["name"] = grown["name"]
config["topology"].update(grown["topology"])
try:
    cluster = pathsim.load_cluster(config)
except pathsim.PathsimConfigError as exc:
    print(json.dumps({"refused": exc.one_line().splitlines()[0]}))
    sys.exit(0)
workload = pathsim.load_workload(spec["workload"])
start = time.perf_counter()
try:
    result = pathsim.simulate(cluster, workload, steps=1)
    answer = {"seconds": time.perf_counter() - start, "step_s": result.step_time.mean_s}
except pathsim.PathsimConfigError as exc:
    answer = {"refused": exc.one_line().splitlines()[0]}
answer["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(answer))
"""


def point(family: str, chips: int, workload: str, timeout: float) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    spec = json.dumps({"cluster": cluster(family, chips), "workload": workload})
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, spec], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"timeout": timeout}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:160]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=("torus", "fat_tree"), action="append")
    parser.add_argument("--workload", choices=WORKLOADS, action="append")
    parser.add_argument("--max-chips", type=int, default=131072)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per point (default 300)")
    args = parser.parse_args()
    for family in args.family or ("torus", "fat_tree"):
        sizes = [c for c in (TORUS_DIMS if family == "torus" else FAT_TREE_NODES) if c <= args.max_chips]
        for workload in args.workload or WORKLOADS:
            timed = []
            for chips in sizes:
                answer = point(family, chips, workload, args.timeout)
                if "seconds" in answer:
                    timed.append((chips, answer["seconds"]))
                    shown = f"{answer['seconds']:8.2f} s  {answer['peak_mb']:8.0f} MB peak"
                else:
                    shown = next(f"{k}: {v}" for k, v in answer.items() if k != "peak_mb")
                print(f"{family:8s} {workload:20s} {chips:7d} chips  {shown}", flush=True)
            if len(timed) >= 2:
                chips, seconds = np.log([c for c, _ in timed]), np.log([s for _, s in timed])
                slope = np.polyfit(chips, seconds, 1)[0]
                print(f"{family:8s} {workload:20s} time ~ chips^{slope:.2f} over {timed[0][0]}-{timed[-1][0]} chips", flush=True)


if __name__ == "__main__":
    main()
