"""Phases that are weighted sums of a few fixed traffics, priced from those traffics' loads.

The fast model routes bytes onto links linearly (a flow's bytes split over its
routes in fixed shares), so the loads of ``Σ w_k T_k`` are ``Σ w_k loads(T_k)``.
An MoE dispatch is such a sum: every micro-batch of a layer sends the same
(class of source, expert position) blocks, only their sizes change. A
:class:`PhaseBasis` routes the k basis traffics' flows once, all together; each
phase after that is a (k × links) product instead of a routing, and its link
bytes are kept as its k weights (:class:`LinkBytes`), not as an array over every
link of the cluster.

The route latency of a phase depends only on which flows carry bytes, so it is
computed once per distinct set of non-zero weights, by the topology's own rule on
the phase as its model would route it (every non-zero weight set to one).
"""

from __future__ import annotations

from functools import cached_property
from typing import Callable

import numpy as np
import scipy.sparse as sp

from pathsim.topology.base import Topology
from pathsim.traffic import Traffic


class PhaseBasis:
    """Phases ``Σ_k w_k T_k`` over k basis traffics, each a set of unit flows: ``src[f] → dst[f]`` belongs to basis
    traffic ``component[f]`` (a flow from a chip to itself is a local copy and loads no link). `traffic_of(w)` is
    the phase of weights `w` in the form its network model would route it, for the route latency."""

    def __init__(self, topology: Topology, src: np.ndarray, dst: np.ndarray, component: np.ndarray, size: int,
                 traffic_of: Callable[[np.ndarray], Traffic], all_to_all: bool = False):
        self.topology, self.size, self.traffic_of = topology, size, traffic_of
        moves = src != dst
        src, dst, component = src[moves], dst[moves], component[moves]
        if len(src):
            # One routing of every flow: the (k × flows) membership times the (flows × links) route shares, kept
            # sparse until only the links some flow uses are left (a fat tree of thousands of GPUs has tens of
            # thousands of links; one basis uses a few of them).
            members = sp.csr_matrix((np.ones(len(src)), (component, np.arange(len(src)))), shape=(size, len(src)))
            loads = (members @ topology.incidence(src, dst)).tocsr()
            loads.eliminate_zeros()
            self.links = np.unique(loads.indices)  # the links any of them uses
            self.loads = loads[:, self.links].toarray(order="F")  # (column-major: products over it round as they always have)
        else:
            self.links, self.loads = np.zeros(0, dtype=np.int64), np.zeros((size, 0))
        self._bandwidth = topology.reached_bandwidth(all_to_all)[self.links]
        self._latency: dict[bytes, float] = {}

    @cached_property
    def load_totals(self) -> np.ndarray:
        """Each basis traffic's bytes summed over its links."""
        return self.loads.sum(axis=1)

    def price(self, weights: np.ndarray) -> tuple[np.ndarray, list["LinkBytes"]]:
        """Time of each phase (one row of weights ≥ 0 per phase) under the fast model — the most loaded link's
        drain time plus the longest route's latency — and its link bytes."""
        weights = np.asarray(weights, dtype=np.float64)
        if weights.ndim != 2 or weights.shape[1] != self.size:
            raise ValueError(f"weights must be (phases × {self.size}), got {weights.shape}")
        loads = weights @ self.loads
        drain = np.max(loads / self._bandwidth, axis=1, initial=0.0)
        used = weights > 0
        packed = np.packbits(used, axis=1)  # (one key per phase: which weights are non-zero)
        latency = np.zeros(len(weights))
        for row in np.flatnonzero(drain > 0):
            key = packed[row].tobytes()
            known = self._latency.get(key)
            latency[row] = known if known is not None else self._route_latency(used[row], key)
        return drain + latency, [LinkBytes(row, self) for row in weights]

    def _route_latency(self, used: np.ndarray, key: bytes) -> float:
        """The longest route latency among the phase's flows: a function of which weights are non-zero only."""
        loads = np.zeros(self.topology.num_links)
        loads[self.links] = used.astype(np.float64) @ self.loads
        self._latency[key] = float(self.topology.max_path_latency(self.traffic_of(used.astype(np.float64)), loads))
        return self._latency[key]


class LinkBytes:
    """One phase's bytes per link, held as its weights over a basis (see :class:`PhaseBasis`). (A plain class: a
    step makes tens of thousands.)"""

    __slots__ = ("weights", "basis")

    def __init__(self, weights: np.ndarray, basis: PhaseBasis):
        self.weights, self.basis = weights, basis

    def dense(self) -> np.ndarray:
        out = np.zeros(self.basis.topology.num_links)
        out[self.basis.links] = self.weights @ self.basis.loads
        return out

    def total(self) -> float:
        """Bytes summed over every link, without the per-link array: the weights times each basis traffic's total."""
        return float(self.weights @ self.basis.load_totals)


def add_link_bytes(total: np.ndarray, records: list[tuple[np.ndarray | LinkBytes, int]]) -> None:
    """Add `count` times each record's link bytes to `total` in place; records over one basis are summed as
    weights first (one product per basis, not one array per phase)."""
    by_basis: dict[int, tuple[PhaseBasis, np.ndarray]] = {}
    for record, count in records:
        if isinstance(record, LinkBytes):
            basis, weights = by_basis.get(id(record.basis), (record.basis, np.zeros(record.basis.size)))
            by_basis[id(record.basis)] = (basis, weights + count * record.weights)
        else:
            total += record * count if count > 1 else record
    for basis, weights in by_basis.values():
        total[basis.links] += weights @ basis.loads


def total_link_bytes(record: "np.ndarray | LinkBytes") -> float:
    """Bytes summed over every link of the topology."""
    return record.total() if isinstance(record, LinkBytes) else float(record.sum())


def dense_link_bytes(record: "np.ndarray | LinkBytes") -> np.ndarray:
    """Bytes per link of every link of the topology."""
    return record.dense() if isinstance(record, LinkBytes) else record
