"""``pathsim.plan`` and ``pathsim.compare_placements``: plan expert placements and judge them with the simulator.

Every placement gets the same report: how even the expected load is, what
its all-to-alls cost the network (hop-bytes, the most loaded link), and the
simulator's prediction of the all-to-all time and of the whole step (same
seed, so every policy meets the same routing draws), with memory headroom
and the replicas it spends.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from pathsim.choices import DEFAULT_POLICY
from pathsim.output_files import write_file
from pathsim.placement import Placement
from pathsim.planner import POLICIES, PlanOptions, expected_demand, place_experts
from pathsim.routing import route_layer
from pathsim.units import format_seconds
from pathsim.run_setup import RunSetup, prepare_run
from pathsim.simulation import run_steps
from pathsim.version import __version__


class PlacementReport(BaseModel):
    policy: str
    replicas: float  # extra expert copies per MoE layer and expert-parallel group, mean over layers
    slots_per_rank: int  # the most experts a rank hosts in one MoE layer
    imbalance_mean: float  # max/mean expected tokens per chip, mean over MoE layers
    imbalance_max: float  # ... the worst MoE layer
    hop_bytes: float  # dispatch + combine of one forward micro-batch, all MoE layers: Σ bytes × links crossed
    max_link_bytes: float  # the most loaded link in the worst MoE layer's dispatch
    all_to_all_s: float  # simulated, per step (forward, backward and recompute)
    step_time_s: float  # simulated, mean over steps
    step_time_vs_round_robin: float | None = None
    memory_headroom_bytes: float
    fits: bool
    plan_time_s: float
    note: str = ""


class PlanComparison(BaseModel):
    cluster: str
    workload: str
    chips: int
    expert_ranks: int  # ranks per expert-parallel group
    experts: int
    moe_layers: int
    seed: int
    steps: int
    reports: list[PlacementReport]
    best: str
    version: str = __version__


def evaluate_placement(setup: RunSetup, placement: Placement, steps: int = 1, plan_time_s: float = 0.0) -> PlacementReport:
    """Expected-load metrics of a placement, and the simulator's step time with it."""
    per_token = setup.workload.model.d_model * setup.workload.model.dtype_bytes
    imbalance, hop_bytes, max_link = [], 0.0, 0.0
    for l in range(setup.moe_layers):
        routing = route_layer(setup.plan, setup.layout, placement, l, None)
        mean = float(routing.chip_tokens.mean())
        imbalance.append(float(routing.chip_tokens.max()) / mean if mean > 0 else 1.0)
        dispatch = setup.network.phase(routing.dispatch_traffic(per_token), all_to_all=True).link_bytes
        combine = setup.network.phase(routing.combine_traffic(per_token), all_to_all=True).link_bytes
        hop_bytes += float(dispatch.sum() + combine.sum())
        max_link = max(max_link, float(dispatch.max(initial=0.0)))
    result = run_steps(setup.with_placement(placement), steps)
    replicas = placement.replicas.sum(axis=1) - placement.experts
    note = placement.planned_for.get("note", "")
    search = placement.planned_for.get("search")
    if search:
        note = "; ".join(filter(None, [note, f"{search['evaluations']} evaluations in {search['seconds']:.1f} s "
                                             f"(stopped by {search['stopped_by']}"
                                             + (": the placement depends on this machine's speed" if search["stopped_by"] == "time" else "")
                                             + f"; {search['layers_searched']} of "
                                             f"{setup.moe_layers} MoE layers searched), their time "
                                             f"{format_seconds(search['moe_layer_time_start_s'])} -> "
                                             f"{format_seconds(search['moe_layer_time_best_s'])}"]))
    return PlacementReport(
        policy=placement.policy, replicas=float(replicas.mean()), slots_per_rank=int(placement.experts_per_rank.max()),
        imbalance_mean=float(np.mean(imbalance)), imbalance_max=float(np.max(imbalance)), hop_bytes=hop_bytes,
        max_link_bytes=max_link, all_to_all_s=result.communication.all_to_all_s, step_time_s=result.step_time.mean_s,
        memory_headroom_bytes=result.memory.headroom_bytes, fits=result.memory.fits, plan_time_s=plan_time_s, note=note)


def _timed_plan(policy: str, setup: RunSetup, options: PlanOptions, demand) -> tuple[Placement, float]:
    began = time.perf_counter()
    placement = place_experts(policy, setup, options, demand)
    return placement, time.perf_counter() - began


def plan(cluster, workload, policy: str = DEFAULT_POLICY, options: PlanOptions | None = None, *, seed: int = 0, steps: int = 1,
         sampling: str = "auto", profile=None) -> tuple[Placement, PlacementReport]:
    """One placement by `policy`, with its report."""
    setup = prepare_run(cluster, workload, seed=seed, sampling=sampling, profile=profile, place=False)
    placement, seconds = _timed_plan(policy, setup, options or PlanOptions(), None)
    return placement, evaluate_placement(setup, placement, steps, seconds)


def compare_placements(cluster, workload, policies: "tuple[str, ...] | list[str]" = POLICIES,
                       options: PlanOptions | None = None, *, seed: int = 0, steps: int = 1, sampling: str = "auto",
                       profile=None) -> tuple[PlanComparison, dict[str, Placement]]:
    """Every policy on the same run, reported side by side (step time relative to round_robin)."""
    setup = prepare_run(cluster, workload, seed=seed, sampling=sampling, profile=profile, place=False)
    options = options or PlanOptions()
    demand = expected_demand(setup) if setup.plan is not None else None
    placements, reports = {}, []
    for policy in policies:
        shape_only = policy in ("round_robin", "contiguous")
        placement, seconds = _timed_plan(policy, setup, options.model_copy(update={"replicas": None, "together": []})
                                         if shape_only else options, demand)
        placements[policy] = placement
        reports.append(evaluate_placement(setup, placement, steps, seconds))
    baseline = next((r.step_time_s for r in reports if r.policy == "round_robin"), None)
    if baseline:
        reports = [r.model_copy(update={"step_time_vs_round_robin": r.step_time_s / baseline}) for r in reports]
    best = min(reports, key=lambda r: (not r.fits, r.step_time_s)).policy
    moe = setup.workload.model.moe
    comparison = PlanComparison(cluster=setup.cluster.name, workload=setup.workload.name, chips=setup.layout.chips,
                                expert_ranks=setup.layout.expert, experts=moe.experts, moe_layers=setup.moe_layers,
                                seed=setup.seed, steps=steps, reports=reports, best=best)
    return comparison, placements


def write_placement(placement: Placement, path: "str | Path", flag: str = "--out") -> Path:
    """The placement as JSON, with its digest: read back unedited it keeps its policy name, edited it is a "file"."""
    recorded = placement.model_copy(update={"planned_for": {**placement.planned_for, "slots_digest": placement.digest()}})
    return write_file(path, recorded.model_dump_json() + "\n", flag, "the placement")
