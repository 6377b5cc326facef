"""Beyond one pod: the figures issue 9 asks for, from the presets, in one run.

1. PaLM 540B on its published cluster (two 3072-chip TPU v4 pods over the DCN):
   step time, tokens/s, MFU and HFU, next to the paper's 238.3K tokens/s, 46.2 %
   and 57.8 %.
2. An MoE preset scaled from 1 to 2 to 4 TPU v4 8x8x8 slices. Weak scaling
   keeps each slice's batch (tokens per step grow with the slices, as a
   multislice job adds data replicas); strong scaling keeps the global batch.
   Efficiency = tokens/s on S slices / (S x tokens/s on one slice).
3. Expert parallelism inside each pod against across the two pods, on the
   PaLM cluster: the all-to-alls then cross the DCN.
4. The DCN term of the hierarchical all-reduce: DCN bandwidth -> infinity
   against one slice of twice the size, and halved.

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
    print("## Expert parallelism inside a pod against across the two pods (tpu-v4-palm-2pods)\n")
    print(HEADER)
    workload = pathsim.load_workload("switch-base-128").model_dump(exclude={"base_dir"})
    workload["training"]["tokens_per_step"] = 6 * 2**20  # 1024 tokens per chip
    inside = pathsim.simulate("tpu-v4-palm-2pods", workload)
    workload["parallelism"]["expert"] = inside.parallelism["expert"] * 2
    across = pathsim.simulate("tpu-v4-palm-2pods", workload)
    print(_row(f"switch-base-128, expert groups of {inside.parallelism['expert']} (in a pod)", inside))
    print(_row(f"switch-base-128, expert groups of {across.parallelism['expert']} (across pods)", across))
    print(f"\nacross / inside: step {across.step_time.mean_s / inside.step_time.mean_s:.2f}x, "
          f"all-to-all {across.breakdown.all_to_all_s / inside.breakdown.all_to_all_s:.1f}x\n")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moe", default="switch-base-128", help="MoE workload preset to scale over slices")
    args = parser.parse_args()
    palm()
    scaling(args.moe)
    cross_slice_experts()
    dcn_closed_form()


if __name__ == "__main__":
    main()
