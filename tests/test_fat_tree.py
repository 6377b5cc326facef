"""GPU fabrics: closed forms and a cross-check against generic shortest-path ECMP."""

import numpy as np
import pytest

from pathsim.network import FastModel
from pathsim.topology import build_topology
from pathsim.topology.custom import CustomGraph
from pathsim.topology.fat_tree import FatTree
from pathsim.traffic import Traffic
from pathsim.cluster import load_cluster

from conftest import uniform_all_to_all

NIC = 50e9
S = 256 * 2**20


def fat_tree(nodes, gpn, rail=False, radix=8, oversubscription=1.0, **pods):
    return FatTree("ft", nodes=nodes, gpus_per_node=gpn, rail_optimized=rail, switch_radix=radix,
                   oversubscription=oversubscription, nics_per_gpu=1, nvlink=(450e9, 1e-6) if gpn > 1 else None,
                   nic=(NIC, 1e-6), fabric=(NIC, 0.5e-6), **pods)


@pytest.mark.parametrize("nodes", [4, 8, 16, 32])
def test_non_blocking_all_to_all_is_nic_bound(nodes):
    topo = fat_tree(nodes, 1)  # one GPU per node: every byte leaves through its NIC
    p = topo.num_chips
    t = FastModel(topo).phase(Traffic.from_matrix(uniform_all_to_all(p, S))).bandwidth_time_s
    assert t == pytest.approx((p - 1) / p * S / NIC, rel=0.01)


def test_dgx_all_to_all_splits_nvlink_and_nic():
    config = load_cluster("dgx-h100-4")
    topo = build_topology(config)
    p = topo.num_chips
    t = FastModel(topo).phase(Traffic.from_matrix(uniform_all_to_all(p, S))).bandwidth_time_s
    nic = config.links["nic"]
    assert nic.achieved_bandwidth == pytest.approx(50e9 * 0.951)  # 400 Gb/s at the fitted share NCCL reaches
    assert t == pytest.approx((p - 8) / p * S / nic.achieved_bandwidth, rel=0.01)  # 24 of 32 peers remote


def test_oversubscription_slows_cross_leaf_traffic():
    full = fat_tree(16, 1, radix=8, oversubscription=1.0)
    thin = fat_tree(16, 1, radix=8, oversubscription=3.0)
    traffic = Traffic.from_matrix(uniform_all_to_all(16, S))
    t_full = FastModel(full).phase(traffic).bandwidth_time_s
    t_thin = FastModel(thin).phase(traffic).bandwidth_time_s
    # 6 GPUs per leaf (of radix 8, 3:1) send 6 * S * 10/16 cross-leaf bytes over 2 uplinks
    assert t_thin == pytest.approx(6 * S * (16 - 6) / 16 / (2 * NIC), rel=1e-9)
    assert t_thin > t_full


THREE_TIERS = dict(pod_oversubscription=3.0, spine_radix=8)


@pytest.mark.parametrize("nodes, gpn, rail, seed, pods", [
    (4, 4, False, 0, {}), (8, 2, False, 1, {}), (3, 4, True, 2, {}), (6, 1, False, 3, {}),
    (24, 1, False, 4, dict(pod_nodes=4, **THREE_TIERS)), (12, 2, False, 5, dict(pod_nodes=2, **THREE_TIERS)),
    (10, 4, True, 6, dict(pod_nodes=4, pod_oversubscription=3.0, spine_radix=16)), (40, 1, False, 7, dict(pod_nodes=16, spine_radix=16))])
def test_fat_tree_routing_matches_generic_ecmp(nodes, gpn, rail, seed, pods):
    """Loads of every tier, pods and core switches included (the last pod of two partial), equal generic
    shortest-path ECMP over the same graph, and the incidence routing the fluid model uses."""
    topo = fat_tree(nodes, gpn, rail=rail, radix=4 if pods else 8, **pods)
    assert topo.n_cores >= (1 if pods.get("pod_nodes", nodes) < nodes else 0)
    rng = np.random.default_rng(seed)
    matrix = rng.random((topo.num_chips, topo.num_chips)) * 1e6
    rail_of = np.arange(topo.num_chips) % gpn
    node_of = np.arange(topo.num_chips) // gpn
    # Generic ECMP would also spread intra-node pairs over the NIC (an equal-hop path) and
    # forward cross-rail pairs over NVLink (PXN); pathsim keeps those on NVLink / the spine.
    intra = node_of[:, None] == node_of[None, :]
    same_rail = rail_of[:, None] == rail_of[None, :]
    nvlink_only = matrix * intra
    matrix = matrix * ~intra * (same_rail if rail else True)
    generic = CustomGraph("g", topo.num_chips, topo.node_names, topo.link_src, topo.link_dst,
                          topo.link_bandwidth, topo.link_latency, topo.link_class)
    traffic = Traffic.from_matrix(matrix)
    np.testing.assert_allclose(topo.link_loads(traffic), generic.link_loads(traffic), rtol=1e-9, atol=1e-6)
    src, dst, nbytes = traffic.flows()
    np.testing.assert_allclose(topo.incidence(src, dst).T @ nbytes, topo.link_loads(traffic), rtol=1e-9)
    if gpn > 1:
        loads = topo.link_loads(Traffic.from_matrix(nvlink_only))
        on_nvlink = topo.link_class == "nvlink"
        assert np.abs(loads[~on_nvlink]).max() < 1e-6 * nvlink_only.max()
        assert loads[on_nvlink].sum() == pytest.approx(2 * nvlink_only.sum() - 2 * np.trace(nvlink_only))


@pytest.mark.parametrize("pxn", [True, False])
def test_pxn_keeps_a_scalable_unit_s_all_to_all_on_its_rails(pxn):
    """One H100 SU (32 nodes, every rail's leaf holding all 32): with PXN a cross-rail byte crosses NVLink to the
    GPU on its destination's rail and stays under that rail's leaf, so no byte climbs to a spine; each GPU's
    first hops carry 7 other rails × 31 other nodes of its S/256 shares. Without PXN the cross-rail bytes
    (7 of every 8 between nodes) go through the spines."""
    cluster = load_cluster("dgx-h100-32").model_dump(mode="json")
    cluster["topology"]["pxn"] = pxn
    topo = build_topology(load_cluster(cluster))
    n = topo.num_chips
    loads = topo.link_loads(Traffic.from_matrix(uniform_all_to_all(n, S)))
    fabric, nvlink = loads[topo.link_class == "fabric"], loads[topo.link_class == "nvlink"]
    between_nodes = n * S * (n - 8) / n
    if pxn:
        assert fabric.sum() == 0.0
        assert nvlink.sum() / 2 == pytest.approx(n * S * 7 / n + n * S * 7 * 31 / n)  # intra-node + first hops
    else:
        assert fabric.sum() / 2 == pytest.approx(between_nodes * 7 / 8)
        assert nvlink.sum() / 2 == pytest.approx(n * S * 7 / n)
    assert loads[topo.link_class == "nic"].sum() / 2 == pytest.approx(between_nodes)


def test_superpod_sizing_matches_reference_architecture():
    # NVIDIA DGX SuperPOD H100 RA: 1 SU = 8 leaves + 4 spines; 4 SUs = 32 leaves + 16 spines.
    one_su = build_topology(load_cluster("dgx-h100-32"))
    four_su = build_topology(load_cluster("dgx-h100-128"))
    assert (one_su.n_leaves, one_su.n_spines) == (8, 4)
    assert (four_su.n_leaves, four_su.n_spines) == (32, 16)


def test_fabric_larger_than_two_tiers_is_a_config_error():
    from pathsim.errors import PathsimConfigError
    with pytest.raises(PathsimConfigError, match="two-tier") as error:
        fat_tree(nodes=64, gpn=1, radix=4)
    assert "pod" in error.value.fix  # the way out: a third tier
    with pytest.raises(PathsimConfigError, match="splits a leaf") as error:
        fat_tree(nodes=64, gpn=1, radix=4, pod_nodes=3)  # a leaf takes 2 single-GPU nodes
    assert error.value.field == "topology.pod.nodes"
    with pytest.raises(PathsimConfigError, match="exceed") as error:
        fat_tree(nodes=64, gpn=1, radix=4, pod_nodes=32, spine_radix=8)
    assert error.value.field == "topology.pod.switch_radix"


@pytest.mark.parametrize("oversubscription", [1.0, 3.0, 7.0])
def test_core_oversubscription_bounds_cross_pod_all_to_all(oversubscription):
    """Uniform all-to-all over pods of P of N GPUs (one per node, leaves 1:1): each pod sends P·S·(N−P)/N bytes
    up through spines whose core bandwidth is their P·NIC down over the pod's oversubscription."""
    n, pod = 64, 16
    topo = fat_tree(n, 1, radix=4, pod_nodes=pod, pod_oversubscription=oversubscription, spine_radix=64)
    t = FastModel(topo).phase(Traffic.from_matrix(uniform_all_to_all(n, S))).bandwidth_time_s
    nic_bound = (n - 1) / n * S / NIC
    core_bound = pod * S * (n - pod) / n / (pod * NIC / oversubscription)
    assert t == pytest.approx(max(nic_bound, core_bound), rel=1e-9)
    assert topo.n_pods == 4 and topo.describe()["cores"] == topo.n_cores


def test_llama3_cluster_sizing_follows_the_paper():
    """Llama 3 §3.3.1: racks of 16 GPUs (two servers) under one ToR, 192 racks = 3,072 GPUs per non-blocking pod,
    pods joined at 1:7; 16,384 GPUs take five pods and a third of a sixth."""
    topo = build_topology(load_cluster("llama3-h100-16k"))
    assert topo.num_chips == 16384 and topo.n_leaves == 1024
    assert np.bincount(topo.leaf_of).tolist() == [16] * 1024
    assert np.bincount(topo.pod_of).tolist() == [3072] * 5 + [1024]
    tiers = {c: topo.link_bandwidth[topo.link_class == c].sum() for c in ("nic", "fabric", "core")}
    full_pods = 16384 / 3072  # the spines are built for whole pods, the last one too
    assert tiers["fabric"] / 2 == pytest.approx(1024 * 16 * 50e9)  # a leaf's 16 uplinks: non-blocking
    assert tiers["core"] / 2 == pytest.approx(6 * 3072 * 50e9 / 7)  # six pods' spines, 1:7 to the core
    assert full_pods < topo.n_pods


def three_tier_rails():
    """dgx-h100-32's nodes, 40 of them, on rails of 8 nodes, pods of 16 nodes joined 4:1 (the last pod half)."""
    data = load_cluster("dgx-h100-32").model_dump(mode="json", exclude_none=True)
    data["topology"].update(nodes=40, switch_radix=16, pod={"nodes": 16, "oversubscription": 4.0, "switch_radix": 64})
    return data


THREE_TIER_RAILS = "three-tier rails"


@pytest.mark.parametrize("name", ["dgx-h100-1", "dgx-h100-4", "dgx-h100-128-4to1", "h800-2048", THREE_TIER_RAILS])
def test_flow_and_factor_loads_equal_the_routed_incidence(name):
    """Fat trees price flows by bincount and low-rank traffic from its factors: both must put every byte where
    the incidence routing (and the dense matrix) puts it, and the longest route must be the same."""
    from pathsim.topology.base import Topology

    topology = build_topology(load_cluster(three_tier_rails() if name == THREE_TIER_RAILS else name))
    assert name != THREE_TIER_RAILS or topology.n_cores > 0
    n = topology.num_chips
    rng = np.random.default_rng(7)
    src, dst, nbytes = rng.integers(0, n, 4000), rng.integers(0, n, 4000), rng.random(4000)
    flows = Traffic.from_flows(n, src, dst, nbytes)
    np.testing.assert_allclose(topology.link_loads(flows), Topology.link_loads(topology, flows), rtol=1e-12, atol=1e-9)
    for rank in (1, 4):
        left = rng.random((n, rank)) * (rng.random((n, rank)) < 0.3)
        right = rng.random((rank, n))
        factored, dense = Traffic.from_factors(left, right), Traffic.from_matrix(left @ right)
        np.testing.assert_allclose(topology.link_loads(factored), topology.link_loads(dense), rtol=1e-9, atol=1e-9)
        assert topology.max_path_latency(factored) == topology.max_path_latency(dense)
    # Traffic inside one node only: no byte may show up on a NIC or the fabric, so the latency is NVLink's.
    groups = np.zeros((n, n // 8))
    groups[np.arange(n), np.arange(n) // 8] = 1.0
    inside = Traffic.from_factors(groups, 3.0 * groups.T)
    assert topology.max_path_latency(inside) == topology.max_path_latency(Traffic.from_matrix(groups @ (3.0 * groups.T)))
    loads = topology.link_loads(inside)
    assert loads[topology.link_class == "nic"].sum() == 0.0


def test_copies_of_a_pattern_load_a_fabric_as_their_factors_do():
    """Copies of one pattern on Llama 3's three-tier fabric (two pods): those alike in which of their ranks share a
    node, leaf and pod are summed once; the loads are the factors' (forward and reversed), random copies included."""
    from pathsim.cluster import load_cluster
    from pathsim.topology import build_topology
    from pathsim.traffic import Traffic
    config = load_cluster("llama3-h100-16k").model_dump(mode="json", exclude_none=True)
    config["topology"]["nodes"], config["name"] = 512, "two-pods"
    fabric = build_topology(load_cluster(config))
    assert not fabric.pxn and fabric.n_pods == 2
    rng = np.random.default_rng(9)
    n = fabric.num_chips
    aligned = np.arange(n).reshape(32, 128)  # expert groups of 16 whole nodes: one family
    scattered = rng.permutation(n)[:6 * 40].reshape(6, 40)  # copies alike in nothing
    for chip_of in (aligned, scattered):
        class_of = rng.integers(0, 3, chip_of.shape[1])[None, :].repeat(len(chip_of), axis=0)
        traffic = Traffic.from_copies(n, chip_of, class_of, rng.random((3, chip_of.shape[1])))
        for phase in (traffic, traffic.transposed()):
            left, right = phase.copies.factors(n)
            np.testing.assert_allclose(fabric.link_loads(phase), fabric._factored_loads(left, right), rtol=1e-9, atol=1e-6)
    assert len(fabric._copy_families(aligned, np.zeros_like(aligned))) == 1
