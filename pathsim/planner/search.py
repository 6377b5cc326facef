"""``search``: simulated annealing on the simulator's own predicted time of each MoE layer.

The objective of a layer's placement is what the step engine would put on the
critical path for it: the MoE block's forward and backward ops (dispatch and
combine all-to-alls through the network model, the slowest chip's expert
FFN, rematerialisation when configured), costed by the same StepCoster on the
expected routing. Layers are independent, so each is annealed on its own
share of the budget: moves swap a copy on the most loaded rank with one on
another rank (or move it where a slot is free), accepted by the Metropolis
rule as the temperature falls linearly to zero.

The budget is ``max_evaluations`` placements and, if given, ``time_budget_s``
seconds, whichever binds first. Without a time budget (the default) the same
inputs and seed give the same placement on any machine; a time stop makes the
placement depend on the machine's speed, and the plan says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import math
import time

import numpy as np

from pathsim.placement import Placement
from pathsim.planner.constraints import PlanOptions, SlotBudget
from pathsim.planner.demand import ExpertDemand
from pathsim.routing import route_layer
from pathsim.step_ops import StepCoster

if TYPE_CHECKING:  # the run setup composes the planner, not the other way round
    from pathsim.run_setup import RunSetup

START_TEMPERATURE = 0.02  # of the layer's starting time: accepts early moves up to ~2 % worse


class LayerObjective:
    def __init__(self, setup: RunSetup, budget: SlotBudget):
        self.setup, self.budget = setup, budget
        self.coster = StepCoster(setup.workload, setup.layout, setup.topology, setup.network, setup.device, None)
        self.model_layers = setup.workload.model.moe_layers
        self.evaluations = 0

    def __call__(self, layer: int, rank_items: list[list[int]]) -> float:
        self.evaluations += 1
        members = self.budget.item_members
        slots = [[e for i in rank for e in members[i]] for rank in rank_items]
        moe = self.setup.workload.model.moe
        placement = Placement.model_construct(policy="search", experts=moe.experts, ranks=self.setup.layout.expert,
                                              slots=[slots], planned_for={})
        routing = route_layer(self.setup.plan, self.setup.layout, placement, layer, None)
        model_layer = self.model_layers[layer]
        forward, backward = self.coster.moe_ops(model_layer, routing)
        return float(sum(op.duration_s for op in forward + backward))


def anneal(setup: RunSetup, demand: ExpertDemand, budget: SlotBudget, starts: list[list[list[list[int]]]],
           options: PlanOptions, began: float) -> tuple[list[list[list[int]]], dict]:
    """Per-layer rank→items lists, and what the search did (evaluations, seconds, gain, what stopped it).

    ``began`` is when the policy started (``time.perf_counter()``): building the
    starts counts against the time budget too. Once it is spent, remaining
    layers keep the first start unevaluated.
    """
    objective = LayerObjective(setup, budget)
    rng = np.random.default_rng([setup.seed, 6])
    deadline = began + options.time_budget_s if options.time_budget_s is not None else math.inf
    layers = demand.layers
    evals_per_layer = max(len(starts) + 1, options.max_evaluations // layers)
    sizes = budget.item_sizes
    result, start_total, final_total, stopped, searched = [], 0.0, 0.0, "evaluations", 0
    for l in range(layers):
        if time.perf_counter() > deadline:
            result.append(starts[0][l])
            stopped = "time"
            continue
        scored = [(objective(l, s[l]), k) for k, s in enumerate(starts)]
        best_time, k = min(scored)
        # Rank lists are never mutated, only replaced: copying the outer list is a full copy.
        current = list(starts[k][l])
        current_time = best_time
        best = current
        start_total += best_time
        weights = budget.item_weights(demand.load[l])
        copies = np.bincount(np.concatenate([np.asarray(r, dtype=np.int64) for r in current]), minlength=len(weights))
        copy_load = weights / np.maximum(copies, 1)
        loads = np.array([copy_load[rank].sum() if rank else 0.0 for rank in current])
        layer_deadline = time.perf_counter() + (deadline - time.perf_counter()) / (layers - l)  # inf without a time budget
        temperature0 = START_TEMPERATURE * best_time
        used = len(scored)
        while used < evals_per_layer:
            if time.perf_counter() > min(layer_deadline, deadline):
                stopped = "time"
                break
            proposal = _propose(current, loads, copy_load, sizes, budget.slots_per_rank, rng)
            if proposal is None:
                break
            move, changed = proposal
            candidate_time = objective(l, move)
            used += 1
            temperature = temperature0 * (1.0 - used / evals_per_layer)
            delta = candidate_time - current_time
            if delta <= 0 or (temperature > 0 and rng.random() < math.exp(-delta / temperature)):
                current, current_time = move, candidate_time
                for r in changed:
                    loads[r] = copy_load[current[r]].sum() if current[r] else 0.0
                if current_time < best_time:
                    best, best_time = current, current_time
        result.append(best)
        final_total += best_time
        searched += 1
    info = {"evaluations": objective.evaluations, "seconds": time.perf_counter() - began, "stopped_by": stopped,
            "layers_searched": searched, "moe_layer_time_start_s": start_total, "moe_layer_time_best_s": final_total}
    return result, info


def _propose(current: list[list[int]], loads: np.ndarray, copy_load: np.ndarray, sizes: np.ndarray,
             slots_per_rank: int, rng: np.random.Generator) -> tuple[list[list[int]], tuple[int, int]] | None:
    """Move or swap one copy between a heavy rank (usually the heaviest) and a light one (usually among
    the lightest quarter), preferring a swap that lowers the heavier of the two. Returns the new rank
    lists (only ranks a and b are new lists) and (a, b)."""
    order = np.argsort(loads, kind="stable")
    a = int(order[-1]) if rng.random() < 0.75 else int(rng.integers(len(current)))
    if not current[a]:
        return None
    light = order[: max(1, len(order) // 4)]
    for _ in range(16):
        b = int(light[rng.integers(len(light))]) if rng.random() < 0.75 else int(rng.integers(len(current)))
        if b == a:
            continue
        used_b = int(sizes[current[b]].sum()) if current[b] else 0
        movable = [i for i in current[a] if i not in current[b]]
        if not movable:
            continue
        move = list(current)
        if used_b < slots_per_rank and rng.random() < 0.5:
            fitting = [i for i in movable if used_b + sizes[i] <= slots_per_rank]
            if fitting:
                i = fitting[int(rng.integers(len(fitting)))]
                move[a] = [x for x in current[a] if x != i]
                move[b] = current[b] + [i]
                return move, (a, b)
        pairs = [(i, j) for i in movable for j in current[b] if sizes[j] == sizes[i] and j not in current[a]]
        if not pairs:
            continue
        # The swap that leaves the two ranks closest to even, with a random pick among near ties.
        spread = np.array([abs((loads[a] - copy_load[i] + copy_load[j]) - (loads[b] - copy_load[j] + copy_load[i]))
                           for i, j in pairs])
        near = np.flatnonzero(spread <= spread.min() * 1.05 + 1e-12)
        i, j = pairs[int(near[rng.integers(len(near))])]
        move[a] = [x for x in current[a] if x != i] + [j]
        move[b] = [x for x in current[b] if x != j] + [i]
        return move, (a, b)
    return None
