"""Adding experts to a placement that is already live, without moving any old copy.

:func:`extend_layers` keeps every old copy where it is and packs the new
experts (and replicas of them, into slots the budget leaves) onto the least
loaded ranks with room, longest processing time first. Where the budget has
fewer slots than that needs, the least needed old replicas give theirs up
(dropping a copy moves nothing). :mod:`.moves` then buys balance back with
migrations, best gain per byte first.
"""

from __future__ import annotations

import numpy as np

from pathsim.planner.packing import PackingError, replicate


def _loads(rank_lists: list[list[int]], copy_load: np.ndarray) -> np.ndarray:
    return np.array([copy_load[r].sum() if r else 0.0 for r in rank_lists])


def copy_loads(rank_lists: list[list[int]], load: np.ndarray) -> np.ndarray:
    """Load of one copy of each expert: its load split evenly over its copies."""
    copies = np.bincount([e for r in rank_lists for e in r], minlength=len(load))
    return load / np.maximum(copies, 1)


def _drop_spare_replicas(rank_lists: list[list[int]], load: np.ndarray, count: int) -> None:
    """Remove `count` old replica copies, each time the one whose expert needs a copy least."""
    for _ in range(count):
        copies = np.bincount([e for r in rank_lists for e in r], minlength=len(load))
        spare = np.flatnonzero(copies > 1)
        if spare.size == 0:
            raise PackingError("no replica left to make room for the new experts")
        e = int(spare[np.argmin(load[spare] / (copies[spare] - 1))])
        copy_load = copy_loads(rank_lists, load)
        holders = [r for r, rank in enumerate(rank_lists) if e in rank]
        busiest = max(holders, key=lambda r: (copy_load[rank_lists[r]].sum(), -r))
        rank_lists[busiest].remove(e)


def extend_layers(old: list[list[list[int]]], load: np.ndarray, old_experts: int, physical_slots: int,
                  slots_per_rank: int) -> list[list[list[int]]]:
    """Per-layer rank lists with the experts old_experts.. added and no old copy moved.

    ``load`` is (layers × experts) expected load per copy of the expert set
    after the change; ``physical_slots`` the copies each layer should hold.
    """
    layers = []
    new_ids = np.arange(old_experts, load.shape[1])
    for l, before in enumerate(old):
        rank_lists = [list(r) for r in before]
        ranks = len(rank_lists)
        held = sum(len(r) for r in rank_lists)
        room_for_new = physical_slots - held
        if room_for_new < len(new_ids):
            _drop_spare_replicas(rank_lists, load[l], len(new_ids) - room_for_new)
            room_for_new = len(new_ids)
        weights = load[l, new_ids]
        copies = replicate(weights, np.ones(len(new_ids), dtype=np.int64), room_for_new - len(new_ids), ranks)
        rank_load = _loads(rank_lists, copy_loads(rank_lists, load[l]))
        room = slots_per_rank - np.array([len(r) for r in rank_lists])
        copy_ids, copy_w = np.repeat(new_ids, copies), np.repeat(weights / copies, copies)
        for k in np.lexsort((copy_ids, -copy_w)):
            e, w = int(copy_ids[k]), float(copy_w[k])
            fits = np.flatnonzero((room > 0) & np.array([e not in r for r in rank_lists]))
            if fits.size == 0:
                raise PackingError(f"no rank has a free slot for expert {e}")
            r = int(fits[np.argmin(rank_load[fits])])
            rank_lists[r].append(e)
            room[r] -= 1
            rank_load[r] += w
        layers.append([sorted(r) for r in rank_lists])
    return layers
