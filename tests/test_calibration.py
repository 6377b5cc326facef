"""Calibration: kernel costs, the fitter, profiles, the network fit, and a real quick calibration on this machine."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from pathsim import kernel_costs as kc
from pathsim.calibration.collectives import _model_terms, fit_network, host_cluster_config
from pathsim.calibration.environment import HOST_DEVICE_FLAG, force_host_devices
from pathsim.calibration.fit import fit_dtype, fit_family
from pathsim.calibration.sweeps import GRIDS, shapes
from pathsim.cli import main
from pathsim.collectives import run_collective
from pathsim.device import (KERNEL_FAMILIES, CollectiveSample, DeviceModel, DeviceProfile, KernelModel, KernelSample,
                            kernel_seconds, load_profile)
from pathsim.errors import PathsimConfigError
from pathsim.simulation import simulate

from conftest import cluster_dict

PEAK, BANDWIDTH = 2e12, 4e11


# ---- kernel costs: closed forms, shared with the step coster -------------------------------------
def test_kernel_costs_closed_forms():
    assert kc.matmul(64, 128, 256, 2) == (2 * 64 * 128 * 256, (128 * 256 + 64 * (128 + 256)) * 2)
    flops, nbytes = kc.ffn(100, 512, 2048, 3, 2, weight_sets=4)
    assert flops == 2 * 100 * 3 * 512 * 2048
    assert nbytes == (4 * 3 * 512 * 2048 + 100 * (2 * 512 + 3 * 2048)) * 2
    # GShard's one-hot dispatch is a matmul whose FLOPs grow with the group (2·t·E·C·d); building its mask writes the
    # k expert and slot one-hots and the mask, which the einsum reads with the tokens and the buffers
    assert kc.einsum_dispatch(1024, 2, 64, 40, 768, 2) == (2 * 1024 * 64 * 40 * 768,
                                                           (1024 * 768 + 64 * 40 * 768 + 2 * 1024 * 64 * 40 + 2 * 1024 * (64 + 40)) * 2)
    assert kc.gather_permute(1000, 2, 512, 2) == (0.0, 2 * 1000 * 2 * 512 * 2)
    assert kc.gather_combine(1000, 2, 512, 2).nbytes == 3 * 1000 * 512 * 2
    assert kc.attention_core(2048, 2048, 16, 128, 2).flops == 4 * 2048 * 2048 * 16 * 128
    assert kc.optimizer(10, 12, 2) == (100, 10 * (24 + 6))
    # per-chip vectors broadcast: the step coster costs every chip's expert FFN at once
    tokens = np.array([10.0, 20.0])
    assert np.array_equal(kc.ffn(tokens, 8, 16, 2, 2).flops, 2 * tokens * 2 * 8 * 16)


def test_einsum_dispatch_costs_more_than_gather_and_is_priced_by_its_family():
    from pathsim.simulation import simulate

    gather = simulate("tpu-v4-4x4x4", "switch-base-128", steps=1)
    wl = json.loads(json.dumps(gather.inputs["workload"]))
    wl["model"]["moe"]["dispatch"] = "einsum"
    einsum = simulate("tpu-v4-4x4x4", wl, steps=1)
    assert einsum.step_time.mean_s > gather.step_time.mean_s


def test_xla_counts_the_same_flops_as_pathsim():
    """pathsim's FLOP formulas agree with XLA's own cost analysis of the calibration kernels."""
    jax = pytest.importorskip("jax")
    from pathsim.calibration import kernels as kn
    from pathsim.calibration.end_to_end import xla_flops

    cases = [("matmul/dense", {"t": 64, "d_in": 128, "d_out": 96}),
             ("expert_ffn/gelu", {"e": 2, "c": 32, "d": 64, "f": 128}),
             ("expert_ffn/swiglu", {"e": 2, "c": 32, "d": 64, "f": 128}),
             ("ffn/gelu", {"t": 64, "d": 64, "f": 256}),
             ("ffn/swiglu", {"t": 64, "d": 64, "f": 256}),
             ("dispatch_einsum/dispatch", {"t": 64, "e": 8, "c": 16, "d": 128, "k": 2}),
             ("dispatch_einsum/combine", {"t": 64, "e": 8, "c": 16, "d": 128, "k": 2})]
    for name, shape in cases:
        kernel = kn.build(name, shape, "f32")
        args = [jax.ShapeDtypeStruct(s.shape, jax.numpy.int32 if s.dtype == "int32" else jax.numpy.float32)
                for s in kernel.inputs]
        # XLA also counts the activation's few FLOPs per element; the matmuls dominate
        assert xla_flops(jax.jit(kernel.body).lower(*args).compile()) == pytest.approx(kernel.cost.flops, rel=0.05), name


# ---- the fitter -----------------------------------------------------------------------------------
def _synthetic(model: KernelModel, rng, n=40, noise=0.01, computes=True):
    flops = 10 ** rng.uniform(6, 11, n) if computes else np.zeros(n)
    nbytes = 10 ** rng.uniform(4, 9, n)
    times = kernel_seconds(model, flops, nbytes, PEAK, BANDWIDTH) * np.exp(rng.normal(0, noise, n))
    return flops, nbytes, times


@pytest.mark.parametrize("truth", [
    KernelModel(flops_efficiency=0.7, half_efficiency_flops=5e7, memory_efficiency=0.8, overhead_s=2e-5),
    KernelModel(flops_efficiency=0.4, half_efficiency_flops=0.0, memory_efficiency=0.5, overhead_s=1e-5, overlap_exponent=2.0),
])
def test_fitter_recovers_known_parameters(truth, rng):
    flops, nbytes, times = _synthetic(truth, rng)
    fitted = fit_family(flops, nbytes, times, PEAK, BANDWIDTH)
    assert fitted.flops_efficiency == pytest.approx(truth.flops_efficiency, rel=0.05)
    assert fitted.memory_efficiency == pytest.approx(truth.memory_efficiency, rel=0.05)
    assert fitted.overhead_s == pytest.approx(truth.overhead_s, rel=0.2)
    predicted = kernel_seconds(fitted, flops, nbytes, PEAK, BANDWIDTH)
    assert np.median(np.abs(predicted / times - 1)) < 0.02


def test_fitter_memory_only_family(rng):
    truth = KernelModel(flops_efficiency=1.0, memory_efficiency=0.6, overhead_s=3e-6)
    flops, nbytes, times = _synthetic(truth, rng, computes=False)
    fitted = fit_family(flops, nbytes, times, PEAK, BANDWIDTH)
    assert fitted.memory_efficiency == pytest.approx(0.6, rel=0.03)


def test_anchors_are_the_best_measured_rates(rng):
    samples = []
    for family in KERNEL_FAMILIES:
        for k in range(4):
            flops, nbytes = (1e9 * (k + 1), 1e6 * (k + 1)) if family not in ("permute", "copy", "elementwise") else (0.0, 1e7 * (k + 1))
            samples.append(KernelSample(kernel=f"{family}/x", family=family, dtype="bf16", shape={"k": k}, flops=flops,
                                        nbytes=nbytes, times_s=[1e-3 * (k + 1), 1.1e-3 * (k + 1), 0.9e-3 * (k + 1)]))
    fit = fit_dtype(samples)
    assert fit.peak_flops == pytest.approx(1e12)  # 1 GFLOP in 1 ms
    assert fit.hbm_bandwidth == pytest.approx(1e10)  # 10 MB in 1 ms
    assert all(k.flops_efficiency <= 1 and k.memory_efficiency <= 1 for k in fit.kernels.values())


# ---- sweeps ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", sorted(GRIDS))
def test_held_out_shapes_are_not_fit_shapes_and_deterministic(variant):
    fit, held = shapes(variant, "full", "cpu", seed=3)
    assert fit and held
    assert not {tuple(s.items()) for s in fit} & {tuple(s.items()) for s in held}
    assert shapes(variant, "full", "cpu", seed=3) == (fit, held)
    gpu_fit, _ = shapes(variant, "full", "gpu", seed=3)
    assert all(g[k] >= c[k] for g, c in zip(gpu_fit, fit) for k in c)  # accelerators run larger kernels


# ---- profiles -------------------------------------------------------------------------------------
def _measured_profile(**changes) -> DeviceProfile:
    kernel = KernelModel(flops_efficiency=0.5, half_efficiency_flops=1e6, memory_efficiency=0.5, overhead_s=1e-5,
                         overlap_exponent=2.0)
    base = dict(name="test-measured", device_kind="test device", source="test", devices=8, sweep="quick",
                dtypes={"bf16": {"peak_flops": 1e11, "hbm_bandwidth": 1e10, "kernels": {f: kernel for f in KERNEL_FAMILIES}}},
                network={"link_bandwidth": 5e9, "latency_s": 2e-5,
                         "samples": [CollectiveSample(op="all_reduce", devices=8, nbytes=1e6, times_s=[1e-3, 1.2e-3])]},
                samples=[KernelSample(kernel="matmul/dense", family="matmul", dtype="bf16", shape={"t": 1}, flops=1.0,
                                      nbytes=2.0, times_s=[1e-5, 2e-5, 3e-5], held_out=True)])
    base.update(changes)
    return DeviceProfile.model_validate(base)


def test_profile_round_trips_through_json(tmp_path):
    profile = _measured_profile()
    path = tmp_path / "p.json"
    path.write_text(profile.model_dump_json())
    again = load_profile(path)
    assert again == profile
    assert again.samples[0].median_s == 2e-5


def test_measured_profile_refuses_an_unmeasured_dtype():
    from pathsim.cluster import load_cluster

    chip = load_cluster("tpu-v4-4x4x4").chip
    with pytest.raises(PathsimConfigError, match="measured only \\['bf16'\\]"):
        DeviceModel(chip, "f32", _measured_profile())
    model = DeviceModel(chip, "bf16", _measured_profile())
    assert model.peak_flops == 1e11 and model.hbm_bandwidth == 1e10  # the measured anchors, not the datasheet


def test_malformed_profile_exits_2_naming_the_field(tmp_path, capsys):
    data = json.loads(_measured_profile().model_dump_json())
    data["dtypes"]["bf16"]["kernels"]["matmul"]["flops_efficiency"] = 2.0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    assert main(["simulate", "--cluster", "tpu-v4-4x4x4", "--workload", "switch-base-128", "--profile", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "dtypes.bf16.kernels.matmul.flops_efficiency" in err
    del data["dtypes"]["bf16"]["kernels"]["router"]
    data["dtypes"]["bf16"]["kernels"]["matmul"]["flops_efficiency"] = 0.5
    bad.write_text(json.dumps(data))
    assert main(["simulate", "--cluster", "tpu-v4-4x4x4", "--workload", "switch-base-128", "--profile", str(bad)]) == 2
    assert "router" in capsys.readouterr().err
    assert main(["calibrate", "--validate", str(tmp_path / "missing.json")]) == 2
    assert "profile file not found" in capsys.readouterr().err


def test_cluster_profile_field_is_used_and_resolved_next_to_the_cluster(tmp_path):
    import yaml

    from pathsim.simulation import simulate

    profile = _measured_profile()
    (tmp_path / "prof.json").write_text(profile.model_dump_json())
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump({"extends": "tpu-v4-4x4x4", "name": "with-profile",
                                                           "profile": "prof.json"}))
    via_cluster = simulate(str(tmp_path / "cluster.yaml"), "switch-base-128", steps=1)
    via_flag = simulate("tpu-v4-4x4x4", "switch-base-128", steps=1, profile=tmp_path / "prof.json")
    default = simulate("tpu-v4-4x4x4", "switch-base-128", steps=1)
    assert via_cluster.step_time.mean_s == via_flag.step_time.mean_s != default.step_time.mean_s


# ---- the network fit ------------------------------------------------------------------------------
def test_network_fit_recovers_link_speed_from_pathsims_own_collectives():
    bandwidth, latency = 3e9, 4e-5
    cluster = host_cluster_config(8, bandwidth, latency)
    samples = [CollectiveSample(op=op, devices=8, nbytes=size, times_s=[run_collective(cluster, op, size).time_s])
               for op in ("all_to_all", "all_reduce", "all_gather") for size in (1e5, 1e6, 1e7)]
    fit = fit_network(samples)
    assert fit.link_bandwidth == pytest.approx(bandwidth, rel=1e-6)
    assert fit.latency_s == pytest.approx(latency, rel=1e-6)


def test_ring_all_reduce_on_the_host_graph_matches_the_closed_form():
    a, b = _model_terms("all_reduce", 8e6, 8)
    # ring: 2(p-1) steps of S/p through each device's link at 1 B/s; each step crosses 2 hops of latency 1
    assert a == pytest.approx(2 * 7 * 8e6 / 8)
    assert b == pytest.approx(2 * 7 * 2)


def test_force_host_devices_rewrites_the_flag(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", f"--foo {HOST_DEVICE_FLAG}=2")
    monkeypatch.delitem(sys.modules, "jax", raising=False)
    force_host_devices(8)
    import os
    assert os.environ["XLA_FLAGS"] == f"--foo {HOST_DEVICE_FLAG}=8"


# ---- a real quick calibration of this machine ---------------------------------------------------
@pytest.fixture(scope="module")
def quick_profile(tmp_path_factory):
    out = tmp_path_factory.mktemp("calibration")
    run = subprocess.run([sys.executable, "-m", "pathsim.cli", "calibrate", "--quick", "--no-progress",
                          "--out", str(out / "quick.json"), "--json", str(out / "report.json")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    return load_profile(out / "quick.json"), json.loads((out / "report.json").read_text())["validation"], run.stdout


def test_quick_calibration_fits_every_family_from_real_samples(quick_profile):
    profile, report, stdout = quick_profile
    assert profile.sweep == "quick" and profile.devices >= 1 and profile.versions["jax"]
    fit = profile.dtypes["bf16"]
    assert set(fit.kernels) == set(KERNEL_FAMILIES)
    rates = [s.flops / s.median_s for s in profile.samples if s.flops > 0 and not s.held_out]
    assert fit.peak_flops == pytest.approx(max(rates))
    assert all(len(s.times_s) >= 6 and min(s.times_s) > 0 for s in profile.samples)
    if profile.devices > 1:
        assert profile.network is not None and profile.network.link_bandwidth > 0
    assert "held-out validation" in stdout


def test_held_out_table_is_computed_from_the_measurements(quick_profile):
    profile, report, _ = quick_profile
    held = {(s.kernel, s.dtype, tuple(sorted(s.shape.items()))): s for s in profile.samples if s.held_out}
    assert len(report["predictions"]) == len(held) > 0
    model = DeviceModel(None, "bf16", profile)
    for p in report["predictions"]:
        sample = held[(p["kernel"], p["dtype"], tuple(sorted(p["shape"].items())))]
        assert p["measured_s"] == sample.median_s
        assert p["predicted_s"] == pytest.approx(model.time_s(sample.family, sample.flops, sample.nbytes))
    for family in report["families"]:
        errors = [abs(p["predicted_s"] / p["measured_s"] - 1) * 100 for p in report["predictions"]
                  if p["family"] == family["family"] and p["dtype"] == family["dtype"]]
        assert family["median_abs_pct"] == pytest.approx(float(np.median(errors)))
        assert math.isfinite(family["p90_abs_pct"])


def test_quick_profile_drives_a_simulation(quick_profile, tmp_path):
    from pathsim.calibration.collectives import host_cluster_config
    from pathsim.simulation import simulate

    from pathsim.errors import PathsimConfigError

    profile, _, _ = quick_profile
    default = simulate("tpu-v4-4x4x4", "switch-base-128", steps=1)
    with pytest.raises(PathsimConfigError, match=r"measured on 'cpu.*\(cpu\), but the cluster's chips are 'TPU v4'"):
        simulate("tpu-v4-4x4x4", "switch-base-128", steps=1, profile=profile)  # a CPU's fits standing in for a TPU's
    calibrated = simulate("tpu-v4-4x4x4", "switch-base-128", steps=1, profile=profile.model_copy(update={"other_chips": True}))
    # a few host CPU cores are orders of magnitude slower than a TPU v4 chip's datasheet
    assert calibrated.step_time.mean_s > 10 * default.step_time.mean_s
    assert host_cluster_config(8, 1e9, 1e-5).num_chips == 8


def test_a_chips_fitted_kernel_efficiency_scales_the_defaults_arithmetic_only():
    from pathsim.cluster import load_cluster
    from pathsim.device import default_profile, load_profile

    chip = load_cluster("tpu-v4-4x4x4").chip.model_copy(update={"kernel_efficiency": 0.5})
    plain, scaled = default_profile(), default_profile(chip)
    for name, k in plain.kernels.items():
        assert scaled.kernels[name].flops_efficiency == pytest.approx(k.flops_efficiency * 0.5)
        assert scaled.kernels[name].memory_efficiency == k.memory_efficiency  # HBM streams as before
    assert "x 0.5" in scaled.source
    capped = default_profile(chip.model_copy(update={"kernel_efficiency": 1.5}))
    assert max(k.flops_efficiency for k in capped.kernels.values()) == 1.0
    assert load_profile(None, chip) == scaled  # what a run without a measured profile uses

    data = cluster_dict(kind="torus", dims=[4, 4, 4], link="ici")
    base = simulate(data, "palm-8b")
    data["chip"]["kernel_efficiency"] = 0.5
    slow = simulate(data, "palm-8b")
    assert slow.breakdown.compute_s > 1.8 * base.breakdown.compute_s  # compute-bound kernels take ~twice as long


@pytest.mark.parametrize("value", [0, -1, 2.0, float("nan")])
def test_a_bad_kernel_efficiency_names_the_field(value):
    data = cluster_dict(kind="torus", dims=[4, 4, 4], link="ici")
    data["chip"]["kernel_efficiency"] = value
    with pytest.raises(PathsimConfigError) as error:
        simulate(data, "palm-8b")
    assert "kernel_efficiency" in error.value.field
