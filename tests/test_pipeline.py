"""Pipeline parallelism: schedules against their closed forms, per-stage memory, sends, and bad input."""

import numpy as np
import pytest

from pathsim import simulate
from pathsim.builders.pipeline import bubble_fraction, partition_layers
from pathsim.builders.schedules import SCHEDULES, peak_in_flight
from pathsim.cluster import load_cluster
from pathsim.errors import PathsimConfigError
from pathsim.workload import load_workload


def uniform_model(stages: int, micro_batches: int, schedule: str = "1f1b", virtual: int = 1, layers: int = 16) -> dict:
    """A dense model whose stages are equal and whose sends are cheap next to their compute: wide layers, a
    vocabulary too small for the LM head to weigh, one data rank so no gradient sync, and even stage lists."""
    w = load_workload("palm-8b").model_dump(mode="json")
    w["model"].update(layers=layers, d_model=8192, heads=64, head_dim=128, vocab=256, dense_ffn=32768, seq_len=2048)
    w["training"].update(shard_parameters=False, micro_batches=micro_batches, tokens_per_step=4096 * micro_batches,
                         recompute="none")
    parts = stages * virtual
    w["parallelism"].update(tensor=1, pipeline=stages, pipeline_schedule=schedule, virtual_stages=virtual,
                            stage_layers=[layers // parts] * parts, axes_order=None)
    return w


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("micro_batches", [4, 8, 32])
def test_bubble_of_gpipe_and_1f1b_is_the_closed_form(schedule, micro_batches):
    result = simulate("dgx-h100-1", uniform_model(8, micro_batches, schedule))
    expected = (8 - 1) / (micro_batches + 8 - 1)
    assert result.pipeline.closed_form_bubble_fraction == pytest.approx(expected)
    b = result.breakdown
    assert b.total_s() == pytest.approx(result.step_time.mean_s, rel=1e-9)
    # The closed form is of the pipelined part: the step less the optimizer, which every stage runs once.
    assert b.pipeline_bubble_s / (result.step_time.mean_s - b.optimizer_s) == pytest.approx(expected, rel=0.01)
    assert result.pipeline.bubble_fraction == pytest.approx(b.pipeline_bubble_s / result.step_time.mean_s)


def free_links(cluster: str) -> dict:
    """The cluster with links that cost nothing: the closed forms assume free communication."""
    config = load_cluster(cluster).model_dump(mode="json")
    for link in config["links"].values():
        link.update(bandwidth=1e18, latency=0.0)
    return config


@pytest.mark.parametrize("virtual", [2, 4])
def test_interleaving_divides_the_bubble_by_the_virtual_stages(virtual):
    # On real NVLink the ratio is lower (3.92 for v=4 here): interleaving multiplies the sends on the critical path.
    plain = simulate(free_links("dgx-h100-1"), uniform_model(4, 8, "1f1b", 1, layers=32))
    inter = simulate(free_links("dgx-h100-1"), uniform_model(4, 8, "interleaved", virtual, layers=32))
    bubble = lambda r: r.breakdown.pipeline_bubble_s  # noqa: E731
    assert bubble(plain) / bubble(inter) == pytest.approx(virtual, rel=0.01)
    pipelined = inter.step_time.mean_s - inter.breakdown.optimizer_s
    assert bubble(inter) / pipelined == pytest.approx(bubble_fraction(4, 8, virtual), rel=0.01)
    # Each micro-batch crosses v times as many stage boundaries, forward and backward.
    sends = lambda r: sum(s.category == "pipeline_p2p" and "(exposed)" not in s.name for s in r.detail.timeline)  # noqa: E731
    plain_d = simulate("dgx-h100-1", uniform_model(4, 8, "1f1b", 1, layers=16), detail=True)
    inter_d = simulate("dgx-h100-1", uniform_model(4, 8, "interleaved", virtual, layers=16), detail=True)
    assert sends(plain_d) == 2 * 8 * (4 - 1)
    assert sends(inter_d) == 2 * 8 * (4 * virtual - 1)


def test_every_schedule_runs_each_unit_once_and_forward_before_backward():
    for name, schedule in SCHEDULES.items():
        for stages, micro_batches, virtual in [(2, 4, 2), (4, 8, 2), (4, 4, 3), (8, 16, 2), (3, 7, 1), (4, 8, 1), (8, 16, 1),
                                               (6, 14, 1)]:
            if (name == "interleaved") != (virtual > 1) or name == "interleaved" and micro_batches % stages:
                continue
            if name == "dualpipe" and (stages % 2 or micro_batches % 2 or micro_batches < 2 * stages):
                continue
            orders = schedule(stages, micro_batches, virtual)
            assert len(orders) == stages
            kinds = "FBW" if name in ("zb1p", "dualpipe") else "FB"
            if name == "dualpipe":  # half the micro-batches go each way, each along its own chunk
                expected = {(k, mb, mb // (micro_batches // 2)) for k in kinds for mb in range(micro_batches)}
            else:
                expected = {(k, mb, c) for k in kinds for mb in range(micro_batches) for c in range(virtual)}
            for order in orders:
                units = [(u.kind, u.mb, u.chunk) for u in order]
                assert sorted(units) == sorted(expected), (name, stages, micro_batches)
                for kind, mb, c in expected:
                    if kind == "F":
                        assert units.index(("F", mb, c)) < units.index(("B", mb, c)), name
                    if kind == "W":
                        assert units.index(("B", mb, c)) < units.index(("W", mb, c)), name
                assert all(order[k + 1].kind == "B" and order[k + 1].chunk != u.chunk
                           for k, u in enumerate(order) if u.paired), name  # a pair: F of one way, B of the other


def unit_times(result, stage: int, micro_batches: int) -> tuple[float, float, float]:
    """F, B (input gradients) and W (weight gradients) of one micro-batch through one block of layers, from the
    stage's timeline."""
    spans = [s for s in result.detail.timeline if s.group == stage and s.resource == "compute"]
    return tuple(sum(s.end_s - s.start_s for s in spans if tag in s.name) / micro_batches for tag in (" fwd", " bwd", " wgrad"))


@pytest.mark.parametrize("P", [4, 8])
def test_zero_bubble_and_dualpipe_bubbles_against_their_closed_forms(P):
    """Uniform stages, free communication: 1F1B idles (P−1)(F+B+W), ZB-H1 (P−1)(F+B−W) (Qi et al. 2023), each within
    3 %. DualPipe (DeepSeek-V3 Table 2: (P/2−1)(F&B + B' − 3W), B' = B + W the whole backward, F&B = F + B' with
    nothing to overlap) idles less than ZB-H1, as much at any micro-batch count, and at most Table 2's figure:
    pathsim's sends are asynchronous, the reference code's are batched at fixed points (about half the figure
    here, measured). DualPipe holds two copies of its blocks' parameters and P+1 micro-batches' activations."""
    m = 2 * P
    runs = {s: simulate(free_links("dgx-h100-1"), uniform_model(P, m, s), detail=True) for s in ("1f1b", "zb1p", "dualpipe")}
    F, B, W = unit_times(runs["zb1p"], 1, m)
    assert unit_times(runs["dualpipe"], 1, m) == pytest.approx((F, B, W), rel=1e-9)
    for schedule, result in runs.items():
        assert result.breakdown.total_s() == pytest.approx(result.step_time.mean_s, rel=1e-9)
    bubble = {s: r.breakdown.pipeline_bubble_s for s, r in runs.items()}
    assert bubble["1f1b"] == pytest.approx((P - 1) * (F + B + W), rel=0.03)
    assert bubble["zb1p"] == pytest.approx((P - 1) * (F + B - W), rel=0.03)
    assert 0 < bubble["dualpipe"] < bubble["zb1p"]
    assert bubble["dualpipe"] <= (P / 2 - 1) * ((F + B + W) + (B + W) - 3 * W)
    longer = simulate(free_links("dgx-h100-1"), uniform_model(P, 3 * m, "dualpipe"))
    assert longer.breakdown.pipeline_bubble_s == pytest.approx(bubble["dualpipe"], rel=0.03)
    one, dual = runs["1f1b"].pipeline.per_stage[3].memory, runs["dualpipe"].pipeline.per_stage[3].memory
    assert dual.parameters_bytes == pytest.approx(2 * one.parameters_bytes)
    first = [r.pipeline.per_stage[0].memory.activations_bytes for r in (runs["1f1b"], runs["zb1p"], runs["dualpipe"])]
    assert first[1] == first[0] and first[2] == pytest.approx(first[0] * (P + 1) / P)


def test_dualpipe_hides_the_all_to_alls_under_the_other_direction_s_compute():
    """DeepSeek-V3's layers on 4 stages of 64 H100: its forward-and-backward pairs overlap each one's dispatch and
    combine with the other's compute, so fewer all-to-all seconds are exposed than with 1F1B."""
    w = load_workload("deepseek-v3").model_dump(mode="json")
    w["model"]["layers"], w["model"]["moe"]["first_dense"] = 9, 1
    w["training"].update(micro_batches=24, tokens_per_step=4096 * 24 * 64)
    w["parallelism"].update(pipeline=4, expert=64)
    runs = {}
    for schedule in ("1f1b", "dualpipe"):
        w["parallelism"]["pipeline_schedule"] = schedule
        runs[schedule] = simulate("dgx-h100-32", w, sampling="mean_field")
        assert runs[schedule].breakdown.total_s() == pytest.approx(runs[schedule].step_time.mean_s, rel=1e-9)
    assert runs["dualpipe"].breakdown.all_to_all_s < 0.7 * runs["1f1b"].breakdown.all_to_all_s
    assert runs["dualpipe"].step_time.mean_s < runs["1f1b"].step_time.mean_s
    # The all-to-alls it runs in the background are not weight gathers (there are none without ZeRO-3).
    assert runs["dualpipe"].communication.weight_gather_s == 0.0
    from pathsim.workload import check_pipeline
    w["parallelism"]["pipeline"] = 3
    with pytest.raises(PathsimConfigError, match="even number of stages") as err:
        check_pipeline(load_workload(w), 24)
    assert err.value.field == "parallelism.pipeline"


def test_microbatch_groups_run_breadth_first_with_the_same_bubble_and_more_in_flight():
    """Megatron-LM's microbatch group per virtual stage (Llama 3's N): N = m runs every micro-batch through a chunk
    before the next. On uniform free-communication stages the bubble is still (P−1)/(v·m) of the ideal, while
    stage 0 holds its warm-up, 2(P−1) + (v−1)N chunk forwards, and one more before its first backward."""
    stages, micro_batches, virtual = 4, 16, 2
    for group in (stages, 8, micro_batches):
        orders = SCHEDULES["interleaved"](stages, micro_batches, virtual, group)
        assert sum(peak_in_flight(orders[0], virtual)) == 2 * (stages - 1) + (virtual - 1) * group + 1

    w = uniform_model(stages, micro_batches, "interleaved", virtual, layers=32)
    w["parallelism"]["microbatch_group"] = micro_batches
    result = simulate(free_links("dgx-h100-1"), w)
    pipelined = result.step_time.mean_s - result.breakdown.optimizer_s
    assert result.breakdown.pipeline_bubble_s / pipelined == pytest.approx(bubble_fraction(stages, micro_batches, virtual), rel=0.01)


def test_zero3_inside_pipeline_stages_gathers_weights_for_every_unit():
    """ZeRO-3 over a stage's 8 data ranks: each unit gathers its layers' weights, forward and backward (the head's
    only before its forward), the next layer's while one computes: 4 stages × 8 micro-batches × (4 + 4) gathers and
    the last stage's 8 of the head; a stage then holds 1/8 of its dense weights and two layers gathered."""
    runs = {}
    for shard in (False, True):
        w = uniform_model(4, 8, "1f1b")
        w["training"].update(shard_parameters=shard, tokens_per_step=4096 * 8 * 8)
        runs[shard] = simulate("dgx-h100-4", w, detail=True)
    sharded = runs[True]
    gathers = [s for s in sharded.detail.timeline if s.category == "weight_gather" and "(exposed)" not in s.name]
    assert len(gathers) == 4 * 8 * (4 + 4) + 8
    assert sharded.breakdown.total_s() == pytest.approx(sharded.step_time.mean_s, rel=1e-9)
    assert sharded.memory.parameters_bytes < runs[False].memory.parameters_bytes
    assert sharded.step_time.mean_s > runs[False].step_time.mean_s  # gathers share the stages' networks
    assert sharded.communication.weight_gather_s > 0.0 == runs[False].communication.weight_gather_s


def test_a_graph_that_deadlocks_is_an_error_not_a_short_step():
    from pathsim.engine.graph import COMPUTE, Graph, Node, Op, Stream
    from pathsim.engine.run import run_graph
    a, b = Node(Op("a", "compute", COMPUTE, 1.0)), Node(Op("b", "compute", COMPUTE, 1.0))
    a.deps, b.deps = [b], [a]  # each waits for the other
    with pytest.raises(RuntimeError, match="deadlocked"):
        run_graph(Graph([Stream("main", [a], 0), Stream("other", [b], 1)]))


def test_1f1b_holds_at_most_p_minus_s_micro_batches_on_stage_s():
    stages, micro_batches = 8, 16
    orders = SCHEDULES["1f1b"](stages, micro_batches, 1)
    assert [peak_in_flight(o, 1)[0] for o in orders] == [min(micro_batches, stages - s) for s in range(stages)]
    assert {peak_in_flight(o, 1)[0] for o in SCHEDULES["gpipe"](stages, micro_batches, 1)} == {micro_batches}
    result = simulate("dgx-h100-1", uniform_model(stages, micro_batches, "1f1b"))
    acts = np.array([s.memory.activations_bytes for s in result.pipeline.per_stage])
    np.testing.assert_allclose(acts / acts[-1], [stages - s for s in range(stages)], rtol=1e-12)
    assert result.pipeline.tightest_stage == 0 and result.memory == result.pipeline.per_stage[0].memory


def test_stage_memory_holds_its_own_layers_and_the_embedding_and_head_at_the_ends():
    result = simulate("dgx-h100-1", uniform_model(4, 8))
    params = [s.memory.parameters_bytes for s in result.pipeline.per_stage]
    table = 256 * 8192 * 2  # vocab × d_model × bf16
    assert params[1] == pytest.approx(params[2]) and params[0] == pytest.approx(params[1] + table)
    assert params[3] == pytest.approx(params[1] + table)
    assert [s.layers for s in result.pipeline.per_stage] == [list(range(4 * k, 4 * k + 4)) for k in range(4)]


def test_default_split_balances_compute_with_the_head_on_the_last_stage():
    model = load_workload("palm-8b").model  # a 256k vocabulary: its head weighs about a layer's worth
    parts = partition_layers(model, 4)
    assert sum(len(p) for p in parts) == model.layers and [p.start for p in parts] == sorted(p.start for p in parts)
    assert len(parts[-1]) < len(parts[0])
    assert partition_layers(model.model_copy(update={"vocab": 8}), 4) == [range(0, 8), range(8, 16), range(16, 24), range(24, 32)]


def test_a_pipelined_moe_step_routes_every_layer_and_sums_to_the_step():
    w = load_workload("mixtral-8x7b").model_dump(mode="json")
    w["training"]["micro_batches"] = 8
    w["parallelism"].update(pipeline=4, tensor=2, expert="auto")
    result = simulate("dgx-h100-4", w, steps=2, seed=3)
    assert result.chips == 32 and result.parallelism["pipeline"] == 4
    assert len(result.layers) == len(load_workload("mixtral-8x7b").model.moe_layers)
    assert result.breakdown.total_s() == pytest.approx(result.step_time.mean_s, rel=1e-9)
    assert result.breakdown.all_to_all_s > 0 and result.breakdown.pipeline_bubble_s > 0
    again = simulate("dgx-h100-4", w, steps=2, seed=3)
    assert again.step_time.per_step_s == result.step_time.per_step_s


@pytest.mark.parametrize("change, field", [
    (dict(pipeline=3), "parallelism.pipeline"),
    (dict(pipeline=8, virtual_stages=5, pipeline_schedule="interleaved"), "parallelism.pipeline"),
    (dict(pipeline=4, stage_layers=[4, 4, 4]), "parallelism.stage_layers"),
    (dict(pipeline=4, stage_layers=[4, 4, 4, 5]), "parallelism.stage_layers"),
    (dict(pipeline=4, virtual_stages=2), "parallelism.virtual_stages"),
    (dict(pipeline=4, pipeline_schedule="interleaved", virtual_stages=1), "parallelism.virtual_stages"),
    (dict(pipeline=1, virtual_stages=2, pipeline_schedule="interleaved"), "parallelism.virtual_stages"),
    (dict(pipeline=3, pipeline_schedule="interleaved", virtual_stages=2), "parallelism.pipeline"),
    (dict(pipeline=8, pipeline_schedule="interleaved", virtual_stages=2, micro=6), "training.micro_batches"),
    (dict(pipeline=4, pipeline_schedule="interleaved", virtual_stages=2, microbatch_group=2), "parallelism.microbatch_group"),
    (dict(pipeline=4, pipeline_schedule="interleaved", virtual_stages=2, microbatch_group=6), "training.micro_batches"),
    (dict(pipeline=4, microbatch_group=4), "parallelism.microbatch_group"),
    (dict(pipeline=4, pipeline_schedule="dualpipe", micro=6), "training.micro_batches"),  # fewer than 2P
])
def test_bad_pipeline_settings_name_the_field(change, field):
    w = uniform_model(4, 8)
    w["parallelism"]["stage_layers"] = None
    micro = change.pop("micro", None)
    if micro:
        w["training"].update(micro_batches=micro, tokens_per_step=4096 * micro)
    w["parallelism"].update(change)
    with pytest.raises(PathsimConfigError) as err:
        simulate("dgx-h100-1", w)
    assert err.value.field == field


def test_an_unknown_schedule_is_refused_with_the_choices(tmp_path):
    from pathsim.cli import main
    w = tmp_path / "w.yaml"
    w.write_text("extends: palm-8b\nparallelism:\n  pipeline: 4\n  pipeline_schedule: zigzag\n")
    assert main(["simulate", "--cluster", "dgx-h100-1", "--workload", str(w)]) == 2


@pytest.mark.parametrize("name, billions", [("1.7b", 1.7), ("3.6b", 3.6), ("7.5b", 7.5), ("18.4b", 18.4), ("39.1b", 39.1),
                                            ("76.1b", 76.1), ("145.6b", 145.6), ("310.1b", 310.1), ("529.6b", 529.6),
                                            ("1t", 1008.0)])
def test_megatron_presets_have_their_published_size(name, billions):
    from pathsim.model_math import model_totals
    # Narayanan et al. SC'21 Table 1 rounds to 0.1B (76.05 prints as 76.1); its count is 12 l h^2 (1 + 13/(12h) +
    # (V+s)/(12 l h)), pathsim's within 0.05B of that.
    assert model_totals(load_workload(f"megatron-gpt-{name}").model).total_params / 1e9 == pytest.approx(billions, abs=0.1)


def test_megatron_39b_runs_its_published_layout_and_fits():
    result = simulate("dgx-a100-64", "megatron-gpt-39.1b")
    assert (result.chips, result.parallelism["pipeline"], result.parallelism["tensor"], result.parallelism["data"]) == (512, 2, 8, 32)
    assert result.memory.fits and result.pipeline.schedule == "1f1b" and result.pipeline.micro_batches == 12
    assert result.breakdown.total_s() == pytest.approx(result.step_time.mean_s, rel=1e-9)
    assert result.pipeline.bubble_fraction > result.pipeline.closed_form_bubble_fraction > 0


@pytest.mark.parametrize("name, data, context", [("llama3-405b", 128, 1), ("llama3-405b-128k", 8, 16)])
def test_llama3_405b_runs_table_4_on_its_three_tier_cluster(name, data, context):
    """Llama 3 paper Table 4 rows 2 and 3: TP 8 × PP 16 × DP 128 (8K) and TP 8 × CP 16 × PP 16 × DP 8 (128K) on
    16,384 H100; 8 chunks of one layer per rank, the first chunk only embedding and the last only the head, so the
    first and last stages hold 7 layers."""
    from pathsim.model_math import model_totals
    workload = load_workload(name)
    assert model_totals(workload.model).total_params / 1e9 == pytest.approx(405, rel=0.01)
    result = simulate("llama3-h100-16k", workload)
    assert (result.chips, result.parallelism["pipeline"], result.parallelism["tensor"]) == (16384, 16, 8)
    assert (result.parallelism["data"], result.parallelism.get("context", 1)) == (data, context)
    assert (result.breakdown.context_parallel_s > 0) == (context > 1)
    assert [len(s.layers) for s in result.pipeline.per_stage] == [7] + [8] * 14 + [7]
    assert result.pipeline.virtual_stages == 8 and result.tokens_per_step == 16 * 2**20
    assert result.breakdown.total_s() == pytest.approx(result.step_time.mean_s, rel=1e-9)
    assert result.pipeline.bubble_fraction > result.pipeline.closed_form_bubble_fraction == pytest.approx(bubble_fraction(16, 16, 8))
    assert result.memory.fits  # (FSDP's gradient sharding, ZeRO-2: with whole gradients the 8-layer stages would not)


def test_a_chunk_without_layers_relays_and_a_stage_without_any_is_refused():
    w = uniform_model(4, 8, "interleaved", 2, layers=14)
    w["parallelism"]["stage_layers"] = [0, 2, 2, 2, 2, 2, 2, 2]  # stage 0's first chunk only embeds
    result = simulate("dgx-h100-1", w)
    assert [len(s.layers) for s in result.pipeline.per_stage] == [2, 4, 4, 4]
    assert result.breakdown.total_s() == pytest.approx(result.step_time.mean_s, rel=1e-9)
    w["parallelism"]["stage_layers"] = [0, 2, 2, 3, 0, 2, 2, 3]  # stage 0: no layer in either chunk
    with pytest.raises(PathsimConfigError, match="stage 0 would hold no layer") as err:
        simulate("dgx-h100-1", w)
    assert err.value.field == "parallelism.stage_layers"


@pytest.mark.parametrize("name, nodes, pipeline, virtual, micro_batches", [
    ("76.1b", 128, 4, 3, 28), ("145.6b", 192, 8, 2, 48)])
def test_megatron_rows_on_selene_run_their_script_layout(name, nodes, pipeline, virtual, micro_batches):
    """SC'21 Table 1 rows 6-7 with the authors' script's micro-batches and chunks, on Selene's three-tier fabric
    (the larger rows run the same code for longer: benchmarks/bench_pipeline.py)."""
    result = simulate(f"selene-{nodes}", f"megatron-gpt-{name}")
    assert result.chips == 8 * nodes and result.parallelism["pipeline"] == pipeline and result.parallelism["tensor"] == 8
    assert (result.pipeline.virtual_stages, result.pipeline.micro_batches) == (virtual, micro_batches)
    assert result.memory.fits and result.breakdown.total_s() == pytest.approx(result.step_time.mean_s, rel=1e-9)
    assert result.pipeline.closed_form_bubble_fraction == pytest.approx(bubble_fraction(pipeline, micro_batches, virtual))


KORTHIKANTI = {  # Korthikanti et al. 2022, Table 3: heads, hidden, layers (sequence 2048, tensor 8)
    "22B": (64, 6144, 48), "175B": (96, 12288, 96), "530B": (128, 20480, 105), "1T": (160, 25600, 128)}


@pytest.mark.parametrize("size", sorted(KORTHIKANTI))
@pytest.mark.parametrize("recompute, sequence_parallel", [("none", False), ("none", True), ("selective", False),
                                                          ("selective", True), ("full", False), ("full", True)])
def test_activation_memory_is_korthikanti_table_2(size, recompute, sequence_parallel):
    """Per layer and micro-batch of b sequences: sbh(10 + 24/t + 5as/(ht)) with tensor parallelism alone, sbh(34/t +
    5as/(ht)) with sequence parallelism, the 5as/(ht) term gone with selective recompute, 2sbh (÷t with sequence
    parallelism) with full recompute."""
    a, h, layers = KORTHIKANTI[size]
    s, t, b = 2048, 8, 1
    w = load_workload("megatron-gpt-1.7b").model_dump(mode="json")
    w["model"].update(layers=layers, d_model=h, heads=a, dense_ffn=4 * h)
    w["training"].update(tokens_per_step=s * b, recompute=recompute)
    w["parallelism"].update(tensor=t, sequence_parallel=sequence_parallel)
    config = load_workload(w)
    from pathsim.memory import memory_per_chip
    from pathsim.workload import resolve_parallelism
    memory = memory_per_chip(config, resolve_parallelism(config, t), 0, 80e9)
    attention_scores = 5 * a * s / (h * t) if recompute == "none" else 0.0
    if recompute == "full":
        per_layer = 2 * (1 / t if sequence_parallel else 1)
    else:
        per_layer = (34 / t if sequence_parallel else 10 + 24 / t) + attention_scores
    assert memory.activations_bytes == pytest.approx(layers * s * b * h * per_layer, rel=1e-12)


@pytest.mark.parametrize("size", sorted(KORTHIKANTI))
def test_activation_savings_are_the_papers_statements(size):
    """Korthikanti et al. 2022, Sec. 6.1 and Fig. 7, on the Table 3 models (tensor 8): against tensor parallelism
    alone, sequence parallelism and selective recompute each cut activation memory "nearly in half", together
    "a 5x reduction bringing the memory requirements to under 20%", "only ~2x of the full activation
    recomputation which is at 10% of the baseline". (The paper plots per-model memory but prints no values.)"""
    from pathsim.model_math import activation_bytes_per_token
    a, h, layers = KORTHIKANTI[size]
    w = load_workload("megatron-gpt-1.7b").model_dump(mode="json")
    w["model"].update(layers=layers, d_model=h, heads=a, dense_ffn=4 * h)
    model = load_workload(w).model
    share = lambda recompute, sp: (activation_bytes_per_token(model, False, recompute, 8, sequence_parallel=sp)  # noqa: E731
                                   / activation_bytes_per_token(model, False, "none", 8, sequence_parallel=False))
    assert 0.45 < share("none", True) < 0.7 and 0.45 < share("selective", False) < 0.7
    assert 0.15 < share("selective", True) < 0.205  # 530B and 1T: 20.2 %
    assert 0.07 < share("full", False) < 0.1
    assert share("selective", True) / share("full", False) == pytest.approx(2.0, abs=0.25)


def test_grouped_query_attention_and_no_dropout_keep_less_than_table_2():
    """Table 2's 11h of attention is input 2h + Q, K, V 2h each + the output projection's input 2h + the dropout
    mask h: with 8 of 64 key/value heads K and V keep 2h/8 each; without dropout the masks after attention and
    the MLP (h each) go, and so do 3 of the 5as (the score mask and the dropped-out scores)."""
    from pathsim.model_math import activation_bytes_per_token
    a, h = 64, 8192
    w = load_workload("megatron-gpt-1.7b").model_dump(mode="json")
    w["model"].update(layers=4, d_model=h, heads=a, dense_ffn=4 * h, seq_len=2048)
    mha = load_workload(w).model
    base = activation_bytes_per_token(mha, False, "none", 1)
    assert base == pytest.approx((34 + 5 * a * 2048 / h) * h)
    w["model"]["kv_heads"] = 8
    gqa = activation_bytes_per_token(load_workload(w).model, False, "none", 1)
    assert base - gqa == pytest.approx(4 * h * (1 - 8 / a))
    w["model"]["dropout"] = False
    plain = activation_bytes_per_token(load_workload(w).model, False, "none", 1)
    assert gqa - plain == pytest.approx(2 * h + 3 * a * 2048)
    # Without sequence parallelism the two masks were among the parts tensor parallelism leaves whole.
    for model, whole in ((mha, 10), (load_workload(w).model, 8)):
        off = activation_bytes_per_token(model, False, "selective", 8, sequence_parallel=False)
        assert off - activation_bytes_per_token(model, False, "selective", 8) == pytest.approx((8 - 1) * whole * h)


def test_sequence_parallelism_off_runs_norms_on_whole_sequences():
    w = load_workload("megatron-gpt-18.4b").model_dump(mode="json")  # (its preset runs without, as SC'21 did)
    w["parallelism"]["sequence_parallel"] = True
    on = simulate("dgx-a100-32", w, detail=True)
    w["parallelism"]["sequence_parallel"] = False
    off = simulate("dgx-a100-32", w, detail=True)
    norms = lambda r: sum(s.end_s - s.start_s for s in r.detail.timeline if "norms" in s.name)  # noqa: E731
    assert norms(off) > 4 * norms(on)  # 8 tensor ranks: the same work, not split (fixed overheads aside)
    assert off.memory.activations_bytes > on.memory.activations_bytes
    assert off.step_time.mean_s > on.step_time.mean_s


def long_context(context: int, algorithm: str = "ring", seq_len: int = 32768) -> dict:
    w = load_workload("megatron-gpt-7.5b").model_dump(mode="json")
    w["model"].update(seq_len=seq_len)
    w["training"].update(tokens_per_step=16 * seq_len, recompute="selective")
    w["parallelism"].update(tensor=8, context=context, context_algorithm=algorithm)
    return w


def test_context_parallelism_adds_only_its_kv_exchange_to_the_data_parallel_step():
    # A context rank computes like a data rank on its 1/C of the tokens (every query still sees every key);
    # what context parallelism adds is moving the keys and values around the group.
    plain = simulate("dgx-h100-4", long_context(1), detail=True)
    gathered = simulate("dgx-h100-4", long_context(2, "all_gather"), detail=True)
    ring = simulate("dgx-h100-4", long_context(2, "ring"), detail=True)
    assert gathered.parallelism["context"] == 2 and gathered.parallelism["data"] == plain.parallelism["data"] // 2
    for r in (gathered, ring):
        assert r.breakdown.total_s() == pytest.approx(r.step_time.mean_s, rel=1e-9)
        assert r.breakdown.compute_s == pytest.approx(plain.breakdown.compute_s, rel=1e-9)
    exchange = sum(s.end_s - s.start_s for s in gathered.detail.timeline if s.category == "context_parallel")
    assert exchange > 0 and gathered.breakdown.context_parallel_s == pytest.approx(exchange, rel=1e-9)
    # The ring passes the blocks under the attention core: at most what the all-gather variant exposes.
    assert 0 <= ring.breakdown.context_parallel_s < gathered.breakdown.context_parallel_s
    # At 32K tokens the core outlasts the ring (hidden whole here); the all-gather variant waits for every block.
    # (equal to rounding: the ring's waits cut the attention's fused run where the plain step's sums it whole)
    assert ring.step_time.mean_s == pytest.approx(plain.step_time.mean_s, rel=1e-12)
    assert ring.step_time.mean_s < gathered.step_time.mean_s


@pytest.mark.parametrize("algorithm", ["ring", "all_gather"])
def test_context_parallelism_inside_pipeline_stages(algorithm):
    """Each stage's context groups exchange K/V as without pipelining: the same exchange per layer, on the stage's
    own chips; the ring's pass runs beside the attention core in the stage's stream."""
    w = long_context(2, algorithm)
    w["training"].update(micro_batches=4, tokens_per_step=4 * 32768 * 2)
    w["parallelism"].update(tensor=4, pipeline=2)
    result = simulate("dgx-h100-4", w, detail=True)
    assert (result.parallelism["pipeline"], result.parallelism["context"], result.parallelism["tensor"]) == (2, 2, 4)
    assert result.breakdown.total_s() == pytest.approx(result.step_time.mean_s, rel=1e-9)
    exchanges = [s for s in result.detail.timeline if s.category == "context_parallel" and "(exposed)" not in s.name]
    # Every layer of each of the 4 micro-batches: the forward's exchange, its recompute's (selective) and the backward's.
    assert w["training"]["recompute"] == "selective"
    assert len(exchanges) == 4 * w["model"]["layers"] * 3
    assert {s.group for s in exchanges} == {0, 1}
    if algorithm == "all_gather":
        assert result.breakdown.context_parallel_s > 0


@pytest.mark.parametrize("change, field", [
    (dict(context=3), "parallelism.context"),  # 32768 % 3
    (dict(context=8, tensor=8), "parallelism.context"),  # 8 × 8 > 32 GPUs
    (dict(context=2, data=4), "parallelism.data"),
])
def test_bad_context_settings_name_the_field(change, field):
    w = long_context(1)
    w["parallelism"].update(change)
    with pytest.raises(PathsimConfigError) as err:
        simulate("dgx-h100-4", w)
    assert err.value.field == field


def test_flash_attention_keeps_no_attention_scores():
    from pathsim.memory import memory_per_chip
    from pathsim.workload import resolve_parallelism

    def activations(recompute: str, flash: bool) -> float:
        w = load_workload("megatron-gpt-7.5b").model_dump(mode="json")
        w["model"]["flash_attention"] = flash
        w["training"]["recompute"] = recompute
        config = load_workload(w)
        return memory_per_chip(config, resolve_parallelism(config, 128), 0, 80e9).activations_bytes

    m = load_workload("megatron-gpt-7.5b").model
    assert activations("none", True) == activations("selective", False) == activations("selective", True)
    tokens_per_chip = 512 * 2048 / 128
    scores = 5 * m.heads * m.seq_len * tokens_per_chip * m.layers  # 5as bytes per token and layer
    assert activations("none", False) - activations("none", True) == pytest.approx(scores, rel=1e-12)


@pytest.mark.parametrize("sampling", ["exact", "mean_field"])
def test_all_to_alls_priced_from_a_basis_give_the_step_routing_each_gives(sampling):
    # With many micro-batches a stage prices its dispatches from the basis of its layout (the fast model is linear
    # in the bytes); a network model without that shortcut routes each one. The step is the same.
    from dataclasses import replace
    from pathsim.run_setup import prepare_run
    from pathsim.simulation import run_steps
    w = load_workload("mixtral-8x7b").model_dump(mode="json")
    w["training"]["micro_batches"] = 8
    w["parallelism"].update(pipeline=4, tensor=2, expert="auto")
    setup = prepare_run("dgx-h100-4", w, sampling=sampling, seed=1)

    class RoutedOneByOne:  # the fast model, without its basis
        name = "fast"

        def __init__(self, model):
            self.phase = model.phase

    basis = run_steps(setup, 1)
    direct = run_steps(replace(setup, network=RoutedOneByOne(setup.network)), 1)
    assert basis.step_time.mean_s == pytest.approx(direct.step_time.mean_s, rel=1e-12)
    assert basis.breakdown.all_to_all_s == pytest.approx(direct.breakdown.all_to_all_s, rel=1e-12)
    assert basis.max_link_utilisation == pytest.approx(direct.max_link_utilisation, rel=1e-12)
    assert [h.link for h in basis.hottest_links] == [h.link for h in direct.hottest_links]


def test_a_stage_waits_for_its_sends_only_when_they_block():
    """GPipe on 2 uniform stages: stage 0 runs its m forwards back to back. Overlapped, its last activations arrive one
    send after its last forward, at m·F + t; blocking (Megatron-LM of 2021), each send holds the stage: m·(F + t)."""
    m, runs = 4, {}
    for overlap in (True, False):
        w = uniform_model(2, m, "gpipe")
        w["parallelism"]["pipeline_overlap_p2p"] = overlap
        result = simulate("dgx-h100-1", w, detail=True)
        forward = [s for s in result.detail.timeline if s.stream == "stage 0" and s.category == "compute"
                   and s.name.endswith("fwd")]
        sends = sorted((s for s in result.detail.timeline if "activations stage 0 -> 1" in s.name
                        and "(exposed)" not in s.name), key=lambda s: s.end_s)
        t = sends[-1].end_s - sends[-1].start_s
        assert len(sends) == m and all(s.end_s - s.start_s == pytest.approx(t, rel=1e-12) for s in sends)
        runs[overlap] = (sum(s.end_s - s.start_s for s in forward), t, sends[-1].end_s, result)
    (busy, t, last, plain), (busy_b, t_b, last_b, blocking) = runs[True], runs[False]
    assert (busy_b, t_b) == (pytest.approx(busy, rel=1e-12), pytest.approx(t, rel=1e-12))
    assert last == pytest.approx(busy + t, rel=1e-9)
    assert last_b == pytest.approx(busy + m * t, rel=1e-9)
    # What the stages waited for their own sends shows as exposed pipeline p2p, and lengthens the step.
    assert blocking.breakdown.pipeline_p2p_s > plain.breakdown.pipeline_p2p_s
    assert blocking.step_time.mean_s > plain.step_time.mean_s
    assert blocking.breakdown.total_s() == pytest.approx(blocking.step_time.mean_s, rel=1e-9)
