"""The one registry of causes: what an op is for, and how every output shows it.

Each entry feeds the result's breakdown (its field), the Perfetto trace (its
track), the report's figures (colour and row label). A new cause — a new kind
of communication, a new kind of wait — is one entry here; ops name it by key.
Energy needs no entry: a chip's state follows the resource an op holds
(:mod:`pathsim.energy`), and waits hold none.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Category:
    key: str  # what ops carry in Op.category
    field: str  # the result's Breakdown field: seconds of the step's critical path spent on it
    label: str  # the breakdown's name for it
    colour: str
    track: str  # the gantt chart's row for its ops ("" for time with no op of its own: a wait)
    trace_tid: int  # the trace's thread for it (categories sharing a row share one)
    trace_name: str  # that thread's name
    always: bool = True  # listed in the console's breakdown even at zero (else only when a run has it)


CATEGORIES: tuple[Category, ...] = (
    Category("compute", "compute_s", "compute", "#4C72B0", "compute", 1, "compute (slowest chip)"),
    # Not an op's category: the part of an expert FFN spent waiting for the slowest chip (max − mean); the trace
    # draws the mean chip's expert time under the slowest chip's.
    Category("straggler", "straggler_s", "straggler", "#8FB0E0", "", 5, "expert FFN (mean chip)"),
    Category("all_to_all", "all_to_all_s", "all to all", "#DD8452", "all-to-all", 2, "network: all-to-all"),
    Category("tensor_parallel", "tensor_parallel_s", "tensor parallel", "#937860", "tensor-parallel", 3,
             "network: tensor-parallel"),
    Category("weight_gather", "weight_gather_s", "weight gather", "#64B5CD", "weight all-gather", 7,
             "network: weight all-gather (ZeRO-3)"),
    Category("grad_sync", "grad_sync_exposed_s", "grad sync exposed", "#C44E52", "gradient sync", 4, "network: gradient sync"),
    Category("optimizer", "optimizer_s", "optimizer", "#8172B3", "compute", 1, "compute (slowest chip)"),
    Category("context_parallel", "context_parallel_s", "context parallel", "#8C613C", "context-parallel K/V", 10,
             "network: context-parallel K/V", always=False),
    Category("pipeline_p2p", "pipeline_p2p_s", "pipeline p2p", "#55A868", "pipeline send/recv", 8,
             "network: pipeline send/recv", always=False),
    # Not an op's category: a pipeline stage with nothing to do (waiting for its input or the last stage's output).
    Category("pipeline_bubble", "pipeline_bubble_s", "pipeline bubble", "#CCCCCC", "", 9, "pipeline bubble (stage idle)",
             always=False),
)
BY_KEY = {c.key: c for c in CATEGORIES}


def category(key: str) -> Category:
    return BY_KEY[key]
