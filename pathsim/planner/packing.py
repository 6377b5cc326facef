"""Packing placement items (experts or together groups) and their copies onto the ranks of a group.

All three work on one MoE layer:

- :func:`replicate`: give spare slots to the item with the highest load per
  copy (EPLB's rule), so a hot expert's tokens split over several chips;
- :func:`lpt_pack`: longest-processing-time first — copies by decreasing
  load, each onto the least-loaded rank with room that does not already hold
  that item (Graham's LPT, within 4/3 of the optimal makespan);
- :func:`affinity_pack`: recursive bisection of the ranks in locality order
  (chip ids: torus rows, fat-tree servers and leaves); at each cut copies go,
  by decreasing load, to the half whose chips send them more tokens, unless
  that half would then average more per rank than the makespan lower bound
  (max of the mean rank load and the heaviest copy) plus ``tolerance``.
"""

from __future__ import annotations

import heapq
from typing import Callable

import numpy as np


class PackingError(ValueError):
    """The items do not fit the slots (a constraint is infeasible)."""


def replicate(weights: np.ndarray, sizes: np.ndarray, extra_slots: int, max_copies: int) -> np.ndarray:
    """Copies of each item: extra copies go, one at a time, to the highest load per copy that still fits."""
    copies = np.ones(len(weights), dtype=np.int64)
    heap = [(-float(w), i) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    left = extra_slots
    while heap and left > 0:
        _, i = heapq.heappop(heap)
        if sizes[i] > left or copies[i] >= max_copies:
            continue  # too wide for what is left, or on every rank already
        copies[i] += 1
        left -= int(sizes[i])
        heapq.heappush(heap, (-float(weights[i]) / copies[i], i))
    return copies


def _copies(weights: np.ndarray, copies: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Item id and load of every copy, heaviest first (ties: lower item id)."""
    item = np.repeat(np.arange(len(weights)), copies)
    load = (weights / copies)[item]
    order = np.lexsort((item, -load))
    return item[order], load[order]


def lpt_pack(weights: np.ndarray, sizes: np.ndarray, copies: np.ndarray, ranks: int, slots_per_rank: int) -> list[list[int]]:
    """Items on each rank (copies of one item on distinct ranks)."""
    item, load = _copies(weights, copies)
    rank_items: list[list[int]] = [[] for _ in range(ranks)]
    room = np.full(ranks, slots_per_rank)
    heap = [(0.0, r) for r in range(ranks)]
    for i, w in zip(item.tolist(), load.tolist()):
        skipped = []
        while heap:
            rank_load, r = heapq.heappop(heap)
            if room[r] >= sizes[i] and i not in rank_items[r]:
                break
            skipped.append((rank_load, r))
        else:
            raise PackingError(f"no rank has {sizes[i]} free slot(s) for another copy of item {i}")
        rank_items[r].append(i)
        room[r] -= sizes[i]
        if room[r] > 0:
            heapq.heappush(heap, (rank_load + w, r))
        for entry in skipped:
            if room[entry[1]] > 0:
                heapq.heappush(heap, entry)
    return rank_items


def affinity_pack(weights: np.ndarray, sizes: np.ndarray, copies: np.ndarray, ranks_in_order: np.ndarray,
                  slots_per_rank: int, demand_from: Callable[[np.ndarray, np.ndarray], np.ndarray],
                  tolerance: float = 0.05) -> list[list[int]]:
    """Items on each rank, keeping items near the ranks that send them tokens.

    ``demand_from(ranks, items)`` gives the assignments that sources at those
    ranks send each of the items (every copy of an item is drawn the same way).
    """
    item, load = _copies(weights, copies)
    rank_items: list[list[int]] = [[] for _ in range(len(ranks_in_order))]
    total_slots = int(sizes[item].sum())
    if total_slots > slots_per_rank * len(ranks_in_order):
        raise PackingError(f"{total_slots} slots needed, {slots_per_rank * len(ranks_in_order)} available")

    # No chip can finish before the mean load or the heaviest copy: a half of the ranks may take up to
    # (its ranks × that bound × (1 + tolerance)) of load, so locality is free wherever balance allows it.
    bound = max(float(load.sum()) / len(ranks_in_order), float(load.max(initial=0.0))) * (1.0 + tolerance)

    def split(ranks: np.ndarray, members: np.ndarray) -> None:
        if len(ranks) == 1:
            rank_items[int(ranks[0])].extend(item[members].tolist())
            return
        halves = (ranks[: len(ranks) // 2], ranks[len(ranks) // 2:])
        slots = [len(h) * slots_per_rank for h in halves]
        limit = np.array([len(h) * bound for h in halves])
        ids = item[members]
        gain = demand_from(halves[0], ids) - demand_from(halves[1], ids)
        scale = np.abs(gain).max(initial=0.0)
        leaning = np.where(np.abs(gain) > 1e-9 * max(scale, 1e-300), np.sign(gain), 0.0)
        filled, used = np.zeros(2), np.zeros(2, dtype=np.int64)
        side_of = np.empty(len(members), dtype=np.int64)
        for j, m in enumerate(members):  # members are heaviest first
            size, w = int(sizes[item[m]]), load[m]
            emptier = int((filled[1] + w) / limit[1] < (filled[0] + w) / limit[0])
            first = emptier if leaning[j] == 0 else (0 if leaning[j] > 0 else 1)  # no preference: as LPT would
            other = 1 - first
            fits = [used[s] + size <= slots[s] for s in (0, 1)]
            if fits[first] and (filled[first] + w <= limit[first] or not fits[other]):
                side = first
            elif fits[other] and filled[other] + w <= limit[other]:
                side = other
            else:  # both halves at their load bound: the emptier one that has slots
                side = emptier if fits[emptier] else 1 - emptier
            if not fits[side]:
                raise PackingError("items do not fit the slots")
            side_of[j] = side
            filled[side] += w
            used[side] += size
        for s in (0, 1):
            split(halves[s], members[side_of == s])

    split(np.asarray(ranks_in_order), np.arange(len(item)))
    separate_copies(rank_items, weights / copies, sizes, ranks_in_order)
    return rank_items


def separate_copies(rank_items: list[list[int]], copy_load: np.ndarray, sizes: np.ndarray, ranks_in_order: np.ndarray) -> None:
    """Where a rank holds two copies of one item, swap one with an equal-size item on the nearest rank
    (in locality order) that lacks it, choosing the closest load."""
    position = {int(r): k for k, r in enumerate(ranks_in_order)}
    for a in range(len(rank_items)):
        while len(set(rank_items[a])) != len(rank_items[a]):
            dup = next(i for i in rank_items[a] if rank_items[a].count(i) > 1)
            best = None
            for b in sorted(range(len(rank_items)), key=lambda b: abs(position[b] - position[a])):
                if b == a or dup in rank_items[b]:
                    continue
                candidates = [j for j in rank_items[b] if sizes[j] == sizes[dup] and j not in rank_items[a]]
                if candidates:
                    best = (b, min(candidates, key=lambda j: (abs(copy_load[j] - copy_load[dup]), j)))
                    break
            if best is None:
                raise PackingError(f"item {dup} has more copies than ranks can hold apart")
            b, j = best
            rank_items[a].remove(dup)
            rank_items[a].append(j)
            rank_items[b].remove(j)
            rank_items[b].append(dup)
