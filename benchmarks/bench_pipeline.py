"""Wall time of one simulated pipeline-parallel step, and what it grows with.

Issue 20's goal is one step of ``deepseek-v3`` (16 stages, 64-way expert
parallelism) on 2,048 GPUs in under 2 s. This prints, for DeepSeek-V3's layout
on ``h800-2048`` with 2, 4 and 8 micro-batches of 4 sequences (the preset
itself has 120 of one), the wall time of one step, the part of it per micro-batch, and the
same per micro-batch cost without pipelining (one stage of the same chips) as
the reference measured in the same run; plus a dense interleaved pipeline on
256 H100 (PaLM 8B, 4 stages x 2 chunks, 16 micro-batches) as the cheap case.

    python benchmarks/bench_pipeline.py
"""

from __future__ import annotations

import pathsim
from pathsim.workload import load_workload
from timing import best_of


def deepseek(micro_batches: int, pipeline: int) -> dict:
    w = load_workload("deepseek-v3").model_dump(mode="json")
    w["training"].update(micro_batches=micro_batches, tokens_per_step=4096 * 128 * 4 * micro_batches)
    w["parallelism"].update(pipeline=pipeline, pipeline_schedule="1f1b", expert=64)
    return w


def main() -> None:
    print("deepseek-v3 layout on h800-2048 (58 MoE layers routed per micro-batch)")
    print(f"{'micro-batches':>13}  {'pipeline 16: step':>17}  {'per micro-batch':>15}  {'no pipeline: per mb':>19}  ratio")
    for m in (2, 4, 8):
        piped = best_of(lambda: pathsim.simulate("h800-2048", deepseek(m, 16)), 1)
        flat = best_of(lambda: pathsim.simulate("h800-2048", deepseek(m, 1)), 1)
        print(f"{m:>13}  {piped:>16.2f}s  {piped / m:>14.2f}s  {flat / m:>18.2f}s  {piped / flat:5.2f}")
    w = load_workload("palm-8b").model_dump(mode="json")
    w["training"].update(micro_batches=16, shard_parameters=False)
    w["parallelism"].update(tensor=8, pipeline=4, pipeline_schedule="interleaved", virtual_stages=2)
    dense = best_of(lambda: pathsim.simulate("dgx-h100-32", w), 3)
    print(f"palm-8b, 4 stages x 2 chunks, 16 micro-batches on dgx-h100-32: {dense:.3f} s a step")


if __name__ == "__main__":
    main()
