"""A pipeline-parallel training step as a graph: one critical stream per stage, joined by point-to-point sends.

Stage ``s`` runs on its own block of chips (:meth:`Layout.for_stage`) with its
own compute and network resources; inside a stage, data, tensor and expert
parallelism are as in :mod:`pathsim.builders.training`, priced by a
:class:`StepCoster` of the stage's layout. Each stage's stream takes its
schedule's units (:mod:`pathsim.builders.schedules`) in order; a unit is the
forward or backward of one micro-batch through one model chunk, i.e. the ops of
that chunk's layers (with a zero-bubble schedule the backward is two units: its
input gradients, B, and its weight gradients, W, the part of each weighted op
its ``weight_share`` says). A micro-batch's path visits the virtual stages in
order (or, for DualPipe, one of two paths in opposite directions). A forward
unit needs the activations of the previous position on its path, a backward
unit the gradient from the next one: each is a point-to-point send (category
``pipeline_p2p``) launched when its producer finishes, priced by the network
model on the real links between the two blocks and holding both stages'
networks, so it contends with their all-to-alls and gradient buckets. A stage
waiting for an input that is not yet under way records a ``pipeline_bubble``;
waiting for one in flight, exposed ``pipeline_p2p``. Two units a schedule pairs
(DualPipe's forward and backward of opposite directions) run their compute in
turn on the stage's stream and each one's communication in the background under
the other's compute.

Each stage all-reduces its own layers' gradients once their last backward is
done (overlapped with its remaining backwards, as in the training builder) and
runs its own optimizer step; the step ends when the last stage's does.
Sends are asynchronous (a stage does not wait for its send to finish), as
Megatron-LM's batched isend/irecv overlap with compute when communication
overlap is on; with ``pipeline_overlap_p2p: false`` a stage waits for each of
its sends before going on, as Megatron-LM of 2021 did.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from pathsim.builders.schedules import SCHEDULES, Unit, peak_in_flight
from pathsim.builders.training import ItemStream, CRITICAL, fixed_ops, grad_streams, moe_micro_batches
from pathsim.engine import NETWORK, Graph, Node, Op, Stream
from pathsim.engine.graph import COMPUTE, Await, Prefetch, fuse, fuse_runs
from pathsim.memory import Held
from pathsim.model_math import layer_forward_flops
from pathsim.routing import LoadSample
from pathsim.step_ops import StepCoster
from pathsim.traffic import Traffic
from pathsim.workload import ModelSpec, WorkloadConfig


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
    """The stages of one pipeline-parallel run: their layers, schedule, costers and what each holds in HBM.

    A micro-batch walks a path of positions, each a (stage, chunk) holding a block of layers: one path through
    all P × v virtual stages (chunk c of stage s at position c·P + s), or with ``dualpipe`` two, one per direction
    (chunk 0 from stage 0 up, chunk 1 from stage P−1 down), over the same P blocks of layers."""

    def __init__(self, workload: WorkloadConfig, make_coster: Callable[[int, Held], StepCoster]):
        """`make_coster(stage, held)`: the coster of a stage's chips, given what they hold."""
        par = workload.parallelism
        self.workload, self.model = workload, workload.model
        self.stages, self.virtual = P, v = par.pipeline, par.virtual_stages
        self.micro_batches = workload.training.micro_batches
        self.schedule = par.pipeline_schedule
        if self.schedule == "dualpipe":
            self.chunks = 2
            self.paths = [[(pos, 0) for pos in range(P)], [(P - 1 - pos, 1) for pos in range(P)]]
        else:
            self.chunks = v
            self.paths = [[(pos % P, pos // P) for pos in range(P * v)]]
        self.parts = partition_layers(self.model, len(self.paths[0]), par.stage_layers)
        self.position = {at: pos for path in self.paths for pos, at in enumerate(path)}
        self.orders = SCHEDULES[self.schedule](P, self.micro_batches, v, par.microbatch_group)
        self.held = []
        for s, order in enumerate(self.orders):
            live = peak_in_flight(order, self.chunks)
            layers = [(i, live[c]) for c in range(self.chunks) for i in self.layers_of(s, c)]
            ends = {self.position[s, c] for c in range(self.chunks)}
            self.held.append(Held(tuple(i for i, _ in layers), embedding=0 in ends, head=len(self.parts) - 1 in ends,
                                  in_flight=tuple(n for _, n in layers)))
        self.costers = [make_coster(s, held) for s, held in enumerate(self.held)]
        self.coster = self.costers[0]
        self.fixed = [fixed_ops(c, list(held.layers), held.head) for c, held in zip(self.costers, self.held)]
        self._p2p: dict[tuple[int, int], tuple[float, np.ndarray]] = {}
        # Fixed for the run: the stage that runs each layer on each path, and each micro-batch's path; whether
        # backwards split into B and W, and the unit after which each chunk's gradients are complete; ZeRO-3's
        # weight gathers of each stage, by layer (the head's forward one keyed model.layers).
        self.stage_of_layer = [{i: s for s, c in path for i in self.layers_of(s, c)} for path in self.paths]
        self.path_of_mb = {u.mb: u.chunk if len(self.paths) > 1 else 0 for order in self.orders for u in order}
        self.split = any(u.kind == "W" for order in self.orders for u in order)
        done = "W" if self.split else "B"
        self.last_backward = {(s, c): max(k for k, u in enumerate(order) if u.kind == done and u.chunk == c)
                              for s, order in enumerate(self.orders) for c in range(self.chunks)}
        self.gathers = [{False: _present(zip([*held.layers, self.model.layers], f["gathers"][False])),
                         True: _present(zip(held.layers, f["gathers"][True]))} for held, f in zip(self.held, self.fixed)]

    def layers_of(self, stage: int, chunk: int) -> range:
        return self.parts[self.position[stage, chunk]]

    def path_of(self, chunk: int) -> list[tuple[int, int]]:
        return self.paths[chunk if len(self.paths) > 1 else 0]

    def neighbour(self, stage: int, chunk: int, step: int) -> tuple[int, int] | None:
        """The (stage, chunk) `step` positions along the path from this one, or None past its ends."""
        path, pos = self.path_of(chunk), self.position[stage, chunk] + step
        return path[pos] if 0 <= pos < len(path) else None

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
        moe_ops, routings = moe_micro_batches(
            plan, placement, rng, self.micro_batches, model.moe_layers,
            lambda mb, layer: self.costers[self.stage_of_layer[self.path_of_mb[mb]][layer]])

        halves: dict[int, tuple] = {}  # (each op's halves made once a step, however many units share it)
        fused: dict[tuple[int, ...], Op] = {}  # (each run of ops fused once a step, however many units repeat it)

        def ops_of(stage: int, unit: Unit) -> list[tuple[int, list]]:
            """(layer, its items) of one unit, in execution order (model.layers stands for the LM head)."""
            f = fixed[stage]
            last = self.neighbour(stage, unit.chunk, 1) is None
            out = []
            if unit.kind == "F":
                for i in self.layers_of(stage, unit.chunk):
                    ffn = moe_ops[unit.mb, i][0] if model.is_moe(i) else f["dense_ffn"][False][i]
                    out.append((i, f["attention"][False][i] + ffn))
                if last:
                    out.append((model.layers, [f["head"][False]]))
                return with_gathers(out, self.gathers[stage][False])
            if last:
                out.append((model.layers, [f["head"][True]]))
            for i in reversed(self.layers_of(stage, unit.chunk)):
                ffn = moe_ops[unit.mb, i][1] if model.is_moe(i) else f["dense_ffn"][True][i]
                out.append((i, ffn + f["attention"][True][i]))
            if self.split:  # B: the input gradients only; W: the weight gradients it left, as their own ops
                part, split = 0 if unit.kind == "B" else 1, []
                for i, items in out:
                    kept = []
                    for item in items:
                        half = _halved(item, halves)[part]
                        if half is not None:
                            kept.append(half)
                    split.append((i, kept))
                out = split
            return out if unit.kind == "W" else with_gathers(out, self.gathers[stage][True])  # dW = Xᵀ·dY needs no weights

        # ZeRO-3: a stage gathers each layer's weights for every unit that runs it (forward, and the backward's
        # input gradients), the next layer's while one computes; the head's stay gathered for the backward.
        def with_gathers(out: list[tuple[int, list]], weights: dict[int, Op]) -> list[tuple[int, list]]:
            if not weights:
                return out
            order = [layer for layer, _ in out]
            fetched = []
            for k, (layer, items) in enumerate(out):
                ahead = [Prefetch(weights[layer])] if k == 0 and weights.get(layer) else []
                here = [Await(weights[layer])] if weights.get(layer) else []
                nxt = weights.get(order[k + 1]) if k + 1 < len(order) else None
                fetched.append((layer, ahead + here + ([Prefetch(nxt)] if nxt else []) + items))
            return fetched

        sends: dict[tuple[str, int, tuple[int, int]], Node] = {}  # (kind, micro-batch, receiver) -> its send

        def send(kind: str, mb: int, source: tuple[int, int], target: tuple[int, int]) -> Node:
            key = (kind, mb, target)
            if key not in sends:
                a, b = source[0], target[0]
                time_s, link_bytes = self.send(a, b)
                what = "activations" if kind == "F" else "gradients"
                op = Op(f"mb{mb} {what} stage {a} -> {b}", "pipeline_p2p", NETWORK, time_s, link_bytes=link_bytes)
                sends[key] = Node(op, groups=tuple(sorted({a, b})))
            return sends[key]

        streams: list[Stream] = []
        background: list[Stream] = []
        overlap_p2p = self.workload.parallelism.pipeline_overlap_p2p
        for s, order in enumerate(self.orders):
            stage = ItemStream(s)  # ops in turn; a context-parallel ring's K/V pass runs beside the attention core
            grad_ends: list[Node] = []

            def chain(k: int, unit: Unit) -> list:
                """A unit's items: its input's arrival (from the neighbouring stage), then its layers' ops."""
                items: list = []
                if unit.kind != "W":  # a W needs only its own stage's input gradients, which ran before it
                    source = self.neighbour(s, unit.chunk, -1 if unit.kind == "F" else 1)
                    if source is not None:
                        items.append(_Input(send(unit.kind, unit.mb, source, (s, unit.chunk))))
                for layer, layer_items in ops_of(s, unit):
                    items += layer_items
                    if k == self.last_backward[s, unit.chunk] and fixed[s]["grad_sync"].get(layer):
                        items.append(_GradSync(fixed[s]["grad_sync"][layer]))
                return items

            k = 0
            while k < len(order):
                group = [(k, order[k])] + ([(k + 1, order[k + 1])] if order[k].paired else [])
                # A unit's compute ops in a row run as one (its runs never straddle a hand-over, which follows
                # communication).
                ends = _run_overlapped(stage, [fuse_runs(chain(j, u), fused) for j, u in group], background, grad_ends, s)
                for (j, unit), end in zip(group, ends):
                    target = self.neighbour(s, unit.chunk, 1 if unit.kind == "F" else -1)
                    if target is not None and unit.kind != "W":
                        sent = send(unit.kind, unit.mb, (s, unit.chunk), target)
                        background.append(Stream("p2p", [sent], CRITICAL, end, s))
                        if not overlap_p2p:  # the stage waits for its send (exposed pipeline_p2p while it runs)
                            stage.wait_for(sent, "pipeline_p2p")
                k += len(group)
            stage.append(Node(fixed[s]["optimizer"], grad_ends, (s,)))
            background += stage.background
            streams.append(Stream(f"stage {s}", stage.nodes(), CRITICAL, None, s))
        return Graph(streams + background, groups=P, critical=tuple(st.name for st in streams)), routings


def _present(pairs) -> dict:
    """The (key, value) pairs whose value is not None, as a dict."""
    return {key: value for key, value in pairs if value is not None}


def _halved(item, halves: dict[int, tuple]) -> tuple:
    """(input-gradient part, weight-gradient part) of a backward item, None where a part is empty; a fused op's
    halves are its parts' halves, fused. `halves`: those made so far, by op."""
    if not isinstance(item, Op) or item.weight_share == 0.0:
        return item, None
    if id(item) not in halves:
        if item.parts:
            pairs = [_halved(part, halves) for part in item.parts]
            halves[id(item)] = (fuse([b for b, _ in pairs], check=False),  # (halves of compute ops are compute ops)
                                fuse([w for _, w in pairs if w is not None], check=False))
        else:
            w = item.weight_share
            halves[id(item)] = (item.share(1 - w), item.share(w, item.name.replace(" bwd", " wgrad")))
    return halves[id(item)]


class _Input:
    """In a unit's items: wait here for the send that brings the unit its input (a pipeline bubble while it is
    not yet under way)."""

    def __init__(self, node: Node):
        self.node = node


class _GradSync:
    """In a unit's items: launch these gradient chains here (the layer's last weight gradients have run)."""

    def __init__(self, chains: list[list[Op]]):
        self.chains = chains


def _run_overlapped(stage: ItemStream, chains: list[list], background: list[Stream], grad_ends: list[Node],
                    group: int) -> list[Node]:
    """Add one unit's items to the stage's stream, or two units' overlapped (DualPipe's forward-and-backward
    chunk): their compute runs in turn on the stream while each one's communication runs in the background
    under the other's compute (started after its compute before it, awaited before its compute after it).
    Returns the node each unit ends at (its last compute, or its last communication)."""
    ends: list[Node | None] = [None] * len(chains)
    pending: list[list[Op]] = [[] for _ in chains]
    cursor = [0] * len(chains)
    turn = 0

    overlapped = len(chains) > 1

    def take(c: int) -> None:
        """Chain c's next run: its pending communication awaited, its compute ops, its next communication started."""
        items = chains[c]
        for op in pending[c]:
            stage.await_op(op)
        pending[c] = []
        k = cursor[c]
        while k < len(items):
            item = items[k]
            k += 1
            if type(item) is Op:  # most items
                if overlapped and item.resource != COMPUTE:
                    ends[c] = stage.prefetch(item)  # overlapped: runs under the other unit's compute
                    pending[c].append(item)
                    if k < len(items) and not (type(items[k]) is Op and items[k].resource != COMPUTE):
                        break  # hand over to the other unit until this one's next compute
                    continue
                ends[c] = stage.run(item)
            elif isinstance(item, _Input):
                stage.wait_for(item.node, "pipeline_bubble")
            elif isinstance(item, _GradSync):
                if stage.last() is not None:
                    here = grad_streams(item.chains, stage.last(), group)
                    background.extend(here)
                    grad_ends.extend(g.nodes[-1] for g in here)
            else:
                stage.add(item)
                ends[c] = stage.last()
        cursor[c] = k

    while any(cursor[c] < len(chains[c]) for c in range(len(chains))):
        if cursor[turn] < len(chains[turn]):
            take(turn)
        turn = (turn + 1) % len(chains)
    for c in range(len(chains)):  # what is still in flight when both units' compute is done
        for op in pending[c]:
            stage.await_op(op)
    return [end if end is not None else stage.last() for end in ends]


def bubble_fraction(stages: int, micro_batches: int, virtual: int = 1, schedule: str = "1f1b") -> float:
    """The closed form: idle share of a stage's step with uniform stages and free communication, in units of a
    forward F, with a backward of input gradients B = F and weight gradients W = F (a stage works 3m):
    ((P−1)/v)·3 for GPipe, 1F1B and interleaved 1F1B (Narayanan et al. SC'21 §2.2: (P−1)/v of m), (P−1)(F+B−W)
    for ZB-H1 (Qi et al. 2023), (P/2−1)(F&B + B' − 3W) with F&B = F + B' and B' = B + W for DualPipe
    (DeepSeek-V3 Table 2)."""
    P = stages
    idle = {"zb1p": P - 1.0, "dualpipe": 2.0 * (P / 2 - 1)}.get(schedule, 3.0 * (P - 1) / virtual)
    return idle / (3.0 * micro_batches + idle)

