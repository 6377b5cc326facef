"""NCCL's protocols: what a GPU collective pays for its size beyond the links' bandwidth.

NCCL moves a collective's data with one of three protocols, and its tuner picks, call by call, the one its own
cost model times fastest (NVIDIA/nccl ``src/graph/tuning.cc``, ``ncclTopoTuneModel`` and ``ncclTopoGetAlgoTime``;
every constant below is from tag v2.21.5-1, and the device code's wire formats explain the bandwidth factors):

- **LL** writes 8 bytes of data and 8 of flags per 16-byte line, so the receiver polls memory instead of waiting
  for a fence: half the bandwidth (and at most ``llMaxBw`` in all), but 0.6 µs a ring step on NVLink;
- **LL128** carries 120 data bytes in every 128-byte line (the tuner's factor 0.92): 1.9 µs a step;
- **Simple** moves whole buffers behind memory fences: the full bandwidth, 3.4 µs a step on NVLink and 14 µs
  across the network.

A collective of s ring steps costs ``base + Σ step latency + bytes / bandwidth``: latency-bound buffers go LL,
middling ones LL128, large ones Simple. pathsim keeps its own routing and congestion for the bandwidth term —
the links' ``efficiency`` (fitted to large nccl-tests buffers, where Simple runs) is Simple's share, the other
protocols reach 0.5 and 0.92 of it — and takes NCCL's latencies in place of the links' per-hop ones, because
those are the library's software cost per step, not the wire's.

Left out: the Tree, CollNet and PAT algorithms (pathsim's rings, hierarchical scheme and in-switch reduction
stand for NCCL's algorithms; NVLS, which runs Simple only, is priced as the network model prices it), the per-channel
LL128 caps (above what eight or more channels reach) and the Tree correction factors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PROTOCOLS = ("LL", "LL128", "Simple")
ARCHES = ("volta", "ampere", "hopper")  # NCCL's compute-capability rows (sm70, sm80, sm90)
HOST_CPUS = ("intel", "amd")

_BASE_LATENCY_S = {"LL": 6.6e-6, "LL128": 14.0e-6, "Simple": 8.4e-6}  # baseLat, Ring row
_STEP_LATENCY_S = {  # hwLat, Ring column: a step between GPUs of one node (NVLink) and one that crosses the network
    "nvlink": {"LL": 0.6e-6, "LL128": 1.9e-6, "Simple": 3.4e-6},
    "network": {"LL": 2.7e-6, "LL128": 4.0e-6, "Simple": 14.0e-6},
}
_BANDWIDTH_SHARE = {"LL": 0.5, "LL128": 0.92, "Simple": 1.0}  # of Simple's bus bandwidth (Ring)
# llMaxBws (GB/s of bus bandwidth), by row and by nodes (1, 2, more): inside one node the GPU generation picks the
# row, across nodes the host CPU's vendor does (AMD the second row, any other the first).
_LL_MAX_BUSBW = {"volta": (39.0e9, 39.0e9, 20.4e9), "ampere": (87.7e9, 22.5e9, 19.0e9), "hopper": (141.0e9, 45.0e9, 35.0e9)}
_NET_OVERHEAD_S = {"intel": 1e-6, "amd": 2e-6}  # a multi-node job's least intra-node step latency (×3 for Simple)
# Multi-node Simple ring all-reduces pay their latency 1.4 times on sm80 and later, 1.9 times before ("plateau").
_PLATEAU = {"volta": 1.9, "ampere": 1.4, "hopper": 1.4}


@dataclass(frozen=True)
class StepRun:
    """A run of identical steps of one collective, as the network model timed one of them."""

    repeat: int
    bandwidth_time_s: float  # one step's drain time at the links' (Simple) efficiency
    network_share: float  # the share of the step's transfers that leave their node


@dataclass(frozen=True)
class ProtocolTiming:
    protocol: str
    seconds: list[tuple[float, float]]  # per run of steps: (bandwidth time, latency) under the protocol, repeats in

    @property
    def time_s(self) -> float:
        return sum(b + lat for b, lat in self.seconds)


@dataclass(frozen=True)
class NcclTuning:
    """NCCL's cost model for one cluster's GPUs and hosts; `protocols` as NCCL_PROTO allows them."""

    arch: str
    host_cpu: str
    protocols: tuple[str, ...] = PROTOCOLS

    def timings(self, op: str, bus_bytes: float, nodes: int, runs: list[StepRun]) -> list[ProtocolTiming]:
        """The collective (its per-rank bus bytes, the nodes a group spans, its runs of steps) under each protocol."""
        out = []
        for protocol in self.protocols:
            intra = _STEP_LATENCY_S["nvlink"][protocol]
            if nodes > 1:
                intra = max(intra, _NET_OVERHEAD_S[self.host_cpu] * (3 if protocol == "Simple" else 1))
            inter = _STEP_LATENCY_S["network"][protocol]
            stretch = 1.0 / _BANDWIDTH_SHARE[protocol]
            drain = sum(r.repeat * r.bandwidth_time_s for r in runs)
            if protocol == "LL" and drain > 0:  # LL's bus bandwidth is half Simple's, and at most llMaxBw
                row = self.arch if nodes == 1 else ("ampere" if self.host_cpu == "amd" else "volta")
                cap = _LL_MAX_BUSBW[row][min(nodes, 3) - 1]
                stretch = max(stretch, bus_bytes / cap / drain)
            plateau = _PLATEAU[self.arch] if protocol == "Simple" and op == "all_reduce" and nodes > 1 else 1.0
            seconds, base = [], _BASE_LATENCY_S[protocol]
            for r in runs:
                step = (1 - r.network_share) * intra + r.network_share * inter
                seconds.append((r.repeat * r.bandwidth_time_s * stretch, plateau * (base + r.repeat * step)))
                base = 0.0  # paid once a collective
            out.append(ProtocolTiming(protocol, seconds))
        return out

    def fastest(self, op: str, bus_bytes: float, nodes: int, runs: list[StepRun]) -> ProtocolTiming:
        """The protocol NCCL's tuner picks: the fastest by its model (the first listed on a tie)."""
        timings = self.timings(op, bus_bytes, nodes, runs)
        return timings[int(np.argmin([t.time_s for t in timings]))]
