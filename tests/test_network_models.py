"""Fast vs fluid: the fluid model never beats the link-load bound and meets it where one bottleneck rules."""

import numpy as np
import pytest
import scipy.sparse as sp

from pathsim.cluster import load_cluster
from pathsim.network import FastModel, FluidModel, get_model
from pathsim.network.fluid import completion_times, max_min_rates
from pathsim.topology import build_topology
from pathsim.topology.torus import Torus
from pathsim.traffic import Traffic

from conftest import uniform_all_to_all


def test_max_min_textbook_example():
    # Links of capacity 1 and 2; flow A uses link 0, B uses both, C uses link 1.
    # Max-min fair: A = B = 0.5 (link 0 saturates), then C takes the rest of link 1: 1.5.
    routes = sp.csr_matrix(np.array([[1, 0], [1, 1], [0, 1]], dtype=float))
    np.testing.assert_allclose(max_min_rates(routes, np.array([1.0, 2.0])), [0.5, 0.5, 1.5])


def test_completion_times_resolve_after_each_finish():
    # Two flows share one link of capacity 1: sizes 1 and 3. Both run at 0.5 until t=2,
    # then the survivor gets the whole link: 2 bytes left at rate 1 -> t=4.
    routes = sp.csr_matrix(np.ones((2, 1)))
    np.testing.assert_allclose(completion_times(routes, np.array([1.0, 3.0]), np.array([1.0])), [2.0, 4.0])


TOPOLOGIES = ["tpu-v4-4x4x4", "tpu-v4-4x4x8-twisted", "tpu-v3-4x4", "dgx-h100-4", "example-dumbbell-8"]


@pytest.mark.parametrize("preset", TOPOLOGIES)
@pytest.mark.parametrize("seed", range(4))
def test_fluid_never_beats_fast_on_random_traffic(preset, seed):
    topo = build_topology(load_cluster(preset))
    rng = np.random.default_rng(seed)
    n = topo.num_chips
    active = rng.choice(n, min(n, 24), replace=False)  # the exact fluid re-solves per completion: keep flows to hundreds
    density = rng.uniform(0.05, 0.6)
    k = len(active)
    matrix = np.zeros((n, n))
    matrix[np.ix_(active, active)] = rng.pareto(1.5, (k, k)) * (rng.random((k, k)) < density) * 1e6
    traffic = Traffic.from_matrix(matrix)
    fast, fluid = FastModel(topo).phase(traffic), FluidModel(topo).phase(traffic)
    assert fluid.bandwidth_time_s >= fast.bandwidth_time_s * (1 - 1e-9)
    assert fluid.latency_s == pytest.approx(fast.latency_s)
    np.testing.assert_allclose(fluid.link_bytes, fast.link_bytes, rtol=1e-9, atol=1e-6)


@pytest.mark.parametrize("preset", ["tpu-v4-4x4x4", "tpu-v4-4x4x8", "dgx-h100-4"])
def test_fluid_equals_fast_on_uniform_all_to_all(preset):
    topo = build_topology(load_cluster(preset))
    traffic = Traffic.from_matrix(uniform_all_to_all(topo.num_chips, 2**26))
    fast, fluid = FastModel(topo).phase(traffic), FluidModel(topo).phase(traffic)
    assert fluid.bandwidth_time_s == pytest.approx(fast.bandwidth_time_s, rel=1e-6)


def test_fluid_equals_fast_when_one_bottleneck_dominates():
    topo = build_topology(load_cluster("example-dumbbell-8"))
    left, right = np.arange(4), np.arange(4, 8)
    matrix = np.zeros((8, 8))
    matrix[np.ix_(left, right)] = 1e6  # every byte crosses the 25 GB/s trunk
    traffic = Traffic.from_matrix(matrix)
    fast, fluid = FastModel(topo).phase(traffic), FluidModel(topo).phase(traffic)
    assert fast.bandwidth_time_s == pytest.approx(16e6 / 25e9)
    assert fluid.bandwidth_time_s == pytest.approx(fast.bandwidth_time_s, rel=1e-9)


@pytest.mark.parametrize("model", ["fast", "fluid"])
def test_concurrent_groups_contend_for_shared_links(model):
    # Two 4-chip groups interleaved on an 8-ring share every link; run together they take longer than alone.
    ring = Torus("ring", [8], [True], 100e9, 0.0)
    even, odd = np.arange(0, 8, 2), np.arange(1, 8, 2)

    def a2a(group):
        m = np.zeros((8, 8))
        m[np.ix_(group, group)] = 2**24
        np.fill_diagonal(m, 0)
        return Traffic.from_matrix(m)

    network = get_model(model, ring)
    alone = network.phase(a2a(even)).bandwidth_time_s
    together = network.phase(a2a(even) + a2a(odd)).bandwidth_time_s
    assert together == pytest.approx(2 * alone, rel=1e-6)


def test_unknown_model_is_rejected():
    with pytest.raises(ValueError, match="unknown network model"):
        get_model("exact", build_topology(load_cluster("tpu-v4-4x4x4")))


@pytest.mark.parametrize("dims, twisted", [([4, 4, 4], False), ([8, 4], False), ([6], False), ([3, 5, 4], False), ([4, 4, 8], True)])
def test_low_rank_traffic_routes_like_its_dense_matrix(dims, twisted, rng):
    """MoE dispatch arrives as factors left @ right; loads, latency and byte counts must equal the dense form's."""
    topo = Torus("t", dims, [True] * len(dims), 1e9, 1e-6, twisted=twisted)
    n = topo.num_chips
    left = rng.random((n, 3)) * (rng.random((n, 3)) > 0.4)
    right = rng.random((3, n)) * (rng.random((3, n)) > 0.4)
    low, dense = Traffic.from_factors(left, right), Traffic.from_matrix(left @ right)
    assert topo.link_loads(low) == pytest.approx(topo.link_loads(dense), rel=1e-12, abs=1e-9)
    assert topo.max_path_latency(low) == topo.max_path_latency(dense)
    assert low.network_bytes == pytest.approx(dense.network_bytes)
    assert low.sent_per_chip() == pytest.approx(dense.sent_per_chip())
    assert low.received_per_chip() == pytest.approx(dense.received_per_chip())
    assert low.transposed().sent_per_chip() == pytest.approx(dense.received_per_chip())
    both = low + low.scaled(2.0)
    assert topo.link_loads(both) == pytest.approx(3 * topo.link_loads(dense), rel=1e-12, abs=1e-9)


@pytest.mark.parametrize("cluster, sampling", [("dgx-h100-32", "mean_field"), ("tpu-v4-4x4x4", "mean_field"),
                                               ("dgx-h100-4", "exact")])
def test_a_dispatch_priced_from_its_basis_is_priced_as_routed(cluster, sampling):
    # The fast model's loads are linear in the bytes: any dispatch of a layout, priced from the loads of one unit
    # of each (class, position) block, takes the time and puts the bytes on the links that routing it directly does.
    from pathsim.network.linear import add_link_bytes
    from pathsim.run_setup import prepare_run
    setup = prepare_run(cluster, "switch-base-128", sampling=sampling)
    dispatch_map = setup.plan.dispatch_map(setup.layout)
    shape = (dispatch_map.classes, setup.layout.expert)
    src, dst, entry = dispatch_map.basis_flows()
    basis_to = setup.network.basis(src, dst, entry, dispatch_map.basis_size, lambda w: dispatch_map.traffic(w.reshape(shape)))
    basis_from = setup.network.basis(dst, src, entry, dispatch_map.basis_size,
                                     lambda w: dispatch_map.traffic(w.reshape(shape)).transposed())
    rng = np.random.default_rng(0)
    per_rank = [rng.exponential(1e3, shape) * (rng.random(shape) > 0.3) for _ in range(3)] + [np.zeros(shape)]
    weights = np.stack([p.ravel() for p in per_rank]) * 2048.0
    for basis, transposed in ((basis_to, False), (basis_from, True)):
        times, records = basis.price(weights)
        total = np.zeros(setup.topology.num_links)
        add_link_bytes(total, [(r, 2) for r in records])
        direct_total = np.zeros(setup.topology.num_links)
        for p, time_s, record in zip(per_rank, times, records):
            traffic = dispatch_map.traffic(p).scaled(2048.0)
            timing = setup.network.phase(traffic.transposed() if transposed else traffic)
            assert time_s == pytest.approx(timing.time_s, rel=1e-12, abs=1e-15)
            np.testing.assert_allclose(record.dense(), timing.link_bytes, rtol=1e-12, atol=1e-6)
            direct_total += 2 * timing.link_bytes
        np.testing.assert_allclose(total, direct_total, rtol=1e-12, atol=1e-6)
    assert times[-1] == 0.0  # nothing sent: no latency either


def test_a_phase_s_total_link_bytes_need_no_per_link_array(rng):
    from pathsim.network.linear import dense_link_bytes, total_link_bytes
    topology = build_topology(load_cluster("dgx-h100-4"))
    n, k = topology.num_chips, 5
    src, dst = rng.integers(0, n, 60), rng.integers(0, n, 60)
    component = rng.integers(0, k, 60)
    basis = get_model("fast", topology).basis(src, dst, component, k, lambda w: Traffic.from_flows(n, src, dst, w[component]))
    _, records = basis.price(rng.random((3, k)) * 1e6)
    for record in records:
        assert total_link_bytes(record) == pytest.approx(float(dense_link_bytes(record).sum()), rel=1e-12)


@pytest.mark.parametrize("reverse", [False, True])
def test_copies_of_a_pattern_hold_the_matrix_they_describe(reverse):
    """G copies of a P-rank pattern (an MoE dispatch): the bytes per chip, the network bytes, the factors, and the
    scaled and transposed phases all equal those of the N×N matrix written out pair by pair."""
    from pathsim.traffic import Traffic
    rng = np.random.default_rng(11)
    n, copies, positions, classes = 48, 3, 8, 4
    chip_of = rng.permutation(n)[: copies * positions].reshape(copies, positions)
    class_of = rng.integers(0, classes, (copies, positions))
    weights = rng.random((classes, positions))
    matrix = np.zeros((n, n))
    for g in range(copies):
        for p in range(positions):
            for q in range(positions):
                a, b = chip_of[g, p], chip_of[g, q]
                matrix[(b, a) if reverse else (a, b)] += weights[class_of[g, p], q]
    traffic, dense = Traffic.from_copies(n, chip_of, class_of, weights, reverse), Traffic.from_matrix(matrix)
    np.testing.assert_allclose(traffic.sent_per_chip(), dense.sent_per_chip())
    np.testing.assert_allclose(traffic.received_per_chip(), dense.received_per_chip())
    assert traffic.network_bytes == pytest.approx(dense.network_bytes)
    np.testing.assert_allclose(traffic.factors[0] @ traffic.factors[1], matrix)
    np.testing.assert_allclose(traffic.scaled(3.0).transposed().matrix, 3.0 * matrix.T)
    with pytest.raises(ValueError, match="finite"):
        traffic.scaled(1e308).scaled(1e308)
