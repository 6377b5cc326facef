"""Encoder-decoder models (T5, Switch, GShard): parameters and FLOPs in closed form, what a step runs, the
decoder's routing on its own tokens, and activation memory."""

import pytest

import pathsim
from pathsim import kernel_costs as kc
from pathsim.memory import OPTIMIZER_STATE_BYTES, optimizer_params_per_chip
from pathsim.model_math import layer_activation_bytes, model_totals
from pathsim.routing import draw_micro_batch, route_layer, step_rng
from pathsim.run_setup import prepare_run
from pathsim.workload import load_workload


def _t5(**model):
    return {"name": "t5-tiny",
            "model": {"layers": 4, "encoder_layers": 2, "d_model": 64, "heads": 4, "head_dim": 32, "seq_len": 128,
                      "decoder_seq_len": 32, "vocab": 512, "tied_embeddings": True, "ffn_kind": "relu",
                      "dense_ffn": 256, **model},
            "training": {"tokens_per_step": 128 * 64, "optimizer": "adafactor"}}


def test_t5_11b_has_its_published_parameters():
    # Raffel et al. 2020 Sec. 3.7: d_model 1024, d_ff 65,536, 128 heads of 128, 24 + 24 layers, "11B"; every
    # decoder layer carries a second attention block of the same shape.
    model = load_workload("t5-11b").model
    attention, ffn = 4 * 1024 * 128 * 128, 2 * 1024 * 65536
    expected = 24 * (attention + ffn) + 24 * (2 * attention + ffn) + 32128 * 1024
    assert model_totals(model).total_params == expected
    assert expected / 1e9 == pytest.approx(11.3, abs=0.05)


def test_forward_flops_per_input_token_in_closed_form():
    w = load_workload(_t5())
    d, inner, s, t = 64, 4 * 32, 128, 32
    attention, ffn = 4 * d * inner, 2 * d * 256
    encoder = 2 * (attention + ffn) + 4 * s * inner
    # A decoder token: self-attention over the targets, cross-attention's Q/O and its scores over the inputs;
    # each input token: the K/V projections of every decoder layer.
    decoder = t / s * (2 * (attention + ffn) + 4 * t * inner + 2 * (2 * d * inner) + 4 * s * inner) + 2 * (2 * d * inner)
    head = t / s * 2 * 512 * d
    assert model_totals(w.model).forward_flops_per_token == pytest.approx(2 * encoder + 2 * decoder + head, rel=1e-12)


def test_a_step_runs_the_model_flops_and_the_cross_attention():
    # Without recompute the step's compute ops do exactly the model's FLOPs, and the optimizer its own: hardware
    # and model utilisation differ by the optimizer step alone.
    result = pathsim.simulate("tpu-v4-4x4x4", _t5(), steps=1, detail=True)
    setup = prepare_run("tpu-v4-4x4x4", _t5())
    optimizer = kc.optimizer(optimizer_params_per_chip(setup.workload, setup.layout, 0), OPTIMIZER_STATE_BYTES["adafactor"], 2)
    peak = setup.cluster.chip.peak_flops["bf16"]
    assert (result.hfu - result.mfu) * result.step_time.mean_s * peak == pytest.approx(optimizer.flops, rel=1e-6)
    names = {s.name for s in result.detail.timeline}
    assert "L2 cross-attention core fwd" in names and "L1 cross-attention core fwd" not in names
    # The decoder's share of the compute: shorter targets make a lighter step than a decoder at the inputs' length.
    longer = pathsim.simulate("tpu-v4-4x4x4", _t5(decoder_seq_len=128), steps=1)
    assert longer.step_time.mean_s > result.step_time.mean_s
    for run, spec in ((result, _t5()), (longer, _t5(decoder_seq_len=128))):
        assert run.model_flops_per_step == pytest.approx(3 * model_totals(load_workload(spec).model).forward_flops_per_token
                                                         * 128 * 64, rel=1e-12)


def test_decoder_moe_layers_route_their_target_tokens():
    moe = {"experts": 8, "top_k": 2, "expert_ffn": 128, "every": 1, "dropless": True}
    inputs = 128 * 64
    expected = [2 * inputs, 2 * inputs, 2 * inputs * 32 // 128, 2 * inputs * 32 // 128]  # assignments per MoE layer
    for sampling in ("exact", "mean_field"):
        setup = prepare_run("tpu-v4-4x4x4", _t5(moe=moe), sampling=sampling)
        plan = setup.plan
        expectation = [route_layer(plan, setup.layout, setup.placement, j, None) for j in range(4)]
        assert [float(r.routed.sum()) for r in expectation] == pytest.approx(expected, rel=1e-12)
        # every kept assignment reaches a chip: the decoder's chips hold a quarter of the encoder's load
        assert [float(r.chip_tokens.sum()) for r in expectation] == pytest.approx(expected, rel=1e-12)
        rng = step_rng(0, 0)
        sampled = [route_layer(plan, setup.layout, setup.placement, j, rng) for j in range(4)]
        for routing, mean in zip(sampled, expected):  # binomial draws: within 5 standard deviations
            assert abs(float(routing.routed.sum()) - mean) < 5 * mean ** 0.5
            assert float(routing.chip_tokens.sum()) == pytest.approx(float(routing.routed.sum()), rel=1e-12)
        if sampling == "mean_field":  # a micro-batch drawn at once is what layer after layer draws
            drawn = draw_micro_batch(plan, step_rng(0, 0))
            assert drawn.sum(axis=(1, 2)).tolist() == [float(r.routed.sum()) for r in sampled]
    result = pathsim.simulate("tpu-v4-4x4x4", _t5(moe=moe), steps=1)
    assert result.model_flops_per_step == pytest.approx(3 * model_totals(load_workload(_t5(moe=moe)).model)
                                                        .forward_flops_per_token * inputs, rel=1e-12)


def test_decoder_activations_add_cross_attention_and_scale_with_targets():
    same = load_workload(_t5(decoder_seq_len=128)).model
    encoder, decoder = (layer_activation_bytes(same, i, "none") for i in (0, 2))
    h, q, masks = 64, 128, 1
    # The cross-attention block: norm and Q inputs, Q and the output projection's input, mask, scores over the
    # inputs, and K/V of every input token.
    assert decoder - encoder == pytest.approx(4 * h + 4 * q + masks * h + 5 * 4 * 128 + 4 * q)
    short = load_workload(_t5()).model
    assert layer_activation_bytes(short, 0, "none") == encoder
    assert layer_activation_bytes(short, 2, "full") == pytest.approx(32 / 128 * 2 * h)


def _emulating(tmp_path, base: str = "bf16") -> str:
    path = tmp_path / "emulating.yaml"
    path.write_text(f"extends: tpu-v4-4x4x4\nname: emulating\nchip:\n  emulated_dtypes: {{fp32: {base}}}\n")
    return str(path)


def test_fp32_on_a_bf16_matrix_unit_runs_as_bf16_passes(tmp_path):
    # TPUs multiply fp32 as bfloat16 passes: one at XLA's default precision, 3 at high, 6 at highest; the tensors
    # keep fp32's four bytes, and MFU is against the bfloat16 rate the matrix units have.
    from pathsim.cluster import load_cluster
    from pathsim.device import DeviceModel
    cluster = _emulating(tmp_path)
    chip = load_cluster(cluster).chip
    times = {p: DeviceModel(chip, "fp32", matmul_precision=p).time_s("matmul", 1e15) for p in ("default", "high", "highest")}
    device = DeviceModel(chip, "bf16")
    launch = device.kernels["matmul"].overhead_s  # a kernel's fixed cost, however many passes it makes
    bf16 = device.time_s("matmul", 1e15) - launch
    assert [times[p] - launch for p in ("default", "high", "highest")] == pytest.approx([bf16, 3 * bf16, 6 * bf16],
                                                                                         rel=1e-12)
    runs = {p: pathsim.simulate(cluster, _t5(dtype="fp32", matmul_precision=p), steps=1) for p in ("default", "highest")}
    assert runs["highest"].step_time.mean_s > 2 * runs["default"].step_time.mean_s
    for run in runs.values():
        assert run.mfu == pytest.approx(run.model_flops_per_step / run.step_time.mean_s / (64 * 275e12), rel=1e-9)
    assert runs["default"].memory.parameters_bytes == pytest.approx(
        2 * pathsim.simulate(cluster, _t5(), steps=1).memory.parameters_bytes)


def test_an_emulated_dtype_needs_a_rate_to_run_in(tmp_path, capsys):
    import yaml

    from pathsim.cli import main
    from pathsim.cluster import load_cluster
    from pathsim.errors import PathsimConfigError
    with pytest.raises(PathsimConfigError, match="emulated_dtypes maps fp32 to fp8") as err:
        load_cluster(_emulating(tmp_path, "fp8"))
    assert err.value.field == "chip"
    workload = tmp_path / "fp32.yaml"
    workload.write_text(yaml.safe_dump(_t5(dtype="fp32")))
    assert main(["simulate", "--cluster", "dgx-a100-1", "--workload", str(workload), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "model.dtype" in err and "chip.emulated_dtypes" in err and "Traceback" not in err
