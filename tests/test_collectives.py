"""Collective algorithms against their closed forms."""

import numpy as np
import pytest

from pathsim.collectives import run_collective
from pathsim.errors import PathsimConfigError

from conftest import cluster_dict

B, ALPHA = 100e9, 1e-6  # the 'ici' class of cluster_dict
S = 2**30


def ring(p, wrap=True):
    return cluster_dict(kind="torus", dims=[p], wraparound=wrap and p > 2, link="ici")


@pytest.mark.parametrize("p", [2, 3, 4, 5, 8, 16, 31, 32, 64])
def test_ring_all_reduce_closed_form(p):
    result = run_collective(ring(p), "all_reduce", S, algorithm="ring")
    # p=2 is a mesh of one cable: the ring's return step uses the reverse direction, still one hop.
    expected = 2 * (p - 1) / p * S / B + 2 * (p - 1) * ALPHA
    assert result.time_s == pytest.approx(expected, rel=0.01)
    assert result.busbw_bytes_per_s == pytest.approx(S / result.time_s * 2 * (p - 1) / p)


@pytest.mark.parametrize("p", [4, 8, 16])
def test_bidirectional_ring_halves_the_bandwidth_term(p):
    uni = run_collective(ring(p), "all_reduce", S, algorithm="ring")
    bidi = run_collective(ring(p), "all_reduce", S, algorithm="bidir_ring")
    assert bidi.bandwidth_time_s == pytest.approx(uni.bandwidth_time_s / 2, rel=1e-9)
    # Each rank passes its shard both ways, so a shard goes at most half way round: ⌊p/2⌋ steps, not p − 1.
    assert bidi.latency_time_s == pytest.approx(uni.latency_time_s * (p // 2) / (p - 1))


@pytest.mark.parametrize("op, factor", [("reduce_scatter", 1), ("all_gather", 1), ("all_reduce", 2)])
def test_reduce_scatter_and_all_gather_are_halves(op, factor):
    p = 8
    result = run_collective(ring(p), op, S, algorithm="ring")
    assert result.time_s == pytest.approx(factor * ((p - 1) / p * S / B + (p - 1) * ALPHA), rel=1e-9)


@pytest.mark.parametrize("dims", [[4, 4], [4, 4, 4], [8, 4, 4], [4, 8, 8]])
def test_torus_all_reduce_is_per_dimension_bidirectional_rings(dims):
    cluster = cluster_dict(kind="torus", dims=dims, link="ici")
    result = run_collective(cluster, "all_reduce", S)
    assert result.algorithm == "torus"
    expected, shard = 0.0, S
    for k in dims:  # reduce-scatter along each dimension on a shrinking shard, then all-gather back
        expected += 2 * ((k - 1) * shard / k / 2 / B + (k // 2) * ALPHA)  # bidirectional: ⌊k/2⌋ hops
        shard /= k
    assert result.time_s == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("k", [3, 4, 8])
def test_an_axis_without_wraparound_relays_along_the_line(k):
    # A line of k chips: shards are passed both ways, one hop a step, k − 1 steps; the end links carry k − 1
    # shards each way (the JAX scaling book's no-wraparound AllGather).
    line = cluster_dict(kind="torus", dims=[2, k], wraparound=False, link="ici")
    result = run_collective(line, "all_gather", S, groups=2)
    assert result.algorithm == "torus"
    assert result.time_s == pytest.approx((k - 1) * (S / k / B + ALPHA), rel=1e-9)
    assert result.latency_time_s == pytest.approx((k - 1) * ALPHA, rel=1e-9)
    wrapped = run_collective(cluster_dict(kind="torus", dims=[2, k], wraparound=[False, True], link="ici"),
                             "all_gather", S, groups=2)
    assert wrapped.time_s == pytest.approx((k - 1) * S / k / 2 / B + (k // 2) * ALPHA, rel=1e-9)


def test_nccl_rings_on_gpu_nodes_are_bound_by_the_nodes_nics_together():
    # 8 channels, each a ring through all 32 GPUs that crosses between nodes on its own rail: every GPU sends
    # 7/8 of each step over NVLink and 1/8 over its NIC, all channels at once, so the step drains at the NIC's
    # pace: busbw = 8 NICs x 50 GB/s (NVLink's 7/8 at 450 GB/s is faster), whatever the node count.
    cluster = cluster_dict(kind="fat_tree", nodes=4, gpus_per_node=8, nvlink="nvlink", nic="nic", switch_radix=64)
    result = run_collective(cluster, "all_reduce", S)
    assert result.algorithm == "rings"
    p, chunk = 32, S / 32 / 8
    assert result.time_s == pytest.approx(2 * (p - 1) * (chunk / 50e9 + 2 * 2e-6), rel=1e-9)
    assert result.busbw_bytes_per_s * result.time_s / result.bandwidth_time_s == pytest.approx(8 * 50e9, rel=1e-9)
    nic = [h for h in result.hottest_links if "nic" in h.link_class]
    assert nic and max(h.bytes for h in nic) == pytest.approx(2 * (p - 1) * chunk, rel=1e-9)  # one channel a NIC
    for nodes in (2, 3, 5, 7):  # odd node counts too: the ring never changes rail between nodes (or a NIC would
        # carry two channels), so the drain stays one channel per NIC (from 5 nodes the fabric has a spine: longer
        # routes, the same drain)
        odd = run_collective(cluster_dict(kind="fat_tree", nodes=nodes, gpus_per_node=8, nvlink="nvlink", nic="nic",
                                          switch_radix=64), "all_reduce", S)
        q = 8 * nodes
        assert odd.bandwidth_time_s == pytest.approx(2 * (q - 1) * S / q / 8 / 50e9, rel=1e-9)


def test_hierarchical_all_reduce_on_gpu_nodes():
    cluster = cluster_dict(kind="fat_tree", nodes=4, gpus_per_node=8, nvlink="nvlink", nic="nic", switch_radix=64)
    result = run_collective(cluster, "all_reduce", S, algorithm="hierarchical")
    assert result.algorithm == "hierarchical"
    nv, nic = 450e9, 50e9
    local = 2 * 7 * (S / 8 / nv + 2 * 0.5e-6)  # NVLink RS + AG: 7 steps each, GPU->NVSwitch->GPU
    inter = 2 * 3 * (S / 8 / 4 / nic + 2 * 2e-6)  # 8 rings of 4 nodes over NICs (one leaf: no spine)
    assert result.time_s == pytest.approx(local + inter, rel=1e-9)


def test_concurrent_groups_share_links_in_all_to_all():
    cluster = cluster_dict(kind="torus", dims=[8], link="ici")
    one = run_collective(cluster, "all_to_all", S, groups=[[0, 2, 4, 6]])
    both = run_collective(cluster, "all_to_all", S, groups=[[0, 2, 4, 6], [1, 3, 5, 7]])
    assert both.bandwidth_time_s == pytest.approx(2 * one.bandwidth_time_s, rel=1e-9)
    split = run_collective(cluster, "all_to_all", S, groups=2)  # blocks 0-3 and 4-7 use disjoint links
    block = run_collective(cluster, "all_to_all", S, groups=[[0, 1, 2, 3]])
    assert split.bandwidth_time_s == pytest.approx(block.bandwidth_time_s, rel=1e-9)


def test_custom_all_to_all_matrix_and_utilisation():
    cluster = cluster_dict(kind="torus", dims=[4], link="ici")
    matrix = np.zeros((4, 4))
    matrix[0, 1] = 1e9  # one hop, one link
    result = run_collective(cluster, "all_to_all", 1e9, matrix=matrix)
    assert result.bandwidth_time_s == pytest.approx(1e9 / B)
    assert result.hottest_links[0].link == "0 -> 1"
    assert result.hottest_links[0].bytes == pytest.approx(1e9)
    assert result.max_link_utilisation == pytest.approx(result.bandwidth_time_s / result.time_s)


@pytest.mark.parametrize("kwargs, field", [
    (dict(op="broadcast", nbytes=S), "op"),
    (dict(op="all_reduce", nbytes=-5), "bytes"),
    (dict(op="all_reduce", nbytes="5 parsecs"), "bytes"),
    (dict(op="all_reduce", nbytes=S, algorithm="direct"), "algorithm"),
    (dict(op="all_to_all", nbytes=S, algorithm="ring"), "algorithm"),
    (dict(op="all_reduce", nbytes=S, algorithm="hierarchical"), "algorithm"),
    (dict(op="all_reduce", nbytes=S, groups=3), "groups"),
    (dict(op="all_reduce", nbytes=S, groups=[[0, 1], [1, 2]]), "groups"),
    (dict(op="all_to_all", nbytes=S, matrix=np.ones((3, 3))), "matrix"),
])
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(PathsimConfigError) as info:
        run_collective(ring(8), **kwargs)
    assert info.value.field == field


def test_groups_of_one_rank_are_rejected():
    with pytest.raises(PathsimConfigError, match="at least 2"):
        run_collective(ring(8), "all_reduce", S, groups=8)


def test_matrix_rows_follow_rank_order_not_chip_ids():
    cluster = cluster_dict(kind="torus", dims=[4], link="ici")
    matrix = np.zeros((4, 4))
    matrix[0, 1] = 1e9  # rank 0 -> rank 1, i.e. chip 3 -> chip 2 in this group
    result = run_collective(cluster, "all_to_all", 1e9, groups=[[3, 2, 1, 0]], matrix=matrix)
    assert result.hottest_links[0].link == "3 -> 2"


def test_a_links_efficiency_scales_its_achieved_bandwidth_and_nothing_else():
    # A ring of links at efficiency e drains as links of bandwidth e·B; latency is untouched.
    cluster = ring(8)
    full = run_collective(cluster, "all_reduce", S, algorithm="ring")
    for name in cluster["links"]:
        cluster["links"][name]["efficiency"] = 0.5
    half = run_collective(cluster, "all_reduce", S, algorithm="ring")
    assert half.bandwidth_time_s == pytest.approx(2 * full.bandwidth_time_s, rel=1e-12)
    assert half.latency_time_s == pytest.approx(full.latency_time_s, rel=1e-12)
    for bad in (0.0, 1.5):
        for name in cluster["links"]:
            cluster["links"][name]["efficiency"] = bad
        with pytest.raises(PathsimConfigError) as err:
            run_collective(cluster, "all_reduce", S)
        assert err.value.field.endswith(".efficiency")


def test_an_all_to_all_efficiency_slows_all_to_alls_only():
    cluster = ring(8)
    before = {op: run_collective(cluster, op, S) for op in ("all_to_all", "all_reduce")}
    for name in cluster["links"]:
        cluster["links"][name]["all_to_all_efficiency"] = 0.5
    after = {op: run_collective(cluster, op, S) for op in ("all_to_all", "all_reduce")}
    assert after["all_to_all"].bandwidth_time_s == pytest.approx(2 * before["all_to_all"].bandwidth_time_s, rel=1e-12)
    assert after["all_reduce"].time_s == before["all_reduce"].time_s


def test_nvls_reduces_in_the_switch_inside_one_node_only():
    """NVLink SHARP: each GPU sends S up and reads the sum back once, at the in-switch share of NVLink, so
    busbw = 2(p − 1)/p × bandwidth × in_switch_efficiency; NCCL (auto) uses it inside an NVSwitch 3 node."""
    from pathsim.cluster import load_cluster
    nvlink = load_cluster("dgx-h100-1").links["nvlink"]
    nvls = run_collective("dgx-h100-1", "all_reduce", S)
    assert nvls.algorithm == "nvls" and [p.repeat for p in nvls.phases] == [1]
    assert nvls.bandwidth_time_s == pytest.approx(S / (nvlink.bandwidth * nvlink.in_switch_efficiency), rel=1e-12)
    ring_ = run_collective("dgx-h100-1", "all_reduce", S, algorithm="ring")
    assert ring_.bandwidth_time_s == pytest.approx(2 * 7 / 8 * S / (nvlink.bandwidth * nvlink.efficiency), rel=1e-12)
    # Only all-reduce, only inside a node, only where the switch reduces.
    assert run_collective("dgx-h100-1", "reduce_scatter", S).algorithm == "ring"
    assert run_collective("dgx-h100-32", "all_reduce", S, groups=32).algorithm == "nvls"
    assert run_collective("dgx-h100-32", "all_reduce", S).algorithm == "rings"
    assert run_collective("dgx-a100-1", "all_reduce", S).algorithm == "ring"
    with pytest.raises(PathsimConfigError, match="in_switch_efficiency") as err:
        run_collective("dgx-a100-1", "all_reduce", S, algorithm="nvls")
    assert err.value.field == "algorithm"


def test_nvls_pays_its_fixed_latency_and_leaves_small_buffers_to_the_rings(tmp_path):
    # NCCL's cost model charges NVLS a fixed 25 us on NVLink: a small all-reduce in the switch takes no less, and
    # where the rings are faster auto takes them, as NCCL's tuner does: the LL ring (15 us of latency on 8 GPUs) up
    # to 1 MiB, NVLS from 2 MiB, which is where NCCL_DEBUG=TUNING shows NCCL switching on an 8x H200 node
    # (stas00/ml-engineering network/README.md).
    from pathsim.cluster import load_cluster
    tiny = run_collective("dgx-h100-1", "all_reduce", 1024, algorithm="nvls")
    assert tiny.time_s == pytest.approx(25e-6 + tiny.bandwidth_time_s, rel=1e-12)
    picked = {size: run_collective("dgx-h100-1", "all_reduce", size) for size in ("1KiB", "1MiB", "2MiB")}
    assert [(r.algorithm, r.protocol) for r in picked.values()] == [("ring", "LL"), ("ring", "LL"), ("nvls", "Simple")]
    assert picked["1KiB"].time_s < tiny.time_s
    slow = tmp_path / "slow-switch.yaml"
    slow.write_text("extends: dgx-h100-1\nname: slow-switch\nlinks:\n  nvlink:\n    in_switch_latency: 1ms\n")
    ring_small = run_collective(str(slow), "all_reduce", 1024, algorithm="ring")
    assert run_collective(str(slow), "all_reduce", 1024).algorithm == "ring"
    assert run_collective(str(slow), "all_reduce", 1024).time_s == ring_small.time_s < 1e-3
    assert run_collective(str(slow), "all_reduce", S).algorithm == "nvls"  # 1 ms is nothing against 8 GiB's drain
    no_reduce = tmp_path / "no-reduce.yaml"
    no_reduce.write_text("extends: dgx-a100-1\nname: no-reduce\nlinks:\n  nvlink:\n    in_switch_latency: 25us\n")
    with pytest.raises(PathsimConfigError, match="set in_switch_efficiency too") as err:
        load_cluster(str(no_reduce))
    assert err.value.field.startswith("links.nvlink") and err.value.source == str(no_reduce)
