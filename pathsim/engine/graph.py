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
finishes. A :class:`Graph` is the streams of one step. Nothing here knows what
a forward pass or a pipeline is: builders (:mod:`pathsim.builders`) make graphs.

Resources are keyed per group: ``compute@g`` and ``network@g`` for each group
``g``; the DCN between slices is one shared resource (``dcn``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
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

    @property
    def resources(self) -> tuple[str, ...]:
        return (self.resource, *self.also)


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
