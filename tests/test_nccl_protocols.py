"""NCCL's protocols on GPU clusters: the latency and bandwidth each one costs, and the one its tuner picks.

Every expected figure is worked by hand from NCCL v2.21.5-1's `src/graph/tuning.cc` constants
(pathsim/network/nccl.py lists them): base latency 6.6 / 14 / 8.4 us for LL / LL128 / Simple rings, a step
0.6 / 1.9 / 3.4 us on NVLink and 2.7 / 4.0 / 14 us across the network.
"""

import pytest

from pathsim.collectives import run_collective
from pathsim.errors import PathsimConfigError


def _variant(tmp_path, name: str, body: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(body)
    return str(path)


def test_a_tiny_ring_all_reduce_in_one_node_pays_nccl_ll_latency():
    # 8 GPUs, 2 x 7 ring steps: 6.6 us + 14 x 0.6 us = 15.0 us, whatever the links' own per-hop latency is.
    r = run_collective("dgx-h100-1", "all_reduce", 8, algorithm="ring")
    assert r.protocol == "LL"
    assert r.latency_time_s == pytest.approx(15.0e-6, rel=1e-9)


def test_protocols_step_up_with_size_and_time_grows_with_it():
    sizes = ["1KiB", "64KiB", "1MiB", "4MiB", "16MiB", "64MiB", "1GiB"]
    runs = [run_collective("dgx-h100-1", "all_reduce", s, algorithm="ring") for s in sizes]
    order = {"LL": 0, "LL128": 1, "Simple": 2}
    picked = [order[r.protocol] for r in runs]
    assert picked == sorted(picked) and picked[0] == 0 and picked[-1] == 2 and 1 in picked
    times = [r.time_s for r in runs]
    assert times == sorted(times)


def test_large_buffers_keep_the_links_fitted_bandwidth(tmp_path):
    # The links' efficiency is fitted to large nccl-tests buffers, where NCCL runs Simple: naming the library
    # changes only the latency there, and all-to-alls (peer-to-peer sends) not at all.
    none = _variant(tmp_path, "none", "extends: dgx-h100-1\nname: no-library\ncollective_library: null\n")
    plain = run_collective(none, "all_reduce", "8GiB", algorithm="ring")
    nccl = run_collective("dgx-h100-1", "all_reduce", "8GiB", algorithm="ring")
    assert plain.protocol == "" and nccl.protocol == "Simple"
    assert nccl.bandwidth_time_s == plain.bandwidth_time_s
    assert nccl.latency_time_s == pytest.approx(8.4e-6 + 14 * 3.4e-6, rel=1e-9)
    a2a_plain = run_collective(none, "all_to_all", "1MiB")
    a2a_nccl = run_collective("dgx-h100-1", "all_to_all", "1MiB")
    assert a2a_nccl.time_s == a2a_plain.time_s


def test_ll_alone_is_capped_at_nccl_hopper_single_node_bandwidth(tmp_path):
    # LL carries half its lines as flags: half of Simple's ~358 GB/s would be 179, above the 141 GB/s NCCL caps
    # LL at on one sm90 node, so the cap holds.
    ll = _variant(tmp_path, "ll", "extends: dgx-h100-1\nname: ll-only\ncollective_library:\n"
                                  "  {name: nccl, arch: hopper, host_cpu: intel, protocols: [LL]}\n")
    r = run_collective(ll, "all_reduce", "8GiB", algorithm="ring")
    assert r.protocol == "LL"
    assert r.bandwidth_time_s == pytest.approx(8 * 2**30 * 2 * 7 / 8 / 141e9, rel=1e-9)


def test_multi_node_rings_pay_network_steps_and_the_simple_plateau(tmp_path):
    # 32 GPUs on 4 nodes, one ring: 62 steps, of which 1 in 8 transfers leaves its node. Simple's NVLink step
    # (3.4 us) already exceeds the 3 x 1 us floor an Intel host's network overhead sets, and a multi-node Simple
    # all-reduce pays its latency 1.4 times.
    simple = _variant(tmp_path, "simple", "extends: dgx-h100-4\nname: simple-only\ncollective_library:\n"
                                          "  {name: nccl, arch: hopper, host_cpu: intel, protocols: [Simple]}\n")
    r = run_collective(simple, "all_reduce", 8, algorithm="ring")
    assert r.latency_time_s == pytest.approx(1.4 * (8.4e-6 + 62 * (7 / 8 * 3.4e-6 + 1 / 8 * 14e-6)), rel=1e-9)
    # LL's step inside a node rises from 0.6 us to the 1 us overhead; no plateau.
    ll = run_collective("dgx-h100-4", "all_reduce", 8, algorithm="ring")
    assert ll.protocol == "LL"
    assert ll.latency_time_s == pytest.approx(6.6e-6 + 62 * (7 / 8 * 1.0e-6 + 1 / 8 * 2.7e-6), rel=1e-9)


def test_gpu_presets_name_their_library_and_others_do_not():
    assert run_collective("dgx-a100-1", "all_reduce", "1KiB").protocol == "LL"
    assert run_collective("tpu-v4-4x4x4", "all_reduce", "1KiB").protocol == ""


@pytest.mark.parametrize("block, field", [
    ("{name: nccl, arch: hopper, host_cpu: intel, protocols: [LL, LL]}", "collective_library.protocols"),
    ("{name: nccl, arch: blackwell, host_cpu: intel}", "collective_library.arch"),
    ("{name: nccl, arch: hopper, host_cpu: arm}", "collective_library.host_cpu"),
    ("{name: rccl, arch: hopper, host_cpu: amd}", "collective_library.name"),
    ("{name: nccl, arch: hopper, host_cpu: intel, protocols: []}", "collective_library.protocols"),
])
def test_bad_library_blocks_name_their_field(tmp_path, block, field):
    bad = _variant(tmp_path, "bad", f"extends: dgx-h100-1\nname: bad\ncollective_library: {block}\n")
    with pytest.raises(PathsimConfigError, match=field.replace(".", r"\.")):
        run_collective(bad, "all_reduce", "1MiB")


def test_a_library_on_a_torus_is_refused(tmp_path):
    bad = _variant(tmp_path, "torus", "extends: tpu-v4-4x4x4\nname: torus-nccl\n"
                                      "collective_library: {name: nccl, arch: hopper, host_cpu: intel}\n")
    with pytest.raises(PathsimConfigError, match="collective_library .*fat_tree"):
        run_collective(bad, "all_reduce", "1MiB")
