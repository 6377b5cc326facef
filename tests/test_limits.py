"""Sizes and magnitudes that would exhaust memory or overflow the models: refused up front, with the estimate.

The classes: arrays that grow with a user's sizes (experts, chips squared) checked against the memory budget
before they are made; all-to-alls that need no chip-pair array never build one; quantities too small or large to
compute with; and, as the backstop, any result that still comes out non-finite.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pathsim.collectives import run_collective
from pathsim.errors import PathsimConfigError, require_finite
from pathsim.limits import BUDGET_ENV, memory_budget_bytes
from pathsim.topology import build_topology
from pathsim.cluster import load_cluster


def test_a_billion_experts_are_refused_with_the_estimate(tmp_path, refused):
    workload = tmp_path / "w.yaml"
    workload.write_text("extends: switch-base-128\nname: huge\nmodel: {moe: {experts: 1000000000}}\n")
    err = refused(["simulate", "--cluster", "tpu-v4-4x4x4", "--workload", str(workload)])
    assert f"{workload}: model.moe.experts: routing 1,000,000,000 experts" in err and "TiB" in err and BUDGET_ENV in err


def test_a_dense_traffic_matrix_is_checked_against_the_budget(tmp_path, refused, monkeypatch):
    matrix = tmp_path / "m.csv"
    np.savetxt(matrix, np.ones((64, 64)), delimiter=",")
    monkeypatch.setenv(BUDGET_ENV, "16KiB")  # 64 x 64 float64 chip pairs: 32 KiB
    err = refused(["collective", "--cluster", "tpu-v4-4x4x4", "--op", "all_to_all", "--bytes", "1MiB", "--matrix", str(matrix)])
    assert "a 64 x 64 traffic matrix would take 32 KiB, above the 16 KiB" in err
    monkeypatch.setenv(BUDGET_ENV, "lots")
    assert "PATHSIM_MEMORY_BUDGET" in refused(["collective", "--cluster", "tpu-v4-4x4x4", "--op", "all_to_all", "--bytes", "1MiB",
                                               "--matrix", str(matrix)])
    monkeypatch.delenv(BUDGET_ENV)
    assert memory_budget_bytes() > 2**28


def test_a_uniform_all_to_all_on_65536_chips_builds_no_chip_pair_array(monkeypatch):
    # 65,536^2 chip pairs are 32 GiB as float64 (8 GiB as a hop matrix): the budget leaves no room for either.
    monkeypatch.setenv(BUDGET_ENV, "1GiB")
    base = load_cluster("tpu-v4-4x4x4")
    cluster = base.model_validate({**base.model_dump(), "name": "big", "topology": {"kind": "torus", "dims": [64, 32, 32]}})
    result = run_collective(cluster, "all_to_all", "1MiB")
    assert math.isfinite(result.time_s) and result.bandwidth_time_s > 0
    # The longest route crosses half of each wrapped axis, at the preset's 1 us a hop.
    assert result.latency_time_s == pytest.approx((32 + 16 + 16) * 1e-6)


@pytest.mark.parametrize("dims, wrap", [([4, 4, 4], None), ([6, 5], [True, False]), ([8], None)])
def test_the_longest_route_without_the_hop_matrix_is_the_hop_matrix_answer(dims, wrap):
    spec = {"kind": "torus", "dims": dims} | ({"wraparound": wrap} if wrap else {})
    base = load_cluster("tpu-v4-4x4x4")
    cluster = base.model_validate({**base.model_dump(), "name": "t", "topology": spec})
    torus = build_topology(cluster)
    rng = np.random.default_rng(0)
    n = torus.num_chips
    sets = [np.arange(n), np.arange(n // 2), rng.choice(n, size=max(2, n // 3), replace=False), np.array([0, n - 1])]
    for src in sets:
        for dst in sets:
            assert torus._longest_route(np.sort(src), np.sort(dst)) == int(torus._hop_matrix[np.ix_(src, dst)].max())


def test_the_factored_uniform_all_to_all_times_as_the_dense_one():
    p = 64
    uniform = np.full((p, p), 2**20 / p)
    np.fill_diagonal(uniform, 0.0)
    factored = run_collective("tpu-v4-4x4x4", "all_to_all", "1MiB")
    dense = run_collective("tpu-v4-4x4x4", "all_to_all", "1MiB", matrix=uniform)
    assert factored.time_s == pytest.approx(dense.time_s, rel=1e-12)


@pytest.mark.parametrize("override, field", [
    ("chip: {peak_flops: {bf16: 1e-300}}", "chip.peak_flops.bf16"),  # gave a NaN step time
    ("chip: {hbm_bandwidth: 1e300}", "chip.hbm_bandwidth"),
    ("links: {ici: {latency: 1e-40s}}", "links.ici.latency"),
])
def test_quantities_outside_what_pathsim_computes_with_are_refused(tmp_path, refused, override, field):
    cluster = tmp_path / "c.yaml"
    cluster.write_text(f"extends: tpu-v4-4x4x4\nname: x\n{override}\n")
    assert f"{cluster}: {field}: " in refused(["validate", str(cluster)])


@pytest.mark.parametrize("values, needle", [(np.zeros((64, 64)), "sends no bytes"), (np.eye(64), "sends no bytes"),
                                            (np.full((64, 64), 1e308), "absurdly large")])
def test_a_matrix_that_sends_nothing_or_overflows_is_refused(tmp_path, refused, values, needle):
    matrix = tmp_path / "m.csv"
    np.savetxt(matrix, values, delimiter=",")
    assert needle in refused(["collective", "--cluster", "tpu-v4-4x4x4", "--op", "all_to_all", "--bytes", "1MiB", "--matrix", str(matrix)])


def test_a_non_finite_result_is_stopped_naming_its_field():
    result = run_collective("tpu-v4-4x4x4", "all_reduce", "1MiB")
    require_finite(result, "the collective")
    broken = result.model_copy(update={"algbw_bytes_per_s": float("inf")})
    with pytest.raises(PathsimConfigError, match=r"<result>: algbw_bytes_per_s: came out inf in the collective"):
        require_finite(broken, "the collective")


def _pathways(tmp_path, change) -> str:
    import yaml
    from pathsim.presets import preset_path
    data = yaml.safe_load(preset_path("workloads", "pathways-multitask").read_text())
    change(data)
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_id_ranges_are_bounded_before_the_ids_are_made(tmp_path, refused):
    # '0-100000000000' was 745 GiB of int64 ids before anything checked it against the model's experts.
    workload = _pathways(tmp_path, lambda d: d["tasks"][1]["affinity"].update(experts="0-100000000000"))
    err = refused(["simulate", "--cluster", "tpu-v4-4x4x4", "--workload", workload])
    assert f"{workload}: tasks[1].affinity.experts: range '0-100000000000' names expert 100,000,000,000" in err
    err = refused(["plan", "--cluster", "tpu-v4-4x4x4", "--workload", "pathways-multitask", "--together", "0-100000000000"])
    assert "--together: range '0-100000000000'" in err


def test_a_huge_model_is_refused_before_its_gradient_buckets_are_built(tmp_path, refused):
    workload = _pathways(tmp_path, lambda d: d["model"].update(vocab=10**15))  # it ran 54 s into a MemoryError
    assert "training.grad_bucket_bytes: splits" in refused(["simulate", "--cluster", "tpu-v4-4x4x4", "--workload", workload])


def test_a_million_drift_windows_are_refused_with_the_estimate(refused):
    err = refused(["plan", "--cluster", "tpu-v4-4x4x4", "--workload", "pathways-multitask", "--drift", "random-walk:0.3",
                   "--windows", "1000000"])
    assert "--windows: a random walk over 1,000,000 windows" in err and "TiB" in err
