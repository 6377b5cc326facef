"""Wall time of expert-placement planning at pod scale, on one core.

The issue-6 goal: planning 2048 experts over 4096 chips (one expert-parallel
group spanning TPU v4 16x16x16) takes under 60 s per policy other than
``search``, and ``search`` stops within its time budget. Adding a task with
256 new experts to the balanced placement (``pathsim plan --add-task``) is
timed too. The 64-layer,
32-MoE-layer workload of bench_step.py is planned with every policy; the
reference measured in the same run is one numpy.sum over a 4096×4096 matrix.

    python benchmarks/bench_plan.py                 # 4096 chips
    python benchmarks/bench_plan.py --quick         # 512 chips
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one core, as the goal states; must precede numpy's import

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from bench_step import WORKLOAD  # noqa: E402
from pathsim.planner import PlanOptions, expected_demand, place_experts  # noqa: E402
from pathsim.replanning import add_task  # noqa: E402
from pathsim.run_setup import prepare_run  # noqa: E402
from pathsim.task_addition import AddedTask  # noqa: E402
from timing import best_of  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="TPU v4 8x8x8 (512 chips) instead of 16x16x16")
    parser.add_argument("--search-budget", type=float, default=10.0, help="search time budget in seconds")
    args = parser.parse_args()
    cluster, chips = ("tpu-v4-8x8x8", 512) if args.quick else ("tpu-v4-16x16x16", 4096)
    workload = {**WORKLOAD, "parallelism": {"expert": chips}}
    start = time.perf_counter()
    setup = prepare_run(cluster, workload, seed=0)
    prepared = time.perf_counter() - start
    start = time.perf_counter()
    demand = expected_demand(setup)
    demand_s = time.perf_counter() - start
    matrix = np.random.default_rng(0).random((chips, chips))
    reference = best_of(lambda: matrix.sum(), 5)
    moe = setup.workload.model.moe
    print(f"{moe.experts} experts x {setup.moe_layers} MoE layers over {setup.layout.expert} ranks on {cluster}; "
          f"setup {prepared:.2f} s, expected loads {demand_s:.2f} s")
    print(f"{'policy':12s} {'plan s':>8s} {'x numpy.sum(NxN)':>17s} {'slots/rank':>10s} {'replicas':>8s}  note")
    for policy in ("round_robin", "contiguous", "balanced", "eplb", "topology", "search"):
        # The benchmark model does not fit 32 GiB chips; planning speed is what is measured here.
        options = PlanOptions(time_budget_s=args.search_budget, max_evaluations=10**9, enforce_hbm=False)
        start = time.perf_counter()
        placement = place_experts(policy, setup, options, demand)
        seconds = time.perf_counter() - start
        search = placement.planned_for.get("search")
        note = (f"budget {args.search_budget:g} s; stopped by {search['stopped_by']} after {search['evaluations']} evaluations"
                if search else "")
        replicas = float((placement.replicas.sum(axis=1) - moe.experts).mean())
        print(f"{policy:12s} {seconds:8.2f} {seconds / reference:17.0f} {int(placement.experts_per_rank.max()):10d} "
              f"{replicas:8.0f}  {note}")
        if policy == "balanced":
            balanced = placement
    # A task with 256 new experts added to the balanced placement: keep, the move frontier and a re-plan,
    # each judged by one simulated step (what the time is mostly spent on).
    task = AddedTask(name="added", share=0.05, new_experts=256, routing={"kind": "zipf", "exponent": 0.6}, new_expert_weight=0.7)
    start = time.perf_counter()
    report, _, _ = add_task(cluster, workload, balanced, task, options=PlanOptions(enforce_hbm=False))
    seconds = time.perf_counter() - start
    print(f"{'add-task':12s} {seconds:8.2f} {seconds / reference:17.0f}  {len(report.options)} options simulated "
          f"({', '.join(o.name for o in report.options)})")


if __name__ == "__main__":
    main()
