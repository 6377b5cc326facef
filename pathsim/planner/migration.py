"""What it costs to go from one placement to another: expert copies moved, bytes, and network seconds.

A copy of an old expert that lands on a rank which did not hold it must be
sent there, in every expert-parallel group and tensor rank: the expert's
weights plus the optimizer state that rank keeps for it (ZeRO-1: its shard).
Gradients are rebuilt every step and never move. Experts a model did not have
before (a new task's) start on their ranks fresh: they cost nothing to place.
Copies that simply disappear (a dropped replica) cost nothing either.

Each moved copy is sent by the old holder nearest the new rank (in chip
order), all of them in one phase; the network model prices that phase like
any other (the fast model: its most loaded link), so migration seconds see
the same congestion an all-to-all would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from pathsim.memory import OPTIMIZER_STATE_BYTES
from pathsim.model_math import layer_shapes
from pathsim.traffic import Traffic

if TYPE_CHECKING:  # the run setup composes the planner, not the other way round
    from pathsim.run_setup import RunSetup

DENSE_MATCH_RANKS = 1024  # a dense 1024² assignment solves in well under a second


def expert_copy_bytes(setup: RunSetup) -> float:
    """Bytes one chip receives when an expert copy moves onto it: weights and its optimizer state."""
    workload, layout = setup.workload, setup.layout
    params = layer_shapes(workload.model).expert_params / layout.expert_shard
    state = OPTIMIZER_STATE_BYTES[workload.training.optimizer]
    if workload.training.shard_optimizer:
        state /= layout.expert_weight_copies
    return params * (workload.model.dtype_bytes + state)


@dataclass(frozen=True)
class Migration:
    copies: int  # expert copies moved per expert-parallel group and tensor rank, over all MoE layers
    bytes: float  # over the whole cluster
    seconds: float  # the moves as one network phase

    @classmethod
    def none(cls) -> "Migration":
        return cls(0, 0.0, 0.0)


def moved_copies(old: list[list[list[int]]], new: list[list[list[int]]], old_experts: int) -> list[tuple[int, int, int, int]]:
    """(layer, expert, source rank, destination rank) for every old-expert copy the new placement adds to a rank.

    The source is the old holder nearest the destination by rank position
    (ranks are in chip order, so neighbours share a server or a torus row).
    """
    moves = []
    for l, (before, after) in enumerate(zip(old, new)):
        holders: dict[int, list[int]] = {}
        for r, rank in enumerate(before):
            for e in rank:
                holders.setdefault(e, []).append(r)
        for r, rank in enumerate(after):
            had = set(before[r])
            for e in rank:
                if e < old_experts and e not in had:
                    src = min(holders[e], key=lambda h: (abs(h - r), h))
                    moves.append((l, e, src, r))
    return moves


def migration_cost(setup: RunSetup, old: list[list[list[int]]], new: list[list[list[int]]], old_experts: int) -> Migration:
    """Copies, bytes and seconds to turn per-layer rank lists `old` into `new` on this run's cluster."""
    moves = moved_copies(old, new, old_experts)
    if not moves:
        return Migration.none()
    layout = setup.layout
    per_copy = expert_copy_bytes(setup)
    arr = np.array(moves, dtype=np.int64)
    src_pos, dst_pos = arr[:, 2], arr[:, 3]
    # Every expert group and tensor rank moves its own instance of each copy.
    copies = np.arange(layout.expert_replication)[None, :]
    src = layout.chip(layout.rank_at(copies, src_pos[:, None])).ravel()
    dst = layout.chip(layout.rank_at(copies, dst_pos[:, None])).ravel()
    traffic = Traffic.from_flows(layout.physical_chips, src, dst, np.full(len(src), per_copy))
    seconds = setup.network.phase(traffic).time_s
    return Migration(copies=len(moves), bytes=per_copy * len(src), seconds=seconds)


def match_ranks(old: list[list[int]], new: list[list[int]], old_experts: int) -> list[list[int]]:
    """`new`'s rank lists relabelled so ranks keep as many of their old experts as possible.

    For a placement that does not care which rank is which (``balanced``), any
    permutation of its ranks balances as well; this picks the one that moves
    the fewest copies: an optimal assignment on the (new rank × old rank)
    matrix of shared experts. Above ``DENSE_MATCH_RANKS`` ranks the matrix is
    too large to solve densely, and a minimum-weight full matching over the
    sparse graph of pairs that share experts (plus each rank with itself) is
    used instead, which may keep slightly fewer copies.
    """
    ranks = len(new)
    rows, cols, kept = list(range(ranks)), list(range(ranks)), [0.0] * ranks
    where: dict[int, list[int]] = {}
    for r, rank in enumerate(old):
        for e in rank:
            if e < old_experts:
                where.setdefault(e, []).append(r)
    for i, rank in enumerate(new):
        for e in rank:
            for r in where.get(e, ()):
                rows.append(i)
                cols.append(r)
                kept.append(1.0)
    overlap = sp.coo_matrix((kept, (rows, cols)), shape=(ranks, ranks)).tocsr()  # duplicates sum; zeros stay stored
    if ranks <= DENSE_MATCH_RANKS:
        rows_of, cols_of = linear_sum_assignment(overlap.toarray(), maximize=True)
        return _relabelled(new, rows_of, cols_of)
    weight = overlap.copy()
    # Minimising Σ (ceiling − kept) maximises the copies kept; every stored entry stays positive.
    weight.data = (overlap.data.max(initial=0.0) + 1.0) - overlap.data
    rows_of, cols_of = min_weight_full_bipartite_matching(weight)
    return _relabelled(new, rows_of, cols_of)


def _relabelled(new: list[list[int]], rows_of: np.ndarray, cols_of: np.ndarray) -> list[list[int]]:
    ranks = len(new)
    relabelled: list[list[int]] = [[] for _ in range(ranks)]
    for i, r in zip(rows_of.tolist(), cols_of.tolist()):
        relabelled[r] = sorted(new[i])
    return relabelled
