"""Beyond one pod: the figures issue 9 asks for, from the presets, in one run.

1. PaLM 540B on its published cluster (two 3072-chip TPU v4 pods over the DCN):
   step time, tokens/s, MFU and HFU, next to the paper's 238.3K tokens/s, 46.2 %
   and 57.8 %.
2. An MoE preset scaled from 1 to 2 to 4 TPU v4 8x8x8 slices. Weak scaling
   keeps each slice's batch (tokens per step grow with the slices, as a
   multislice job adds data replicas); strong scaling keeps the global batch.
   Efficiency = tokens/s on S slices / (S x tokens/s on one slice).
3. Expert parallelism inside each slice against across two slices joined by
   PaLM's DCN, over a sweep of batch sizes: across, the all-to-alls cross the
   DCN; inside, every expert's replica gradients do.
4. The DCN term of the hierarchical all-reduce: DCN bandwidth -> infinity
   against one slice of twice the size, and halved.
5. Shared pods: the shared-pod presets, each job's step time alone and
   together, and what the isolation of OCS slices buys.

    python benchmarks/multi_slice_scaling.py            # about a minute on 2 cores
    python benchmarks/multi_slice_scaling.py --moe glam
"""

from __future__ import annotations

import argparse
import time

import pathsim
from pathsim.collectives import run_collective
from pathsim.units import format_seconds

SLICED = {1: "tpu-v4-8x8x8", 2: "tpu-v4-8x8x8-2slices", 4: "tpu-v4-8x8x8-4slices"}


def _row(label: str, result) -> str:
    b = result.breakdown
    return (f"| {label} | {result.chips} | {format_seconds(result.step_time.mean_s)} | {result.tokens_per_s:,.0f} | "
            f"{100 * result.mfu:.1f} % | {100 * result.hfu:.1f} % | {format_seconds(b.all_to_all_s)} | "
            f"{format_seconds(b.grad_sync_exposed_s)} |")


HEADER = ("| run | chips | step | tokens/s | MFU | HFU | all-to-all | grad sync exposed |\n"
          "|---|---|---|---|---|---|---|---|")


def palm() -> None:
    start = time.perf_counter()
    result = pathsim.simulate("tpu-v4-palm-2pods", "palm-540b")
    wall = time.perf_counter() - start
    print("## PaLM 540B on tpu-v4-palm-2pods (published: 238.3K tokens/s, MFU 46.2 %, HFU 57.8 %)\n")
    print(HEADER)
    print(_row("palm-540b", result))
    print(f"\ntokens/s against the paper: {100 * (result.tokens_per_s / 238.3e3 - 1):+.1f} %; "
          f"simulated in {wall:.2f} s wall\n")


def scaling(moe: str) -> None:
    workload = pathsim.load_workload(moe)
    base_tokens = workload.training.tokens_per_step
    for mode in ("weak", "strong"):
        print(f"## {moe} on 1, 2, 4 TPU v4 8x8x8 slices, {mode} scaling\n")
        print(HEADER.replace("| run |", "| slices |").replace("exposed |\n", "exposed | efficiency |\n") + "---|")
        one = None
        for slices, cluster in SLICED.items():
            tokens = base_tokens * slices if mode == "weak" else base_tokens
            variant = workload.model_dump(exclude={"base_dir"})
            variant["training"]["tokens_per_step"] = tokens
            result = pathsim.simulate(cluster, variant, steps=2)
            one = one or result.tokens_per_s
            print(_row(str(slices), result) + f" {100 * result.tokens_per_s / (slices * one):.1f} % |")
        print()


def cross_slice_experts() -> None:
    """GShard 600B (2048 experts) on two 8x8x8 slices with PaLM's DCN, expert groups of one slice or of both.

    Inside a slice every expert has a copy per slice whose gradients cross the DCN; across the slices the
    all-to-alls do. Which costs more depends on the batch: the sweep finds the crossover."""
    print("## Expert parallelism inside a slice against across slices (GShard 600B, tpu-v4-8x8x8-2slices, PaLM's DCN)\n")
    print(HEADER)
    workload = pathsim.load_workload("gshard-600b").model_dump(exclude={"base_dir"})
    base = workload["training"]["tokens_per_step"]
    for multiple in (1, 4, 16):
        workload["training"]["tokens_per_step"] = base * multiple
        results = {}
        for where, expert in (("in a slice", "auto"), ("across slices", 1024)):
            workload["parallelism"]["expert"] = expert
            results[where] = pathsim.simulate("tpu-v4-8x8x8-2slices", workload)
            print(_row(f"{base * multiple / 2**20:.0f}M tokens, expert groups of {results[where].parallelism['expert']} "
                       f"({where})", results[where]))
        inside, across = results["in a slice"], results["across slices"]
        print(f"| across / inside | | {across.step_time.mean_s / inside.step_time.mean_s:.2f}x | | | | "
              f"{across.breakdown.all_to_all_s / inside.breakdown.all_to_all_s:.1f}x | |")
    print()


def dcn_closed_form() -> None:
    import yaml
    from pathsim.presets import preset_path

    def cluster(slices: int, dims: list[int], dcn: float) -> dict:
        data = yaml.safe_load(preset_path("topologies", "tpu-v4-4x4x4").read_text())
        data["name"] = f"check-{slices}-{dcn:g}"
        data["links"]["ici"]["latency"] = 0.0
        data["links"]["dcn"] = {"bandwidth": dcn, "latency": 0.0, "source": "check"}
        data["topology"] = {"kind": "multi_slice", "slices": slices, "slice": dict(data["topology"], dims=dims),
                            "dcn": {"nic": "dcn"}}
        return data

    def dcn_s(result) -> float:
        return sum(p.time_s * p.repeat for p in result.phases if p.tier == "dcn")

    size = 1e9
    infinite = run_collective(cluster(2, [4, 4, 4], 1e18), "all_reduce", size)
    single = run_collective(cluster(1, [4, 4, 8], 1e18), "all_reduce", size)
    base = run_collective(cluster(2, [4, 4, 4], 6.6e9), "all_reduce", size)
    halved = run_collective(cluster(2, [4, 4, 4], 3.3e9), "all_reduce", size)
    print("## Hierarchical all-reduce of 1 GB, two 4x4x4 slices\n")
    print(f"- DCN -> infinity: {format_seconds(infinite.time_s)} against one 4x4x8 slice {format_seconds(single.time_s)} "
          f"({100 * (infinite.time_s / single.time_s - 1):+.2f} %)")
    print(f"- DCN term at 6.6 GB/s per host {format_seconds(dcn_s(base))}, at 3.3 GB/s {format_seconds(dcn_s(halved))} "
          f"(ratio {dcn_s(halved) / dcn_s(base):.6f})\n")


def shared_pods() -> None:
    print("## Shared pods (`pathsim share NAME`)\n")
    print("| shared pod | job | workload | step alone | step shared | slowdown | links shared |\n|---|---|---|---|---|---|---|")
    for name in ("two-jobs-own-slices-tpu-v4", "two-jobs-one-torus-tpu-v4", "two-moe-jobs-dgx-h100-128",
                 "two-moe-jobs-dgx-h100-128-4to1"):
        result = pathsim.simulate_shared(name)
        for job in result.jobs:
            print(f"| {name} | {job.name} | {job.workload} | {format_seconds(job.step_time_alone_s)} | "
                  f"{format_seconds(job.step_time_shared_s)} | {job.slowdown:.4f} | {job.shared_links} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moe", default="switch-base-128", help="MoE workload preset to scale over slices")
    args = parser.parse_args()
    palm()
    scaling(args.moe)
    cross_slice_experts()
    dcn_closed_form()
    shared_pods()


if __name__ == "__main__":
    main()
