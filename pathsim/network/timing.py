"""The interface every network model implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pathsim.traffic import Traffic


@dataclass(frozen=True)
class PhaseTiming:
    """How one phase of traffic went.

    ``time_s = bandwidth_time_s + latency_s``: the time to drain every byte
    through the links, plus the longest route latency (the last byte still has
    to travel its path; collectives step only when every message of the step
    has landed).
    """

    bandwidth_time_s: float
    latency_s: float
    link_bytes: np.ndarray
    flow_finish_s: np.ndarray | None = None  # fluid model: per flow, drain time + its route latency

    @property
    def time_s(self) -> float:
        return self.bandwidth_time_s + self.latency_s


class NetworkModel(Protocol):
    name: str

    def phase(self, traffic: Traffic, all_to_all: bool = False, in_switch: bool = False) -> PhaseTiming: ...
