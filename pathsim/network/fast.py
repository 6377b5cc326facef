"""The fast network model: a lower bound from the most loaded link.

Every byte of the phase is routed onto links (vectorised per topology family);
no schedule can finish before the busiest link has carried its bytes, so
``max_l bytes_l / bandwidth_l`` bounds the drain time from below, and the
fluid model's drain time is never shorter. Loads are linear in the bytes, so
phases that are weighted sums of a few fixed traffics (an MoE layer's dispatch,
micro-batch after micro-batch) are priced from a :class:`PhaseBasis`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from pathsim.network.linear import PhaseBasis
from pathsim.network.timing import PhaseTiming
from pathsim.topology.base import Topology
from pathsim.traffic import Traffic


class FastModel:
    name = "fast"

    CACHE_BYTES = 2**27  # the unit loads kept for phases seen before, at most (128 MB)

    def __init__(self, topology: Topology):
        self.topology = topology
        self._unit: dict[bytes, tuple[np.ndarray, float]] = {}

    def phase(self, traffic: Traffic, all_to_all: bool = False, in_switch: bool = False) -> PhaseTiming:
        """`all_to_all`: the phase is an all-to-all's, timed at the bandwidth those reach; `in_switch`: an in-switch
        reduction's (its traffic may use only links whose switch reduces)."""
        link_bytes, latency = self._loads_and_latency(traffic)
        bandwidth = self.topology.reached_bandwidth(all_to_all, in_switch)
        loaded = link_bytes > 0
        drain = float(np.max(link_bytes[loaded] / bandwidth[loaded], initial=0.0))
        latency = latency() if drain > 0 else 0.0
        if in_switch and drain > 0:
            latency = max(latency, self.topology.in_switch_floor(loaded))
        return PhaseTiming(drain, latency, link_bytes)

    def _loads_and_latency(self, traffic: Traffic) -> tuple[np.ndarray, Callable[[], float]]:
        """The phase's link loads and (lazily) its longest route. A phase of flows that all carry the same bytes
        (a ring step, a gradient bucket's every phase) is its chip pairs' unit loads times those bytes: the pairs'
        loads and route are kept, so the next bucket of another size, or the next step, routes nothing."""
        uniform = traffic.uniform_flows()
        if uniform is None:
            link_bytes = self.topology.link_loads(traffic)
            return link_bytes, lambda: self.topology.max_path_latency(traffic, link_bytes)
        src, dst, size = uniform
        key = src.tobytes() + dst.tobytes()
        if key not in self._unit:
            if len(self._unit) * (len(key) + 8 * self.topology.num_links) >= self.CACHE_BYTES:
                self._unit.clear()
            unit = Traffic.from_flows(traffic.num_chips, src, dst, np.ones(len(src)))
            unit_loads = self.topology.link_loads(unit)
            self._unit[key] = (unit_loads, self.topology.max_path_latency(unit, unit_loads))
        unit_loads, longest = self._unit[key]
        return unit_loads * size, lambda: longest

    def basis(self, src: np.ndarray, dst: np.ndarray, component: np.ndarray, size: int,
              traffic_of: Callable[[np.ndarray], Traffic], all_to_all: bool = False) -> PhaseBasis:
        """Price weighted sums of `size` traffics of unit flows by linearity (see :class:`PhaseBasis`; a model whose
        loads are not linear in the bytes has no such method)."""
        return PhaseBasis(self.topology, src, dst, component, size, traffic_of, all_to_all)
