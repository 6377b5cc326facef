"""The SimPy executor: runs any :class:`~pathsim.engine.graph.Graph` of ops.

One SimPy process per stream, not per chip or per op: a stream takes its
nodes in order; before each it waits for those of its dependencies that have
not finished, then asks for the node's resources (one capacity-1
priority-queued lock per kind and group of chips, asked in one fixed order so
no two nodes deadlock), holds them for the op's duration and releases them.
Streams launched "after" a node are started in the same instant that node
finishes, before its own stream goes on, so a critical stream's next request
competes with them at its own priority and wins ties.

What ran is recorded as :class:`Span` (when each op held its resources, and how
long it waited for each first) and, for nodes that ask for it, :class:`Idle`
(the time a stream waited for a dependency that had not even started:
a pipeline bubble). A stream waiting for a dependency already under way
records that wait as an exposed span of the dependency's op (a prefetched
weight gather that has not arrived).

Events per step are O(nodes): per-chip differences are already folded into
each op's duration by the builders. Ops in a row that no other stream can
observe (they hold no resource another stream uses, and nothing waits for or
starts after any but the last) run as one timeout, their spans laid end to end
exactly as op after op would have: most of a pipeline's compute.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import simpy
from simpy.events import URGENT

from pathsim.engine.graph import Graph, Node, Op, Stream


@dataclass(slots=True)
class Span:
    """One op as it ran: where it was, when, and how long it waited for its resources first."""

    op: Op
    stream: str  # the stream that ran it ("main", "grad_sync", "prefetch", "stage 2", ...)
    start_s: float
    end_s: float
    waits: tuple[tuple[str, float, float], ...] = ()  # per resource it waited for: (resource, asked at, got at)
    group: int = 0  # the group of chips (pipeline stage) it ran on
    held: tuple[str, ...] = ()  # the resources it held (keys of pathsim.engine.graph.resource_key)

    @property
    def waited_s(self) -> float:
        """How long it waited for its resources before it started."""
        return sum(got - asked for _, asked, got in self.waits)

    def pieces(self) -> list["Span"]:
        """This span op by op: a fused op's parts laid end to end (its waits go to the first), else itself."""
        parts = self.op.parts
        if not parts:
            return [self]
        out, at = [], self.start_s
        for k, part in enumerate(parts):
            end = self.end_s if k == len(parts) - 1 else at + part.duration_s
            out.append(Span(part, self.stream, at, end, self.waits if k == 0 else (), self.group, self.held))
            at = end
        return out


@dataclass(frozen=True)
class Idle:
    """A stream waiting for a dependency not yet under way (a pipeline stage waiting for its input)."""

    stream: str
    group: int
    start_s: float
    end_s: float
    category: str


@dataclass
class StepRun:
    spans: list[Span] = field(default_factory=list)
    idle: list[Idle] = field(default_factory=list)
    step_time_s: float = 0.0
    events: int = 0
    groups: int = 1
    critical: tuple[str, ...] = ("main",)

    def op_spans(self) -> list[Span]:
        """Every op as it ran, fused ops as their parts (what a trace or timeline shows)."""
        return [piece for span in self.spans for piece in span.pieces()]


class _Lock:
    """A resource one op holds at a time, granted by priority, then by when it was asked for, then in the order
    asked: SimPy's capacity-1 ``PriorityResource``, without its request events when it is free (an op that finds it
    free takes it on the spot; most do)."""

    __slots__ = ("env", "busy", "queue", "asked")

    def __init__(self, env: simpy.Environment):
        self.env, self.busy, self.queue, self.asked = env, False, [], 0

    def take(self, priority: int) -> simpy.Event | None:
        """None: taken now; else the event that fires when it is handed over."""
        if not self.busy:  # (never free with a queue: a release hands it straight to the next)
            self.busy = True
            return None
        event = self.env.event()
        heapq.heappush(self.queue, (priority, self.env.now, self.asked, event))
        self.asked += 1
        return event

    def release(self) -> None:
        if self.queue:
            heapq.heappop(self.queue)[3].succeed()
        else:
            self.busy = False


def run_graph(graph: Graph) -> StepRun:
    """Run every stream of `graph` to completion; the step ends when the last op does."""
    env = simpy.Environment()
    kinds: dict[tuple, tuple[str, ...]] = {}  # resource keys by (op's resources, groups): few distinct ones
    held_by: dict[int, tuple[str, ...]] = {}
    users: dict[str, int] = {}  # streams using each resource
    depended: set[int] = set()
    launches: dict[int, list[Stream]] = {}
    for stream in graph.streams:
        used = set()
        for node in stream.nodes:
            for dep in node.deps:
                depended.add(id(dep))
            if node.op is None:
                held_by[id(node)] = ()
                continue
            kind = (node.op.resource, node.op.also, node.groups)
            keys = kinds.get(kind)
            if keys is None:
                keys = kinds[kind] = node.resources
            held_by[id(node)] = keys
            used.add(keys)
        for key in {key for keys in used for key in keys}:
            users[key] = users.get(key, 0) + 1
        if stream.after is not None:
            launches.setdefault(id(stream.after), []).append(stream)
    # A resource only one stream uses is never contended (a stream runs its nodes one at a time): it needs no
    # SimPy resource, whose requests are most of a large graph's events.
    resources = {key: _Lock(env) for key in sorted(users) if users[key] > 1}
    contended = {keys: any(key in resources for key in keys) for keys in [*kinds.values(), ()]}
    run = StepRun(groups=graph.groups, critical=graph.critical)
    done: dict[int, simpy.Event] = {node: env.event() for node in depended}
    asked_at: dict[int, float] = {}
    exposed: dict[int, Op] = {}  # the exposed copy of an op waited for (one per op, however often it is)
    observed = depended | launches.keys()  # nodes another stream waits for or starts after

    def segments(stream: Stream) -> list[list[Node]]:
        """The stream's nodes cut into chains to run as one timeout: ops in a row that hold no contended resource,
        where no other stream waits for, or is launched by, any but the last, and only the first waits for
        dependencies (nothing outside the chain can tell it from op after op). Each other node is a chain of its
        own."""
        out: list[list[Node]] = []
        open_chain = False  # whether the last chain may take the next node
        for node in stream.nodes:
            free = node.op is not None and not contended[held_by[id(node)]]
            if open_chain and free and not node.deps:
                out[-1].append(node)
            else:
                out.append([node])
            open_chain = free and id(node) not in observed
        return out

    def wait_for(node: Node, stream: Stream, pending: list[Node]):
        since = env.now
        if len(pending) == 1:
            yield done[id(pending[0])]
        else:
            yield simpy.AllOf(env, [done[id(dep)] for dep in pending])
        if node.wait_category is None or env.now <= since:
            return
        # Blame the dependency that got under way last (builders give recorded waits a single dependency, so
        # this is the one the stream waited for).
        last = max(pending, key=lambda dep: (asked_at[id(dep)], pending.index(dep)))
        under_way = max(since, asked_at[id(last)])
        if under_way > since:
            run.idle.append(Idle(stream.name, stream.group, since, under_way, node.wait_category))
        if env.now > under_way:
            if id(last.op) not in exposed:
                op = last.op  # a copy under another name and without link bytes (the op's own span counts them)
                exposed[id(op)] = Op(op.name + " (exposed)", op.category, op.resource, op.duration_s, op.layer,
                                     op.straggler_s, op.flops, None, op.also, op.weight_share)
            run.spans.append(Span(exposed[id(last.op)], stream.name, under_way, env.now, group=stream.group))

    def hold(node: Node, stream: Stream, keys: tuple[str, ...]):
        held, waits = [], []
        for key in keys:
            lock = resources.get(key)
            if lock is None:
                continue
            held.append(lock)
            since = env.now
            handed = lock.take(stream.priority)
            if handed is not None:
                yield handed
                if env.now > since:
                    waits.append((key, since, env.now))
        start = env.now
        yield env.timeout(node.op.duration_s)
        for lock in held:
            lock.release()
        run.spans.append(Span(node.op, stream.name, start, env.now, tuple(waits), node.groups[0], keys))

    def chain(nodes: list[Node], stream: Stream):
        """Free ops in a row as one timeout, ending exactly when op after op would have (the same sums)."""
        start = end = env.now
        spans, name = run.spans, stream.name
        for node in nodes:
            begin, end = end, end + node.op.duration_s
            spans.append(Span(node.op, name, begin, end, (), node.groups[0], held_by[id(node)]))
        if id(nodes[-1]) in done:
            asked_at[id(nodes[-1])] = begin
        delay = end - start
        while start + delay < end:  # the difference can round: nudge it until the sum lands on the end
            delay = math.nextafter(delay, math.inf)
        while start + delay > end:
            delay = math.nextafter(delay, -math.inf)
        yield env.timeout(delay)

    finished: set[int] = set()

    def single(stream: Stream) -> None:
        """Start a stream of one op that waits for nothing (a prefetched gather or all-to-all, a send) as a chain of
        callbacks: the same events at the same times and in the same order as its process would make (its start
        is urgent, as a process's is), but not the process's own, and no generator. Most of a DualPipe step's
        streams are such."""
        node = stream.nodes[0]
        keys = held_by[id(node)]
        wanted = [key for key in keys if key in resources]
        held: list = []
        waits: list[tuple[str, float, float]] = []

        def ask(_=None, i: int = 0, since: float | None = None) -> None:
            if i == 0 and id(node) in done:
                asked_at[id(node)] = env.now
            if since is not None and env.now > since:
                waits.append((wanted[i - 1], since, env.now))
            while i < len(wanted):
                lock = resources[wanted[i]]
                held.append(lock)
                handed = lock.take(stream.priority)
                i += 1
                if handed is not None:
                    handed.callbacks.append(lambda _, i=i, since=env.now: ask(i=i, since=since))
                    return
            start = env.now
            env.timeout(node.op.duration_s).callbacks.append(lambda _: finish(start))

        def finish(start: float) -> None:
            nonlocal ask
            ask = None  # ask's callbacks name it: a cycle that would keep the step alive until the collector runs
            for lock in held:
                lock.release()
            run.spans.append(Span(node.op, stream.name, start, env.now, tuple(waits), node.groups[0], keys))
            if id(node) in done:
                done[id(node)].succeed()
            for later in launches.get(id(node), ()):
                launch(later)
            finished.add(id(stream))

        begin = env.event()
        begin._ok, begin._value = True, None  # triggered at once, like the Initialize event that starts a process
        begin.callbacks.append(ask)
        env.schedule(begin, URGENT)

    def launch(stream: Stream) -> None:
        if len(stream.nodes) == 1 and stream.nodes[0].op is not None and not stream.nodes[0].deps:
            single(stream)
        else:
            env.process(process(stream))

    def process(stream: Stream):
        # One generator per stream, the common cases inline (a large graph runs millions of nodes): waiting only for
        # dependencies not yet done, asking only for contended resources.
        for nodes in segments(stream):
            node = nodes[0]
            if node.deps:
                pending = [dep for dep in node.deps if not done[id(dep)].triggered]
                if pending:
                    yield from wait_for(node, stream, pending)
            if len(nodes) > 1:
                yield from chain(nodes, stream)
                node = nodes[-1]
            else:
                if id(node) in done:
                    asked_at[id(node)] = env.now
                if node.op is not None:
                    keys = held_by[id(node)]
                    if contended[keys]:
                        yield from hold(node, stream, keys)
                    else:
                        start = env.now
                        yield env.timeout(node.op.duration_s)
                        run.spans.append(Span(node.op, stream.name, start, env.now, (), node.groups[0], keys))
            if id(node) in done:
                done[id(node)].succeed()
            for later in launches.get(id(node), ()):
                launch(later)
        finished.add(id(stream))

    for stream in graph.streams:
        if stream.after is None:
            env.process(process(stream))
    while env.peek() != float("inf"):
        env.step()
        run.events += 1
    stuck = [stream.name for stream in graph.streams if id(stream) not in finished]
    if stuck:  # a builder's bug (a cycle of waits), never a user's: a step that silently ends early would be a lie
        raise RuntimeError(f"the graph deadlocked: {len(stuck)} of {len(graph.streams)} streams never finished "
                           f"(first: {', '.join(stuck[:3])})")
    run.step_time_s = env.now
    # The executor's functions name each other (launch, single, process...): a cycle through this frame's cells that
    # would hold every node, span and event of the step until the cycle collector ran. Emptying the cells lets
    # reference counting free them the moment the step is summed up.
    segments = wait_for = hold = chain = single = launch = process = None  # noqa: F811 (emptied, not redefined)
    return run
