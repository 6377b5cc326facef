"""The fluid network model: flow-level max-min fair sharing.

Each flow (a chip pair's bytes, split over its ECMP routes in fixed shares)
gets a rate; rates are max-min fair subject to every link's bandwidth, found by
progressive filling (Bertsekas & Gallager, Data Networks, §6.5.2): raise all
unfrozen rates together until a link saturates, freeze the flows crossing it,
repeat. When a flow finishes, the rates are solved again for the rest. Each
filling round is two sparse matrix-vector products, so a round costs
O(route entries) and no Python loop touches a flow or a link. A phase costs
O(completion events × filling rounds × route entries): flows of equal size on
symmetric paths finish together (one event for a uniform all-to-all), while
thousands of distinct sizes mean thousands of re-solves — the fast model is
the tool for those; this one validates it and gives per-flow finish times.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from pathsim.network.timing import PhaseTiming
from pathsim.topology.base import Topology
from pathsim.traffic import Traffic

_REL_TOL = 1e-9


def max_min_rates(routes: sp.csr_matrix, capacity: np.ndarray) -> np.ndarray:
    """Max-min fair rates of flows (rows of `routes`: share of the flow on each link)."""
    n_flows = routes.shape[0]
    rate = np.zeros(n_flows)
    if n_flows == 0:
        return rate
    by_link = routes.T.tocsr()
    remaining = capacity.astype(np.float64).copy()
    free = np.ones(n_flows, dtype=bool)
    while free.any():
        demand = by_link @ free.astype(np.float64)  # summed shares of the still-growing flows
        pressed = demand > 0
        if not pressed.any():
            raise ValueError("a flow crosses no link")
        step = np.min(remaining[pressed] / demand[pressed])
        rate[free] += step
        remaining -= step * demand
        saturated = pressed & (remaining <= _REL_TOL * capacity)
        frozen_now = free & ((routes @ saturated.astype(np.float64)) > 0)
        free &= ~frozen_now
    return rate


def completion_times(routes: sp.csr_matrix, sizes: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """When each flow has drained, with rates re-solved at every completion."""
    sizes = np.asarray(sizes, dtype=np.float64)
    finish = np.zeros(len(sizes))
    left = sizes.copy()
    active = np.nonzero(left > 0)[0]
    now = 0.0
    while len(active):
        rate = max_min_rates(routes[active], capacity)
        dt = np.min(left[active] / rate)
        now += dt
        left[active] -= rate * dt
        done = left[active] <= _REL_TOL * sizes[active]
        finish[active[done]] = now
        active = active[~done]
    return finish


class FluidModel:
    name = "fluid"

    def __init__(self, topology: Topology):
        self.topology = topology

    def phase(self, traffic: Traffic, all_to_all: bool = False, in_switch: bool = False) -> PhaseTiming:
        src, dst, nbytes = traffic.flows()
        if len(src) == 0:
            return PhaseTiming(0.0, 0.0, np.zeros(self.topology.num_links), np.zeros(0))
        routes = self.topology.incidence(src, dst)
        drain = completion_times(routes, nbytes, self.topology.reached_bandwidth(all_to_all, in_switch))
        latency = self.topology.path_latency(src, dst)
        link_bytes = routes.T @ nbytes
        if in_switch:
            latency = np.maximum(latency, self.topology.in_switch_floor(link_bytes > 0))
        return PhaseTiming(float(drain.max()), float(latency.max()), link_bytes, drain + latency)
