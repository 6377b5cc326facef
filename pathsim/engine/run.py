"""The SimPy executor: runs any :class:`~pathsim.engine.graph.Graph` of ops.

One SimPy process per stream, not per chip or per op: a stream takes its
nodes in order; before each it waits for those of its dependencies that have
not finished, then asks for the node's resources (one capacity-1
``PriorityResource`` per kind and group of chips, asked in one fixed order so
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
each op's duration by the builders.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import simpy

from pathsim.engine.graph import Graph, Node, Op, Stream


@dataclass
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


def run_graph(graph: Graph) -> StepRun:
    """Run every stream of `graph` to completion; the step ends when the last op does."""
    env = simpy.Environment()
    held_by = {id(node): node.resources for stream in graph.streams for node in stream.nodes}
    users: dict[str, set[int]] = {}
    for stream in graph.streams:
        for node in stream.nodes:
            for key in held_by[id(node)]:
                users.setdefault(key, set()).add(id(stream))
    # A resource only one stream uses is never contended (a stream runs its nodes one at a time): it needs no
    # SimPy resource, whose requests are most of a large graph's events.
    resources = {key: simpy.PriorityResource(env, capacity=1) for key in sorted(users) if len(users[key]) > 1}
    run = StepRun(groups=graph.groups, critical=graph.critical)
    depended = {id(dep) for stream in graph.streams for node in stream.nodes for dep in node.deps}
    done: dict[int, simpy.Event] = {}
    asked_at: dict[int, float] = {}
    launches: dict[int, list[Stream]] = {}
    for stream in graph.streams:
        for node in stream.nodes:
            if id(node) in depended:
                done[id(node)] = env.event()
        if stream.after is not None:
            launches.setdefault(id(stream.after), []).append(stream)

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
            exposed = replace(last.op, name=last.op.name + " (exposed)", link_bytes=None)
            run.spans.append(Span(exposed, stream.name, under_way, env.now, group=stream.group))

    def hold(node: Node, stream: Stream, keys: tuple[str, ...]):
        held, waits = [], []
        for key in keys:
            if key not in resources:
                continue
            request = resources[key].request(priority=stream.priority)
            held.append((resources[key], request))
            since = env.now
            yield request
            if env.now > since:
                waits.append((key, since, env.now))
        start = env.now
        yield env.timeout(node.op.duration_s)
        for resource, request in held:
            resource.release(request)
        run.spans.append(Span(node.op, stream.name, start, env.now, tuple(waits), node.groups[0], keys))

    finished: set[int] = set()

    def process(stream: Stream):
        # One generator per stream, the common cases inline (a large graph runs millions of nodes): waiting only for
        # dependencies not yet done, asking only for contended resources.
        for node in stream.nodes:
            if node.deps:
                pending = [dep for dep in node.deps if not done[id(dep)].triggered]
                if pending:
                    yield from wait_for(node, stream, pending)
            asked_at[id(node)] = env.now
            if node.op is not None:
                keys = held_by[id(node)]
                if any(key in resources for key in keys):
                    yield from hold(node, stream, keys)
                else:
                    start = env.now
                    yield env.timeout(node.op.duration_s)
                    run.spans.append(Span(node.op, stream.name, start, env.now, (), node.groups[0], keys))
            if id(node) in done:
                done[id(node)].succeed()
            for later in launches.get(id(node), ()):
                env.process(process(later))
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
    return run
