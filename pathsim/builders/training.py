"""The training step of one group of chips as a graph: the critical stream and its background work.

The critical stream — forward and backward of every micro-batch — runs op
after op. A layer's gradient all-reduces are a chain of ops per bucket (on a
multi-slice cluster: reduce-scatter in the slice, all-reduce across slices over
the DCN, all-gather in the slice), run as one stream per stage of the chain:
each bucket's stages in order, buckets pipelined, so one bucket crosses the DCN
while the next reduce-scatters over ICI. Chains are launched as soon as a
layer's last backward finishes (``grad_sync_overlap``) and queue for the
network behind the critical stream (lower priority, so a bucket in flight can
still delay the next all-to-all: the interference is simulated, not assumed)
while backward compute carries on. Without overlap they start after the
backward pass. The optimizer step waits for all of them.

Sharded weights (ZeRO-3) are gathered ahead of use: the critical stream
launches a layer's all-gather (:class:`Prefetch`) while the layer before it
computes, at the critical stream's priority, and waits for it
(:class:`Await`) only when the layer starts; the wait, if any, is an exposed
span of the gather.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from pathsim.engine import Graph, Node, Op, Stream, StepRun, run_graph
from pathsim.engine.graph import Await, Item, Prefetch
from pathsim.routing import LoadSample, draw_micro_batch, load_samples, route_batch, route_layer
from pathsim.step_ops import StepCoster

CRITICAL, GRAD = 0, 1  # priorities: lower value is served first




@dataclass
class StepSchedule:
    micro_batches: list[tuple[list[Item], list[list[Item]]]]  # per micro-batch: forward, backward per layer (reverse order)
    grad_sync: list[list[list[Op]]]  # per entry of the backward order: that layer's gradient chains (one per bucket)
    optimizer: Op
    overlap_grad_sync: bool


def fixed_ops(coster: StepCoster, layers: list[int] | None = None, head: bool = True) -> dict:
    """Ops whose cost does not depend on routing, computed once per run: those of `layers` (all by default) and, with
    `head`, the LM head's; attention, dense FFN and gradient chains keyed by layer (``model.layers``: the head)."""
    model = coster.model
    layers = list(range(model.layers)) if layers is None else layers
    fixed = {
        "attention": {b: {i: coster.attention(i, b) for i in layers} for b in (False, True)},
        "dense_ffn": {b: {i: coster.dense_ffn(i, b) for i in layers if not model.is_moe(i)} for b in (False, True)},
        "head": {b: coster.head(b) for b in (False, True)} if head else {},
        "grad_sync": {i: coster.grad_sync(i) for i in [*([model.layers] if head else []), *reversed(layers)]},
        "optimizer": coster.optimizer(),
        "gathers": {False: [], True: []},
    }
    if coster.layout.parameter_shards > 1:
        # ZeRO-3: every layer's weights gathered before its forward (the head's last, with `head`) and, but the
        # head's still held, again before its backward.
        fixed["gathers"] = {False: [coster.weight_gather(i, False) for i in [*layers, *([model.layers] if head else [])]],
                            True: [coster.weight_gather(i, True) for i in layers]}
    return fixed


def gathered(gathers: list[Op | None], position: int, step: int) -> list[Item]:
    """Wait for this unit's prefetched weights and start the next unit's (``step``: +1 forward, -1 backward)."""
    items: list[Item] = [Await(gathers[position])] if 0 <= position < len(gathers) and gathers[position] else []
    ahead = position + step
    if 0 <= ahead < len(gathers) and gathers[ahead]:
        items.append(Prefetch(gathers[ahead]))
    return items


def moe_micro_batches(plan, placement, rng, micro_batches: int, layers: list[int],
                      coster_of: Callable[[int, int], StepCoster]
                      ) -> tuple[dict[tuple[int, int], tuple[list[Op], list[Op]]], list[list[LoadSample]]]:
    """Every micro-batch's MoE blocks: (micro-batch, layer) -> (forward ops, backward ops), and each micro-batch's
    routing samples. Drawn micro-batch after micro-batch, layers in order (the same seed gives the same samples
    whatever the schedule); under the mean field a layer's micro-batches on one coster (`coster_of(micro-batch,
    layer)`) are then routed and priced together, while exact sampling's per-chip draws are routed at once, one by
    one, so they never pile up."""
    ops: dict[tuple[int, int], tuple[list[Op], list[Op]]] = {}
    if not layers:  # a dense model
        return ops, [[] for _ in range(micro_batches)]
    pending: dict[tuple[int, int], tuple[StepCoster, list[int], list[np.ndarray]]] = {}
    samples: list[list[LoadSample | None]] = []
    for mb in range(micro_batches):
        drawn = draw_micro_batch(plan, rng)
        samples.append([None] * len(layers))
        for j, i in enumerate(layers):
            coster = coster_of(mb, i)
            if drawn is None:
                routing = route_layer(plan, coster.layout, placement, coster.moe_index[i], rng,
                                      coster.dispatch_map(plan.at(coster.moe_index[i])))
                samples[mb][j] = routing.load_sample()
                ops[mb, i] = coster.moe_ops(i, routing)
            else:
                _, mbs, draws = pending.setdefault((id(coster), i), (coster, [], []))
                mbs.append(mb)
                draws.append(drawn[j])
    for (_, i), (coster, mbs, draws) in pending.items():
        j = coster.moe_index[i]
        routings = route_batch(plan, placement, j, np.stack(draws), coster.dispatch_map(plan.at(j)))
        for mb, sample, pair in zip(mbs, load_samples(routings), coster.moe_layer(i, routings)):
            samples[mb][j] = sample
            ops[mb, i] = pair
    return ops, samples


def micro_batch_items(coster: StepCoster, fixed: dict, moe_ops: dict, mb: int) -> tuple[list[Item], list[list[Item]]]:
    """One micro-batch's forward items and its backward items per layer (backward order); `moe_ops`: from
    :func:`moe_micro_batches`."""
    model = coster.model
    gathers = fixed["gathers"]
    forward: list[Item] = gathered(gathers[False], -1, 1)
    backward_by_layer: dict[int, list[Item]] = {model.layers: gathered(gathers[True], model.layers, -1) + [fixed["head"][True]]}
    for i in range(model.layers):
        forward += gathered(gathers[False], i, 1) + fixed["attention"][False][i]
        ops, back_ffn = moe_ops[mb, i] if model.is_moe(i) else (fixed["dense_ffn"][False][i], fixed["dense_ffn"][True][i])
        forward += ops
        backward_by_layer[i] = gathered(gathers[True], i, -1) + back_ffn + fixed["attention"][True][i]  # each in backward order
    forward += gathered(gathers[False], model.layers, 1) + [fixed["head"][False]]
    backward = [backward_by_layer[i] for i in fixed["grad_sync"]]  # the backward order: the head, then top-down
    return forward, backward


def grad_streams(chains: list[list[Op]], after: Node | None, group: int = 0) -> list[Stream]:
    """One stream per (stage, resource) of the chains, not per chain: bucket b+1 reduce-scatters while bucket b
    crosses the DCN, a chain that starts on the DCN does not wait behind others' reduce-scatters, and a layer of
    thousands of buckets makes a handful of streams, not thousands."""
    nodes = [[Node(op, groups=(group,)) for op in chain] for chain in chains]
    for chain in nodes:
        for k in range(1, len(chain)):
            chain[k].deps.append(chain[k - 1])
    members: dict[tuple[int, str], list[Node]] = {}
    for c, chain in enumerate(chains):
        for k, op in enumerate(chain):
            members.setdefault((k, op.resource), []).append(nodes[c][k])
    return [Stream("grad_sync", group_nodes, GRAD, after, group) for group_nodes in members.values()]


class ItemStream:
    """A critical stream built from items: ops run in turn, a :class:`Prefetch` starts its op in a background stream
    launched after the stream's latest node, an :class:`Await` waits for that op (the wait recorded as its cause).

    A wait is held until the next op and becomes that op's dependency, not a node of its own: the executor then
    waits for it, records the wait and runs the op exactly as it would after a barrier (a pipelined MoE step awaits
    tens of thousands of overlapped all-to-alls). Anything that needs the stream's latest node — something launched
    after it, a node added as it is, the finished stream — first turns held waits into barriers."""

    def __init__(self, group: int = 0):
        self.group = group
        self.background: list[Stream] = []
        self._nodes: list[Node] = []
        self._prefetched: dict[int, Node] = {}
        self._waits: list[tuple[Node, str]] = []  # (dependency, the wait's category), not yet a node's

    def last(self) -> Node | None:
        self._barriers(len(self._waits))
        return self._nodes[-1] if self._nodes else None

    def add(self, item: Item) -> None:
        kind = type(item)  # (not isinstance: a large graph adds millions of items, most of them plain ops)
        if kind is Prefetch:
            self.prefetch(item.op)
        elif kind is Await:
            self.await_op(item.op)
        else:
            self.run(item)

    def run(self, op: Op) -> Node:
        """Run `op` next, after the last held wait (those before it as barriers); its node."""
        if not self._waits:
            node = Node(op, groups=(self.group,))
        else:
            self._barriers(len(self._waits) - 1)
            dep, category = self._waits.pop()
            node = Node(op, [dep], (self.group,), wait_category=category)
        self._nodes.append(node)
        return node

    def append(self, node: Node) -> None:
        """Add a node as it is (the optimizer after its gradients), after any held waits."""
        self._barriers(len(self._waits))
        self._nodes.append(node)

    def wait_for(self, dep: Node, category: str) -> None:
        """Wait here for `dep` (the time before it is under way recorded as `category`)."""
        self._waits.append((dep, category))

    def prefetch(self, op: Op) -> Node:
        """Start `op` in the background after the stream's latest node (a :class:`Prefetch`); its node."""
        node = Node(op, groups=(self.group,))
        self._prefetched[id(op)] = node
        self.background.append(Stream("prefetch", [node], CRITICAL, self.last(), self.group))
        return node

    def await_op(self, op: Op) -> None:
        """Wait here for the prefetched `op` (an :class:`Await`)."""
        self.wait_for(self._prefetched.pop(id(op)), op.category)

    def nodes(self) -> list[Node]:
        """The stream's nodes, held waits ended as barriers."""
        self.last()
        return self._nodes

    def _barriers(self, count: int) -> None:
        """The first `count` held waits as barriers of their own."""
        for dep, category in self._waits[:count]:
            self._nodes.append(Node(None, [dep], (self.group,), wait_category=category))
        del self._waits[:count]


def critical_stream(schedule: StepSchedule, name: str = "main", group: int = 0) -> tuple[Stream, list[Stream]]:
    """The critical stream of `schedule` on one group of chips, and the background streams it launches."""
    stream = ItemStream(group)
    background, add, last = stream.background, stream.add, stream.last
    pending: list[Stream] = []  # gradient chains started after the backward pass (no overlap)

    final = len(schedule.micro_batches) - 1
    for mb, (forward, backward) in enumerate(schedule.micro_batches):
        for item in forward:
            add(item)
        for position, layer_items in enumerate(backward):
            for item in layer_items:
                add(item)
            if mb == final and schedule.grad_sync[position]:
                if schedule.overlap_grad_sync:
                    background += grad_streams(schedule.grad_sync[position], last(), group)
                else:
                    pending.append(schedule.grad_sync[position])
    end_of_backward = last()
    for chains in pending:
        background += grad_streams(chains, end_of_backward, group)
    grad_ends = [s.nodes[-1] for s in background if s.name == "grad_sync"]
    stream.append(Node(schedule.optimizer, grad_ends, (group,)))
    return Stream(name, stream.nodes(), CRITICAL, None, group), background


class TrainingStep:
    """The training step of one group of chips (data, tensor, context and expert parallelism), as a graph per step."""

    def __init__(self, coster: StepCoster):
        self.coster, self.costers = coster, [coster]
        self.fixed = fixed_ops(coster)

    def step_graph(self, plan, placement, rng) -> tuple[Graph, list[list[LoadSample]]]:
        """One step's graph and each micro-batch's routing samples."""
        micro_batches = self.coster.workload.training.micro_batches
        moe_ops, routings = moe_micro_batches(plan, placement, rng, micro_batches, self.coster.model.moe_layers,
                                              lambda mb, layer: self.coster)
        batches = [micro_batch_items(self.coster, self.fixed, moe_ops, mb) for mb in range(micro_batches)]
        schedule = StepSchedule(batches, list(self.fixed["grad_sync"].values()), self.fixed["optimizer"],
                                self.coster.workload.training.grad_sync_overlap)
        return training_graph(schedule), routings


def training_graph(schedule: StepSchedule) -> Graph:
    main, background = critical_stream(schedule)
    return Graph([main, *background])


def run_step(schedule: StepSchedule) -> StepRun:
    """Run one training step's schedule (the whole cluster as one group of chips)."""
    return run_graph(training_graph(schedule))
