"""The SimPy executor: runs any :class:`~pathsim.engine.graph.Graph` of ops.

One run of SimPy callbacks per stream (a process's events, without its
generator: :class:`_StreamRun`), not per chip or per op: a stream takes its
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
from collections import deque
from dataclasses import dataclass, field

import simpy

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

    def part_times(self) -> list[tuple[float, float]]:
        """(start, end) of each part of a fused op, laid end to end (the last ends with the span)."""
        parts, out, at = self.op.parts, [], self.start_s
        for k, part in enumerate(parts):
            end = self.end_s if k == len(parts) - 1 else at + part.duration_s
            out.append((at, end))
            at = end
        return out

    def pieces(self) -> list["Span"]:
        """This span op by op: a fused op's parts laid end to end (its waits go to the first), else itself."""
        if not self.op.parts:
            return [self]
        return [Span(part, self.stream, start, end, self.waits if k == 0 else (), self.group, self.held)
                for k, (part, (start, end)) in enumerate(zip(self.op.parts, self.part_times()))]


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
    executor = _Executor(graph)
    for stream in graph.streams:
        if stream.after is None:
            executor.launch(stream)
    run, env, starting = executor.run, executor.env, executor.starting
    step, start, events = env.step, starting.popleft, 0
    while True:
        # Streams launched while the last event was processed start now, in launch order, before any other event:
        # where the urgent events that start SimPy processes would have run, without those events.
        while starting:
            start().advance()
        try:
            step()
        except simpy.core.EmptySchedule:
            break
        events += 1
    run.events = events
    stuck = [stream.name for stream in graph.streams if stream not in executor.finished]
    if stuck:  # a builder's bug (a cycle of waits), never a user's: a step that silently ends early would be a lie
        raise RuntimeError(f"the graph deadlocked: {len(stuck)} of {len(graph.streams)} streams never finished "
                           f"(first: {', '.join(stuck[:3])})")
    run.step_time_s = env.now
    return run


class _Executor:
    """What the streams of one graph share while it runs: the clock, the contended resources, and which nodes are
    done, under way and waited for."""

    def __init__(self, graph: Graph):
        self.env = env = simpy.Environment()
        kinds: dict[tuple, tuple[str, ...]] = {}  # resource keys by (op's resources, groups): few distinct ones
        self.held_by: dict[Node, tuple[str, ...]] = {}  # (nodes and streams hash by identity)
        users: dict[str, int] = {}  # streams using each resource
        depended: set[Node] = set()
        self.launches: dict[Node, list[Stream]] = {}
        held_by = self.held_by

        def keys_of(node: Node) -> tuple[str, ...]:
            op = node.op
            if op is None:
                return ()
            kind = (op.resource, op.also, node.groups)
            keys = kinds.get(kind)
            if keys is None:
                keys = kinds[kind] = node.resources
            return keys

        for stream in graph.streams:
            if stream.after is not None:
                self.launches.setdefault(stream.after, []).append(stream)
            if len(stream.nodes) == 1:  # (most streams: a prefetch, a send; a node's keys are distinct)
                node = stream.nodes[0]
                depended.update(node.deps)
                used = held_by[node] = keys_of(node)
            else:
                used = set()
                for node in stream.nodes:
                    depended.update(node.deps)
                    held_by[node] = keys = keys_of(node)
                    used.update(keys)
            for key in used:
                users[key] = users.get(key, 0) + 1
        # A resource only one stream uses is never contended (a stream runs its nodes one at a time): it needs no
        # SimPy resource, whose requests are most of a large graph's events.
        self.resources = {key: _Lock(env) for key in sorted(users) if users[key] > 1}
        self.contended = {keys: any(key in self.resources for key in keys) for keys in [*kinds.values(), ()]}
        self.run = StepRun(groups=graph.groups, critical=graph.critical)
        self.depended = depended  # nodes some node waits for
        self.ended: set[Node] = set()  # those of them that have finished
        # The event a node's waiters wait on, made when the first one has to: most dependencies have finished by
        # the time their dependents ask, and an event no one waits on would still cost a turn of the event loop.
        self.waited_on: dict[Node, simpy.Event] = {}
        self.asked_at: dict[Node, float] = {}  # when each node waited for got under way
        self.exposed: dict[int, Op] = {}  # the exposed copy of an op waited for (one per op, however often it is)
        self.observed = depended | self.launches.keys()  # nodes another stream waits for or starts after
        self.finished: set[Stream] = set()
        self.starting: deque[_StreamRun] = deque()  # launched, to start once the current event is processed

    def event_of(self, node: Node) -> simpy.Event:
        """The event that fires when `node` (not yet finished) finishes."""
        event = self.waited_on.get(node)
        if event is None:
            event = self.waited_on[node] = self.env.event()
        return event

    def launch(self, stream: Stream) -> None:
        self.starting.append(_StreamRun(self, stream))

    def segments(self, stream: Stream) -> list[list[Node]]:
        """The stream's nodes cut into chains to run as one timeout: ops in a row that hold no contended resource,
        where no other stream waits for, or is launched by, any but the last, and only the first waits for
        dependencies (nothing outside the chain can tell it from op after op). Each other node is a chain of its
        own."""
        if len(stream.nodes) == 1:  # (most streams: a prefetch, a send)
            return [stream.nodes]
        out: list[list[Node]] = []
        open_chain = False  # whether the last chain may take the next node
        held_by, contended, observed = self.held_by, self.contended, self.observed
        for node in stream.nodes:
            free = node.op is not None and not contended[held_by[node]]
            if open_chain and free and not node.deps:
                out[-1].append(node)
            else:
                out.append([node])
            open_chain = free and node not in observed
        return out


class _StreamRun:
    """One stream as it runs: a chain of SimPy callbacks, not a process. Each step waits on the event a process
    would yield (a dependency's completion, a resource handed over, a timeout) and goes on in that event's
    callbacks, so the events, their times and their order are a process's, without its generator and resume
    machinery (a large step runs a hundred thousand of them). It starts where a process's urgent start event would
    run, once the event that launched it has been processed: launched in the instant another node finishes, it
    asks for its resources only after the launching stream's next request."""

    __slots__ = ("ex", "stream", "segments", "at", "pending", "since", "wanted", "locks", "waits", "start")

    def __init__(self, ex: _Executor, stream: Stream):
        self.ex, self.stream, self.at = ex, stream, 0
        self.segments: list[list[Node]] | None = None

    def advance(self, _=None) -> None:
        """Take the next chains until one has to wait (for a dependency, a resource or its own duration)."""
        ex = self.ex
        if self.segments is None:
            self.segments = ex.segments(self.stream)
        segments, ended = self.segments, ex.ended
        while self.at < len(segments):
            node = segments[self.at][0]
            if node.deps:
                pending = [dep for dep in node.deps if dep not in ended]
                if pending:
                    self.pending, self.since = pending, ex.env.now
                    event = (ex.event_of(pending[0]) if len(pending) == 1
                             else simpy.AllOf(ex.env, [ex.event_of(dep) for dep in pending]))
                    event.callbacks.append(self.waited)
                    return
            if self.begin():
                return
            self.end()
        ex.finished.add(self.stream)

    def waited(self, _) -> None:
        """The dependencies are done: record the wait where the node asks for it, then go on."""
        ex, pending, since = self.ex, self.pending, self.since
        self.pending = None
        node, now = self.segments[self.at][0], ex.env.now
        if node.wait_category is not None and now > since:
            # Blame the dependency that got under way last (builders give recorded waits a single dependency, so
            # this is the one the stream waited for).
            asked_at = ex.asked_at
            last = pending[0] if len(pending) == 1 else max(pending, key=lambda dep: (asked_at[dep], pending.index(dep)))
            under_way = max(since, asked_at[last])
            stream = self.stream
            if under_way > since:
                ex.run.idle.append(Idle(stream.name, stream.group, since, under_way, node.wait_category))
            if now > under_way:
                exposed = ex.exposed.get(id(last.op))
                if exposed is None:
                    op = last.op  # a copy under another name and without link bytes (the op's own span counts them)
                    exposed = ex.exposed[id(op)] = Op(op.name + " (exposed)", op.category, op.resource, op.duration_s,
                                                      op.layer, op.straggler_s, op.flops, None, op.also, op.weight_share)
                ex.run.spans.append(Span(exposed, stream.name, under_way, now, group=stream.group))
        self.advance()  # (its dependencies are done now: it goes straight to the node's work)

    def begin(self) -> bool:
        """Start the current chain's work; False if there is none (a barrier): it is over at once."""
        ex, nodes = self.ex, self.segments[self.at]
        env, node = ex.env, nodes[0]
        if len(nodes) > 1:  # free ops in a row as one timeout, ending exactly when op after op would have
            start = end = env.now
            spans, name, held_by = ex.run.spans, self.stream.name, ex.held_by
            for node in nodes:
                begin, end = end, end + node.op.duration_s
                spans.append(Span(node.op, name, begin, end, (), node.groups[0], held_by[node]))
            if node in ex.depended:
                ex.asked_at[node] = begin
            delay = end - start
            while start + delay < end:  # the difference can round: nudge it until the sum lands on the end
                delay = math.nextafter(delay, math.inf)
            while start + delay > end:
                delay = math.nextafter(delay, -math.inf)
            env.timeout(delay).callbacks.append(self.chained)
            return True
        if node in ex.depended:
            ex.asked_at[node] = env.now
        if node.op is None:
            return False
        keys = ex.held_by[node]
        if ex.contended[keys]:
            self.wanted = [key for key in keys if key in ex.resources]
            self.locks, self.waits = [], []
            self.ask()
        else:
            self.locks = self.waits = None
            self.start = env.now
            env.timeout(node.op.duration_s).callbacks.append(self.worked)
        return True

    def ask(self, _=None) -> None:
        """Take the node's contended resources in their fixed order, waiting where one is held; then run it."""
        ex, env = self.ex, self.ex.env
        if _ is not None and env.now > self.since:  # handed over after a wait
            self.waits.append((self.wanted[len(self.locks) - 1], self.since, env.now))
        while len(self.locks) < len(self.wanted):
            lock = ex.resources[self.wanted[len(self.locks)]]
            self.locks.append(lock)
            handed = lock.take(self.stream.priority)
            if handed is not None:
                self.since = env.now
                handed.callbacks.append(self.ask)
                return
        self.start = env.now
        env.timeout(self.segments[self.at][0].op.duration_s).callbacks.append(self.worked)

    def worked(self, _) -> None:
        """The node's op has run its duration: free its resources, record it, go on."""
        ex, node = self.ex, self.segments[self.at][0]
        waits = ()
        if self.locks is not None:
            for lock in self.locks:
                lock.release()
            waits = tuple(self.waits)
        ex.run.spans.append(Span(node.op, self.stream.name, self.start, ex.env.now, waits, node.groups[0],
                                 ex.held_by[node]))
        self.end()
        self.advance()

    def chained(self, _) -> None:
        self.end()
        self.advance()

    def end(self) -> None:
        """The current chain is over: signal the streams waiting for its last node, launch those after it."""
        ex, node = self.ex, self.segments[self.at][-1]
        self.at += 1
        if node in ex.depended:
            ex.ended.add(node)
            event = ex.waited_on.pop(node, None)
            if event is not None:
                event.succeed()
        for later in ex.launches.get(node, ()):
            ex.launch(later)
