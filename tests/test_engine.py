"""The graph executor: ops it runs as one chain end exactly where op after op would, and nothing another stream can
see is chained."""

import math

import pytest

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


def test_a_fused_op_runs_as_its_parts_would_and_shows_them_one_by_one():
    from pathsim.engine.graph import fuse, fuse_runs
    parts = [Op(f"p{k}", "compute", COMPUTE, d, layer=k, flops=10.0 * k, weight_share=w)
             for k, (d, w) in enumerate([(0.1, 0.5), (0.2, 0.0), (0.3, 0.5)])]
    fused = fuse([fuse(parts[:2]), parts[2]])  # nested fusions flatten
    assert fused.parts == tuple(parts) and fused.flops == 30.0 and fused.layer == 0
    assert fused.duration_s == (0.1 + 0.2) + 0.3
    assert math.isclose(fused.weight_share * fused.duration_s, 0.5 * 0.1 + 0.5 * 0.3)
    run = run_graph(Graph([Stream("main", [Node(fused)], 0)]))
    pieces = run.op_spans()
    assert [p.op.name for p in pieces] == ["p0", "p1", "p2"]
    assert [(p.start_s, p.end_s) for p in pieces] == [(0.0, 0.1), (0.1, 0.1 + 0.2), (0.1 + 0.2, run.step_time_s)]
    # Only plain compute fuses: a network op or the optimizer stays itself, and a run is cut around it; an expert
    # FFN's wait for its slowest chip stays its own (the chip state is idle only then).
    send = Op("send", "all_to_all", NETWORK, 1.0)
    optimizer = Op("optimizer step", "optimizer", COMPUTE, 1.0)
    expert = Op("experts", "compute", COMPUTE, 1.0, straggler_s=0.25)
    assert fuse_runs([parts[0], parts[1], send, parts[2], expert, optimizer]) == [
        fuse(parts[:2]), send, fuse([parts[2], expert]), optimizer]
    with pytest.raises(ValueError, match="only plain compute ops fuse"):
        fuse([parts[0], send])
    from pathsim.energy import state_timeline
    run = run_graph(Graph([Stream("main", [Node(fuse([expert, parts[0]]))], 0)]))
    states = state_timeline(run.spans, run.step_time_s)
    assert states.seconds()["idle"] == pytest.approx(0.25) and states.seconds()["compute"] == pytest.approx(0.85)


def test_the_collector_is_paused_inside_and_restored_after():
    import gc
    from pathsim.engine.collector import collector_paused
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(KeyError), collector_paused():
        raise KeyError("an error inside still restores it")
    assert gc.isenabled()


def test_a_simulated_timeline_and_trace_show_ops_not_their_fusions(tmp_path):
    import json
    from pathsim import simulate
    result = simulate("tpu-v4-8x8x8", "switch-base-128", detail=True, trace=tmp_path / "t.json")
    names = {s.name for s in result.detail.timeline}
    assert {"L0 attention proj fwd", "L0 attention core fwd", "L1 router fwd", "L1 permute fwd"} <= names
    assert not any(" .. " in n for n in names)
    traced = {e["name"] for e in json.loads((tmp_path / "t.json").read_text())["traceEvents"] if e["ph"] == "X"}
    assert "router fwd" in traced and not any(" .. " in n or n.startswith("L1 ") for n in traced)  # the layer is in args


def test_a_simulated_step_leaves_no_cycles_for_the_collector():
    # The collector is paused while steps run; a cycle holding a step's graph (the executor's functions naming each
    # other, a builder's recursive helper) would keep every node, span and event of every step until it resumed.
    import gc
    from pathsim import simulate
    from pathsim.workload import load_workload
    w = load_workload("palm-8b").model_dump(mode="json")
    w["training"].update(micro_batches=8, shard_parameters=False)
    w["parallelism"].update(tensor=8, pipeline=4, pipeline_schedule="zb1p")
    simulate("dgx-h100-32", w)  # (imports and caches made once)
    gc.collect()
    gc.disable()
    try:
        simulate("dgx-h100-32", w, steps=2)
        simulate("tpu-v4-8x8x8", "switch-base-128")
        left = gc.collect()
    finally:
        gc.enable()
    assert left < 100, f"{left} objects in cycles"


def test_an_awaited_op_becomes_the_next_ops_dependency_and_runs_as_a_barrier_would():
    from pathsim.builders.training import ItemStream
    from pathsim.engine.graph import Await, Prefetch

    gather, first, second = (Op("gather", "weight_gather", NETWORK, 2.0), Op("a", "compute", COMPUTE, 1.0),
                             Op("b", "compute", COMPUTE, 0.5))
    stream = ItemStream()
    for item in (first, Prefetch(gather), Await(gather), second):
        stream.add(item)
    nodes = stream.nodes()
    assert [n.op for n in nodes] == [first, second]  # no barrier node of its own
    assert nodes[1].deps == [stream.background[0].nodes[0]] and nodes[1].wait_category == "weight_gather"
    held = run_graph(Graph([Stream("main", nodes, 0), *stream.background]))

    send = Node(gather)  # the same step with the wait as a barrier
    a, b = Node(first), Node(second)
    barrier = run_graph(Graph([Stream("main", [a, Node(None, [send], wait_category="weight_gather"), b], 0),
                               Stream("prefetch", [send], 0, after=a)]))
    def spans(run):
        return sorted((s.op.name, s.start_s, s.end_s) for s in run.spans)
    assert spans(held) == spans(barrier) == [("a", 0.0, 1.0), ("b", 3.0, 3.5), ("gather", 1.0, 3.0),
                                             ("gather (exposed)", 1.0, 3.0)]
    assert held.events == barrier.events


def test_a_dependency_finished_before_anyone_waits_costs_no_event():
    early = Node(Op("early", "compute", COMPUTE, 1.0), groups=(1,))
    late = ops([2.0])
    after = Node(Op("after", "compute", COMPUTE, 0.5), deps=[early])
    run = run_graph(Graph([Stream("main", [*late, after], 0), Stream("other", [early], 0, group=1)], groups=2))
    assert run.step_time_s == 2.5
    assert run.events == 3  # three timeouts: early's end is never an event, no one having waited for it yet


def test_sums_in_order_are_the_floats_a_loop_would_give():
    import numpy as np

    from pathsim.engine.table import added_in_order

    values = np.array([1.0, 1e16, 1.0, -1e16, 1.0, 1e-3] * 50)
    total = 0.5
    for value in values:
        total += value
    assert added_in_order(0.5, values) == total
    assert 0.5 + float(values.sum()) != total  # (numpy adds pairwise: another float)
    assert added_in_order(0.25, values[:0]) == 0.25


def test_the_trace_has_a_slice_per_step_ops_grouped_by_name_and_no_empty_tracks(tmp_path):
    import json
    from pathsim import simulate
    result = simulate("tpu-v4-8x8x8", "switch-base-128", steps=2, trace=tmp_path / "t.json")
    events = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    steps = [e for e in events if e["ph"] == "X" and e["cat"] == "step"]
    assert [e["name"] for e in steps] == ["step 0", "step 1"]
    assert sum(e["dur"] for e in steps) / 2e6 == pytest.approx(result.step_time.mean_s, rel=1e-9)
    work = [e for e in events if e["ph"] == "X" and e["cat"] != "step"]
    routers = [e for e in work if e["name"] == "router fwd"]
    from pathsim.workload import load_workload
    assert {e["args"]["layer"] for e in routers} == set(load_workload("switch-base-128").model.moe_layers)  # one name, every layer
    assert all(e["args"]["flops_per_chip"] > 0 for e in routers)
    assert any("link_bytes" in e["args"] for e in work if "all-to-all" in e["name"])
    declared = {(e["pid"], e["tid"]) for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert declared == {(e["pid"], e["tid"]) for e in events if e["ph"] == "X"}  # every track declared holds events


@pytest.mark.parametrize("cluster, workload", [("dgx-h100-4", "mixtral-8x7b"), ("tpu-v4-4x4x4", "switch-base-128")])
def test_trace_counters_integrate_to_the_step_energy_and_the_link_bytes(tmp_path, cluster, workload):
    """The power counter over the steps is the steps' IT energy; each link class's utilisation counter, times the
    class's bandwidth, integrates to the bytes its links carried (the result's per-link utilisation)."""
    import json
    import numpy as np
    from pathsim import simulate
    from pathsim.cluster import load_cluster
    from pathsim.topology import build_topology
    result = simulate(cluster, workload, steps=2, trace=tmp_path / "t.json", detail=True)
    events = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    end_us = sum(e["dur"] for e in events if e["ph"] == "X" and e["cat"] == "step")

    def integral(name: str, series: str) -> float:
        points = [(e["ts"], e["args"][series]) for e in events if e["ph"] == "C" and e["name"] == name]
        times = np.array([t for t, _ in points] + [end_us]) / 1e6
        return float(np.sum(np.diff(times) * np.array([v for _, v in points])))

    assert integral("IT power (kW)", "kW") * 1e3 == pytest.approx(2 * result.energy.it_j(), rel=1e-5)
    topology = build_topology(load_cluster(cluster))
    carried = np.array(result.detail.link_utilisation) * topology.link_bandwidth * 2 * result.step_time.mean_s
    for name in np.unique(topology.link_class.astype(str)):
        links = topology.link_class.astype(str) == name
        bandwidth = topology.link_bandwidth[links].sum()
        assert integral("link utilisation", name) * bandwidth == pytest.approx(carried[links].sum(), rel=1e-4, abs=1.0)
    assert any(e["ph"] == "M" and e["args"].get("name", "").endswith("cluster power and links") for e in events)
