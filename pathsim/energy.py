"""Energy of a simulated step: what each chip was doing, second by second, and the watts that costs.

Every chip of the slice is, at each instant of the schedule, in one of three
states, read off the simulated timeline for the mean chip:

- ``compute``: its cores run an op (for expert FFNs, only the mean chip's own
  share: the straggler tail, spent waiting for the slowest chip, is not busy);
- ``communication``: no op computes but the network moves its bytes
  (all-to-alls, tensor-parallel and gradient all-reduces);
- ``idle``: neither.

A chip draws ``idle + (peak − idle) × activity`` watts, with activity 1 when
computing, the chip's ``communication_activity`` when only communicating and 0
when idle (the linear utilisation model of Patterson et al. 2021 and LLMCarbon).
Hosts draw their constant power for the whole step; the network draws its
switches' and optics' power. The sum is IT energy; facility energy (PUE),
carbon and money are :mod:`pathsim.footprint`'s.

Energy conservation is by construction and tested: the piecewise-constant
power timeline integrates to exactly the per-step energy reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel

from pathsim.engine import Span
from pathsim.engine.table import SpanTable
from pathsim.topology.base import Topology

STATES = ("compute", "communication", "idle")
_COMPUTE, _COMMUNICATION, _IDLE = range(3)


@dataclass(frozen=True)
class StateTimeline:
    """The mean chip's state over one step: state[i] holds from boundaries_s[i] to boundaries_s[i + 1]."""

    boundaries_s: np.ndarray  # (n + 1,), from 0 to the step time
    states: np.ndarray  # (n,), indices into STATES

    def seconds(self) -> dict[str, float]:
        durations = np.diff(self.boundaries_s)
        return {name: float(durations[self.states == i].sum()) for i, name in enumerate(STATES)}


def _coverage(boundaries: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """How many of the intervals cover each elementary segment between consecutive boundaries."""
    size = len(boundaries)
    delta = (np.bincount(np.searchsorted(boundaries, starts), minlength=size)
             - np.bincount(np.searchsorted(boundaries, ends), minlength=size))
    return np.cumsum(delta)[:-1]


def state_timeline(spans: "list[Span] | SpanTable", step_time_s: float, rows: np.ndarray | None = None) -> StateTimeline:
    """The mean chip's compute / communication / idle segments over one step, adjacent equal states merged.
    `rows`: which spans of a :class:`SpanTable` (one group of chips' ops), by default all."""
    table = spans if isinstance(spans, SpanTable) else SpanTable(spans)
    rows = table.rows() if rows is None else rows
    compute, split = table.on_compute[rows], table.split_parts[rows]
    network, plain = rows[~compute], rows[compute & ~split]
    compute_start, compute_end = [table.start[plain]], [table.end[plain] - table.straggler[plain]]
    for i in rows[compute & split]:  # a fused op waits for the slowest chip inside its parts
        span = table.spans[i]
        times = span.part_times()
        compute_start.append(np.array([start for start, _ in times]))
        compute_end.append(np.array([end - part.straggler_s for part, (_, end) in zip(span.op.parts, times)]))
    c = np.column_stack([np.concatenate(compute_start), np.concatenate(compute_end)])
    n = np.column_stack([table.start[network], table.end[network]])
    c, n = c[c[:, 1] > c[:, 0]], n[n[:, 1] > n[:, 0]]
    boundaries = np.unique(np.concatenate([[0.0, step_time_s], c.ravel(), n.ravel()]))
    computing = _coverage(boundaries, c[:, 0], c[:, 1]) > 0
    moving = _coverage(boundaries, n[:, 0], n[:, 1]) > 0
    states = np.where(computing, _COMPUTE, np.where(moving, _COMMUNICATION, _IDLE))
    keep = np.concatenate([[True], states[1:] != states[:-1]])  # a segment starts where the state changes
    return StateTimeline(np.concatenate([boundaries[:-1][keep], boundaries[-1:]]), states[keep])


class ChipActivity(BaseModel):
    """Seconds per step the mean chip spends in each state (mean over the simulated steps)."""

    compute_s: float
    communication_s: float
    idle_s: float

    @classmethod
    def mean_of(cls, timelines: list[StateTimeline]) -> "ChipActivity":
        totals = dict.fromkeys(STATES, 0.0)
        for timeline in timelines:
            for state, seconds in timeline.seconds().items():
                totals[state] += seconds
        return cls(**{f"{state}_s": value / len(timelines) for state, value in totals.items()})

    def utilisation(self) -> float:
        """Fraction of the step the mean chip computes."""
        total = self.compute_s + self.communication_s + self.idle_s
        return self.compute_s / total if total > 0 else 0.0


class PowerInputs(BaseModel):
    """Every number the energy of a step is made of, as the cluster file gives it."""

    chips: int
    chip_idle_w: float
    chip_peak_w: float
    communication_activity: float  # share of (peak − idle) a chip draws while only communicating
    hosts: int
    host_w: float  # per host, accelerators excluded
    network_switches: int  # switches the cluster file's network_power.per_switch applies to
    switch_w: float
    network_per_chip_w: float  # optics, optical circuit switches, NICs outside the hosts: per chip
    power_source: str  # where the cluster's power figures come from

    def chip_watts(self) -> dict[str, float]:
        """Watts one chip draws in each state."""
        swing = self.chip_peak_w - self.chip_idle_w
        activity = {"compute": 1.0, "communication": self.communication_activity, "idle": 0.0}
        return {state: self.chip_idle_w + swing * activity[state] for state in STATES}

    def network_w(self) -> float:
        return self.network_switches * self.switch_w + self.chips * self.network_per_chip_w


class StepEnergy(BaseModel):
    """IT energy of one mean step, by component, in joules; with what it was computed from."""

    chips_j: float
    hosts_j: float
    network_j: float
    activity: ChipActivity
    inputs: PowerInputs

    def it_j(self) -> float:
        return self.chips_j + self.hosts_j + self.network_j

    def average_it_w(self) -> float:
        seconds = self.activity.compute_s + self.activity.communication_s + self.activity.idle_s
        return self.it_j() / seconds if seconds > 0 else 0.0


def power_inputs(cluster, topology: Topology, chip_ids: np.ndarray | None = None) -> PowerInputs:
    """The power figures of a cluster config, counted over its built topology, or over the chips `chip_ids`
    of it (a job sharing the cluster: the hosts its chips sit in, and its chips' share of the fabric's switches)."""
    chip, host, network = cluster.chip, cluster.host, cluster.network_power
    chip_ids = np.arange(topology.num_chips) if chip_ids is None else np.asarray(chip_ids)
    chips, hosts = len(chip_ids), len(np.unique(chip_ids // host.chips_per_host))
    return PowerInputs(
        chips=chips, chip_idle_w=chip.idle_power, chip_peak_w=chip.peak_power,
        communication_activity=chip.communication_activity,
        hosts=hosts, host_w=host.power,
        network_switches=round(topology.network_switches * chips / topology.num_chips),
        switch_w=network.per_switch if network else 0.0,
        network_per_chip_w=network.per_chip if network else 0.0,
        power_source="; ".join(s for s in (chip.source, host.source, network.source if network else
                                           "network power: not given in the cluster file (0 W)") if s))


def step_energy(activity: ChipActivity, inputs: PowerInputs) -> StepEnergy:
    watts = inputs.chip_watts()
    seconds = {"compute": activity.compute_s, "communication": activity.communication_s, "idle": activity.idle_s}
    step_s = sum(seconds.values())
    return StepEnergy(chips_j=inputs.chips * sum(watts[s] * seconds[s] for s in STATES),
                      hosts_j=inputs.hosts * inputs.host_w * step_s, network_j=inputs.network_w() * step_s,
                      activity=activity, inputs=inputs)


def power_timeline(timeline: StateTimeline, inputs: PowerInputs) -> tuple[np.ndarray, np.ndarray]:
    """The cluster's IT power, piecewise constant: (boundaries_s, watts per segment)."""
    chip_watts = np.array([inputs.chip_watts()[s] for s in STATES])
    constant = inputs.hosts * inputs.host_w + inputs.network_w()
    return timeline.boundaries_s, inputs.chips * chip_watts[timeline.states] + constant
