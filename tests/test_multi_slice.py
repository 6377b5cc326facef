"""Multi-slice clusters: slices joined by the data-center network (DCN).

Routing is checked against the generic incidence path and conservation of
bytes; the hierarchical all-reduce against its closed form (REFERENCES.md ring
formula per tier); layouts against the rule that tensor and (by default)
expert groups stay inside a slice.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

import pathsim
from pathsim.cluster import load_cluster
from pathsim.collectives import collective_phases, run_collective
from pathsim.errors import PathsimConfigError
from pathsim.network import FastModel, FluidModel
from pathsim.placement import round_robin
from pathsim.presets import preset_path
from pathsim.routing import route_layer
from pathsim.run_setup import prepare_run
from pathsim.builders.training import Prefetch, StepSchedule, run_step
from pathsim.simulation import _wait_causes
from pathsim.step_ops import COMPUTE, DCN, NETWORK, Op, StepCoster
from pathsim.topology import MultiSlice, Torus, build_topology
from pathsim.topology.base import Topology
from pathsim.traffic import Traffic

GB = 1e9


def tpu_slices(slices: int, dims=(4, 4, 4), dcn_bandwidth: float = 6.6e9, latency: bool = True, **dcn) -> dict:
    """TPU v4 slices of `dims` joined by a DCN of `dcn_bandwidth` bytes/s per host."""
    data = yaml.safe_load(preset_path("topologies", "tpu-v4-4x4x4").read_text())
    data["name"] = f"test-{slices}x{'x'.join(map(str, dims))}"
    data["links"]["dcn"] = {"bandwidth": dcn_bandwidth, "latency": 10e-6 if latency else 0.0, "source": "test"}
    if not latency:
        data["links"]["ici"]["latency"] = 0.0
    inner = dict(data["topology"], dims=list(dims))
    data["topology"] = {"kind": "multi_slice", "slices": slices, "slice": inner, "dcn": {"nic": "dcn", **dcn}}
    return data


def gpu_fabrics(slices: int) -> dict:
    data = yaml.safe_load(preset_path("topologies", "dgx-h100-32-2fabrics").read_text())
    base = yaml.safe_load(preset_path("topologies", "dgx-h100-32").read_text())
    merged = dict(base, name=f"test-{slices}-fabrics", links={**base["links"], **data["links"]})
    merged["topology"] = dict(data["topology"], slices=slices, slice=dict(data["topology"]["slice"], nodes=4))
    return merged


@pytest.fixture(scope="module")
def three_tori() -> MultiSlice:
    return build_topology(load_cluster(tpu_slices(3)))


@pytest.fixture(scope="module")
def two_fabrics() -> MultiSlice:
    return build_topology(load_cluster(gpu_fabrics(2)))


# ---- routing ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["three_tori", "two_fabrics"])
def test_vectorised_loads_match_flow_by_flow_routing(name, request):
    topology = request.getfixturevalue(name)
    rng = np.random.default_rng(1)
    n = topology.num_chips
    matrix = rng.random((n, n)) * (rng.random((n, n)) < 0.3)
    left, right = rng.random((n, 4)), rng.random((4, n))
    for traffic, reference in [(Traffic.from_matrix(matrix), Traffic.from_matrix(matrix)),
                               (Traffic.from_factors(left, right), Traffic.from_matrix(left @ right))]:
        fast = topology.link_loads(traffic)
        generic = Topology.link_loads(topology, reference)
        np.testing.assert_allclose(fast, generic, rtol=1e-12, atol=1e-9 * generic.max())
        assert topology.max_path_latency(traffic) == pytest.approx(Topology.max_path_latency(topology, reference))


def test_cross_slice_bytes_are_conserved_through_nics_and_uplinks(three_tori):
    topology = three_tori
    rng = np.random.default_rng(2)
    n, per_slice = topology.num_chips, topology.chips_per_slice
    matrix = rng.random((n, n))
    np.fill_diagonal(matrix, 0.0)
    loads = topology.link_loads(Traffic.from_matrix(matrix))
    tiers = topology.by_tier(loads)
    slice_of = np.arange(n) // per_slice
    crossing = matrix * (slice_of[:, None] != slice_of[None, :])
    # Every byte between slices leaves through its sender's host NIC and slice uplink, and arrives the same way.
    for tier in ("host", "nic", "dcn_uplink"):
        assert tiers[tier][:, 0].sum() == pytest.approx(crossing.sum(), rel=1e-12)
        assert tiers[tier][:, 1].sum() == pytest.approx(crossing.sum(), rel=1e-12)
    leaving = np.array([crossing[slice_of == s].sum() for s in range(3)])
    np.testing.assert_allclose(tiers["dcn_uplink"][:, 0], leaving, rtol=1e-12)
    # Bytes inside a slice stay on its own ICI: the DCN carries none of them.
    inside = matrix - crossing
    ici_only = topology.link_loads(Traffic.from_matrix(inside))
    assert ici_only[topology.dcn_links].sum() == 0.0
    assert np.isclose(ici_only[topology.slice_links(1)].sum(),
                      Torus("ref", [4, 4, 4], [True] * 3, 50e9, 1e-6).link_loads(
                          Traffic.from_matrix(inside[64:128, 64:128])).sum(), rtol=1e-12)


def test_fluid_and_fast_agree_on_a_cross_slice_exchange(three_tori):
    # Every chip sends 1 MB to the chip at its position in the next slice: the NICs (4 chips each) bound it.
    topology = three_tori
    chips = np.arange(topology.num_chips)
    traffic = Traffic.from_flows(topology.num_chips, chips, (chips + 64) % 192, np.full(192, 1e6))
    fast, fluid = FastModel(topology).phase(traffic), FluidModel(topology).phase(traffic)
    assert fast.bandwidth_time_s == pytest.approx(4e6 / 6.6e9, rel=1e-12)
    assert fluid.bandwidth_time_s == pytest.approx(fast.bandwidth_time_s, rel=1e-9)
    assert fast.latency_s == pytest.approx(2 * 10e-6, rel=1e-12)  # NIC latency at both ends; host hop defaults to 0


def test_oversubscribed_uplink_is_the_bottleneck():
    topology = build_topology(load_cluster(tpu_slices(2, oversubscription=4.0)))
    chips = np.arange(128)
    traffic = Traffic.from_flows(128, chips, (chips + 64) % 128, np.full(128, 1e6))
    # 64 chips x 1 MB through an uplink of 16 hosts x 6.6 GB/s / 4.
    assert FastModel(topology).phase(traffic).bandwidth_time_s == pytest.approx(64e6 / (16 * 6.6e9 / 4), rel=1e-12)


# ---- hierarchical all-reduce ----------------------------------------------------------------


def _dcn_time(result) -> float:
    return sum(p.time_s * p.repeat for p in result.phases if p.tier == "dcn")


def test_hierarchical_all_reduce_matches_its_closed_form_and_one_slice_twice_the_size():
    size = 1 * GB
    fast_dcn = run_collective(load_cluster(tpu_slices(2, dcn_bandwidth=1e18, latency=False)), "all_reduce", size)
    assert fast_dcn.algorithm == "multi_slice"
    # Closed form: bidirectional ring reduce-scatter + all-gather along x, y, z of 4 (shards shrinking 4x each
    # time) on 50 GB/s links, then the DCN ring across 2 slices on a 1/64 shard.
    in_slice = sum(2 * (3 / 4) * (size / 4 ** a) / 2 / 50e9 for a in range(3))
    assert fast_dcn.time_s == pytest.approx(in_slice, rel=1e-6)
    doubled = load_cluster(tpu_slices(1, dims=(4, 4, 8), latency=False)).model_copy(update={"name": "one-4x4x8"})
    one_slice = run_collective(doubled, "all_reduce", size)
    assert abs(fast_dcn.time_s / one_slice.time_s - 1) < 0.01

    # The DCN term: each chip's 1/64 shard, 2(p-1)/p of it, through a NIC shared by 4 chips.
    base = run_collective(load_cluster(tpu_slices(2, dcn_bandwidth=6.6e9, latency=False)), "all_reduce", size)
    halved = run_collective(load_cluster(tpu_slices(2, dcn_bandwidth=3.3e9, latency=False)), "all_reduce", size)
    assert _dcn_time(base) == pytest.approx(2 * (1 / 2) * size / 64 * 4 / 6.6e9, rel=1e-12)
    assert _dcn_time(halved) == 2 * _dcn_time(base)
    assert halved.time_s - _dcn_time(halved) == pytest.approx(base.time_s - _dcn_time(base), rel=1e-12)


@pytest.mark.parametrize("slices", [2, 3, 4])
def test_dcn_ring_follows_the_ring_formula_over_slices(slices):
    result = run_collective(load_cluster(tpu_slices(slices, latency=False)), "all_reduce", GB)
    assert _dcn_time(result) == pytest.approx(2 * (slices - 1) / slices * GB / 64 * 4 / 6.6e9, rel=1e-12)


def test_groups_inside_one_slice_never_touch_the_dcn(three_tori):
    groups = np.arange(192).reshape(3, 64)  # one group per slice
    chosen, phases = collective_phases(three_tori, "all_reduce", GB, groups)
    assert chosen == "torus" and all(p.tier == "slice" for p in phases)


def test_uneven_groups_across_slices_are_refused(three_tori):
    with pytest.raises(PathsimConfigError, match="same number of chips in each"):
        collective_phases(three_tori, "all_reduce", GB, np.array([[0, 1, 64]]))
    with pytest.raises(PathsimConfigError, match="cannot span slices"):
        collective_phases(three_tori, "all_reduce", GB, np.array([[0, 64]]), algorithm="torus")


# ---- configuration errors ---------------------------------------------------------------


def test_bad_multi_slice_configs_name_the_field():
    data = tpu_slices(2)
    data["host"]["chips_per_host"] = 3
    with pytest.raises(PathsimConfigError, match="chips_per_host"):
        load_cluster(data)
    data = tpu_slices(2)
    data["topology"]["dcn"]["nic"] = "ethernet"
    with pytest.raises(PathsimConfigError, match="dcn.nic"):
        load_cluster(data)
    data = tpu_slices(2, oversubscription=0.5)
    with pytest.raises(PathsimConfigError, match="oversubscription"):
        load_cluster(data)


# ---- layout and step ----------------------------------------------------------------------


def moe_workload(expert="auto", tensor=1) -> dict:
    return {
        "name": "tiny-moe",
        "model": {"layers": 4, "d_model": 1024, "heads": 16, "seq_len": 1024, "vocab": 32000, "dense_ffn": 4096,
                  "moe": {"experts": 128, "top_k": 2, "expert_ffn": 4096, "every": 2}},
        "training": {"tokens_per_step": 262144},
        "parallelism": {"expert": expert, "tensor": tensor},
    }


def test_expert_and_tensor_groups_stay_inside_a_slice_by_default():
    setup = prepare_run(tpu_slices(2), moe_workload(tensor=4))
    layout = setup.layout
    assert (layout.slices, layout.tensor, layout.data, layout.expert) == (2, 4, 32, 16)
    assert not layout.expert_spans_slices
    assert layout.axes["data replicas"].endswith("slices(2)")
    with pytest.raises(PathsimConfigError, match="parallelism.tensor"):
        prepare_run(tpu_slices(2), moe_workload(tensor=128))
    with pytest.raises(PathsimConfigError, match="straddle"):
        prepare_run(tpu_slices(3), moe_workload(expert=96))  # divides 192 ranks, but not into 64-rank slices
    assert prepare_run(tpu_slices(2), moe_workload(expert=128)).layout.expert_spans_slices


def test_gradient_buckets_chain_reduce_scatter_dcn_and_all_gather():
    setup = prepare_run(tpu_slices(2), moe_workload())
    coster = StepCoster(setup.workload, setup.layout, setup.topology, setup.network, setup.device, None)
    chains = coster.grad_sync(0)
    assert chains and all([op.resource for op in chain] == [NETWORK, DCN, NETWORK] for chain in chains)
    assert all(chain[1].name.endswith("across slices (DCN)") for chain in chains)


def test_dcn_transfers_overlap_ici_work_and_show_in_the_breakdown():
    result = pathsim.simulate(tpu_slices(2), moe_workload(), detail=True)
    spans = result.detail.timeline
    dcn = [s for s in spans if s.resource == DCN]
    ici = [s for s in spans if s.resource == NETWORK]
    assert dcn
    # While one bucket crosses the DCN, the slice's network works on others (or on the critical stream).
    assert any(d.start_s < i.end_s and i.start_s < d.end_s for d in dcn for i in ici)
    assert result.communication.grad_sync_s > 0
    energy = result.energy
    assert energy.activity.communication_s > 0


def test_cross_slice_expert_parallelism_trades_dcn_all_to_alls_for_expert_gradient_sync():
    cluster = tpu_slices(2)
    for tokens, cross_slower in [(1 << 20, True), (1 << 18, False)]:
        inside_w, across_w = moe_workload(), moe_workload(expert=128)
        for w in (inside_w, across_w):
            w["training"]["tokens_per_step"] = tokens
        inside, across = pathsim.simulate(cluster, inside_w), pathsim.simulate(cluster, across_w)
        assert across.parallelism["expert"] == 128 and inside.parallelism["expert"] == 64
        # Every all-to-all crosses the DCN...
        assert across.breakdown.all_to_all_s > 10 * inside.breakdown.all_to_all_s
        # ...but each expert then lives once, so no expert gradient crosses it.
        assert across.communication.grad_sync_s < inside.communication.grad_sync_s / 3
        # With a training-size batch the all-to-alls dominate; with a tiny one the expert gradients do.
        assert (across.step_time.mean_s > inside.step_time.mean_s) == cross_slower


def test_all_to_alls_across_slices_hold_the_dcn_against_gradient_buckets():
    result = pathsim.simulate(tpu_slices(2), moe_workload(expert=128), detail=True)
    a2a = [s for s in result.detail.timeline if s.category == "all_to_all"]
    dcn = [s for s in result.detail.timeline if s.resource == DCN]
    assert a2a and dcn
    # The NICs carry one op at a time: no gradient bucket crosses the DCN while an all-to-all does.
    assert not any(a.start_s < d.end_s - 1e-15 and d.start_s < a.end_s - 1e-15 for a in a2a for d in dcn)
    across_setup = prepare_run(tpu_slices(2), moe_workload(expert=128))
    inside_setup = prepare_run(tpu_slices(2), moe_workload())
    for setup, crosses in [(across_setup, True), (inside_setup, False)]:
        coster = StepCoster(setup.workload, setup.layout, setup.topology, setup.network, setup.device, None)
        routing = route_layer(setup.plan, setup.layout, round_robin(128, setup.layout.expert), 0, None)
        ops, _ = coster.moe_ops(1, routing)
        assert [op.resources for op in ops if op.category == "all_to_all"] == [(NETWORK, DCN) if crosses else (NETWORK,)] * 2


def test_topologies_differing_only_in_hosts_are_built_apart():
    wide, narrow = tpu_slices(2), tpu_slices(2)
    narrow["host"]["chips_per_host"] = 8
    a, b = build_topology(load_cluster(wide)), build_topology(load_cluster(narrow))
    assert (a.hosts_per_slice, b.hosts_per_slice) == (16, 8)


def test_a_wait_for_two_resources_is_blamed_on_whoever_held_each():
    bucket = Op("bucket across slices", "grad_sync", DCN, 3.0)
    gather = Op("next weight all-gather", "weight_gather", NETWORK, 2.0)
    crossing = Op("all-to-all across slices", "all_to_all", NETWORK, 1.0, also=(DCN,))
    backward = [[Op("backward", "compute", COMPUTE, 1e-3)],
                [Prefetch(gather), Op("router", "compute", COMPUTE, 0.5), crossing]]
    run = run_step(StepSchedule([([], backward)], [[[bucket]], []], Op("optimizer", "optimizer", COMPUTE, 0.0), True))
    # The all-to-all asks at 0.501 s: it waits 1.5 s for the network (the gather holds it until 2.001 s), then
    # 1 s for the DCN (the bucket holds it until 3.001 s). Spreading the whole wait over everything that ran
    # meanwhile would blame the bucket for 1.56 s.
    span = next(s for s in run.spans if s.op is crossing)
    assert span.waited_s == pytest.approx(2.5) and span.start_s == pytest.approx(3.001)
    causes = _wait_causes(run.spans)
    assert causes["weight_gather"] == pytest.approx(1.5) and causes["grad_sync"] == pytest.approx(1.0)
