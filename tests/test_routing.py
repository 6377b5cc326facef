"""Token routing: conservation, capacity, skew, affinity, histograms, and the two samplers against each other."""

import numpy as np
import pytest

from pathsim.placement import contiguous, round_robin, shape_only_placement
from pathsim.routing import build_plan, cap_probabilities, route_layer, split_tokens, step_rng
from pathsim.workload import load_workload, resolve_parallelism


def workload(experts=32, top_k=2, cf=1.25, dropless=False, tasks=None, tokens=2**17, layout="mixed", **moe):
    return load_workload({
        "name": "routing-test",
        "model": {"layers": 4, "d_model": 64, "heads": 4, "seq_len": 128, "vocab": 100, "dense_ffn": 256,
                  "moe": {"experts": experts, "top_k": top_k, "expert_ffn": 128, "capacity_factor": cf, "dropless": dropless, **moe}},
        "training": {"tokens_per_step": tokens},
        "task_layout": layout,
        "tasks": tasks or [{"name": "a", "share": 0.6, "routing": {"kind": "zipf", "exponent": 1.0}},
                           {"name": "b", "modality": "image", "share": 0.4, "routing": {"kind": "dirichlet", "concentration": 0.3},
                            "affinity": {"experts": "0-7", "weight": 0.8}}],
    })


def route(wl, chips=64, sampling="exact", seed=0, layer=0, placement=None, step=0):
    layout = resolve_parallelism(wl, chips)
    plan = build_plan(wl, layout, seed, sampling)
    placed = shape_only_placement(placement or "round_robin", wl.model.moe.experts, layout.expert)
    return plan, layout, route_layer(plan, layout, placed, layer, step_rng(seed, step))


@pytest.mark.parametrize("sampling", ["exact", "mean_field"])
@pytest.mark.parametrize("layout_kind", ["mixed", "partitioned"])
@pytest.mark.parametrize("dropless", [False, True])
def test_tokens_are_conserved(sampling, layout_kind, dropless):
    for seed in range(3):
        wl = workload(dropless=dropless, layout=layout_kind)
        plan, layout, r = route(wl, sampling=sampling, seed=seed)
        assignments = plan.task_tokens.sum() * wl.model.moe.top_k
        assert plan.task_tokens.sum() == wl.training.tokens_per_step
        # Each token picks top_k distinct experts, each independently sampled: the total is top_k per token on average.
        assert r.routed.sum() == pytest.approx(assignments, rel=0.01)
        assert r.chip_tokens.sum() + r.dropped.sum() == pytest.approx(r.routed.sum(), rel=1e-12)
        # Every kept assignment leaves its source once and lands on exactly one chip.
        assert r.dispatch_tokens.sum(axis=0) == pytest.approx(r.chip_tokens)
        assert r.dispatch_tokens.sum() == pytest.approx(r.chip_tokens.sum())
        if dropless:
            assert r.dropped.sum() == 0
        # Combine returns exactly what dispatch sent, per chip pair.
        bytes_per_token = 64 * 2
        assert r.combine_traffic(bytes_per_token).sent_per_chip() == pytest.approx(r.dispatch_traffic(bytes_per_token).received_per_chip())


@pytest.mark.parametrize("sampling", ["exact", "mean_field"])
def test_raising_capacity_never_raises_drops(sampling):
    drops = []
    for cf in (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 4.0):
        _, _, r = route(workload(cf=cf), sampling=sampling, seed=7)
        drops.append(r.dropped.sum())
    assert all(a >= b for a, b in zip(drops, drops[1:]))
    assert drops[0] > drops[-1]


def test_uniform_routing_at_capacity_one_drops_what_binomial_noise_predicts():
    """Switch at capacity factor 1.0 still drops: per-chip counts fluctuate around capacity."""
    tasks = [{"name": "u", "share": 1.0}]
    exact = [route(workload(tasks=tasks, cf=1.0, top_k=1), sampling="exact", seed=s)[2].dropped.sum() for s in range(5)]
    field = [route(workload(tasks=tasks, cf=1.0, top_k=1), sampling="mean_field", seed=s)[2].dropped.sum() for s in range(5)]
    assert np.mean(exact) > 0
    assert np.mean(field) == pytest.approx(np.mean(exact), rel=0.05)


def test_samplers_agree_on_load_and_drops():
    exact = [route(workload(), sampling="exact", seed=s)[2] for s in range(4)]
    field = [route(workload(), sampling="mean_field", seed=s)[2] for s in range(4)]
    for attr in ("chip_tokens",):
        e = np.mean([getattr(r, attr).max() for r in exact])
        f = np.mean([getattr(r, attr).max() for r in field])
        assert f == pytest.approx(e, rel=0.05)
    assert np.mean([r.dropped.sum() for r in field]) == pytest.approx(np.mean([r.dropped.sum() for r in exact]), rel=0.05)


def test_a_token_never_overflows_an_expert_it_cannot_pick_twice():
    """experts == top_k: every token goes to every expert once, exactly at capacity 1.0 — nothing drops."""
    tasks = [{"name": "u", "share": 1.0}]
    for sampling in ("exact", "mean_field"):
        _, _, r = route(workload(experts=2, top_k=2, cf=1.0, tasks=tasks), sampling=sampling)
        assert r.dropped.sum() == 0
        assert r.routed.sum() == 2 * 2**17


def test_too_few_experts_with_mass_spread_the_rest_evenly():
    p = cap_probabilities(np.array([[1.0, 0, 0, 0, 0, 0, 0, 0]]), 0.5)
    assert p[0, 0] == 0.5 and p[0, 1:] == pytest.approx(np.full(7, 0.5 / 7))
    tasks = [{"name": "a", "share": 1.0, "affinity": {"experts": "0-1", "weight": 1.0}}]
    plan, _, _ = route(workload(tasks=tasks, experts=8, top_k=4))
    assert plan.probabilities.sum(axis=-1) == pytest.approx(np.ones((1, 4)))
    assert plan.probabilities[0, :, :2] == pytest.approx(np.full((4, 2), 0.25))


def test_top_k_caps_every_expert_at_one_kth():
    p = cap_probabilities(np.array([[0.9, 0.05, 0.03, 0.02], [0.25, 0.25, 0.25, 0.25]]), 0.5)
    assert p.sum(axis=1) == pytest.approx([1, 1])
    assert p.max() <= 0.5 + 1e-12
    assert p[0, 1] / p[0, 2] == pytest.approx(0.05 / 0.03)  # the rest keep their proportions
    wl = workload(tasks=[{"name": "z", "share": 1.0, "routing": {"kind": "zipf", "exponent": 3.0}}], experts=8, top_k=4)
    plan, _, _ = route(wl)
    assert plan.probabilities.max() <= 0.25 + 1e-12


def test_affinity_puts_its_weight_on_its_experts():
    tasks = [{"name": "img", "modality": "image", "share": 1.0, "affinity": {"experts": "0-7,16", "weight": 0.9}}]
    plan, _, r = route(workload(tasks=tasks, dropless=True, tokens=2**20), sampling="mean_field")
    chosen = np.r_[0:8, 16]
    assert plan.probabilities[0, :, chosen].sum(axis=0) == pytest.approx(0.9)
    assert r.routed[0, chosen].sum() / r.routed.sum() == pytest.approx(0.9, abs=0.01)


def test_histogram_routing_follows_the_measured_counts(tmp_path):
    counts = np.arange(1, 33, dtype=float)  # expert e gets weight e+1
    np.save(tmp_path / "hist.npy", np.tile(counts, (2, 1)))
    path = tmp_path / "wl.yaml"
    path.write_text(
        "name: h\nmodel: {layers: 4, d_model: 64, heads: 4, seq_len: 128, vocab: 100, dense_ffn: 256,\n"
        "  moe: {experts: 32, top_k: 1, expert_ffn: 128, every: 2, dropless: true}}\n"
        "training: {tokens_per_step: 1048576}\n"
        "tasks: [{name: real, share: 1.0, routing: {kind: histogram, file: hist.npy}}]\n")
    wl = load_workload(path)
    plan, _, r = route(wl, sampling="mean_field")
    assert plan.probabilities[0, 1] == pytest.approx(counts / counts.sum())
    assert r.routed[0] / r.routed.sum() == pytest.approx(counts / counts.sum(), abs=2e-3)


def test_partitioned_layout_gives_each_chip_one_task():
    wl = workload(layout="partitioned")
    tokens = split_tokens(wl, resolve_parallelism(wl, 64))
    assert ((tokens > 0).sum(axis=1) == 1).all()
    assert tokens.sum(axis=0) == pytest.approx([0.6 * 2**17, 0.4 * 2**17], abs=1)
    assert tokens.sum() == 2**17
    thirds = workload(layout="partitioned", tokens=999, tasks=[{"name": n, "share": 1 / 3} for n in "abc"])
    assert split_tokens(thirds, resolve_parallelism(thirds, 64)).sum() == 999
    mixed = split_tokens(workload(), resolve_parallelism(workload(), 64))
    assert (mixed > 0).all() and mixed.sum() == 2**17


def test_traffic_stays_inside_expert_groups():
    wl = workload(experts=16)
    layout = resolve_parallelism(wl.model_copy(update={"parallelism": wl.parallelism.model_copy(update={"expert": 16})}), 64)
    plan = build_plan(wl, layout, 0, "exact")
    r = route_layer(plan, layout, round_robin(16, 16), 0, step_rng(0, 0))
    group = np.arange(64) // 16
    assert r.dispatch_tokens[group[:, None] != group[None, :]].sum() == 0


def test_replicas_split_a_hot_experts_tokens():
    from pathsim.placement import Placement

    wl = workload(experts=4, top_k=1, dropless=True, tasks=[{"name": "u", "share": 1.0}], tokens=2**16)
    layout = resolve_parallelism(wl, 8).model_copy(update={"expert": 8})
    placement = Placement(policy="file", experts=4, ranks=8, slots=[[0], [0], [1], [1], [2], [2], [3], [3]])
    plan = build_plan(wl, layout, 0, "mean_field")
    r = route_layer(plan, layout, placement, 0, step_rng(0, 0))
    assert r.chip_tokens[0] == pytest.approx(r.chip_tokens[1])
    assert r.chip_tokens.sum() == pytest.approx(r.routed.sum())
    assert r.chip_tokens.sum() == pytest.approx(2**16, rel=0.02)


def test_placement_policies_place_every_expert():
    for experts, ranks in [(16, 4), (10, 4), (4, 8), (2048, 512)]:
        for policy in (round_robin, contiguous):
            p = policy(experts, ranks)
            assert (p.replicas >= 1).all()
            shares = p.token_shares().toarray()
            assert shares.sum(axis=1) == pytest.approx(np.ones(experts))


@pytest.mark.parametrize("sampling", ["exact", "mean_field"])
def test_einsum_dispatch_pads_every_buffer_to_capacity(sampling):
    """GShard's einsum sends and computes whole [experts, capacity] buffers: load is flat whatever the skew,
    the bytes are capacity × experts per source, and drops are those of the same routing through the gather."""
    chips, experts, cf = 64, 32, 1.25
    gather_plan, _, gather = route(workload(experts=experts, cf=cf), chips=chips, sampling=sampling)
    plan, layout, padded = route(workload(experts=experts, cf=cf, dispatch="einsum"), chips=chips, sampling=sampling)
    capacity = np.ceil(cf * plan.task_tokens.sum(axis=1) * 2 / experts)  # per source chip
    assert np.allclose(padded.dispatch_tokens.sum(axis=1), capacity * experts)
    assert np.allclose(padded.chip_tokens, capacity.sum() * experts / chips)  # every chip's slots, used or not
    assert gather.chip_tokens.max() > 1.2 * gather.chip_tokens.min()  # the routing itself is skewed
    assert np.array_equal(padded.dropped, gather.dropped) and padded.dropped.sum() > 0


@pytest.mark.parametrize("sampling", ["exact", "mean_field"])
def test_expert_groups_across_tensor_ranks_conserve_tokens_and_stay_in_their_group(sampling):
    """With expert_spans_tensor, an expert group is `expert` consecutive chips, tensor ranks included (attention
    tensor-parallel over 4, experts over groups of 16 chips): every kept assignment lands once, inside its group,
    and each chip holds experts / 16 of every layer, where groups of 4 data ranks per tensor rank would hold / 4."""
    wl = workload(experts=32)
    par = wl.parallelism.model_copy(update={"tensor": 4, "expert": 16, "expert_spans_tensor": True})
    wl = wl.model_copy(update={"parallelism": par})
    layout = resolve_parallelism(wl, 64)
    assert (layout.expert_groups, layout.expert_replication, layout.data) == (4, 4, 16)
    ranks = np.arange(64)
    assert (layout.rank_at(layout.expert_copy(ranks), layout.expert_position(ranks)) == ranks).all()
    plan = build_plan(wl, layout, 0, sampling)
    r = route_layer(plan, layout, round_robin(32, 16), 0, step_rng(0, 0))
    assert r.chip_tokens.sum() + r.dropped.sum() == pytest.approx(r.routed.sum(), rel=1e-12)
    assert r.dispatch_tokens.sum(axis=0) == pytest.approx(r.chip_tokens)
    group = ranks // 16
    assert r.dispatch_tokens[group[:, None] != group[None, :]].sum() == 0
    assert (r.chip_slots == 2).all()  # 32 experts over 16 positions
    # The same position of every group all-reduces its experts' gradients: 16 groups of 4 chips, 16 apart.
    np.testing.assert_array_equal(layout.groups("expert_copies"), ranks.reshape(4, 16).T)


@pytest.mark.parametrize("moe", [dict(), dict(dropless=True), dict(dispatch="einsum")])
def test_micro_batches_routed_together_are_routed_as_one_by_one(moe):
    # A step draws micro-batch after micro-batch, every layer at once, then routes each layer's micro-batches
    # together: the same draws and the same loads, drops and dispatch as routing them layer after layer.
    from pathsim.routing import draw_micro_batch, route_batch
    wl = workload(**moe)
    layout = resolve_parallelism(wl, 64)
    plan = build_plan(wl, layout, 0, "mean_field")
    placed = shape_only_placement("round_robin", wl.model.moe.experts, layout.expert)
    one_rng, batch_rng = step_rng(0, 0), step_rng(0, 0)
    layers = len(wl.model.moe_layers)
    one = [[route_layer(plan, layout, placed, j, one_rng) for j in range(layers)] for _ in range(3)]
    draws = [draw_micro_batch(plan, batch_rng) for _ in range(3)]
    dispatch_map = plan.dispatch_map(layout)
    for j in range(layers):
        together = route_batch(plan, placed, j, np.stack([d[j] for d in draws]), dispatch_map)
        for mb, r in enumerate(together):
            a = one[mb][j]
            assert np.array_equal(r.routed, a.routed)
            for field in ("per_rank", "chip_tokens", "dropped"):
                np.testing.assert_allclose(getattr(r, field), getattr(a, field), rtol=1e-12, atol=1e-9)
            np.testing.assert_allclose(r.dispatch_tokens, a.dispatch_tokens, rtol=1e-12, atol=1e-9)
    assert not np.array_equal(one[0][0].routed, one[1][0].routed)  # micro-batches differ: the noise is drawn
