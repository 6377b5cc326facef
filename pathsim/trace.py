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
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pathsim.engine import DCN, StepRun
from pathsim.network.linear import total_link_bytes
from pathsim.engine.categories import BY_KEY, CATEGORIES
from pathsim.output_files import write_file

DCN_TRACK = 6  # ops on the data-center network between slices, whatever their category
STEP_TRACK = 0  # a slice per simulated step, above the work
_LAYER_PREFIX = re.compile(r"^L\d+ ")
BUBBLE_TRACK = BY_KEY["pipeline_bubble"].trace_tid  # a pipeline stage waiting for its input
EXPERT_MEAN_TRACK = BY_KEY["straggler"].trace_tid  # the mean chip's expert time, under the slowest chip's
TRACK_NAMES = dict(sorted({**{c.trace_tid: c.trace_name for c in CATEGORIES if c.trace_tid != BUBBLE_TRACK},
                            DCN_TRACK: "DCN: between slices"}.items()))


def trace_events(runs: list[StepRun], title: str) -> list[dict]:
    groups = runs[0].groups if runs else 1
    events: list[dict] = []
    process: list[dict] = []
    for g in range(groups):
        pid = g + 1
        process.append({"ph": "M", "pid": pid, "name": "process_name",
                        "args": {"name": title if groups == 1 else f"{title}: pipeline stage {g}"}})
        process.append({"ph": "M", "pid": pid, "name": "process_sort_index", "args": {"sort_index": pid}})
    names = {STEP_TRACK: "steps", **TRACK_NAMES, BUBBLE_TRACK: BY_KEY["pipeline_bubble"].trace_name}
    offset_us = 0.0
    slices: list[dict] = []
    for step, run in enumerate(runs):
        slices += [{"ph": "X", "pid": g + 1, "tid": STEP_TRACK, "name": f"step {step}", "cat": "step", "ts": offset_us,
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
            pid = span.group + 1
            events.append({"ph": "X", "pid": pid, "tid": tid, "name": _LAYER_PREFIX.sub("", op.name), "cat": op.category,
                           "ts": start, "dur": (span.end_s - span.start_s) * 1e6, "args": args})
            if op.straggler_s > 0:
                events.append({"ph": "X", "pid": pid, "tid": EXPERT_MEAN_TRACK, "name": _LAYER_PREFIX.sub("", op.name) + " (mean chip)", "cat": "expert_mean",
                               "ts": start, "dur": (span.end_s - span.start_s - op.straggler_s) * 1e6, "args": args})
        for gap in run.idle:
            events.append({"ph": "X", "pid": gap.group + 1, "tid": BUBBLE_TRACK, "name": BY_KEY[gap.category].label,
                           "cat": gap.category, "ts": offset_us + gap.start_s * 1e6,
                           "dur": (gap.end_s - gap.start_s) * 1e6, "args": {"step": step, "stream": gap.stream}})
        offset_us += run.step_time_s * 1e6
    events = slices + events
    used = sorted({(e["pid"], e["tid"]) for e in events})  # declare the tracks that hold something, and only those
    meta = [{"ph": "M", "pid": pid, "tid": tid, "name": kind, "args": value}
            for pid, tid in used for kind, value in (("thread_name", {"name": names.get(tid, f"track {tid}")}),
                                                     ("thread_sort_index", {"sort_index": tid}))]
    return process + meta + events


def write_trace(path: "str | Path", runs: list[StepRun], title: str) -> None:
    write_file(path, json.dumps({"traceEvents": trace_events(runs, title), "displayTimeUnit": "ms"}) + "\n", "--trace", "the trace")
