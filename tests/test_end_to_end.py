"""The end-to-end check: GShard's masks, the real JAX training step, and pathsim's pricing of that same step."""

import json
import subprocess
import sys

import numpy as np
import pytest

from pathsim.cli import main

jax = pytest.importorskip("jax")
jnp = jax.numpy


def test_gshard_masks_fill_slots_first_choices_first_and_drop_past_capacity():
    from pathsim.calibration.kernels import gshard_masks

    ids = jnp.array([[0, 1], [0, 2], [0, 1], [1, 0]])  # 4 tokens, top-2 of 3 experts
    gates = jnp.array([[0.6, 0.4], [0.7, 0.3], [0.5, 0.5], [0.8, 0.2]])
    dispatch, combine = gshard_masks(ids, gates, 3, 2, jnp.float32)
    # Slots go to first choices of every token before second ones: expert 0 takes tokens 0 and 1 and drops token 2's
    # first choice and token 3's second; expert 1 takes token 3 (first) and token 0 (second) and drops token 2's.
    expected = np.zeros((4, 3, 2))
    for token, expert, slot in [(0, 0, 0), (1, 0, 1), (3, 1, 0), (0, 1, 1), (1, 2, 0)]:
        expected[token, expert, slot] = 1
    assert np.array_equal(np.asarray(dispatch), expected)
    # kept = Σ_e min(demand_e, capacity) = 2 + 2 + 1
    assert float(dispatch.sum()) == 5
    weights = np.zeros((4, 3, 2))
    for token, expert, slot, gate in [(0, 0, 0, .6), (1, 0, 1, .7), (3, 1, 0, .8), (0, 1, 1, .4), (1, 2, 0, .3)]:
        weights[token, expert, slot] = gate
    assert np.allclose(np.asarray(combine), weights)


def _tiny(devices: int):
    """The check's workload shrunk to test sizes (same structure: every other layer MoE, one expert group)."""
    from pathsim.calibration.end_to_end import check_workload
    from pathsim.workload import WorkloadConfig

    wl = check_workload(devices, "f32").model_dump()
    wl["model"].update(d_model=64, heads=2, head_dim=32, seq_len=16, vocab=128, dense_ffn=128)
    wl["model"]["moe"]["expert_ffn"] = 96
    wl["training"]["tokens_per_step"] = devices * 4 * 16
    return WorkloadConfig.model_validate(wl)


def test_the_training_step_learns_and_xla_counts_the_flops_pathsim_prices():
    """The JAX step is real training (the loss falls on a fixed batch), and pathsim prices the step XLA compiled."""
    from pathsim.calibration.end_to_end import build_step, initial_inputs, predict_step, xla_flops
    from pathsim.calibration.harness import make_mesh
    from pathsim.device import load_profile

    mesh = make_mesh(1)
    workload = _tiny(1)
    step = build_step(workload, mesh)
    state, tokens, targets = initial_inputs(workload, mesh, seed=0)
    compiled = step.lower(state, tokens, targets).compile()
    losses = []
    for _ in range(30):
        state, loss, kept = compiled(state, tokens, targets)
        losses.append(float(loss[0]))
    assert losses[-1] < 0.9 * losses[0]
    m = workload.model
    assert 0 < float(kept[0]) <= workload.training.tokens_per_step * m.moe.top_k * len(m.moe_layers)

    profile = load_profile("cpu-epyc-2core-x8")
    predicted = predict_step(workload, profile, 1)
    priced = predicted.hfu * predicted.step_time.mean_s * profile.dtypes["f32"].peak_flops
    # XLA also counts softmaxes, norms, the loss and Adam; at these tiny widths they are a few percent
    assert priced == pytest.approx(xla_flops(compiled), rel=0.10)


def test_end_to_end_refuses_bad_arguments(tmp_path, capsys):
    assert main(["calibrate", "--end-to-end", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
    assert main(["calibrate", "--validate", "cpu-epyc-2core-x8", "--end-to-end", "cpu-epyc-2core-x8"]) == 2
    assert "--end-to-end" in capsys.readouterr().err
    assert main(["calibrate", "--end-to-end", "cpu-epyc-2core-x8", "--host-devices", "1", "--devices", "4096"]) == 2
    assert "4096 devices" in capsys.readouterr().err


@pytest.mark.slow
def test_end_to_end_prediction_is_within_the_goal(tmp_path):
    """Issue 7's goal: pathsim predicts the real 8-device expert-parallel step within 15 %."""
    out = tmp_path / "e2e.json"
    run = subprocess.run([sys.executable, "-m", "pathsim.cli", "calibrate", "--end-to-end", "cpu-epyc-2core-x8",
                          "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())["end_to_end"]
    assert report["devices"] == 8
    assert report["pathsim_flops_per_device"] == pytest.approx(report["xla_flops_per_device"], rel=0.05)
    assert abs(report["error"]) <= 0.15, run.stdout
