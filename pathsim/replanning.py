"""Re-planning a model that is already placed: a task added with new experts, and routing that drifts.

Both weigh what a placement change buys (the simulator's step time) against
what it costs (expert copies migrated over the cluster's network):

- :func:`add_task`: the new task's experts placed without moving any old
  copy; then greedy moves, best balance per migrated byte first (a frontier
  of byte budgets; each move is priced as one copy, while the bytes reported
  are the true difference from the old placement, so a copy moved twice or
  moved back counts once or not at all); then a full re-plan by a policy. Each option reports its
  step time, migrated bytes and seconds, and how many steps its saving takes
  to pay for its migration.
- :func:`routing_drift`: one routing histogram per window of steps; a
  placement planned on the first window and kept, against re-planning every
  K windows from what the previous window measured, net of migration.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel

from pathsim.choices import DEFAULT_POLICY
from pathsim.errors import PathsimConfigError
from pathsim.limits import check_allocation
from pathsim.output_files import write_file
from pathsim.numeric_files import read_numeric_array
from pathsim.placement import Placement, check_shape, read_placement
from pathsim.planner import PlanOptions, expected_demand, place_experts
from pathsim.planner.constraints import slot_budget
from pathsim.planner.incremental import copy_loads, extend_layers
from pathsim.planner.moves import LayerMoves, apply_moves, rebalance_moves
from pathsim.planner.migration import Migration, expert_copy_bytes, match_ranks, migration_cost
from pathsim.planner.packing import PackingError
from pathsim.planning import PlacementReport, evaluate_placement
from pathsim.routing import cap_probabilities
from pathsim.run_setup import RunSetup, prepare_run
from pathsim.task_addition import AddedTask, errors_in_task, expand_workload, read_added_task
from pathsim.version import __version__

LOCATION_BLIND_POLICIES = ("balanced",)  # any permutation of their ranks balances alike: relabel to move less


class MigrationOption(BaseModel):
    name: str
    report: PlacementReport
    migrated_copies: int  # per expert group and tensor rank, over all MoE layers
    migrated_bytes: float  # whole cluster
    migration_s: float
    step_saving_s: float  # against keeping every old copy in place
    break_even_steps: float | None  # steps the saving takes to repay the migration (None: it never does)


class TaskAdditionReport(BaseModel):
    cluster: str
    workload: str  # before the task
    task: str
    old_experts: int
    new_experts: int
    expert_copy_bytes: float  # one chip's share of moving one expert copy (weights + optimizer state)
    step_time_before_s: float  # the old placement on the old workload
    options: list[MigrationOption]
    version: str = __version__


def _layers(placement: Placement, moe_layers: int) -> list[list[list[int]]]:
    return [[list(r) for r in placement.layer(l)] for l in range(moe_layers)]


def _as_placement(policy: str, setup: RunSetup, layers: list[list[list[int]]], planned_for: dict) -> Placement:
    return Placement(policy=policy, experts=setup.workload.model.moe.experts, ranks=setup.layout.expert, slots=layers,
                     planned_for=planned_for)


def _option(name: str, setup: RunSetup, placement: Placement, migration: Migration, steps: int,
            baseline_s: float | None) -> MigrationOption:
    report = evaluate_placement(setup, placement, steps)
    saving = 0.0 if baseline_s is None else baseline_s - report.step_time_s
    if migration.seconds == 0:
        even = 0.0
    else:
        even = migration.seconds / saving if saving > 0 else None
    return MigrationOption(name=name, report=report, migrated_copies=migration.copies, migrated_bytes=migration.bytes,
                           migration_s=migration.seconds, step_saving_s=saving, break_even_steps=even)


def _byte_marks(moves, fractions=(0.1, 0.25, 0.5, 1.0)) -> list[int]:
    """Move counts at which the migrated bytes first reach each fraction of the frontier's total (free moves first)."""
    if not moves:
        return [0]
    spent = np.cumsum([m.bytes for m in moves])
    free = int(np.searchsorted(spent, 0.0, side="right"))
    if spent[-1] == 0:
        return [len(moves)]
    marks = [free] + [int(np.searchsorted(spent, f * spent[-1] * (1 - 1e-12))) + 1 for f in fractions[:-1]]
    return sorted(set(marks + [len(moves)]))  # the whole frontier, free moves after the last costly one too


def add_task(cluster, workload, placement: "str | Path | Placement", task: "str | Path | AddedTask", *,
             policy: str = DEFAULT_POLICY, options: PlanOptions | None = None, byte_budget: float = math.inf,
             seed: int = 0, steps: int = 1, sampling: str = "auto", profile=None
             ) -> tuple[TaskAdditionReport, dict[str, Placement], "RunSetup"]:
    """Options for adding `task` to a model placed as `placement`: keep, move within budgets, re-plan."""
    before = prepare_run(cluster, workload, seed=seed, sampling=sampling, profile=profile, place=False)
    moe = before.workload.model.moe
    if moe is None:
        raise PathsimConfigError(before.source, "model.moe", f"{before.workload.name} has no experts", "add tasks to an MoE workload")
    source = str(placement) if not isinstance(placement, Placement) else "<python placement>"
    old = placement if isinstance(placement, Placement) else read_placement(placement)
    old = check_shape(old, moe.experts, before.layout.expert, before.moe_layers, source)
    task_source = str(task) if not isinstance(task, AddedTask) else "<python task>"
    added = task if isinstance(task, AddedTask) else read_added_task(task)
    grown = expand_workload(before.workload, added, task_source)
    with errors_in_task(before.source, task_source, grown, len(before.workload.tasks)):  # errors from here name the task file
        after = prepare_run(cluster, grown, seed=seed, sampling=sampling, profile=profile, place=False)
        if after.layout.expert != before.layout.expert:
            raise PathsimConfigError(task_source, "new_experts", f"{added.new_experts} more experts change the expert-parallel group "
                                     f"from {before.layout.expert} to {after.layout.expert} ranks, so no copy could stay where it is",
                                     f"set parallelism.expert: {before.layout.expert} in the workload")
        old_layers = _layers(old, before.moe_layers)
        replicas_before = int(max(sum(len(r) for r in layer) for layer in old_layers) - moe.experts)
        options = options or PlanOptions()
        if options.together:
            raise PathsimConfigError("<arguments>", "together", "adding a task keeps old copies in place and takes no together sets",
                                     "plan together sets with `pathsim plan` on the new workload")
        if options.replicas is None:  # the old plan's replicas stay affordable, for every option alike
            options = options.model_copy(update={"replicas": max(replicas_before, 0)})
        budget = slot_budget(after, options)
        demand = expected_demand(after)
        copy_bytes = expert_copy_bytes(after) * after.layout.expert_replication
        try:
            kept = extend_layers(old_layers, demand.load, moe.experts, budget.physical_slots, budget.slots_per_rank)
        except PackingError as exc:
            raise PathsimConfigError(task_source, "new_experts", f"the new experts do not fit {budget.slots_per_rank} slots per "
                                     f"chip beside the old copies ({exc})", "fewer new experts, or re-plan with more chips") from None
        move_bytes = np.where(np.arange(after.workload.model.moe.experts) < moe.experts, copy_bytes, 0.0)  # new experts: not made yet
        ones = np.ones(len(move_bytes), dtype=np.int64)
        moves = rebalance_moves([LayerMoves(l, layer, copy_loads(layer, demand.load[l]), move_bytes, ones, budget.slots_per_rank)
                                 for l, layer in enumerate(kept)], byte_budget)
        provenance = {"cluster": after.cluster.name, "workload": after.workload.name, "seed": seed, "from": source,
                      "added_task": added.name, "options": options.model_dump(mode="json")}
        baseline_s = None
        results, placements = [], {}
        marks = _byte_marks(moves)
        for count in marks:
            layers = apply_moves(kept, moves[:count])
            name = "keep old copies" if count == marks[0] else f"+ {count - marks[0]} moves"
            candidate = _as_placement("incremental", after, layers, {**provenance, "moves": count})
            option = _option(name, after, candidate, migration_cost(after, old_layers, layers, moe.experts), steps, baseline_s)
            baseline_s = baseline_s if baseline_s is not None else option.report.step_time_s
            results.append(option)
            placements[name] = candidate
        replan = place_experts(policy, after, options, demand)
        layers = _layers(replan, after.moe_layers)
        if policy in LOCATION_BLIND_POLICIES:
            layers = [match_ranks(o, n, moe.experts) for o, n in zip(old_layers, layers)]
        name = f"re-plan ({policy})"
        candidate = _as_placement(policy, after, layers, {**replan.planned_for, "from": source, "added_task": added.name})
        results.append(_option(name, after, candidate, migration_cost(after, old_layers, layers, moe.experts), steps, baseline_s))
        placements[name] = candidate
        step_before = evaluate_placement(before, old, steps).step_time_s
        report = TaskAdditionReport(cluster=after.cluster.name, workload=before.workload.name, task=added.name,
                                    old_experts=moe.experts, new_experts=added.new_experts,
                                    expert_copy_bytes=expert_copy_bytes(after), step_time_before_s=step_before, options=results)
        return report, placements, after


def write_workload(setup: RunSetup, path: "str | Path", flag: str = "--out") -> Path:
    """The run's workload as a YAML file `pathsim simulate --workload` reads back."""
    path = Path(path)
    data = setup.workload.model_dump(mode="json", exclude={"base_dir"}, exclude_none=True)
    for task in data["tasks"]:  # measured histograms stay where they are, wherever the YAML goes
        routing = task["routing"]
        if routing["kind"] == "histogram" and not Path(routing["file"]).is_absolute():
            routing["file"] = str((Path(setup.workload.base_dir) / routing["file"]).resolve())
    return write_file(path, yaml.safe_dump(data, sort_keys=False), flag, "the workload")


# ---- routing drift --------------------------------------------------------------------------


class DriftWindow(BaseModel):
    window: int
    imbalance: dict[str, float]  # strategy -> max/mean expected tokens per chip (mean over MoE layers)
    step_time_s: dict[str, float]
    migration_s: dict[str, float]  # paid at the start of the window


class DriftStrategy(BaseModel):
    name: str
    replan_every: int | None  # windows; None: never
    total_time_s: float  # every window's steps plus migrations
    migrated_bytes: float
    migration_s: float
    net_gain_s: float  # against the fixed placement (positive: re-planning pays)


class DriftReport(BaseModel):
    cluster: str
    workload: str
    policy: str
    windows: int
    steps_per_window: int
    windows_detail: list[DriftWindow]
    strategies: list[DriftStrategy]
    version: str = __version__


def read_drift(path: "str | Path", setup: RunSetup) -> np.ndarray:
    """Routing histograms per window: (windows, MoE layers, experts), from .npy/.csv of shape
    (windows, experts), (windows, 1 or MoE layers, experts) or (windows, tasks, 1 or MoE layers, experts)."""
    path = Path(path)
    source, field = str(path), "drift"
    data = read_numeric_array(path, source, field, "tokens per expert per window")
    experts, layers, tasks = setup.workload.model.moe.experts, setup.moe_layers, len(setup.workload.tasks)
    if data.ndim == 2:
        data = data[:, None, :]
    if data.ndim == 3:
        data = data[:, None, :, :]
    if data.ndim != 4 or data.shape[-1] != experts or data.shape[2] not in (1, layers) or data.shape[1] not in (1, tasks):
        raise PathsimConfigError(source, field, f"has shape {data.shape}; expected (windows, {experts}), (windows, {layers}, {experts}) "
                                 f"or (windows, {tasks}, {layers}, {experts})",
                                 "one histogram of tokens per expert per window (optionally per MoE layer, per task)")
    if data.shape[0] < 2:
        raise PathsimConfigError(source, field, f"holds {data.shape[0]} window", "give at least two windows to see drift")
    if not np.all(np.isfinite(data)) or data.min() < 0 or np.any(data.sum(axis=-1) <= 0):
        raise PathsimConfigError(source, field, "holds negative, non-finite or all-zero histograms", "counts must be >= 0 with tokens in every row")
    return np.broadcast_to(data, (data.shape[0], tasks, layers, experts)).copy()


def random_walk_drift(setup: RunSetup, windows: int, sigma: float, seed: int = 0) -> np.ndarray:
    """Synthetic drift: every expert's popularity takes a log-normal random step per window (std `sigma`),
    starting from the workload's own expected routing. (windows, tasks, MoE layers, experts)."""
    if windows < 2 or not sigma > 0:
        raise PathsimConfigError("<arguments>", "drift", f"random walk needs >= 2 windows and sigma > 0 (got {windows}, {sigma})",
                                 "e.g. --drift random-walk:0.3 --windows 8")
    base = setup.plan.probabilities
    # The walk, its steps and the histograms it becomes: three arrays of windows x the routing's size.
    check_allocation(3 * 8.0 * windows * base.size, f"a random walk over {windows:,} windows of {base.size:,} routing "
                     "probabilities", "<command line>", "--windows", "use fewer windows (each is a re-plan's period)")
    rng = np.random.default_rng([seed, 7])
    steps = rng.normal(0.0, sigma, size=(windows - 1, *base.shape))
    walk = np.concatenate([np.zeros((1, *base.shape)), np.cumsum(steps, axis=0)])
    return base[None] * np.exp(walk)


def _window_setup(setup: RunSetup, histograms: np.ndarray) -> RunSetup:
    experts = setup.workload.model.moe.experts
    reach = np.array([np.isin(np.arange(experts), t.reachable_ids(experts)) for t in setup.workload.tasks])
    histograms = histograms * reach[:, None, :]  # a task's router cannot pick experts out of its reach
    if np.any(histograms.sum(axis=-1) <= 0):
        raise PathsimConfigError("<drift>", "drift", "a window gives some task no tokens on the experts it can reach",
                                 "give every task's reachable experts tokens in every window")
    probabilities = cap_probabilities(histograms, 1.0 / setup.plan.top_k)
    return dataclasses.replace(setup, plan=dataclasses.replace(setup.plan, probabilities=probabilities))


def routing_drift(cluster, workload, drift: "str | Path | np.ndarray", *, policy: str = DEFAULT_POLICY,
                  replan_every: "tuple[int, ...] | list[int]" = (1, 2), steps_per_window: int = 1000,
                  options: PlanOptions | None = None, seed: int = 0, steps: int = 1, sampling: str = "auto",
                  profile=None) -> DriftReport:
    """A placement kept from window 0 against re-planning every K windows, over the drifting histograms."""
    setup = prepare_run(cluster, workload, seed=seed, sampling=sampling, profile=profile, place=False)
    moe = setup.workload.model.moe
    if moe is None:
        raise PathsimConfigError(setup.source, "model.moe", f"{setup.workload.name} has no experts", "study drift on an MoE workload")
    for field, value in (("steps_per_window", steps_per_window), *(("replan_every", k) for k in replan_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PathsimConfigError("<arguments>", field, f"must be a positive integer, got {value!r}", "e.g. 1000")
    histograms = drift if isinstance(drift, np.ndarray) else read_drift(drift, setup)
    if histograms.ndim != 4 or histograms.shape[1:] != setup.plan.probabilities.shape or len(histograms) < 2:
        raise PathsimConfigError("<drift>", "drift", f"array of shape {histograms.shape}; expected (windows >= 2, "
                                 f"{', '.join(map(str, setup.plan.probabilities.shape))})", "see read_drift for the file forms")
    windows = [_window_setup(setup, h) for h in histograms]
    options = options or PlanOptions()
    strategies = [("fixed", None)] + [(f"re-plan every {k}", k) for k in sorted(set(replan_every))]
    first = place_experts(policy, windows[0], options)
    current = {name: first for name, _ in strategies}
    spent = {name: Migration.none() for name, _ in strategies}
    totals = {name: 0.0 for name, _ in strategies}
    scored: dict[tuple[int, int], PlacementReport] = {}  # (id of placement, window) -> report
    keep_alive = []  # placements scored above must outlive the id() keys
    detail = []
    for w, window in enumerate(windows):
        imbalance, step_time, migration_s = {}, {}, {}
        for name, every in strategies:
            paid = Migration.none()
            if every is not None and w > 0 and w % every == 0:
                # Plan from what the previous window measured; the new routing is not known yet.
                fresh = place_experts(policy, windows[w - 1], options)
                old_layers = _layers(current[name], setup.moe_layers)
                layers = _layers(fresh, setup.moe_layers)
                if policy in LOCATION_BLIND_POLICIES:
                    layers = [match_ranks(o, n, moe.experts) for o, n in zip(old_layers, layers)]
                current[name] = _as_placement(policy, setup, layers, fresh.planned_for)
                paid = migration_cost(setup, old_layers, layers, moe.experts)
                spent[name] = Migration(spent[name].copies + paid.copies, spent[name].bytes + paid.bytes,
                                        spent[name].seconds + paid.seconds)
            key = (id(current[name]), w)
            if key not in scored:
                keep_alive.append(current[name])
                scored[key] = evaluate_placement(window, current[name], steps)
            imbalance[name] = scored[key].imbalance_mean
            step_time[name] = scored[key].step_time_s
            migration_s[name] = paid.seconds
            totals[name] += steps_per_window * step_time[name] + paid.seconds
        detail.append(DriftWindow(window=w, imbalance=imbalance, step_time_s=step_time, migration_s=migration_s))
    results = [DriftStrategy(name=name, replan_every=every, total_time_s=totals[name], migrated_bytes=spent[name].bytes,
                             migration_s=spent[name].seconds, net_gain_s=totals["fixed"] - totals[name])
               for name, every in strategies]
    return DriftReport(cluster=setup.cluster.name, workload=setup.workload.name, policy=policy, windows=len(windows),
                       steps_per_window=steps_per_window, windows_detail=detail, strategies=results)
