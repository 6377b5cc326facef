"""What the engine runs: ops, the nodes that place them on resources, and the streams that order them.

An :class:`Op` is a piece of work and what it costs: a duration on one kind of
resource (``compute``, ``network`` or ``dcn``), a cause category (one of
:mod:`pathsim.engine.categories`) and, for communication, its bytes per link.
A :class:`Node` puts an op on a group of chips (a pipeline stage; group 0 when
the whole cluster is one group), names the nodes it must wait for, and says
whether waiting for them is worth recording (a pipeline stage waiting for its
input is a bubble; a background gradient bucket waiting for its previous stage
is not). A :class:`Stream` is an ordered run of nodes executed one after
another — a stage's critical work, one stage of the gradient buckets' chains,
a prefetched weight gather — launched at the start or when a given node
finishes. A :class:`Graph` is the streams of one step. Compute ops that always run back to back are
fused (:func:`fuse`) into one op that keeps its parts for traces: a step's cost is per node. Nothing here knows what
a forward pass or a pipeline is: builders (:mod:`pathsim.builders`) make graphs.

Resources are keyed per group: ``compute@g`` and ``network@g`` for each group
``g``; the DCN between slices is one shared resource (``dcn``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pathsim.network.linear import LinkBytes

COMPUTE, NETWORK, DCN = "compute", "network", "dcn"  # DCN: the host NICs between the slices of a multi-slice cluster
KINDS = (COMPUTE, NETWORK, DCN)  # also the order resources are asked for in, so no two ops deadlock


@dataclass(slots=True)
class Op:
    name: str
    category: str  # a key of pathsim.engine.categories.CATEGORIES
    resource: str  # COMPUTE, NETWORK or DCN
    duration_s: float
    layer: int = -1
    straggler_s: float = 0.0  # part of duration_s spent waiting for the slowest chip (max − mean)
    flops: float = 0.0  # per chip (mean), for utilisation
    link_bytes: "np.ndarray | LinkBytes | None" = field(default=None, repr=False)  # LinkBytes: weights over a basis
    also: tuple[str, ...] = ()  # further resources held for the whole op (an all-to-all whose bytes cross the DCN)
    weight_share: float = 0.0  # of its duration, the part a builder may run later as its own op (weight gradients)
    parts: tuple["Op", ...] = ()  # a fused op (see fuse): the ops it runs back to back, which traces show one by one

    @property
    def resources(self) -> tuple[str, ...]:
        return (self.resource, *self.also)

    def share(self, fraction: float, name: str | None = None) -> "Op":
        """`fraction` of this op's work (its time, straggler and FLOPs) as an op of its own, weight share spent."""
        return Op(self.name if name is None else name, self.category, self.resource, self.duration_s * fraction,
                  self.layer, self.straggler_s * fraction, self.flops * fraction, self.link_bytes, self.also)

    def renamed(self, old: str, new: str) -> "Op":
        """A copy with `old` replaced by `new` in its name (and its parts')."""
        return replace(self, name=self.name.replace(old, new), parts=tuple(p.renamed(old, new) for p in self.parts))


def fusable(item: object) -> bool:
    """Whether an item is a plain compute op another may be fused with: category ``compute``, holding nothing but
    the chips' cores."""
    return type(item) is Op and item.resource == COMPUTE and item.category == "compute" and not item.also


def fuse(ops: "list[Op] | tuple[Op, ...]", *, check: bool = True) -> Op:
    """Compute ops that always run back to back on one stream, as one op: a step runs millions of them, and each
    node costs the executor and the result the same whatever its length. Its duration is its parts' summed in
    order (what op after op would end at, to rounding), its FLOPs, straggler and weight-gradient seconds theirs; its parts
    (nested fusions flattened) are what a trace or timeline shows. One op is returned as it is. ``check=False``:
    the caller knows every op is fusable (a hot path: a step fuses tens of thousands of runs)."""
    if len(ops) == 1:
        return ops[0]
    parts = tuple(p for op in ops for p in (op.parts or (op,)))
    if check and not all(fusable(p) for p in parts):
        raise ValueError(f"only plain compute ops fuse, not {[p.name for p in parts if not fusable(p)]}")
    duration = flops = weight_s = straggler = 0.0
    for p in parts:
        duration += p.duration_s
        flops += p.flops
        weight_s += p.weight_share * p.duration_s
        straggler += p.straggler_s
    return Op(f"{parts[0].name} .. {parts[-1].name}", "compute", COMPUTE, duration, parts[0].layer, straggler, flops,
              weight_share=weight_s / duration if duration > 0 else 0.0, parts=parts)


def fuse_runs(items: list, fused: "dict[tuple[int, ...], Op] | None" = None) -> list:
    """`items` with every run of fusable ops in a row fused into one. `fused`: runs fused so far, by their ops'
    ids, to reuse (a pipeline's units repeat the same runs of a stage's fixed ops micro-batch after micro-batch);
    the fused ops it holds keep their parts, and so those ids, alive."""
    out: list = []
    run: list[Op] = []

    def fused_run() -> Op:
        if fused is None or len(run) == 1:
            return fuse(run, check=False)
        key = tuple(map(id, run))
        op = fused.get(key)
        if op is None:
            op = fused[key] = fuse(run, check=False)
        return op

    for item in items:
        if type(item) is Op and item.resource == COMPUTE and item.category == "compute" and not item.also:  # fusable
            run.append(item)
            continue
        if run:
            out.append(fused_run())
            run = []
        out.append(item)
    if run:
        out.append(fused_run())
    return out


def resource_key(kind: str, group: int) -> str:
    """The resource of this kind that a group of chips has (the DCN is shared by all)."""
    return DCN if kind == DCN else f"{kind}@{group}"


@dataclass(frozen=True)
class Prefetch:
    """In a builder's list of work for one stream: start `op` in the background here; the stream goes on."""

    op: Op


@dataclass(frozen=True)
class Await:
    """In a builder's list of work for one stream: wait here until the prefetched `op` has finished."""

    op: Op


Item = Op | Prefetch | Await


@dataclass(eq=False, slots=True)
class Node:
    """An op placed on group(s) of chips, after its dependencies; with no op, a barrier: the stream waits for the
    dependencies and goes on (streams launched after a barrier start the moment the wait ends)."""

    op: Op | None
    deps: list["Node"] = field(default_factory=list)
    groups: tuple[int, ...] = (0,)  # a point-to-point send between two stages holds both stages' resources
    wait_category: str | None = None  # record waits for deps: the part before the dep was under way as this category

    @property
    def resources(self) -> tuple[str, ...]:
        if self.op is None:
            return ()
        keys = {resource_key(kind, g) for kind in self.op.resources for g in self.groups}
        return tuple(sorted(keys, key=lambda k: (KINDS.index(k.split("@")[0]), k)))


@dataclass(eq=False)
class Stream:
    """Nodes run one after another, at one priority (lower is served first), from time 0 or once `after` finishes."""

    name: str
    nodes: list[Node]
    priority: int
    after: Node | None = None
    group: int = 0  # the group whose critical work this is (for per-group accounting)


@dataclass
class Graph:
    streams: list[Stream]
    groups: int = 1  # groups of chips (pipeline stages), each with its own resources
    critical: tuple[str, ...] = ("main",)  # the streams whose time is the step's (one per group)
