"""Local moves that lower a layer's most loaded rank, each priced in migrated bytes.

A move takes one copy off a layer's most loaded rank onto another rank
(where it has room), or swaps it with a copy there. Over all
MoE layers, the move with the highest gain per byte is taken first (free
moves before any that cost), until no move lowers a maximum by more than
``MIN_GAIN`` of the layer's mean or the byte budget is spent. The move list
is then a frontier between migrated bytes and balance: its prefixes are the
plans for smaller budgets.

With every copy free to move, it is plain makespan local search: what
``balanced`` runs after LPT packing, which falls up to a third short of the
optimum when ranks hold two or three items (Graham's 4/3 bound is tight
there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_GAIN = 1e-3  # of the layer's mean rank load: smaller gains are not worth a move


@dataclass(frozen=True)
class Move:
    layer: int
    rank_a: int  # the layer's most loaded rank when the move was chosen
    rank_b: int
    out_of_a: int  # item moved from a to b
    out_of_b: int | None  # item moved back from b to a (a swap), or None
    bytes: float  # migrated, whole cluster
    gain: float  # drop of the layer's maximum rank load


def apply_moves(layers: list[list[list[int]]], moves: list[Move]) -> list[list[list[int]]]:
    out = [[list(r) for r in layer] for layer in layers]
    for m in moves:
        _apply(out[m.layer], m)
    return [[sorted(r) for r in layer] for layer in out]


def _apply(rank_lists: list[list[int]], move: Move) -> None:
    rank_lists[move.rank_a].remove(move.out_of_a)
    rank_lists[move.rank_b].append(move.out_of_a)
    if move.out_of_b is not None:
        rank_lists[move.rank_b].remove(move.out_of_b)
        rank_lists[move.rank_a].append(move.out_of_b)


def _priority(move: Move) -> tuple:
    """Free moves first, then the most gain per byte; ties to the lower item ids (determinism)."""
    return (move.bytes > 0, -move.gain / move.bytes if move.bytes > 0 else -move.gain, move.out_of_a,
            -1 if move.out_of_b is None else move.out_of_b)


class LayerMoves:
    """One layer's rank lists, their loads, and the best move off its most loaded rank.

    A move's gain is how far it brings that rank and its partner below the
    rank's old load, whatever the other ranks hold: where many ranks tie at
    the top, each move lowers one of them and the maximum falls once all
    have moved. Every accepted move lowers the sorted vector of rank loads
    lexicographically, so the search ends.
    """

    def __init__(self, index: int, rank_lists: list[list[int]], copy_load: np.ndarray, copy_bytes: np.ndarray,
                 sizes: np.ndarray, slots_per_rank: int, block: np.ndarray | None = None):
        """``block``: a block id per rank; moves then stay inside the most loaded rank's block."""
        self.index = index
        self.block = block
        self.rank_lists = [list(r) for r in rank_lists]
        self.copy_load = np.append(np.asarray(copy_load, dtype=np.float64), 0.0)  # index -1: an empty slot
        self.copy_bytes = np.append(np.asarray(copy_bytes, dtype=np.float64), 0.0)
        self.sizes = np.append(np.asarray(sizes, dtype=np.int64), 0)
        self.slots_per_rank = slots_per_rank
        width = max(max((len(r) for r in self.rank_lists), default=0), slots_per_rank) + 1  # + one empty column
        self.table = np.full((len(self.rank_lists), width), -1, dtype=np.int64)
        for r in range(len(self.rank_lists)):
            self._store(r)
        self.min_gain = MIN_GAIN * float(self.loads.mean())
        self.best: Move | None = None
        self.refresh()

    def _store(self, r: int) -> None:
        items = self.rank_lists[r]
        self.table[r] = -1
        self.table[r, : len(items)] = items

    @property
    def loads(self) -> np.ndarray:
        return self.copy_load[self.table].sum(axis=1)

    def refresh(self) -> None:
        loads = self.loads
        used = self.sizes[self.table].sum(axis=1)
        a = int(np.argmax(loads))
        peak = loads[a]
        on_a = np.isin(self.table, self.rank_lists[a]) & (self.table >= 0)
        w_j, size_j, bytes_j = self.copy_load[self.table], self.sizes[self.table], self.copy_bytes[self.table]
        best, best_key = None, None
        for i in self.rank_lists[a]:
            holds_i = (self.table == i).any(axis=1)
            ok = ~on_a & ~holds_i[:, None]
            ok &= (used[:, None] + self.sizes[i] - size_j <= self.slots_per_rank)
            ok &= (used[a] - self.sizes[i] + size_j <= self.slots_per_rank)
            ok[a] = False
            if self.block is not None:
                ok &= (self.block == self.block[a])[:, None]
            new_a = peak - self.copy_load[i] + w_j
            new_b = loads[:, None] + self.copy_load[i] - w_j
            gain = np.where(ok, peak - np.maximum(new_a, new_b), -np.inf)
            cost = self.copy_bytes[i] + bytes_j
            for free in (True, False):
                pick = gain > self.min_gain
                pick &= (cost == 0) if free else (cost > 0)
                if not pick.any():
                    continue
                score = np.where(pick, gain if free else gain / np.where(cost > 0, cost, 1.0), -np.inf)
                b, col = np.unravel_index(int(np.argmax(score)), score.shape)
                j = int(self.table[b, col])
                move = Move(self.index, a, int(b), int(i), None if j < 0 else j, float(cost[b, col]), float(gain[b, col]))
                if best_key is None or _priority(move) < best_key:
                    best, best_key = move, _priority(move)
                break  # a free move beats any that costs
        self.best = best

    def apply(self, move: Move) -> None:
        _apply(self.rank_lists, move)
        for r in (move.rank_a, move.rank_b):
            self._store(r)
        self.refresh()


def rebalance_moves(layers: list[LayerMoves], byte_budget: float = float("inf"), max_moves: int = 1_000_000) -> list[Move]:
    """Greedy moves over all layers, best gain per migrated byte first, within `byte_budget`; applies them to `layers`."""
    moves: list[Move] = []
    spent = 0.0
    while len(moves) < max_moves:
        candidates = [s for s in layers if s.best is not None and spent + s.best.bytes <= byte_budget]
        if not candidates:
            break
        state = min(candidates, key=lambda s: (*_priority(s.best), s.index))
        move = state.best
        moves.append(move)
        spent += move.bytes
        state.apply(move)
    return moves
