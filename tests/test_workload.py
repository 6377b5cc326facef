"""Workload configs, presets, model arithmetic, and the `simulate` CLI on good and bad input."""

import json
import subprocess
import sys

import pytest

from pathsim.cli import main
from pathsim.errors import PathsimConfigError
from pathsim.model_math import model_totals
from pathsim.presets import preset_names
from pathsim.workload import load_workload

REQUIRED = ["switch-base-128", "switch-c-2048", "gshard-600b", "glam", "limoe", "mixtral-8x7b", "deepseek-v3", "pathways-multitask"]

GOOD = """\
name: tiny
model: {layers: 4, d_model: 64, heads: 4, seq_len: 128, vocab: 100, dense_ffn: 256,
        moe: {experts: 8, top_k: 2, expert_ffn: 128, every: 2}}
training: {tokens_per_step: 65536}
tasks:
  - {name: a, share: 0.5}
  - {name: b, modality: image, share: 0.5, affinity: {experts: "0-3", weight: 0.8}}
"""


def test_required_presets_exist():
    assert set(REQUIRED) <= set(preset_names("workloads"))


@pytest.mark.parametrize("name", preset_names("workloads"))
def test_every_workload_preset_loads_and_cites_its_paper(name):
    wl = load_workload(name)
    assert wl.name == name
    assert wl.source.strip(), f"{name} needs a source"
    assert wl.description.strip()


@pytest.mark.parametrize("name, total_b, active_b, tolerance", [
    ("mixtral-8x7b", 46.7, 12.9, 0.02),  # Mistral AI model card
    ("switch-base-128", 7.4, None, 0.02),  # Fedus et al., Table 9
    ("glam", 1162, 96.6, 0.04),  # Du et al., Table 4 (1.2T / 96.6B)
    # DeepSeek-V3 report: MLA is approximated by 128 heads with 2 KV heads, whose attention weights are
    # ~27 % heavier than MLA's (~238M vs ~187M per layer): +3B over 61 layers on the 37B activated.
    ("deepseek-v3", 671, 37, 0.12),
])
def test_preset_parameter_counts_match_their_papers(name, total_b, active_b, tolerance):
    totals = model_totals(load_workload(name).model)
    assert totals.total_params / 1e9 == pytest.approx(total_b, rel=max(tolerance, 0.02))
    if active_b is not None:
        assert totals.active_params_per_token / 1e9 == pytest.approx(active_b, rel=tolerance)


def test_moe_layer_selection():
    wl = load_workload("deepseek-v3")
    assert wl.model.moe_layers[:2] == (3, 4) and len(wl.model.moe_layers) == 58
    switch = load_workload("switch-base-128").model
    assert switch.moe_layers[:3] == (1, 3, 5)


BAD_WORKLOADS = [
    ("shares", GOOD.replace("share: 0.5}", "share: 0.4}", 1), "", "sum to"),
    ("unknown-field", GOOD.replace("top_k: 2", "topk: 2"), "model.moe.topk", "did you mean `top_k`"),
    ("routing-kind", GOOD.replace("{name: a, share: 0.5}", "{name: a, share: 0.5, routing: {kind: pareto}}"), "tasks[0].routing.kind", "kind"),
    ("zipf-negative", GOOD.replace("{name: a, share: 0.5}", "{name: a, share: 0.5, routing: {kind: zipf, exponent: -1}}"), "tasks[0].routing.exponent", "greater than or equal"),
    ("affinity-range", GOOD.replace('"0-3"', '"0-9"'), "", "expert 9"),
    ("affinity-syntax", GOOD.replace('"0-3"', '"zero-three"'), "", "not an expert id"),
    ("top-k", GOOD.replace("top_k: 2", "top_k: 9"), "model.moe", "exceeds the number of experts"),
    ("capacity", GOOD.replace("every: 2}", "every: 2, capacity_factor: -1}"), "model.moe.capacity_factor", "greater than 0"),
    ("no-moe-layers", GOOD.replace("every: 2", "every: 2, first_dense: 4"), "model", "no MoE layer"),
    ("heads", GOOD.replace("heads: 4", "heads: 5"), "model", "multiple of heads"),
    ("micro-batches", GOOD.replace("65536}", "65536, micro_batches: 3}"), "", "multiple of"),
    ("histogram-missing", GOOD.replace("{name: a, share: 0.5}", "{name: a, share: 0.5, routing: {kind: histogram, file: nope.npy}}"), "tasks[0].routing.file", "not found"),
    ("tokens-type", GOOD.replace("65536", "lots"), "training.tokens_per_step", "integer"),
    ("duplicate-task", GOOD.replace("name: b", "name: a"), "", "repeat"),
    ("tokens-huge", GOOD.replace("65536", "100000000000000000000000"), "training.tokens_per_step", "less than or equal"),
    ("expert-degree", GOOD + "parallelism: {expert: many}\n", "parallelism.expert", "auto"),
    ("missing-nested", GOOD.replace("expert_ffn: 128, ", ""), "model.moe.expert_ffn", "required field is missing"),
    # Found by benchmarks/bad_input_corpus.py: a step graph of 1e9 layers hung; an int beyond int64 overflowed numpy.
    ("layers-huge", GOOD.replace("layers: 4", "layers: 1000000000"), "model.layers", "less than or equal to 10000"),
    ("beyond-int64", GOOD.replace("expert_ffn: 128", "expert_ffn: 1000000000000000000000000000000"),
     "model.moe.expert_ffn", "at most 2^53"),
    ("beyond-int64-in-a-list", GOOD + "parallelism: {stage_layers: [2, 9223372036854775808]}\n",
     "parallelism.stage_layers", "at most 2^53"),
]


@pytest.mark.parametrize("case, text, field, needle", BAD_WORKLOADS, ids=[c[0] for c in BAD_WORKLOADS])
def test_bad_workloads_exit_2_naming_file_and_field(tmp_path, capsys, case, text, field, needle):
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(PathsimConfigError) as info:
        load_workload(path)
    assert info.value.source == str(path)
    assert info.value.field == field
    assert needle in info.value.one_line()
    assert main(["simulate", "--cluster", "tpu-v4-4x4x4", "--workload", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2


@pytest.mark.parametrize("content, needle", [
    (lambda np: np.ones((3, 5)), r"expected \(2, 8\)"),
    (lambda np: np.array([["a"] * 8] * 2), "cannot be read as numbers"),
    (lambda np: -np.ones((2, 8)), "negative"),
])
def test_bad_histograms(tmp_path, content, needle):
    import numpy as np

    np.save(tmp_path / "h.npy", content(np))
    path = tmp_path / "w.yaml"
    path.write_text(GOOD.replace("{name: a, share: 0.5}", "{name: a, share: 0.5, routing: {kind: histogram, file: h.npy}}"))
    with pytest.raises(PathsimConfigError, match=needle) as info:
        load_workload(path)
    assert info.value.field == "tasks[0].routing.file"


def test_placement_on_a_dense_model_is_an_error(tmp_path, capsys):
    path = tmp_path / "dense.yaml"
    path.write_text("name: d\nmodel: {layers: 2, d_model: 64, heads: 4, seq_len: 128, vocab: 100, dense_ffn: 256}\n"
                    "training: {tokens_per_step: 65536}\n")
    assert main(["simulate", "--cluster", "tpu-v4-4x4x4", "--workload", str(path), "--placement", "contiguous"]) == 2
    assert "no experts to place" in capsys.readouterr().err
    assert main(["simulate", "--cluster", "tpu-v4-4x4x4", "--workload", str(path), "--network", "fluid"]) == 2
    assert "fluid" in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["--workload", "nope-preset"], "not a known workload preset"),
    (["--workload", "switch-base-12"], "did you mean switch-base-128"),
    (["--steps", "0"], "steps"),
    (["--placement", "greedy"], "neither a placement policy"),
    (["--profile", "missing.json"], "profile file not found"),
])
def test_bad_simulate_arguments_exit_2(capsys, argv, needle):
    args = {"--cluster": "tpu-v4-4x4x4", "--workload": "switch-base-128"}
    for flag, value in zip(argv[::2], argv[1::2]):
        args[flag] = value
    flat = [x for pair in args.items() for x in pair]
    assert main(["simulate", *flat]) == 2
    assert needle in capsys.readouterr().err


def test_layout_errors_name_the_parallelism_field(tmp_path, capsys):
    path = tmp_path / "tp.yaml"
    path.write_text(GOOD + "parallelism: {tensor: 3}\n")
    assert main(["simulate", "--cluster", "tpu-v4-4x4x4", "--workload", str(path)]) == 2
    assert "parallelism.tensor" in capsys.readouterr().err
    heads = tmp_path / "heads.yaml"
    heads.write_text(GOOD + "parallelism: {tensor: 8}\n")
    assert main(["simulate", "--cluster", "tpu-v4-4x4x4", "--workload", str(heads)]) == 2
    assert "parallelism.tensor: tensor degree 8 does not divide" in capsys.readouterr().err
    bad_dtype = tmp_path / "dtype.yaml"
    bad_dtype.write_text(GOOD.replace("vocab: 100,", "vocab: 100, dtype: fp64,"))
    assert main(["simulate", "--cluster", "tpu-v4-4x4x4", "--workload", str(bad_dtype)]) == 2
    assert "model.dtype" in capsys.readouterr().err


def test_bad_placement_and_profile_files(tmp_path, capsys):
    placement = tmp_path / "p.json"
    placement.write_text(json.dumps({"policy": "file", "experts": 8, "ranks": 64, "slots": [[0]] * 64}))
    wl = tmp_path / "w.yaml"
    wl.write_text(GOOD)
    assert main(["simulate", "--cluster", "tpu-v4-4x4x4", "--workload", str(wl), "--placement", str(placement)]) == 2
    assert "placed on no rank" in capsys.readouterr().err
    profile = tmp_path / "prof.json"
    profile.write_text(json.dumps({"name": "x", "device_kind": "x", "source": "x", "kernels": {}}))
    assert main(["simulate", "--cluster", "tpu-v4-4x4x4", "--workload", str(wl), "--profile", str(profile)]) == 2
    assert "every kernel family" in capsys.readouterr().err


def test_simulate_cli_prints_summary_and_writes_json_and_trace(tmp_path, capsys):
    wl = tmp_path / "w.yaml"
    wl.write_text(GOOD)
    out, trace = tmp_path / "out" / "r.json", tmp_path / "t.json"
    assert main(["simulate", "--cluster", "tpu-v4-4x4x4", "--workload", str(wl), "--steps", "2",
                 "--json", str(out), "--trace", str(trace)]) == 0
    text = capsys.readouterr().out
    for needle in ("step time", "where the time goes", "straggler", "all to all", "memory per chip", "fits"):
        assert needle in text
    data = json.loads(out.read_text())
    assert data["steps"] == 2 and data["inputs"]["workload"]["name"] == "tiny"
    assert json.loads(trace.read_text())["traceEvents"]


def test_validate_summarises_workloads_and_clusters(tmp_path, capsys):
    wl = tmp_path / "w.yaml"
    wl.write_text(GOOD)
    assert main(["validate", str(wl), "mixtral-8x7b", "tpu-v4-4x4x4"]) == 0
    out = capsys.readouterr().out
    assert "workload tiny" in out and "8 experts top-2 in 2 of 4 layers" in out and "image, text" in out
    assert "46.7B parameters" in out and "512 x TPU v4" not in out and "64 x TPU v4" in out


def test_validate_reads_a_file_extending_a_workload_preset_as_a_workload(tmp_path, capsys):
    """A file with only `extends:` and an override is a workload, and its error names the workload's field."""
    variant = tmp_path / "v.yaml"
    variant.write_text("extends: llama3-405b\nname: llama3-405b-variant\n")
    assert main(["validate", str(variant)]) == 0
    assert "workload llama3-405b-variant: 405.8B parameters" in " ".join(capsys.readouterr().out.split())  # wrapped
    variant.write_text("extends: llama3-405b\ntraining:\n  shard_optimizer: false\n")
    assert main(["validate", str(variant)]) == 2
    err = capsys.readouterr().err
    assert "training.shard_gradients" in err and "topology" not in err


def test_console_script_simulate_error_has_no_traceback(tmp_path):
    wl = tmp_path / "w.yaml"
    wl.write_text(GOOD.replace("top_k: 2", "top_k: 0"))
    proc = subprocess.run([sys.executable, "-m", "pathsim.cli", "simulate", "--cluster", "tpu-v4-4x4x4", "--workload", str(wl)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "model.moe.top_k" in proc.stderr and "Traceback" not in proc.stderr


ENCODER_DECODER_BAD = [
    ("all-encoder", GOOD.replace("layers: 4,", "layers: 4, encoder_layers: 4,"), "model", "leaves no decoder layer"),
    ("targets-alone", GOOD.replace("seq_len: 128,", "seq_len: 128, decoder_seq_len: 32,"), "model", "set encoder_layers too"),
    ("part-sequences", GOOD.replace("layers: 4,", "layers: 4, encoder_layers: 2,").replace("65536", "65600"), "",
     "not a whole number of 128-token input sequences"),
    ("pipelined", GOOD.replace("layers: 4,", "layers: 4, encoder_layers: 2,") + "parallelism: {pipeline: 2}\n", "",
     "parallelism.pipeline (2) is not modelled for encoder-decoder models"),
]


@pytest.mark.parametrize("case, text, field, needle", ENCODER_DECODER_BAD, ids=[c[0] for c in ENCODER_DECODER_BAD])
def test_bad_encoder_decoder_workloads_exit_2(tmp_path, capsys, case, text, field, needle):
    test_bad_workloads_exit_2_naming_file_and_field(tmp_path, capsys, case, text, field, needle)
