"""Chrome / Perfetto trace of simulated steps (opens in ui.perfetto.dev or chrome://tracing).

Trace Event Format (the JSON array form with "X" complete events): one
process for the simulated slice (one per pipeline stage, with a track of its
bubbles), one thread (track) per stream of work —
compute, the all-to-alls, tensor-parallel and gradient communication — plus a
track with the mean chip's expert time, so the gap to the slowest chip (the
straggler cost) is visible under each expert block, and a track with a slice
per step. An op is named without its layer ("router fwd", the layer in its
args with its FLOPs and link bytes), so Perfetto groups one op's every layer;
only tracks that hold events are declared.

Counter tracks, on a process of their own for the whole cluster: its IT power
(the energy model's chip states over time, every pipeline stage's chips
summed, with hosts and network), and each link class's utilisation (the bytes
the network ops in flight put on that class's links per second, over the
class's bandwidth: 1 is every link of the class busy).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from pathsim.energy import STATES, PowerInputs, state_timeline
from pathsim.engine import DCN, StepRun
from pathsim.engine.table import SpanTable
from pathsim.network.linear import LinkBytes, total_link_bytes
from pathsim.engine.categories import BY_KEY, CATEGORIES
from pathsim.output_files import write_file
from pathsim.topology import Topology

DCN_TRACK = 6  # ops on the data-center network between slices, whatever their category
STEP_TRACK = 0  # a slice per simulated step, above the work
_LAYER_PREFIX = re.compile(r"^L\d+ ")
BUBBLE_TRACK = BY_KEY["pipeline_bubble"].trace_tid  # a pipeline stage waiting for its input
EXPERT_MEAN_TRACK = BY_KEY["straggler"].trace_tid  # the mean chip's expert time, under the slowest chip's
TRACK_NAMES = dict(sorted({**{c.trace_tid: c.trace_name for c in CATEGORIES if c.trace_tid != BUBBLE_TRACK},
                            DCN_TRACK: "DCN: between slices"}.items()))


def trace_events(runs: list[StepRun], title: str, first_pid: int = 1) -> list[dict]:
    """The runs' ops as complete events, on processes first_pid, first_pid + 1, ... (one per pipeline stage)."""
    groups = runs[0].groups if runs else 1
    events: list[dict] = []
    process: list[dict] = []
    for g in range(groups):
        pid = first_pid + g
        process.append({"ph": "M", "pid": pid, "name": "process_name",
                        "args": {"name": title if groups == 1 else f"{title}: pipeline stage {g}"}})
        process.append({"ph": "M", "pid": pid, "name": "process_sort_index", "args": {"sort_index": pid}})
    names = {STEP_TRACK: "steps", **TRACK_NAMES, BUBBLE_TRACK: BY_KEY["pipeline_bubble"].trace_name}
    offset_us = 0.0
    slices: list[dict] = []
    for step, run in enumerate(runs):
        slices += [{"ph": "X", "pid": first_pid + g, "tid": STEP_TRACK, "name": f"step {step}", "cat": "step", "ts": offset_us,
                    "dur": run.step_time_s * 1e6, "args": {"step": step, "step_time_s": run.step_time_s}} for g in range(groups)]
        for span in run.op_spans():
            op = span.op
            args = {"step": step, "layer": op.layer, "stream": span.stream, "op": op.name}
            if op.flops > 0:
                args["flops_per_chip"] = op.flops
            if op.link_bytes is not None:
                args["link_bytes"] = total_link_bytes(op.link_bytes)  # summed over the links it loads
            if span.waited_s > 0:
                args["waited_us"] = span.waited_s * 1e6
            start = offset_us + span.start_s * 1e6
            tid = DCN_TRACK if op.resource == DCN else BY_KEY[op.category].trace_tid
            pid = first_pid + span.group
            events.append({"ph": "X", "pid": pid, "tid": tid, "name": _LAYER_PREFIX.sub("", op.name), "cat": op.category,
                           "ts": start, "dur": (span.end_s - span.start_s) * 1e6, "args": args})
            if op.straggler_s > 0:
                events.append({"ph": "X", "pid": pid, "tid": EXPERT_MEAN_TRACK, "name": _LAYER_PREFIX.sub("", op.name) + " (mean chip)", "cat": "expert_mean",
                               "ts": start, "dur": (span.end_s - span.start_s - op.straggler_s) * 1e6, "args": args})
        for gap in run.idle:
            events.append({"ph": "X", "pid": first_pid + gap.group, "tid": BUBBLE_TRACK, "name": BY_KEY[gap.category].label,
                           "cat": gap.category, "ts": offset_us + gap.start_s * 1e6,
                           "dur": (gap.end_s - gap.start_s) * 1e6, "args": {"step": step, "stream": gap.stream}})
        offset_us += run.step_time_s * 1e6
    events = slices + events
    used = sorted({(e["pid"], e["tid"]) for e in events})  # declare the tracks that hold something, and only those
    meta = [{"ph": "M", "pid": pid, "tid": tid, "name": kind, "args": value}
            for pid, tid in used for kind, value in (("thread_name", {"name": names.get(tid, f"track {tid}")}),
                                                     ("thread_sort_index", {"sort_index": tid}))]
    return process + meta + events


def _piecewise_sum(starts: np.ndarray, ends: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sum of `values` (intervals × series) over the intervals covering each moment: (times, sums from each
    time to the next), at every start and end."""
    times = np.concatenate([starts, ends])
    deltas = np.concatenate([values, -values])
    order = np.argsort(times, kind="stable")
    times, sums = times[order], np.cumsum(deltas[order], axis=0)
    last = np.concatenate([times[1:] != times[:-1], [True]])  # one value per moment: after every change at it
    return times[last], np.maximum(sums[last], 0.0)  # (rounding leaves -1e-18 where a sum returns to zero)


class _ClassBytes:
    """Bytes per link class of an op's link bytes (dense, or weights over a basis: summed per basis once)."""

    def __init__(self, topology: Topology):
        self.names, self.of_link = np.unique(topology.link_class.astype(str), return_inverse=True)
        self.bandwidth = np.bincount(self.of_link, weights=topology.link_bandwidth, minlength=len(self.names))
        self._by_basis: dict[int, np.ndarray] = {}

    def __call__(self, record: "np.ndarray | LinkBytes") -> np.ndarray:
        if isinstance(record, LinkBytes):
            basis = record.basis
            loads = self._by_basis.get(id(basis))
            if loads is None:  # the basis's traffics as bytes per class: (size, classes)
                onehot = np.zeros((len(basis.links), len(self.names)))
                onehot[np.arange(len(basis.links)), self.of_link[basis.links]] = 1.0
                loads = self._by_basis[id(basis)] = basis.loads @ onehot
            return record.weights @ loads
        return np.bincount(self.of_link, weights=record, minlength=len(self.names))


def counter_events(runs: list[StepRun], topology: Topology, power: PowerInputs, pid: int) -> list[dict]:
    """The cluster's IT power (kW) and each link class's utilisation over the steps, as counter ("C") events."""
    chip_watts = np.array([power.chip_watts()[s] for s in STATES])
    constant_w = power.hosts * power.host_w + power.network_w()
    classes = _ClassBytes(topology)
    starts, ends, watts, rates = [], [], [], []
    link_starts, link_ends = [], []
    offset = 0.0
    for run in runs:
        table = SpanTable(run.spans)
        for g in range(run.groups):  # each stage's chips in its own states; the stages together are the cluster
            timeline = state_timeline(table, run.step_time_s, table.of_group(g))
            starts.append(offset + timeline.boundaries_s[:-1])
            ends.append(offset + timeline.boundaries_s[1:])
            watts.append(power.chips / run.groups * chip_watts[timeline.states])
        for span in run.op_spans():
            duration = span.end_s - span.start_s
            if span.op.link_bytes is not None and duration > 0:
                link_starts.append(offset + span.start_s)
                link_ends.append(offset + span.end_s)
                rates.append(classes(span.op.link_bytes) / duration / classes.bandwidth)
        offset += run.step_time_s
    events = []
    times, kw = _piecewise_sum(np.concatenate(starts), np.concatenate(ends), np.concatenate(watts)[:, None])
    events += [{"ph": "C", "pid": pid, "name": "IT power (kW)", "ts": t * 1e6,
                "args": {"kW": round(float((w[0] + constant_w) / 1e3), 6)}} for t, w in zip(times, kw)]
    if rates:
        times, busy = _piecewise_sum(np.array(link_starts), np.array(link_ends), np.array(rates))
        events += [{"ph": "C", "pid": pid, "name": "link utilisation", "ts": t * 1e6,
                    "args": {str(name): round(float(u), 6) for name, u in zip(classes.names, row)}}
                   for t, row in zip(times, busy)]
    return events


class TraceRecorder:
    """Simulated runs gathered into one trace, each on processes of its own from time 0 (the jobs of a shared pod
    side by side), each with its counter tracks. A run added under a title already held replaces the earlier one
    (a shared pod's jobs are re-simulated each round; the trace shows the last)."""

    def __init__(self):
        self._runs: dict[str, tuple[str, list[StepRun], Topology, PowerInputs]] = {}

    def add(self, title: str, runs: list[StepRun], topology: Topology, power: PowerInputs) -> None:
        self._runs[title] = (runs, topology, power)

    def events(self) -> list[dict]:
        events, pid = [], 1
        for title, (runs, topology, power) in self._runs.items():
            events += trace_events(runs, title, pid)
            pid += runs[0].groups if runs else 1
            events += [{"ph": "M", "pid": pid, "name": "process_name", "args": {"name": f"{title}: cluster power and links"}},
                       {"ph": "M", "pid": pid, "name": "process_sort_index", "args": {"sort_index": pid}}]
            events += counter_events(runs, topology, power, pid)
            pid += 1
        return events

    def write(self, path: "str | Path") -> Path:
        return write_file(path, json.dumps({"traceEvents": self.events(), "displayTimeUnit": "ms"}) + "\n", "--trace", "the trace")

