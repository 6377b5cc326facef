"""Wall time of one simulated pipeline-parallel step, and what it grows with.

Issue 20's goals are one step of ``llama3-405b`` on its 16,384 H100 and of
``deepseek-v3`` (16 stages, 64-way expert parallelism, 120 micro-batches) on
2,048 H800 in under 2 s each. This prints both presets as they are; then, for
DeepSeek-V3's layout on ``h800-2048`` with 2, 4 and 8 micro-batches of 4
sequences (mean-field routing in all, so the rows differ only in the graph), the wall time of one step, the part of it per micro-batch, and the
same per micro-batch cost without pipelining (one stage of the same chips) as
the reference measured in the same run; then the Megatron-LM SC'21 rows on
Selene (the graph's size grows as micro-batches × chunks × stages); and a dense
interleaved pipeline on 256 H100 (PaLM 8B, 4 stages x 2 chunks, 16
micro-batches) as the cheap case.

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
    for cluster, workload, kwargs in (("llama3-h100-16k", "llama3-405b", {}),
                                      ("h800-2048", "deepseek-v3", {"sampling": "mean_field"})):
        wall = best_of(lambda: pathsim.simulate(cluster, workload, **kwargs), 3)
        print(f"{workload} on {cluster} (as the preset is): {wall:.2f} s a step, best of 3 (goal < 2 s)")
    print("deepseek-v3 layout on h800-2048 (58 MoE layers routed per micro-batch, mean-field sampling throughout: "
          "auto would sample 2 micro-batches exactly)")
    print(f"{'micro-batches':>13}  {'pipeline 16: step':>17}  {'per micro-batch':>15}  {'no pipeline: per mb':>19}  ratio")
    for m in (2, 4, 8):
        piped = best_of(lambda: pathsim.simulate("h800-2048", deepseek(m, 16), sampling="mean_field"), 1)
        flat = best_of(lambda: pathsim.simulate("h800-2048", deepseek(m, 1), sampling="mean_field"), 1)
        print(f"{m:>13}  {piped:>16.2f}s  {piped / m:>14.2f}s  {flat / m:>18.2f}s  {piped / flat:5.2f}")
    for nodes, name in ((128, "76.1b"), (192, "145.6b"), (240, "310.1b"), (315, "529.6b"), (384, "1t")):
        workload = load_workload(f"megatron-gpt-{name}")
        par = workload.parallelism
        units = workload.training.micro_batches * par.virtual_stages * par.pipeline * 2
        wall = best_of(lambda: pathsim.simulate(f"selene-{nodes}", workload), 1)
        print(f"megatron-gpt-{name} on selene-{nodes}: {wall:6.2f} s a step, {units:>7} forward/backward chunks, "
              f"{1e6 * wall / units:5.1f} us per chunk")
    w = load_workload("palm-8b").model_dump(mode="json")
    w["training"].update(micro_batches=16, shard_parameters=False)
    w["parallelism"].update(tensor=8, pipeline=4, pipeline_schedule="interleaved", virtual_stages=2)
    dense = best_of(lambda: pathsim.simulate("dgx-h100-32", w), 3)
    print(f"palm-8b, 4 stages x 2 chunks, 16 micro-batches on dgx-h100-32: {dense:.3f} s a step")


if __name__ == "__main__":
    main()
