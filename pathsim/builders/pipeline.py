"""A pipeline-parallel training step as a graph: one critical stream per stage, joined by point-to-point sends.

Stage ``s`` runs on its own block of chips (:meth:`Layout.for_stage`) with its
own compute and network resources; inside a stage, data, tensor and expert
parallelism are as in :mod:`pathsim.builders.training`, priced by a
:class:`StepCoster` of the stage's layout. Each stage's stream takes its
schedule's units (:mod:`pathsim.builders.schedules`) in order; a unit is the
forward or backward of one micro-batch through one model chunk, i.e. the ops of
that chunk's layers. A forward unit needs the activations of the previous
virtual stage, a backward unit the gradient from the next one: each is a
point-to-point send (category ``pipeline_p2p``) launched when its producer
finishes, priced by the network model on the real links between the two
blocks and holding both stages' networks, so it contends with their
all-to-alls and gradient buckets. A stage waiting for an input that is not yet
under way records a ``pipeline_bubble``; waiting for one in flight, exposed
``pipeline_p2p``.

Each stage all-reduces its own layers' gradients once their last backward is
done (overlapped with its remaining backwards, as in the training builder) and
runs its own optimizer step; the step ends when the last stage's does.
Sends are asynchronous (a stage does not wait for its send to finish), as
Megatron-LM's batched isend/irecv overlap with compute when communication
overlap is on.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from pathsim.builders.schedules import SCHEDULES, Unit, peak_in_flight
from pathsim.builders.training import ItemStream, CRITICAL, fixed_ops, grad_streams
from pathsim.engine import NETWORK, Graph, Node, Op, Stream
from pathsim.memory import Held
from pathsim.model_math import layer_shapes
from pathsim.routing import LoadSample, route_layer
from pathsim.step_ops import StepCoster
from pathsim.traffic import Traffic
from pathsim.workload import ModelSpec, WorkloadConfig


def layer_forward_flops(model: ModelSpec) -> np.ndarray:
    """Forward FLOPs per token of each layer (active experts only), the LM head's added to the last."""
    s = layer_shapes(model)
    moe = model.moe
    flops = np.empty(model.layers)
    for i in range(model.layers):
        ffn = (s.router_params + s.shared_params + moe.top_k * s.expert_params) if model.is_moe(i) else s.dense_ffn_params
        flops[i] = 2.0 * (s.attention_params + ffn) + s.attention_core_flops
    flops[-1] += s.head_flops
    return flops


def partition_layers(model: ModelSpec, parts: int, explicit: list[int] | None = None) -> list[range]:
    """Contiguous layers of each virtual stage: `explicit` counts, or cuts at the layer boundaries nearest to equal
    shares of the forward FLOPs (the LM head weighing on the last stage), every stage keeping at least one layer."""
    if explicit is None:
        cumulative = np.cumsum(layer_forward_flops(model))  # cost of layers [0, b) is cumulative[b - 1]
        total, layers = float(cumulative[-1]), model.layers
        cuts, previous = [], 0
        for k in range(1, parts):
            target = k * total / parts
            b = int(np.searchsorted(cumulative, target))  # cumulative[b - 1] < target <= cumulative[b]
            if b + 1 <= layers and (b == 0 or abs(cumulative[b] - target) < abs(cumulative[b - 1] - target)):
                b += 1  # cut after layer b: the nearer boundary
            b = min(max(b, previous + 1), layers - (parts - k))  # leave a layer for each stage on either side
            cuts.append(b)
            previous = b
        explicit = list(np.diff([0, *cuts, layers]).astype(int))
    bounds = np.concatenate([[0], np.cumsum(explicit)])
    return [range(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


class Pipeline:
    """The stages of one pipeline-parallel run: their layers, schedule, costers and what each holds in HBM."""

    def __init__(self, workload: WorkloadConfig, make_coster: Callable[[int, Held], StepCoster]):
        """`make_coster(stage, held)`: the coster of a stage's chips, given what they hold."""
        par = workload.parallelism
        self.workload, self.model = workload, workload.model
        self.stages, self.virtual = par.pipeline, par.virtual_stages
        self.micro_batches = workload.training.micro_batches
        self.schedule = par.pipeline_schedule
        self.parts = partition_layers(self.model, self.stages * self.virtual, par.stage_layers)
        self.orders = SCHEDULES[self.schedule](self.stages, self.micro_batches, self.virtual, par.microbatch_group)
        self.held = []
        for s, order in enumerate(self.orders):
            live = peak_in_flight(order, self.virtual)
            layers = [(i, live[c]) for c in range(self.virtual) for i in self.parts[c * self.stages + s]]
            self.held.append(Held(tuple(i for i, _ in layers), embedding=s == 0, head=s == self.stages - 1,
                                  in_flight=tuple(n for _, n in layers)))
        self.costers = [make_coster(s, held) for s, held in enumerate(self.held)]
        self.coster = self.costers[0]
        self.fixed = [fixed_ops(c, list(held.layers), held.head) for c, held in zip(self.costers, self.held)]
        self._p2p: dict[tuple[int, int], tuple[float, np.ndarray]] = {}

    def layers_of(self, stage: int, chunk: int) -> range:
        return self.parts[chunk * self.stages + stage]

    def send(self, source: int, target: int) -> tuple[float, np.ndarray]:
        """Time and link bytes of one micro-batch's activations (or their gradients) from every chip of stage
        `source` to the same rank of stage `target`: a data rank's tokens × d_model, split over its tensor ranks
        (sequence parallelism), in the model's dtype."""
        if (source, target) not in self._p2p:
            a, b = self.costers[source], self.costers[target]
            ranks = np.arange(a.layout.chips)
            nbytes = a.tokens_per_chip * self.model.d_model * self.model.dtype_bytes
            traffic = Traffic.from_flows(a.layout.physical_chips, a.layout.chip(ranks), b.layout.chip(ranks),
                                         np.full(len(ranks), float(nbytes)))
            timing = a.network.phase(traffic)
            self._p2p[source, target] = (timing.time_s, timing.link_bytes)
        return self._p2p[source, target]

    def step_graph(self, plan, placement, rng: np.random.Generator) -> tuple[Graph, list[list[LoadSample]]]:
        """One step's graph, with every micro-batch's routing sampled (micro-batch after micro-batch, layers in
        order, so the same seed gives the same samples whatever the schedule)."""
        model, P, fixed = self.model, self.stages, self.fixed
        stage_of = {i: k % P for k, part in enumerate(self.parts) for i in part}
        moe_ops: dict[tuple[int, int], tuple[list[Op], list[Op]]] = {}
        routings: list[list[LoadSample]] = []
        for mb in range(self.micro_batches):
            samples = []
            for i in model.moe_layers:
                coster = self.costers[stage_of[i]]
                routing = route_layer(plan, coster.layout, placement, coster.moe_index[i], rng)
                samples.append(routing.load_sample())
                forward, a2a = coster.moe_block(i, routing, backward=False)
                backward, _ = coster.moe_block(i, routing, backward=True, a2a=a2a)
                moe_ops[mb, i] = (forward, backward)
            routings.append(samples)

        def ops_of(stage: int, unit: Unit) -> list[tuple[int, list[Op]]]:
            """(layer, its ops) of one unit, in execution order (model.layers stands for the LM head)."""
            f = fixed[stage]
            vs = unit.chunk * P + stage
            last = vs == len(self.parts) - 1
            out = []
            if unit.kind == "F":
                for i in self.layers_of(stage, unit.chunk):
                    ffn = moe_ops[unit.mb, i][0] if model.is_moe(i) else f["dense_ffn"][False][i]
                    out.append((i, f["attention"][False][i] + ffn))
                if last:
                    out.append((model.layers, [f["head"][False]]))
            else:
                if last:
                    out.append((model.layers, [f["head"][True]]))
                for i in reversed(self.layers_of(stage, unit.chunk)):
                    ffn = moe_ops[unit.mb, i][1] if model.is_moe(i) else f["dense_ffn"][True][i]
                    out.append((i, ffn + f["attention"][True][i]))
            return out

        sends: dict[tuple[str, int, int], Node] = {}  # (kind, micro-batch, receiving virtual stage) -> its send

        def send(kind: str, mb: int, source_vs: int, target_vs: int) -> Node:
            key = (kind, mb, target_vs)
            if key not in sends:
                a, b = source_vs % P, target_vs % P
                time_s, link_bytes = self.send(a, b)
                what = "activations" if kind == "F" else "gradients"
                op = Op(f"mb{mb} {what} stage {a} -> {b}", "pipeline_p2p", NETWORK, time_s, link_bytes=link_bytes)
                sends[key] = Node(op, groups=tuple(sorted({a, b})))
            return sends[key]

        streams: list[Stream] = []
        background: list[Stream] = []
        last_backward = {(s, c): max(k for k, u in enumerate(order) if u.kind == "B" and u.chunk == c)
                         for s, order in enumerate(self.orders) for c in range(self.virtual)}
        for s, order in enumerate(self.orders):
            stage = ItemStream(s)  # ops in turn; a context-parallel ring's K/V pass runs beside the attention core
            nodes = stage.nodes
            grad_ends: list[Node] = []
            for k, unit in enumerate(order):
                vs = unit.chunk * P + s
                source = vs - 1 if unit.kind == "F" else vs + 1
                if 0 <= source < len(self.parts):  # the unit waits for its input from the neighbouring stage
                    nodes.append(Node(None, [send(unit.kind, unit.mb, source, vs)], (s,), wait_category="pipeline_bubble"))
                elif not self.layers_of(s, unit.chunk) and not ops_of(s, unit):
                    nodes.append(Node(None, groups=(s,)))  # a chunk without layers (Llama 3's embedding-only first) relays
                for layer, ops in ops_of(s, unit):
                    for item in ops:
                        stage.add(item)
                    if k == last_backward[s, unit.chunk] and fixed[s]["grad_sync"].get(layer):
                        streams_here = grad_streams(fixed[s]["grad_sync"][layer], nodes[-1], s)
                        background += streams_here
                        grad_ends += [g.nodes[-1] for g in streams_here]
                target = vs + 1 if unit.kind == "F" else vs - 1
                if 0 <= target < len(self.parts):
                    background.append(Stream("p2p", [send(unit.kind, unit.mb, vs, target)], CRITICAL, nodes[-1], s))
            nodes.append(Node(fixed[s]["optimizer"], grad_ends, (s,)))
            background += stage.background
            streams.append(Stream(f"stage {s}", nodes, CRITICAL, None, s))
        return Graph(streams + background, groups=P, critical=tuple(st.name for st in streams)), routings


def bubble_fraction(stages: int, micro_batches: int, virtual: int = 1) -> float:
    """The closed form: idle share of a stage's step with uniform stages and free communication,
    ((P−1)/v) / (m + (P−1)/v) (Narayanan et al. SC'21 §2.2)."""
    idle = (stages - 1) / virtual
    return idle / (micro_batches + idle)

