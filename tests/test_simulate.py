"""The step engine against closed forms, and its invariants (overlap, skew, determinism, memory)."""

import json

import numpy as np
import pytest

from pathsim import simulate
from pathsim.device import DeviceProfile, KernelModel, KERNEL_FAMILIES
from pathsim.workload import load_workload

from conftest import cluster_dict

EFFICIENCY = 0.5
BANDWIDTH = 100e9  # conftest's ici links
LATENCY = 1e-6


def compute_bound_profile() -> DeviceProfile:
    """No overheads, no size effects, unbounded HBM: every op costs FLOPs / (peak × 0.5) exactly."""
    kernel = KernelModel(flops_efficiency=EFFICIENCY, half_efficiency_flops=0.0, memory_efficiency=1.0, overhead_s=0.0)
    return DeviceProfile(name="test", device_kind="test", source="test", hbm_bandwidth=1e30,
                         kernels={k: kernel for k in KERNEL_FAMILIES})


def small_workload(**overrides) -> dict:
    """16 experts, top-1 on a 16-chip ring: big enough batches that routing noise stays below 0.5 %."""
    data = {
        "name": "analytic",
        "model": {"layers": 4, "d_model": 512, "heads": 8, "seq_len": 256, "vocab": 1024, "dense_ffn": 2048,
                  "moe": {"experts": 16, "top_k": 1, "expert_ffn": 1024, "every": 2, "dropless": True}},
        "training": {"tokens_per_step": 2**22, "grad_sync_overlap": False, "optimizer": "sgd"},
        "tasks": [{"name": "lm", "share": 1.0}],
    }
    for path, value in overrides.items():
        node = data
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return data


def ring_cluster(chips: int = 16) -> dict:
    return cluster_dict(kind="torus", dims=[chips], wraparound=True)


def test_step_time_equals_the_sum_of_analytic_terms():
    """Uniform routing, no overlap: compute + 4 all-to-alls per MoE layer + ring all-reduces + optimizer."""
    workload = small_workload()
    cluster = ring_cluster()
    result = simulate(cluster, workload, profile=compute_bound_profile(), sampling="mean_field")
    n, d, f, E, V, s, dff = 16, 512, 1024, 16, 1024, 256, 2048
    tokens_per_chip = 2**22 / n
    peak = 275e12  # conftest clusters use the TPU v4 chip
    attn = 4 * d * d
    moe_layers, dense_layers = 2, 2
    forward_flops_per_token = (4 * (2 * attn + 4 * s * d) + dense_layers * 2 * 2 * d * dff
                               + moe_layers * (2 * d * E + 2 * 2 * d * f) + 2 * V * d)
    compute = 3 * forward_flops_per_token * tokens_per_chip / (peak * EFFICIENCY)
    # Uniform all-to-all on a 16-ring: bisection bound N·S/(8B) with S the bytes each chip sends,
    # plus the farthest destination's latency (8 hops).
    sent = tokens_per_chip * d * 2
    a2a = n * sent / (8 * BANDWIDTH) + 8 * LATENCY
    # Bidirectional ring all-reduce of each layer's dense gradients (bf16): 2(p-1)/p · (S/2)/B + 2(p-1)α.
    def all_reduce(nbytes):
        return 2 * (n - 1) / n * (nbytes / 2) / BANDWIDTH + 2 * (n - 1) * LATENCY
    grads = [(attn + 2 * d * dff) * 2] * dense_layers + [(attn + d * E) * 2] * moe_layers + [2 * V * d * 2]
    optimizer = 10 * sum(g / 2 for g in grads) / n / (peak * EFFICIENCY)  # sgd, ZeRO-1 sharded, 10 FLOP per parameter
    expected = compute + 4 * moe_layers * a2a + sum(all_reduce(g) for g in grads) + optimizer
    assert result.step_time.mean_s == pytest.approx(expected, rel=0.01)
    assert result.breakdown.all_to_all_s == pytest.approx(4 * moe_layers * a2a, rel=0.01)
    assert result.breakdown.total_s() == pytest.approx(result.step_time.mean_s, rel=1e-12)


@pytest.mark.parametrize("workload_name", ["skewed", "multitask"])
def test_overlap_never_lengthens_the_step(workload_name):
    tasks = ([{"name": "a", "share": 1.0, "routing": {"kind": "zipf", "exponent": 1.0}}] if workload_name == "skewed" else
             [{"name": "t", "share": 0.5, "routing": {"kind": "dirichlet", "concentration": 0.5}},
              {"name": "i", "modality": "image", "share": 0.5, "affinity": {"experts": "0-3", "weight": 0.9}}])
    base = small_workload(**{"tasks": tasks, "training.tokens_per_step": 2**18})
    times = {}
    for overlap in (False, True):
        wl = small_workload(**{"tasks": tasks, "training.tokens_per_step": 2**18, "training.grad_sync_overlap": overlap})
        times[overlap] = simulate("tpu-v4-4x4x4", wl, steps=2, seed=3)
    assert base
    assert times[True].step_time.mean_s <= times[False].step_time.mean_s
    assert times[True].communication.grad_sync_hidden_s > 0
    for r in times.values():
        assert r.breakdown.total_s() == pytest.approx(r.step_time.mean_s, rel=1e-9)


def test_more_skew_never_shortens_the_step():
    steps = []
    for exponent in (0.0, 0.4, 0.8, 1.2, 1.6):
        wl = small_workload(**{"tasks": [{"name": "a", "share": 1.0, "routing": {"kind": "zipf", "exponent": exponent}}],
                               "training.tokens_per_step": 2**20})
        steps.append(simulate("tpu-v4-4x4x4", wl, seed=5, steps=2))
    times = [r.step_time.mean_s for r in steps]
    assert times == sorted(times)
    stragglers = [r.breakdown.straggler_s for r in steps]
    assert stragglers == sorted(stragglers)
    assert steps[-1].layers[0].max_over_mean_chip_load > 2 * steps[0].layers[0].max_over_mean_chip_load


def test_same_seed_same_bytes_other_seed_differs():
    wl = small_workload(**{"tasks": [{"name": "a", "share": 1.0, "routing": {"kind": "dirichlet", "concentration": 1.0}}],
                           "training.tokens_per_step": 2**16})
    one = simulate("tpu-v4-4x4x4", wl, seed=11, steps=3).model_dump_json()
    two = simulate("tpu-v4-4x4x4", wl, seed=11, steps=3).model_dump_json()
    other = simulate("tpu-v4-4x4x4", wl, seed=12, steps=3).model_dump_json()
    assert one == two
    assert json.loads(one)["step_time"] != json.loads(other)["step_time"]


def test_result_json_round_trips_and_records_inputs():
    from pathsim.result import SimulationResult

    result = simulate("tpu-v4-4x4x4", small_workload(**{"training.tokens_per_step": 2**16}), seed=2)
    again = SimulationResult.model_validate_json(result.model_dump_json())
    assert again == result
    assert result.inputs["workload"]["model"]["moe"]["experts"] == 16
    assert result.inputs["cluster"]["name"] == "tpu-v4-4x4x4"
    assert result.seed == 2 and result.pathsim_version


def test_a_model_that_cannot_fit_is_reported_as_not_fitting():
    big = small_workload(**{"model.d_model": 8192, "model.heads": 64, "model.dense_ffn": 32768, "model.layers": 48,
                            "model.moe.expert_ffn": 32768, "training.tokens_per_step": 2**16})
    result = simulate("tpu-v4-4x4x4", big)
    assert not result.memory.fits
    assert result.memory.total_bytes > result.memory.hbm_bytes
    small = simulate("tpu-v4-4x4x4", small_workload(**{"training.tokens_per_step": 2**16}))
    assert small.memory.fits


def test_memory_terms_follow_the_optimizer_and_recompute():
    base = dict(**{"training.tokens_per_step": 2**16})
    adam = simulate("tpu-v4-4x4x4", small_workload(**base, **{"training.optimizer": "adam", "training.shard_optimizer": False}))
    sgd = simulate("tpu-v4-4x4x4", small_workload(**base, **{"training.optimizer": "sgd", "training.shard_optimizer": False}))
    assert adam.memory.optimizer_bytes == pytest.approx(3 * sgd.memory.optimizer_bytes)
    full = simulate("tpu-v4-4x4x4", small_workload(**base, **{"training.recompute": "full"}))
    assert full.memory.activations_bytes < adam.memory.activations_bytes / 10
    assert full.hfu > full.mfu * 1.2  # rematerialisation is hardware work, not model work


def test_tensor_parallel_adds_its_all_reduces(tmp_path):
    wl = small_workload(**{"training.tokens_per_step": 2**18, "model.moe.experts": 64})
    plain = simulate("tpu-v4-4x4x4", wl, trace=tmp_path / "plain.json")
    tp = simulate("tpu-v4-4x4x4", small_workload(**{"training.tokens_per_step": 2**18, "model.moe.experts": 64,
                                                     "parallelism": {"tensor": 4}}), trace=tmp_path / "tp.json")
    # Each tensor rank holds a copy of its group's experts and trains it on its own tokens: copies must sync.
    names = {e["args"]["op"] for e in json.loads((tmp_path / "tp.json").read_text())["traceEvents"] if "op" in e.get("args", {})}
    assert "L1 grad all-reduce (experts)" in names
    plain_names = {e["args"]["op"] for e in json.loads((tmp_path / "plain.json").read_text())["traceEvents"] if "op" in e.get("args", {})}
    assert "L1 grad all-reduce (experts)" not in plain_names
    assert plain.breakdown.tensor_parallel_s == 0
    assert tp.breakdown.tensor_parallel_s > 0
    assert tp.parallelism == {"data": 16, "tensor": 4, "expert": 16, "expert_groups": 1, "slices": 1}


def test_expert_groups_sync_expert_gradients():
    wl = small_workload(**{"training.tokens_per_step": 2**18, "parallelism": {"expert": 16}})
    result = simulate("tpu-v4-4x4x4", wl)
    assert result.parallelism["expert_groups"] == 4
    one_group = simulate("tpu-v4-4x4x4", small_workload(**{"training.tokens_per_step": 2**18, "model.moe.experts": 64}))
    assert one_group.parallelism["expert_groups"] == 1
    assert result.communication.grad_sync_s > one_group.communication.grad_sync_s


def test_dense_counterpart_matches_flops_or_parameters():
    from pathsim.model_math import model_totals
    from pathsim.workload import dense_counterpart

    sparse = load_workload(small_workload(**{"model.moe.top_k": 2}))
    flops = dense_counterpart(sparse, "active_flops")
    params = dense_counterpart(sparse, "total_params")
    assert flops.model.moe is None and params.model.moe is None
    s, f, p = model_totals(sparse.model), model_totals(flops.model), model_totals(params.model)
    router = 2 * len(sparse.model.moe_layers) * sparse.model.d_model * sparse.model.moe.experts
    assert f.forward_flops_per_token == pytest.approx(s.forward_flops_per_token - router, rel=1e-3)
    assert p.total_params == pytest.approx(s.total_params - router / 2, rel=1e-3)
    result = simulate("tpu-v4-4x4x4", sparse.model_dump(exclude={"base_dir"}) | {"training": {"tokens_per_step": 2**16}},
                      dense="total_params")
    assert result.workload.endswith("dense-total-params") and result.layers == []


def test_trace_is_chrome_trace_json(tmp_path):
    out = tmp_path / "trace.json"
    result = simulate("tpu-v4-4x4x4", small_workload(**{"training.tokens_per_step": 2**16}), steps=2, trace=out)
    events = json.loads(out.read_text())["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    assert spans and all(e["dur"] >= 0 and e["ts"] >= 0 for e in spans)
    names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {"network: all-to-all", "network: gradient sync"} <= names
    end = max(e["ts"] + e["dur"] for e in spans if e["cat"] != "expert_mean")
    assert end == pytest.approx(sum(result.step_time.per_step_s) * 1e6, rel=1e-9)


def test_events_per_step_grow_with_layers_not_chips():
    wl = small_workload(**{"training.tokens_per_step": 2**16})
    small = simulate("tpu-v4-4x4x4", wl)
    large = simulate("tpu-v4-8x8x8", wl)
    assert small.events_per_step == large.events_per_step
    deeper = simulate("tpu-v4-4x4x4", small_workload(**{"training.tokens_per_step": 2**16, "model.layers": 8}))
    assert deeper.events_per_step > 1.8 * small.events_per_step


def test_axes_order_puts_tensor_groups_on_the_chosen_axis():
    """On a 4x4 torus whose x dimension is a mesh line, tensor groups along x pay the line, along y the ring."""
    cluster = cluster_dict(kind="torus", dims=[4, 4], wraparound=[False, True])
    base = {"training.tokens_per_step": 2**16, "model.moe.experts": 4}
    along_y = simulate(cluster, small_workload(**base, parallelism={"tensor": 4}))
    along_x = simulate(cluster, small_workload(**base, parallelism={"tensor": 4, "axes_order": ["x", "y"]}))
    assert along_y.parallelism_axes["tensor"] == "y(4)" and along_x.parallelism_axes["tensor"] == "x(4)"
    assert along_x.breakdown.tensor_parallel_s > 1.2 * along_y.breakdown.tensor_parallel_s


def test_routing_follows_the_rank_to_chip_map():
    from pathsim.routing import build_plan, route_layer, step_rng
    from pathsim.placement import round_robin
    from pathsim.workload import resolve_parallelism

    wl = load_workload(small_workload(**{"training.tokens_per_step": 2**16, "parallelism": {"tensor": 2, "axes_order": ["x", "y", "z"]}}))
    permuted = resolve_parallelism(wl, 64, torus_dims=(4, 4, 4))
    identity = permuted.model_copy(update={"chip_of_rank": None})
    perm = np.array(permuted.chip_of_rank)
    assert sorted(perm) == list(range(64)) and perm[1] == 16  # rank 1 is one step along x
    plan = build_plan(wl, identity, 0, "mean_field")
    a = route_layer(plan, identity, round_robin(16, identity.expert), 1, step_rng(0, 0))
    b = route_layer(plan, permuted, round_robin(16, permuted.expert), 1, step_rng(0, 0))
    assert b.dispatch_tokens[np.ix_(perm, perm)] == pytest.approx(a.dispatch_tokens)
    assert b.chip_tokens[perm] == pytest.approx(a.chip_tokens)


def test_axes_order_errors():
    from pathsim.errors import PathsimConfigError

    with pytest.raises(PathsimConfigError, match="each of the torus's axes") as info:
        simulate("tpu-v4-4x4x4", small_workload(**{"training.tokens_per_step": 2**16, "parallelism": {"axes_order": ["x", "x", "y"]}}))
    assert info.value.field == "parallelism.axes_order"
    with pytest.raises(PathsimConfigError, match="torus clusters only"):
        simulate("dgx-h100-4", small_workload(**{"training.tokens_per_step": 2**16, "parallelism": {"axes_order": ["x"]}}))


def test_gradient_buckets_move_the_same_bytes_and_pay_latency_per_bucket():
    base = {"training.tokens_per_step": 2**16}
    one = simulate("tpu-v4-4x4x4", small_workload(**base, **{"training.grad_bucket_bytes": 1e12}), seed=1)
    many = simulate("tpu-v4-4x4x4", small_workload(**base, **{"training.grad_bucket_bytes": 1e5}), seed=1)
    assert many.events_per_step > one.events_per_step
    assert many.communication.grad_sync_s > one.communication.grad_sync_s  # each bucket pays the ring latency
    total = lambda r: sum(link.bytes for link in r.hottest_links)
    assert total(many) == pytest.approx(total(one), rel=1e-9)


def test_a_setup_holds_its_placement_fixed_while_the_run_varies():
    """The placement is resolved while the run is set up: the same Placement held fixed under another seed runs as
    a run planned with it, and a setup without one (a planner's) cannot be stepped by mistake."""
    from pathsim.run_setup import prepare_run
    from pathsim.simulation import run_steps
    from pathsim.errors import PathsimConfigError
    setup = prepare_run("tpu-v4-4x4x4", "switch-base-128", placement="eplb")
    assert setup.placement is not None and setup.placement.policy == "eplb"
    reseeded = prepare_run("tpu-v4-4x4x4", "switch-base-128", seed=3, place=False).with_placement(setup.placement)
    direct = simulate("tpu-v4-4x4x4", "switch-base-128", seed=3, placement=setup.placement)
    assert run_steps(reseeded, 1).step_time.mean_s == direct.step_time.mean_s
    assert run_steps(reseeded, 1).placement == "eplb"
    with pytest.raises(ValueError, match="placement resolved"):
        run_steps(prepare_run("tpu-v4-4x4x4", "switch-base-128", place=False), 1)
    with pytest.raises(PathsimConfigError, match="no experts to place"):
        prepare_run("tpu-v4-4x4x4", "palm-8b", placement="eplb")


def test_expert_parallelism_across_the_tensor_ranks_of_attention():
    """DeepSeek-V3's layers with attention tensor-parallel over 8 GPUs: expert groups of 64 chips (8 nodes) across
    the tensor ranks hold 4 of 256 experts a chip, where groups of 8 data ranks per tensor rank hold 32; the
    step's parts still add up, and a group that cuts tensor groups unevenly is refused."""
    from pathsim.errors import PathsimConfigError
    w = load_workload("deepseek-v3").model_dump(mode="json")
    w["model"]["layers"], w["model"]["moe"]["first_dense"] = 4, 1
    w["training"].update(micro_batches=1, tokens_per_step=4096 * 32)
    w["parallelism"].update(pipeline=1, pipeline_schedule="1f1b", tensor=8, expert=8)
    per_tensor_rank = simulate("dgx-h100-32", w, sampling="mean_field")
    w["parallelism"].update(expert=64, expert_spans_tensor=True)
    across = simulate("dgx-h100-32", w, sampling="mean_field")
    assert "3 MoE layers" in across.memory.note and "12 expert slot(s)" in across.memory.note
    assert "96 expert slot(s)" in per_tensor_rank.memory.note
    assert across.memory.total_bytes < per_tensor_rank.memory.total_bytes
    for r in (across, per_tensor_rank):
        assert r.breakdown.total_s() == pytest.approx(r.step_time.mean_s, rel=1e-9)
    w["parallelism"]["expert"] = 12
    with pytest.raises(PathsimConfigError) as err:
        simulate("dgx-h100-32", w)
    assert err.value.field == "parallelism.expert"


def test_expert_tensor_parallelism_splits_expert_weights_over_the_tensor_ranks():
    """Experts split over the 8 tensor ranks of their data rank: a chip holds 1/8 of its experts' weights (and sums
    their gradients over 8× fewer copies); the chips do the same expert FLOPs, on their data rank's gathered tokens
    at 1/8 the width, and pay an all-gather before the experts and a reduce-scatter after, as tensor-parallel time."""
    from pathsim.errors import PathsimConfigError
    from pathsim.model_math import layer_shapes
    w = load_workload("deepseek-v3").model_dump(mode="json")
    w["model"]["layers"], w["model"]["moe"]["first_dense"] = 4, 1
    w["training"].update(micro_batches=1, tokens_per_step=4096 * 32)
    w["parallelism"].update(pipeline=1, pipeline_schedule="1f1b", tensor=8, expert=8)
    whole = simulate("dgx-h100-32", w, sampling="mean_field")
    w["parallelism"]["expert_tensor"] = True
    split = simulate("dgx-h100-32", w, sampling="mean_field")
    expert_bytes = 96 * layer_shapes(load_workload(w).model).expert_params * 1  # 96 slots of fp8 weights
    assert whole.memory.parameters_bytes - split.memory.parameters_bytes == pytest.approx(expert_bytes * 7 / 8)
    assert split.hfu * split.step_time.mean_s == pytest.approx(whole.hfu * whole.step_time.mean_s, rel=1e-9)
    assert split.breakdown.tensor_parallel_s > whole.breakdown.tensor_parallel_s
    assert split.communication.grad_sync_s < whole.communication.grad_sync_s
    assert split.breakdown.total_s() == pytest.approx(split.step_time.mean_s, rel=1e-9)
    w["parallelism"]["expert_spans_tensor"] = True
    with pytest.raises(PathsimConfigError) as err:
        simulate("dgx-h100-32", w)
    assert err.value.field == "parallelism.expert_tensor"


@pytest.mark.parametrize("dropout, forward_bytes, backward_bytes", [(True, 13, 19), (False, 8, 14)])
def test_unfused_attention_pays_for_its_score_tensors_in_hbm(dropout, forward_bytes, backward_bytes):
    """Without flash attention each query token's s × heads scores pass through HBM: in bf16, 13 bytes per
    element forward and 19 backward with dropout (8 and 14 without), at the elementwise kernels' bandwidth."""
    from pathsim.run_setup import prepare_run
    from pathsim.step_ops import StepCoster
    base = load_workload("megatron-gpt-1.7b").model_dump(mode="json")
    base["model"]["dropout"] = dropout
    base["training"]["recompute"] = "none"  # (full recompute would run the forward's pass again in backward)
    durations = {}
    for flash in (False, True):
        w = json.loads(json.dumps(base))
        w["model"]["flash_attention"] = flash
        setup = prepare_run("dgx-a100-1", w)
        coster = StepCoster(setup.workload, setup.layout, setup.topology, setup.network, setup.device, None)
        durations[flash] = [sum(op.duration_s for op in coster.attention(3, backward)) for backward in (False, True)]
    model, tokens = setup.workload.model, coster.tokens_per_data_rank
    elements = tokens * model.seq_len * model.heads / setup.layout.tensor
    kernel = setup.device.kernels["elementwise"]
    for k, per_element in enumerate((forward_bytes, backward_bytes)):
        expected = kernel.overhead_s + elements * per_element / (setup.device.hbm_bandwidth * kernel.memory_efficiency)
        assert durations[False][k] - durations[True][k] == pytest.approx(expected, rel=1e-9)


def test_a_compute_share_slows_arithmetic_not_memory_traffic():
    """DeepSeek-V3 gives 20 of an H800's 132 SMs to communication kernels: its compute kernels run at 112/132 of the
    arithmetic rate, while a memory-bound kernel still reaches the bandwidth."""
    from pathsim.cluster import load_cluster
    from pathsim.device import DeviceModel
    from pathsim.errors import PathsimConfigError
    chip = load_cluster("h800-2048").chip
    whole, shared = DeviceModel(chip, "bf16"), DeviceModel(chip, "bf16", compute_share=112 / 132)
    k = whole.kernels["matmul"]
    flops = 1e13  # compute-bound: time = overhead + (F + F_half) / (peak × efficiency)
    assert shared.time_s("matmul", flops) - k.overhead_s == pytest.approx((whole.time_s("matmul", flops) - k.overhead_s) * 132 / 112, rel=1e-12)
    assert shared.time_s("copy", 0.0, 1e9) == whole.time_s("copy", 0.0, 1e9)
    w = load_workload("deepseek-v3").model_dump(mode="json")
    assert w["training"]["compute_share"] == pytest.approx(112 / 132)
    w["training"]["compute_share"] = 0.0
    with pytest.raises(PathsimConfigError, match="compute_share"):
        simulate("h800-2048", w)
