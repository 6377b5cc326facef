"""Placement policies: from a prepared run (and its expected expert loads) to a Placement.

- ``round_robin``, ``contiguous``: by expert id only;
- ``balanced``: replicas to the hottest experts, then LPT packing per MoE layer
  and local moves off the most loaded rank;
- ``eplb``: DeepSeek's EPLB (expert groups onto nodes, replicas inside nodes,
  copies onto GPUs), on the fat tree's servers or on one node of a torus;
- ``topology``: replicas as ``balanced``, then recursive bisection that keeps
  experts on the half of the chips that sends them more tokens, and local
  moves within blocks of neighbouring chips;
- ``search``: time-bounded annealing on the simulator's predicted MoE-layer
  time, started from the best of ``balanced`` and ``topology``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import time
from pathlib import Path

import numpy as np

from pathsim.errors import PathsimConfigError
from pathsim.choices import DEFAULT_POLICY, POLICIES, SHAPE_ONLY_POLICIES
from pathsim.placement import Placement, check_shape, read_placement, shape_only_placement
from pathsim.planner.constraints import PlanOptions, SlotBudget, slot_budget
from pathsim.planner.demand import ExpertDemand, expected_demand
from pathsim.planner.eplb import rebalance_experts
from pathsim.planner.moves import LayerMoves, rebalance_moves
from pathsim.planner.packing import PackingError, affinity_pack, lpt_pack, replicate, separate_copies
from pathsim.topology import FatTree

if TYPE_CHECKING:  # the run setup composes the planner, not the other way round
    from pathsim.run_setup import RunSetup

TOPOLOGY_BLOCK_RANKS = 8  # neighbouring ranks in chip order the topology policy balances among: a DGX server, a torus row segment


def locality_order(demand: ExpertDemand) -> np.ndarray:
    """Rank positions sorted by physical chip id: torus rows and planes, fat-tree servers and leaves stay contiguous."""
    return np.argsort(demand.position_chip, kind="stable")


def _placement(policy: str, setup: RunSetup, budget: SlotBudget, layers: list[list[list[int]]], options: PlanOptions) -> Placement:
    """Items per rank per layer → expert ids per rank per layer, with what the plan was given."""
    slots = [[sorted(e for i in rank for e in budget.item_members[i]) for rank in layer] for layer in layers]
    return Placement(policy=policy, experts=setup.workload.model.moe.experts, ranks=setup.layout.expert, slots=slots,
                     planned_for=_provenance(setup, options, budget))


def _provenance(setup: RunSetup, options: PlanOptions, budget: SlotBudget | None) -> dict:
    info = {"cluster": setup.cluster.name, "workload": setup.workload.name, "seed": setup.seed,
            "options": options.model_dump(mode="json")}
    if budget is not None and budget.note:
        info["note"] = budget.note
    return info


def _replica_counts(setup: RunSetup, budget: SlotBudget, weights: np.ndarray) -> np.ndarray:
    return replicate(weights, budget.item_sizes, budget.physical_slots - setup.workload.model.moe.experts, setup.layout.expert)


def _balanced(setup: RunSetup, demand: ExpertDemand, budget: SlotBudget) -> list[list[list[int]]]:
    layers = []
    sizes = budget.item_sizes
    for l in range(demand.layers):
        weights = budget.item_weights(demand.load[l])
        copies = _replica_counts(setup, budget, weights)
        packed = lpt_pack(weights, sizes, copies, setup.layout.expert, budget.slots_per_rank)
        refined = LayerMoves(l, packed, weights / copies, np.zeros(len(weights)), sizes, budget.slots_per_rank)
        rebalance_moves([refined])
        layers.append(refined.rank_lists)
    return layers


def _topology(setup: RunSetup, demand: ExpertDemand, budget: SlotBudget) -> list[list[list[int]]]:
    order = locality_order(demand)
    members = budget.item_members
    flat = np.concatenate(members)
    starts = np.cumsum([0] + [len(m) for m in members[:-1]])
    block = np.empty(len(order), dtype=np.int64)
    block[order] = np.arange(len(order)) // TOPOLOGY_BLOCK_RANKS
    layers = []
    for l in range(demand.layers):
        weights = budget.item_weights(demand.load[l])

        def demand_from(positions: np.ndarray, items: np.ndarray, l=l) -> np.ndarray:
            per_item = np.add.reduceat(demand.from_positions(l, positions)[flat], starts)
            return per_item[items]

        copies = _replica_counts(setup, budget, weights)
        packed = affinity_pack(weights, budget.item_sizes, copies, order, budget.slots_per_rank, demand_from)
        # The bisection balances halves to within its tolerance; moves inside blocks of neighbouring
        # chips even out the leaves without sending tokens further.
        refined = LayerMoves(l, packed, weights / copies, np.zeros(len(weights)), budget.item_sizes, budget.slots_per_rank, block)
        rebalance_moves([refined])
        layers.append(refined.rank_lists)
    return layers


def eplb_nodes(setup: RunSetup, demand: ExpertDemand) -> int:
    """Servers one expert-parallel group spans on a fat tree (EPLB's 'nodes'); 1 on a torus (no faster island)."""
    if not isinstance(setup.topology, FatTree):
        return 1
    node = np.asarray(setup.topology.node_of)[demand.position_chip[locality_order(demand)]]
    _, counts = np.unique(node, return_counts=True)
    contiguous = bool(np.all(np.diff(node) >= 0))
    return len(counts) if contiguous and counts.min() == counts.max() else 1


def _eplb(setup: RunSetup, demand: ExpertDemand, budget: SlotBudget, options: PlanOptions) -> list[list[list[int]]]:
    experts, ranks = setup.workload.model.moe.experts, setup.layout.expert
    if options.together:
        raise PathsimConfigError("<arguments>", "together", "EPLB packs single experts and cannot keep sets together",
                                 "use the balanced or topology policy for together constraints")
    nodes = options.eplb_nodes or eplb_nodes(setup, demand)
    groups = options.eplb_groups
    physical = budget.slots_per_rank * ranks  # EPLB gives every GPU the same number of slots
    if options.replicas is not None and budget.physical_slots != physical:
        lower = (budget.physical_slots // ranks) * ranks - experts
        choices = " or ".join(str(r) for r in (lower, physical - experts) if r >= 0)
        raise PathsimConfigError("<arguments>", "replicas", f"EPLB fills every rank's slots alike: experts + replicas must be a "
                                 f"multiple of the {ranks} ranks, and {experts} + {options.replicas} is not", f"use --replicas {choices}")
    for field, ok, why in (("eplb_groups", experts % groups == 0, f"{groups} groups do not divide {experts} experts"),
                           ("eplb_nodes", ranks % nodes == 0, f"{nodes} nodes do not divide {ranks} ranks per group")):
        if not ok:
            raise PathsimConfigError("<arguments>", field, why, "pick a divisor")
    phy2log, _, _ = rebalance_experts(demand.load, physical, groups, nodes, ranks)
    order = locality_order(demand)
    per_gpu = budget.slots_per_rank
    layers = []
    for l in range(demand.layers):
        rank_items: list[list[int]] = [[] for _ in range(ranks)]
        for g in range(ranks):
            rank_items[int(order[g])] = phy2log[l, g * per_gpu:(g + 1) * per_gpu].tolist()
        copies = np.bincount(phy2log[l], minlength=experts)
        separate_copies(rank_items, demand.load[l] / copies, np.ones(experts, dtype=np.int64), order)
        layers.append(rank_items)
    return layers


def place_experts(policy: str, setup: RunSetup, options: PlanOptions | None = None,
                  demand: ExpertDemand | None = None) -> Placement:
    """A placement for this run by a named policy (see POLICIES)."""
    options = options or PlanOptions()
    moe = setup.workload.model.moe
    if moe is None:
        raise PathsimConfigError(setup.source, "model.moe", f"{setup.workload.name} has no experts to place", "plan an MoE workload")
    if policy not in POLICIES:
        raise PathsimConfigError("<arguments>", "policy", f"unknown placement policy {policy!r}", f"use one of {', '.join(POLICIES)}")
    if policy in SHAPE_ONLY_POLICIES:
        if options.replicas or options.together:
            raise PathsimConfigError("<arguments>", "replicas" if options.replicas else "together",
                                     f"{policy} places experts by id alone and takes no replicas or together sets",
                                     "use balanced, eplb, topology or search")
        placement = shape_only_placement(policy, moe.experts, setup.layout.expert)
        slot_budget(setup, options)  # HBM: the budget fills every rank as these policies do
        return placement.model_copy(update={"planned_for": _provenance(setup, options, None)})
    demand = demand or expected_demand(setup)
    budget = slot_budget(setup, options)
    try:
        if policy == "balanced":
            layers = _balanced(setup, demand, budget)
        elif policy == "topology":
            layers = _topology(setup, demand, budget)
        elif policy == "eplb":
            layers = _eplb(setup, demand, budget, options)
        else:
            from pathsim.planner.search import anneal  # needs the step coster; simple plans do without it
            began = time.perf_counter()
            starts = [_balanced(setup, demand, budget), _topology(setup, demand, budget)]
            layers, search = anneal(setup, demand, budget, starts, options, began)
            placement = _placement(policy, setup, budget, layers, options)
            return placement.model_copy(update={"planned_for": {**placement.planned_for, "search": search}})
    except PackingError as exc:
        raise PathsimConfigError("<arguments>", "together" if options.together else "replicas",
                                 f"the experts do not fit {budget.slots_per_rank} slots per chip ({exc})",
                                 "fewer or smaller together sets, or fewer replicas") from None
    return _placement(policy, setup, budget, layers, options)


def resolve_placement(spec: "str | Path | Placement | None", setup: RunSetup) -> Placement:
    """What ``simulate(placement=...)`` accepts: None (DEFAULT_POLICY), a policy name, a JSON file or a Placement."""
    moe = setup.workload.model.moe
    if isinstance(spec, Placement):
        return check_shape(spec, moe.experts, setup.layout.expert, setup.moe_layers, "<python placement>")
    if spec is None or str(spec) in POLICIES:  # the run reports whether memory fits; it does not refuse
        return place_experts(str(spec or DEFAULT_POLICY), setup, PlanOptions(enforce_hbm=False))
    return check_shape(read_placement(spec), moe.experts, setup.layout.expert, setup.moe_layers, str(spec))
