"""The validation suite: every shipped entry is well formed, predictions are computed as each source counts, and the
suite's error stays within its bound (the goal is issue 21's; the bound records where the default models stand)."""

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from pathsim.cli import main
from pathsim.errors import PathsimConfigError
from pathsim.fidelity import GOALS, METRICS, SETUP_ASSUMED, load_entry, run_suite, suite_entries
from pathsim.simulation import simulate
from pathsim.workload import load_workload

# Median |error| of the default (fast) entries with today's models: 1.8 % over 41 entries (p90 10.7 %; the 12 nccl-tests
# entries are in sample for the link efficiencies, and validation/leave_one_out.py holds them out). Issue 21's goal is 8 %;
# this bound moves down as fitted models land (and up only when new evidence is added: Korthikanti et al.'s per-layer
# times took it from 6 % to 10 %; unfused attention's HBM passes, the 2021 Megatron-LM presets and NVLS brought it to 1.6 %,
# Patterson et al.'s TPU v3 power, 30-48 % off, back to 1.8 %).
REGRESSION_MEDIAN = 0.04


def test_every_shipped_entry_loads_with_a_source_and_a_known_metric():
    entries = suite_entries(slow=True)
    assert len(entries) >= 30
    assert len({e.name for e in entries}) == len(entries)
    for e in entries:
        assert e.metric in METRICS and e.source and e.measured > 0
    assert {"megatron_tflops_per_gpu", "step_time_s", "busbw_gb_per_s", "gpu_hours_per_trillion_tokens", "mfu"} <= {
        e.metric for e in entries}
    assert sum(e.name.startswith("megatron-sc21-") for e in entries) == 10  # every row of SC'21 Table 1


def test_the_fast_suite_errors_are_predicted_over_measured_and_stay_in_bound():
    suite = run_suite(suite_entries(slow=False))
    errors = np.array([e.error for e in suite.entries])
    for e in suite.entries:
        assert np.isfinite(e.predicted) and e.predicted > 0
        assert e.error == pytest.approx(e.predicted / e.measured - 1.0, rel=1e-12)
    assert suite.median_abs_error == pytest.approx(float(np.median(np.abs(errors))))
    assert suite.p90_abs_error == pytest.approx(float(np.percentile(np.abs(errors), 90)))
    assert suite.median_abs_error <= REGRESSION_MEDIAN
    # The error bars' evidence is today's: every step-like entry in the shipped residuals, the fast ones as just run
    # (regenerate with `pathsim fidelity --slow --residuals validation/residuals.json` after a model change).
    from pathsim.presets import preset_dir
    from pathsim.uncertainty import step_ratio
    rows = json.loads((preset_dir("validation") / "residuals.json").read_text())["entries"]
    shipped = {e["name"]: e["step_ratio"] for e in rows if "step_ratio" in e}
    powers = {e["name"]: e["power_ratio"] for e in rows if "power_ratio" in e}
    # (entries whose set-up is assumed are scored but give the error bars no evidence)
    assert set(shipped) == {e.name for e in suite_entries(slow=True) if e.metric in (
        "step_time_s", "gpu_hours_per_trillion_tokens", "tokens_per_s", "mfu", "megatron_tflops_per_gpu",
        "model_tflops_per_chip", "training_days") and SETUP_ASSUMED not in e.tags}
    assert set(powers) == {e.name for e in suite_entries(slow=True)
                           if e.metric == "it_w_per_chip" and SETUP_ASSUMED not in e.tags}
    for e in suite.entries:
        if step_ratio(e.metric, e.error) is not None and SETUP_ASSUMED not in e.tags:
            assert shipped[e.name] == pytest.approx(step_ratio(e.metric, e.error), rel=1e-9), e.name
        if e.metric == "it_w_per_chip" and SETUP_ASSUMED not in e.tags:
            assert powers[e.name] == pytest.approx(1.0 / (1.0 + e.error), rel=1e-9), e.name
    assert suite.meets_goals() == (suite.median_abs_error <= GOALS["median"] and suite.p90_abs_error <= GOALS["p90"])


def test_step_metrics_count_as_their_sources_do():
    # Megatron SC'21 Sec. 5.1: F = 96 B s l h^2 (1 + s/6h + V/16lh) per step; DeepSeek's GPU-hours per 10^12 tokens.
    from pathsim.fidelity import STEP_METRICS
    workload = load_workload("megatron-gpt-1.7b")
    result = simulate("dgx-a100-4", workload)
    B, s, l, h, V = 512, 2048, 24, 2304, 51200
    flops = 96 * B * s * l * h**2 * (1 + s / (6 * h) + V / (16 * l * h))
    assert STEP_METRICS["megatron_tflops_per_gpu"](result, workload) == pytest.approx(
        flops / result.step_time.mean_s / 32 / 1e12, rel=1e-12)
    hours = STEP_METRICS["gpu_hours_per_trillion_tokens"](result, workload)
    assert hours == pytest.approx(32 * result.step_time.mean_s * (1e12 / (B * s)) / 3600, rel=1e-12)
    # Patterson et al. 2021 Table 4's training days: the run's tokens at the predicted rate.
    from pathsim.fidelity import ValidationEntry, metric_value
    entry = ValidationEntry(name="x", source="s", metric="training_days", measured=1.0, unit="days", cluster="dgx-a100-4",
                            workload="megatron-gpt-1.7b", run_tokens=300e9)
    assert metric_value(entry, result, workload) == pytest.approx(300e9 / (B * s) * result.step_time.mean_s / 86400,
                                                                  rel=1e-12)


def test_a_run_carries_the_band_of_its_regime_s_residuals():
    from pathsim.presets import preset_dir
    result = simulate("dgx-a100-64", "megatron-gpt-39.1b")  # GPU, pipelined, across nodes
    band = result.step_time_band
    rows = json.loads((preset_dir("validation") / "residuals.json").read_text())["entries"]
    chosen = [r for r in rows if {"gpu", "pipeline", "multi-node"} <= set(r["tags"]) and "step_ratio" in r]
    ratios = np.array([r["step_ratio"] for r in chosen])
    assert band.regime == ["gpu", "pipeline", "multi-node"] and band.entries == sorted(r["name"] for r in chosen)
    T = result.step_time.mean_s
    assert (band.p10_s, band.p90_s) == pytest.approx((T * np.percentile(ratios, 10), T * np.percentile(ratios, 90)))
    assert band.p10_s < band.p90_s
    # TPU runs: the suite's TPU step entries (PaLM 540B's, Patterson et al.'s GShard and Switch throughputs and T5's
    # days) back them.
    tpu = simulate("tpu-v4-4x4x4", "switch-base-128").step_time_band
    assert tpu.regime == ["tpu"] and tpu.entries == sorted(r["name"] for r in rows if "tpu" in r["tags"] and "step_ratio" in r)
    assert len(tpu.entries) == 5 and tpu.p10_s < tpu.p90_s
    # ... and its energy: the step band times the measured / predicted power of the TPU v3 runs.
    run = simulate("tpu-v4-4x4x4", "switch-base-128")
    power = np.array([r["power_ratio"] for r in rows if "tpu" in r["tags"] and "power_ratio" in r])
    steps = np.array([r["step_ratio"] for r in rows if "tpu" in r["tags"] and "step_ratio" in r])
    assert len(power) == 3
    E = run.energy.it_j()
    assert (run.energy_band.p10_j, run.energy_band.p90_j) == pytest.approx(
        (E * np.percentile(steps, 10) * np.percentile(power, 10), E * np.percentile(steps, 90) * np.percentile(power, 90)))
    assert result.energy_band is None  # no GPU power entry whose set-up is published


def test_layer_metrics_sum_a_middle_layer_s_ops_per_micro_batch():
    from pathsim.fidelity import STEP_METRICS
    w = load_workload("megatron-gpt-1.7b").model_dump(mode="json")
    w["training"]["micro_batches"] = 2
    workload = load_workload(w)
    result = simulate("dgx-a100-4", workload, detail=True)
    layer = [s for s in result.detail.timeline if s.layer == 12 and s.stream == "main"]
    forward = sum(s.end_s - s.start_s for s in layer if s.name.endswith(" fwd"))
    backward = sum(s.end_s - s.start_s for s in layer if not s.name.endswith(" fwd"))
    assert any("recompute" in s.name for s in layer)  # full recompute: the backward re-runs the forward first
    assert STEP_METRICS["layer_forward_s"](result, workload) == pytest.approx(forward / 2, rel=1e-12)
    assert STEP_METRICS["layer_backward_s"](result, workload) == pytest.approx(backward / 2, rel=1e-12)
    assert backward > 2 * forward  # 2x the forward's FLOPs, plus the recompute


def entry_file(tmp_path, **fields):
    base = {"name": "x", "source": "a paper, Table 1", "metric": "step_time_s", "measured": 1.0, "unit": "s",
            "cluster": "dgx-h100-4", "workload": "mixtral-8x7b"}
    base.update(fields)
    path = tmp_path / "entry.yaml"
    path.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in base.items() if v is not None) + "\n")
    return path


@pytest.mark.parametrize("fields, field", [
    (dict(metric="speed"), "metric"),
    (dict(metric="busbw_gb_per_s"), "collective"),
    (dict(collective={"op": "all_reduce", "bytes": "1GiB"}), "workload"),
    (dict(metric="busbw_gb_per_s", workload=None, collective={"op": "broadcast", "bytes": "1GiB"}), "collective.op"),
    (dict(measured=0), "measured"),
    (dict(source=""), "source"),
    (dict(surprise=1), "surprise"),
    (dict(metric="training_days"), "run_tokens"),
    (dict(run_tokens=1e12), "run_tokens"),
])
def test_a_bad_entry_names_its_file_and_field(tmp_path, fields, field):
    with pytest.raises(PathsimConfigError) as err:
        load_entry(entry_file(tmp_path, **fields))
    assert err.value.field == field and "entry.yaml" in err.value.source


def test_entries_sharing_a_name_and_unknown_names_are_refused(tmp_path):
    for k in range(2):
        (tmp_path / f"e{k}.yaml").write_text(entry_file(tmp_path).read_text())
    (tmp_path / "entry.yaml").unlink()
    with pytest.raises(PathsimConfigError, match="share a name"):
        suite_entries(folder=tmp_path)
    with pytest.raises(PathsimConfigError, match="no entry named nope") as err:
        suite_entries(["nope"])
    assert err.value.field == "--only" and "palm-540b-mfu" in err.value.fix


def test_the_command_prints_the_table_and_writes_json_and_a_page(tmp_path, capsys):
    out, page = tmp_path / "fidelity.json", tmp_path / "page"
    assert main(["fidelity", "--only", "palm-540b-mfu", "nccl-h100-node-all-reduce-ring", "--json", str(out),
                 "--out", str(page)]) == 0
    printed = capsys.readouterr().out
    assert "palm-540b-mfu" in printed and "median |error|" in printed
    data = json.loads(out.read_text())
    assert [e["name"] for e in data["entries"]] == ["nccl-h100-node-all-reduce-ring", "palm-540b-mfu"]
    ET.fromstring((page / "index.html").read_text())  # well-formed XHTML
    assert (page / "figures" / "fidelity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (page / "data" / "fidelity.csv").read_text().startswith("entry,metric,unit,measured,predicted,error")
    assert not list(page.rglob("*.partial"))
    assert main(["fidelity", "--only", "nope"]) == 2


def test_leave_one_out_predicts_fitted_entries_from_the_others_and_keeps_the_rest(tmp_path, capsys):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "validation"))
    import leave_one_out
    from fit_network import fits
    out = tmp_path / "suite.json"
    assert main(["fidelity", "--only", "nccl-a100-node-all-reduce", "palm-540b-mfu", "--json", str(out)]) == 0
    errors = {e["name"]: e["error"] for e in json.loads(out.read_text())["entries"]}
    capsys.readouterr()
    assert leave_one_out.main([str(out)]) == 0
    printed = capsys.readouterr().out
    held = next(h for link, share, names, _, _, h in fits() if "nccl-a100-node-all-reduce" in names)["nccl-a100-node-all-reduce"]
    assert f"held out {held:+7.1%}  (fitted" in printed and f"held out {errors['palm-540b-mfu']:+7.1%}\n" in printed
    median = np.median([abs(held), abs(errors["palm-540b-mfu"])])
    assert f"leave-one-out median |error| {median:.1%}" in printed
    (tmp_path / "bad.json").write_text("{}")
    assert leave_one_out.main([str(tmp_path / "bad.json")]) == 2


def test_the_device_fit_finds_a_parabolas_vertex_and_converts_ratios_to_each_metrics_error():
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "validation"))
    from fit_device import COARSE, _vertex, metric_error

    rms = 0.01 + 3.0 * (COARSE - 1.013) ** 2  # least at 1.013, between grid points
    assert _vertex(COARSE, rms) == pytest.approx(1.013, abs=1e-9)
    assert _vertex(COARSE, COARSE - COARSE[0]) == COARSE[0]  # a minimum at the grid's end stays there
    # log(measured / predicted time) = log 1.1: predicted 10 % short, so a time is 9.1 % low, a rate 10 % high
    assert metric_error("step_time_s", np.log(1.1)) == pytest.approx(1 / 1.1 - 1)
    assert metric_error("layer_backward_s", np.log(1.1)) == pytest.approx(1 / 1.1 - 1)
    assert metric_error("megatron_tflops_per_gpu", np.log(1.1)) == pytest.approx(0.1)
