"""The discrete-event schedule of one training step (SimPy).

Three resources: the chips' ``compute``, their ``network`` inside the slice
(ICI, NVLink, the fabric) and the ``dcn`` between slices (host NICs). The
critical stream — forward and backward of every micro-batch — holds one
resource at a time, op after op. A layer's gradient all-reduces are a chain of
ops per bucket (on a multi-slice cluster: reduce-scatter in the slice,
all-reduce across slices over the DCN, all-gather in the slice), run as one
process per stage of the chain: each bucket's stages in order, buckets
pipelined, so one bucket crosses the DCN while the next reduce-scatters over
ICI. Chains are launched as soon as a layer's last backward finishes
(``grad_sync_overlap``) and queue for the network behind the critical
stream's all-to-alls (lower priority, so a bucket in flight can still delay
the next all-to-all: the interference is simulated, not assumed) while
backward compute carries on.
Without overlap they start after the backward pass. The optimizer step waits
for all of them.

Sharded weights (ZeRO-3) are gathered ahead of use: the critical stream
launches a layer's all-gather (``Prefetch``) while the layer before it
computes, on the network at the critical stream's priority, and waits for it
(``Await``) only when the layer starts; the wait, if any, is recorded as an
exposed span of the gather on the critical stream.

Events per step are O(micro-batches × layers × ops per layer): the processes
are streams of work, not chips; per-chip differences (expert load) are already
folded into each op's duration by :mod:`pathsim.step_ops`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import simpy

from pathsim.step_ops import COMPUTE, DCN, NETWORK, Op

CRITICAL, GRAD = 0, 1  # network priorities: lower value is served first


@dataclass
class Span:
    """One op as it ran: where it was, when, and how long it waited for its resource first."""

    op: Op
    stream: str  # "main", "grad_sync" or "prefetch"
    start_s: float
    end_s: float
    waits: tuple[tuple[str, float, float], ...] = ()  # per resource it waited for: (resource, asked at, got at)

    @property
    def waited_s(self) -> float:
        """How long it waited for its resources before it started."""
        return sum(got - asked for _, asked, got in self.waits)


@dataclass(frozen=True)
class Prefetch:
    """Start `op` in the background here; the critical stream goes on."""

    op: Op


@dataclass(frozen=True)
class Await:
    """The critical stream waits here until the prefetched `op` has finished."""

    op: Op


Item = Op | Prefetch | Await


@dataclass
class StepSchedule:
    micro_batches: list[tuple[list[Item], list[list[Item]]]]  # per micro-batch: forward, backward per layer (reverse order)
    grad_sync: list[list[list[Op]]]  # per entry of the backward order: that layer's gradient chains (one per bucket)
    optimizer: Op
    overlap_grad_sync: bool


@dataclass
class StepRun:
    spans: list[Span] = field(default_factory=list)
    step_time_s: float = 0.0
    backward_end_s: float = 0.0
    events: int = 0


def run_step(schedule: StepSchedule) -> StepRun:
    env = simpy.Environment()
    resources = {name: simpy.PriorityResource(env, capacity=1) for name in (COMPUTE, NETWORK, DCN)}
    run = StepRun()

    def execute(op: Op, stream: str, priority: int):
        # Several resources are asked for one after another in one fixed order (that of `resources`), so no
        # two ops ever each hold one while waiting for the other's.
        held, waits = [], []
        for name in (n for n in resources if n in op.resources):
            request = resources[name].request(priority=priority)
            held.append((resources[name], request))
            since = env.now
            yield request
            if env.now > since:
                waits.append((name, since, env.now))
        start = env.now
        yield env.timeout(op.duration_s)
        for resource, request in held:
            resource.release(request)
        run.spans.append(Span(op, stream, start, env.now, tuple(waits)))

    def stage(chains: list[list[Op]], members: list[int], k: int, done: dict[tuple[int, int], simpy.Event]):
        """The k-th op of the `members` chains, chain after chain, each once its (k-1)-th has finished."""
        for c in members:
            if k > 0:
                yield done[c, k - 1]
            yield from execute(chains[c][k], "grad_sync", GRAD)
            if (c, k) in done:
                done[c, k].succeed()

    def start(chains: list[list[Op]]) -> list:
        """One process per (stage, resource), not per chain: bucket b+1 reduce-scatters while bucket b crosses
        the DCN, a chain that starts on the DCN does not wait behind others' reduce-scatters, and a layer of
        thousands of buckets queues a handful of requests, not thousands."""
        done = {(c, k): env.event() for c, chain in enumerate(chains) for k in range(len(chain) - 1)}
        members: dict[tuple[int, str], list[int]] = {}
        for c, chain in enumerate(chains):
            for k, op in enumerate(chain):
                members.setdefault((k, op.resource), []).append(c)
        return [env.process(stage(chains, group, k, done)) for (k, _), group in members.items()]

    prefetched: dict[int, simpy.Process] = {}

    def critical(item: Item):
        if isinstance(item, Prefetch):
            prefetched[id(item.op)] = env.process(execute(item.op, "prefetch", CRITICAL))
        elif isinstance(item, Await):
            gather = prefetched.pop(id(item.op))
            if not gather.triggered:
                start_s = env.now
                yield gather
                run.spans.append(Span(replace(item.op, name=item.op.name + " (exposed)", link_bytes=None), "main",
                                      start_s, env.now))
        else:
            yield from execute(item, "main", CRITICAL)

    def main():
        pending: list[list[list[Op]]] = []  # per layer: its chains
        launched = []
        last = len(schedule.micro_batches) - 1
        for mb, (forward, backward) in enumerate(schedule.micro_batches):
            for item in forward:
                yield from critical(item)
            for position, layer_items in enumerate(backward):
                for item in layer_items:
                    yield from critical(item)
                if mb == last and schedule.grad_sync[position]:
                    if schedule.overlap_grad_sync:
                        launched += start(schedule.grad_sync[position])
                    else:
                        pending.append(schedule.grad_sync[position])
        run.backward_end_s = env.now
        for chains in pending:
            launched += start(chains)
        if launched:
            yield simpy.AllOf(env, launched)
        yield from execute(schedule.optimizer, "main", CRITICAL)

    done = env.process(main())
    while not done.triggered or env.peek() != float("inf"):
        env.step()
        run.events += 1
    run.step_time_s = env.now
    return run
