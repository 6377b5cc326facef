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

    def __init__(self, topology: Topology):
        self.topology = topology

    def phase(self, traffic: Traffic, all_to_all: bool = False, in_switch: bool = False) -> PhaseTiming:
        """`all_to_all`: the phase is an all-to-all's, timed at the bandwidth those reach; `in_switch`: an in-switch
        reduction's (its traffic may use only links whose switch reduces)."""
        link_bytes = self.topology.link_loads(traffic)
        bandwidth = self.topology.reached_bandwidth(all_to_all, in_switch)
        loaded = link_bytes > 0
        drain = float(np.max(link_bytes[loaded] / bandwidth[loaded], initial=0.0))
        latency = self.topology.max_path_latency(traffic, link_bytes) if drain > 0 else 0.0
        if in_switch and drain > 0:
            latency = max(latency, self.topology.in_switch_floor(loaded))
        return PhaseTiming(drain, latency, link_bytes)

    def basis(self, src: np.ndarray, dst: np.ndarray, component: np.ndarray, size: int,
              traffic_of: Callable[[np.ndarray], Traffic], all_to_all: bool = False) -> PhaseBasis:
        """Price weighted sums of `size` traffics of unit flows by linearity (see :class:`PhaseBasis`; a model whose
        loads are not linear in the bytes has no such method)."""
        return PhaseBasis(self.topology, src, dst, component, size, traffic_of, all_to_all)
