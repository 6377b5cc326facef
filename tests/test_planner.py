import json

import numpy as np
import pytest

from pathsim.cli import main
from pathsim.errors import PathsimConfigError
from pathsim.placement import Placement, round_robin
from pathsim.planner import POLICIES, PlanOptions, expected_demand, place_experts
from pathsim.planner.eplb import rebalance_experts, replicate_experts
from pathsim.planner.packing import lpt_pack, replicate
from pathsim.planner.search import LayerObjective, anneal
from pathsim.planning import compare_placements, evaluate_placement
from pathsim.run_setup import prepare_run


def skewed_multitask(experts: int = 256, layout: str = "partitioned", **moe) -> dict:
    """Four tasks on their own quarter of the chips (partitioned), each drawn 90 % to its own quarter of
    the experts with Zipf skew inside: hot experts to balance, and locality to exploit."""
    quarter = experts // 4
    return {
        "name": "skewed-multitask",
        "model": {"layers": 8, "d_model": 512, "heads": 8, "seq_len": 256, "vocab": 1024, "dense_ffn": 2048,
                  "moe": {"experts": experts, "top_k": 2, "expert_ffn": 1024, "every": 2, "dropless": True, **moe}},
        "training": {"tokens_per_step": 2**20, "optimizer": "sgd"},
        "task_layout": layout,
        "tasks": [{"name": f"task{t}", "modality": "text" if t < 2 else "image", "share": 0.25,
                   "routing": {"kind": "zipf", "exponent": 0.4},
                   "affinity": {"experts": f"{t * quarter}-{(t + 1) * quarter - 1}", "weight": 0.9}} for t in range(4)],
    }


FAST_SEARCH = PlanOptions(max_evaluations=160, time_budget_s=60)


# ---- EPLB ---------------------------------------------------------------------------------

def test_eplb_reproduces_its_documented_example():
    """The README example of github.com/deepseek-ai/EPLB: 2 layers x 12 experts, 16 slots, 4 groups, 2 nodes, 8 GPUs."""
    weight = np.array([[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                       [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]])
    phy2log, log2phy, count = rebalance_experts(weight, 16, 4, 2, 8)
    assert phy2log.tolist() == [[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
                                [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]]
    assert (count == np.stack([np.bincount(row, minlength=12) for row in phy2log])).all()
    for layer in range(2):  # log2phy lists exactly the slots holding each expert
        for expert in range(12):
            slots = [s for s in log2phy[layer, expert] if s >= 0]
            assert sorted(slots) == np.flatnonzero(phy2log[layer] == expert).tolist()


def test_replication_rule_matches_eplb(rng):
    weights = rng.integers(1, 1000, size=(5, 24))
    _, _, eplb_count = replicate_experts(weights, 40)
    for row, w in enumerate(weights):
        assert replicate(w.astype(float), np.ones(24, dtype=int), 16, 40).tolist() == eplb_count[row].tolist()


def test_lpt_is_within_its_bound_of_the_optimum(rng):
    """Graham: LPT makespan <= (4/3 - 1/(3m)) x optimum; the optimum is at least max(mean, largest item)."""
    for _ in range(20):
        ranks = int(rng.integers(2, 9))
        weights = rng.pareto(1.5, size=ranks * 3) + 0.1
        packed = lpt_pack(weights, np.ones(len(weights), dtype=int), np.ones(len(weights), dtype=int), ranks, 3)
        assert sorted(i for rank in packed for i in rank) == list(range(len(weights)))
        makespan = max(weights[rank].sum() for rank in packed)
        lower = max(weights.sum() / ranks, weights.max())
        assert makespan <= (4 / 3 - 1 / (3 * ranks)) * lower * 1.5 + 1e-9  # count limits loosen Graham's bound
        assert makespan >= lower - 1e-9


# ---- every policy -------------------------------------------------------------------------

@pytest.mark.parametrize("cluster", ["tpu-v4-4x4x4", "dgx-h100-4"])
@pytest.mark.parametrize("replicas", [None, 64])
def test_every_policy_places_every_expert_within_budget(cluster, replicas):
    setup = prepare_run(cluster, skewed_multitask(), seed=0)
    demand = expected_demand(setup)
    ranks = setup.layout.expert
    for policy in POLICIES:
        shape_only = policy in ("round_robin", "contiguous")
        options = FAST_SEARCH.model_copy(update={"replicas": None if shape_only else replicas})
        placement = place_experts(policy, setup, options, demand)
        copies = placement.replicas
        assert placement.layers in (1, setup.moe_layers)
        assert (copies >= 1).all(), policy
        extra = copies.sum(axis=1) - 256
        allowed = max(replicas or 0, ranks - 256) if not shape_only else max(0, ranks - 256)
        assert (extra <= allowed).all() and (extra >= 0).all(), policy
        slots = int(np.ceil((256 + allowed) / ranks))
        assert placement.experts_per_rank.max() <= slots, policy
        if not shape_only and replicas:
            assert (extra == replicas).all(), policy  # the whole budget is used on hot experts
        report = evaluate_placement(setup, placement)
        assert report.fits and report.memory_headroom_bytes > 0
        for l in range(setup.moe_layers):  # every expert's tokens are served: rows of token shares sum to 1
            assert placement.token_shares(l).sum(axis=1) == pytest.approx(np.ones((256, 1)))


@pytest.fixture(scope="module")
def torus_comparison():
    comparison, placements = compare_placements("tpu-v4-4x4x4", skewed_multitask(), options=FAST_SEARCH)
    return {r.policy: r for r in comparison.reports}, comparison, placements


def test_load_aware_policies_beat_round_robin_on_their_own_metric(torus_comparison):
    reports, comparison, _ = torus_comparison
    rr = reports["round_robin"]
    assert reports["balanced"].imbalance_mean < 0.9 * rr.imbalance_mean
    assert reports["eplb"].imbalance_mean < 0.9 * rr.imbalance_mean
    assert reports["topology"].hop_bytes < 0.8 * rr.hop_bytes  # tasks' experts next to the tasks' chips
    assert reports["topology"].max_link_bytes < rr.max_link_bytes
    best = reports[comparison.best]
    assert best.step_time_s < rr.step_time_s and best.step_time_vs_round_robin < 0.98
    assert rr.step_time_vs_round_robin == 1.0


def test_topology_keeps_a_tasks_experts_on_its_chips(torus_comparison):
    """Partitioned tasks run on consecutive quarters of the ranks; their favourite experts should follow."""
    _, _, placements = torus_comparison
    topo, rr = placements["topology"], placements["round_robin"]

    def local_share(p: Placement) -> float:
        hits = total = 0
        for l in range(p.layers):
            for rank, experts in enumerate(p.layer(l)):
                hits += sum(e // 64 == rank // 16 for e in experts)
                total += len(experts)
        return hits / total

    assert local_share(rr) == pytest.approx(0.25)
    assert local_share(topo) > 0.8


def test_replicas_spread_hot_experts_and_cost_memory_and_sync():
    setup = prepare_run("tpu-v4-4x4x4", skewed_multitask(layout="mixed"), seed=0)
    without = place_experts("balanced", setup)
    with_replicas = place_experts("balanced", setup, PlanOptions(replicas=64))
    plain, replicated = evaluate_placement(setup, without), evaluate_placement(setup, with_replicas)
    assert replicated.imbalance_mean < plain.imbalance_mean
    assert replicated.memory_headroom_bytes < plain.memory_headroom_bytes
    demand = expected_demand(setup)
    hottest = demand.load.argmax(axis=1)
    assert (with_replicas.replicas[np.arange(setup.moe_layers), hottest] > 1).all()
    from pathsim.step_ops import StepCoster
    coster = StepCoster(setup.workload, setup.layout, setup.topology, setup.network, setup.device, with_replicas)
    chains = coster.grad_sync(setup.workload.model.moe_layers[0])
    assert any("replicated experts" in op.name for chain in chains for op in chain)  # copies inside a group sync their gradients


def test_together_sets_share_a_chip_in_every_layer():
    setup = prepare_run("tpu-v4-4x4x4", skewed_multitask(), seed=0)
    sets = [[0, 1, 2], [64, 200]]
    for policy in ("balanced", "topology", "search"):
        placement = place_experts(policy, setup, FAST_SEARCH.model_copy(update={"together": sets}))
        for l in range(placement.layers):
            for group in sets:
                holders = [r for r, rank in enumerate(placement.layer(l)) if group[0] in rank]
                assert holders and all(set(group) <= set(placement.layer(l)[r]) for r in holders), policy


def test_infeasible_requests_name_the_constraint():
    setup = prepare_run("tpu-v4-4x4x4", skewed_multitask(expert_ffn=32768), seed=0)  # 34M parameters per expert
    place_experts("balanced", setup, PlanOptions(replicas=256))  # 8 slots per chip fit 32 GiB ...
    with pytest.raises(PathsimConfigError, match="replicas") as info:
        place_experts("balanced", setup, PlanOptions(replicas=768))  # ... 16 do not
    assert "HBM" in str(info.value) and "at most 512 replicas fit (12 slots per chip)" in str(info.value)
    with pytest.raises(PathsimConfigError, match="twice on a rank"):
        place_experts("balanced", setup, PlanOptions(replicas=256 * 64))
    with pytest.raises(PathsimConfigError, match="together"):
        place_experts("eplb", setup, PlanOptions(together=[[0, 1]]))
    with pytest.raises(PathsimConfigError, match="outside"):
        place_experts("balanced", setup, PlanOptions(together=[[0, 999]]))
    with pytest.raises(PathsimConfigError, match="takes no replicas"):
        place_experts("round_robin", setup, PlanOptions(replicas=4))
    with pytest.raises(ValueError, match="two together groups"):
        PlanOptions(together=[[0, 1], [1, 2]])


# ---- search ---------------------------------------------------------------------------------

def test_search_improves_a_poor_start_and_stops_at_its_budget():
    import time

    setup = prepare_run("tpu-v4-4x4x4", skewed_multitask(layout="mixed"), seed=0)
    demand = expected_demand(setup)
    from pathsim.planner.constraints import slot_budget
    budget = slot_budget(setup, PlanOptions())
    start = [round_robin(256, 64).slots[0]] * setup.moe_layers
    options = PlanOptions(max_evaluations=400, time_budget_s=120)
    layers, info = anneal(setup, demand, budget, [start], options, time.perf_counter())
    assert info["evaluations"] <= 400 and info["stopped_by"] == "evaluations"
    assert info["moe_layer_time_best_s"] < 0.97 * info["moe_layer_time_start_s"]
    objective = LayerObjective(setup, budget)
    assert sum(objective(l, layers[l]) for l in range(setup.moe_layers)) == pytest.approx(info["moe_layer_time_best_s"])
    again, _ = anneal(setup, demand, budget, [start], options, time.perf_counter())
    assert again == layers  # the evaluation budget binds: same inputs, same plan
    assert PlanOptions().time_budget_s is None  # by default nothing but evaluations stops it: the same plan anywhere

    began = time.perf_counter()
    _, info = anneal(setup, demand, budget, [start], PlanOptions(max_evaluations=10**9, time_budget_s=0.5), began)
    assert info["stopped_by"] == "time" and time.perf_counter() - began < 0.5 + 0.5


# ---- files and CLI ----------------------------------------------------------------------------

def test_placement_json_round_trips_per_layer_and_shorthand(tmp_path):
    setup = prepare_run("tpu-v4-4x4x4", skewed_multitask(), seed=0)
    placement = place_experts("balanced", setup)
    again = Placement.model_validate_json(placement.model_dump_json())
    assert again == placement and again.layers == setup.moe_layers
    shorthand = Placement.model_validate({"policy": "file", "experts": 2, "ranks": 2, "slots": [[1], [0]]})
    assert shorthand.layers == 1 and shorthand.layer(3) == [[1], [0]]
    with pytest.raises(ValueError, match="MoE layer 1: experts \\[1\\]"):
        Placement.model_validate({"policy": "file", "experts": 2, "ranks": 2, "slots": [[[1], [0]], [[0], [0]]]})


def test_plan_cli_compares_writes_and_simulates(tmp_path, capsys):
    workload = tmp_path / "w.json"
    workload.write_text(json.dumps(skewed_multitask()))
    out, report = tmp_path / "placement.json", tmp_path / "report.json"
    assert main(["plan", "--cluster", "tpu-v4-4x4x4", "--workload", str(workload), "--compare", "--max-evaluations", "64",
                 "--out", str(out), "--json", str(report)]) == 0
    text = capsys.readouterr().out
    for policy in POLICIES:
        assert policy in text
    data = json.loads(report.read_text())
    assert {r["policy"] for r in data["reports"]} == set(POLICIES)
    assert json.loads(out.read_text())["policy"] == data["best"]
    assert main(["simulate", "--cluster", "tpu-v4-4x4x4", "--workload", str(workload), "--placement", str(out)]) == 0
    assert f"placement {data['best']}" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--together", "3-1"], "--together"),
    (["--replicas", "-1"], "replicas"),
    (["--policy", "eplb", "--eplb-nodes", "5"], "eplb_nodes"),
])
def test_plan_cli_rejects_bad_options(tmp_path, capsys, argv, message):
    workload = tmp_path / "w.json"
    workload.write_text(json.dumps(skewed_multitask()))
    assert main(["plan", "--cluster", "tpu-v4-4x4x4", "--workload", str(workload), *argv]) == 2
    assert message in capsys.readouterr().err


def test_simulate_rejects_a_placement_for_another_layer_count(tmp_path, capsys):
    workload = tmp_path / "w.json"
    workload.write_text(json.dumps(skewed_multitask()))
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({"policy": "file", "experts": 256, "ranks": 64,
                              "slots": [[[r, r + 64, r + 128, r + 192] for r in range(64)]] * 3}))
    assert main(["simulate", "--cluster", "tpu-v4-4x4x4", "--workload", str(workload), "--placement", str(bad)]) == 2
    assert "3 per-layer entries" in capsys.readouterr().err


def test_a_placement_read_back_keeps_its_policy_only_while_unedited(tmp_path):
    import json
    from pathsim.planning import plan, write_placement
    from pathsim.placement import read_placement
    placement, _ = plan("tpu-v4-4x4x4", "switch-base-128", "balanced")
    write_placement(placement, tmp_path / "p.json")
    assert read_placement(tmp_path / "p.json").policy == "balanced"
    data = json.loads((tmp_path / "p.json").read_text())
    data["slots"][0][0], data["slots"][0][1] = data["slots"][0][1], data["slots"][0][0]  # a hand edit: two ranks swapped
    (tmp_path / "p.json").write_text(json.dumps(data))
    assert read_placement(tmp_path / "p.json").policy == "file (edited from balanced)"
    del data["planned_for"]["slots_digest"]  # written by something other than pathsim plan
    (tmp_path / "p.json").write_text(json.dumps(data))
    assert read_placement(tmp_path / "p.json").policy == "file"
