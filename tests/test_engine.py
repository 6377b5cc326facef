"""The graph executor: ops it runs as one chain end exactly where op after op would, and nothing another stream can
see is chained."""

import math

from pathsim.engine.graph import COMPUTE, NETWORK, Graph, Node, Op, Stream
from pathsim.engine.run import run_graph


def ops(durations, resource=COMPUTE, name="c"):
    return [Node(Op(f"{name}{k}", "compute" if resource == COMPUTE else "all_to_all", resource, d)) for k, d in
            enumerate(durations)]


def test_a_chain_of_free_ops_ends_exactly_where_op_after_op_would():
    durations = [0.1, 0.2, 0.3, 1e-9, 1e3, 7.0 / 3.0, 1e-12, 0.7]
    run = run_graph(Graph([Stream("main", ops(durations), 0)]))
    end, expected = 0.0, []
    for d in durations:  # what SimPy's clock does, timeout after timeout
        expected.append((end, end + d))
        end = end + d
    assert [(s.start_s, s.end_s) for s in run.spans] == expected
    assert run.step_time_s == end
    assert run.events < len(durations)  # one timeout for the chain, not one per op


def test_ops_on_a_contended_resource_let_another_stream_in_between():
    # Both streams want the network at t=0; main asks first, so the background op, queued at t=0, runs before
    # main's second op (asked at t=1): a chain over the shared network would have kept it out.
    main = ops([1.0, 1.0], NETWORK, "n")
    background = ops([0.5], NETWORK, "b")
    run = run_graph(Graph([Stream("main", main, 0), Stream("bg", background, 0)]))
    spans = {s.op.name: (s.start_s, s.end_s) for s in run.spans}
    assert spans == {"n0": (0.0, 1.0), "b0": (1.0, 1.5), "n1": (1.5, 2.5)}


def test_an_op_another_stream_waits_for_ends_its_chain():
    main = ops([1.0, 1.0, 1.0])
    other = Node(Op("o", "compute", COMPUTE, 0.25), deps=[main[1]], groups=(1,))
    run = run_graph(Graph([Stream("main", main, 0), Stream("other", [other], 0, group=1)], groups=2))
    spans = {s.op.name: (s.start_s, s.end_s) for s in run.spans}
    assert spans["o"] == (2.0, 2.25) and spans["c2"] == (2.0, 3.0) and run.step_time_s == 3.0


def test_a_stream_launched_after_an_op_starts_when_it_ends_and_is_awaited():
    main = ops([1.0, 0.5])
    send = Node(Op("send", "all_to_all", NETWORK, 2.0))
    wait = Node(None, deps=[send], wait_category="all_to_all")
    stream = [main[0], wait, main[1]]
    run = run_graph(Graph([Stream("main", stream, 0), Stream("send", [send], 0, after=main[0])]))
    spans = {s.op.name: (s.start_s, s.end_s) for s in run.spans}
    assert spans["send"] == (1.0, 3.0) and spans["c1"] == (3.0, 3.5)
    assert spans["send (exposed)"] == (1.0, 3.0)  # the wait shows as the send it waited for
    assert math.isclose(run.step_time_s, 3.5)
