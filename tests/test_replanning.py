"""Re-planning a placed model: tasks added with new experts, migration cost, local moves, routing drift."""

import json

import numpy as np
import pytest
import yaml

from pathsim.cli import main
from pathsim.errors import PathsimConfigError
from pathsim.memory import OPTIMIZER_STATE_BYTES
from pathsim.model_math import layer_shapes
from pathsim.placement import round_robin
from pathsim.planner import PlanOptions, place_experts
from pathsim.planner.constraints import slot_budget
from pathsim.planner.migration import expert_copy_bytes, match_ranks, migration_cost, moved_copies
from pathsim.planner.moves import LayerMoves, apply_moves, rebalance_moves
from pathsim.planner.packing import lpt_pack
from pathsim.replanning import add_task, random_walk_drift, read_drift, routing_drift
from pathsim.routing import build_plan
from pathsim.run_setup import prepare_run
from pathsim.task_addition import AddedTask, errors_in_task, expand_workload, read_added_task
from pathsim.workload import load_workload, resolve_parallelism
from test_planner import skewed_multitask

CLUSTER = "dgx-h100-4"  # 32 GPUs: expert-parallel groups of 32 ranks


def new_task(**fields) -> AddedTask:
    spec = {"name": "newcomer", "modality": "video", "share": 0.1, "new_experts": 8,
            "routing": {"kind": "zipf", "exponent": 0.6}, "new_expert_weight": 0.7, "reuses": "0-15"}
    spec.update(fields)
    return AddedTask.model_validate(spec)


def old_workload():
    return load_workload(skewed_multitask(experts=64, layout="mixed"))


# ---- reachable experts and the expanded workload ------------------------------------------

def test_a_task_routes_only_to_the_experts_it_reaches():
    spec = skewed_multitask(experts=64, layout="mixed")
    spec["tasks"][0]["reachable_experts"] = "0-15"
    spec["tasks"][0]["affinity"]["experts"] = "0-7"
    workload = load_workload(spec)
    plan = build_plan(workload, resolve_parallelism(workload, 32), seed=3)
    assert np.all(plan.probabilities[0][:, 16:] == 0)
    assert np.allclose(plan.probabilities[0].sum(axis=1), 1)
    assert np.all(plan.probabilities[1][:, 16:].sum(axis=1) > 0.05)  # other tasks still reach everything


@pytest.mark.parametrize("change, field", [
    ({"reachable_experts": "0-99"}, "reachable_experts"),
    ({"reachable_experts": "5"}, "reachable_experts"),  # fewer than top_k = 2
    ({"reachable_experts": "32-63"}, "affinity"),  # affinity 0-15 lies outside the reach
])
def test_bad_reachable_experts_are_refused(change, field):
    spec = skewed_multitask(experts=64, layout="mixed")
    spec["tasks"][0].update(change)
    with pytest.raises(PathsimConfigError) as err:
        load_workload(spec)
    assert field in str(err.value)


def test_adding_a_task_leaves_the_old_routing_bit_for_bit():
    old = old_workload()
    grown = expand_workload(old, new_task())
    layout = resolve_parallelism(old, 32)
    before = build_plan(old, layout, seed=5)
    after = build_plan(grown, resolve_parallelism(grown, 32), seed=5)
    assert grown.model.moe.experts == 72
    assert np.array_equal(after.probabilities[:4, :, :64], before.probabilities)
    assert np.all(after.probabilities[:4, :, 64:] == 0)
    shares = [t.share for t in grown.tasks]
    assert sum(shares) == pytest.approx(1, abs=1e-12) and shares[-1] == pytest.approx(0.1)
    assert shares[0] == pytest.approx(0.25 * 0.9)
    newcomer = after.probabilities[4]
    assert newcomer[:, 64:].sum(axis=1) == pytest.approx(np.full(newcomer.shape[0], 0.7))
    assert np.all(newcomer[:, 16:64] == 0)  # reuses 0-15 only


@pytest.mark.parametrize("fields, field", [
    ({"name": "task0"}, "name"),
    ({"reuses": "0-64"}, "reuses"),
])
def test_bad_added_tasks_name_the_field(fields, field):
    with pytest.raises(PathsimConfigError) as err:
        expand_workload(old_workload(), new_task(**fields))
    assert err.value.field == field


def test_task_file_errors_name_the_file_and_field(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "share": 0.1, "new_experts": 0, "new_expert_weight": 0.5}))
    with pytest.raises(PathsimConfigError) as err:
        read_added_task(path)
    assert str(path) in str(err.value) and "new_expert_weight" in str(err.value)
    path.write_text(yaml.safe_dump({"name": "x", "share": 0.1, "new_experts": 4, "shares": 1}))
    with pytest.raises(PathsimConfigError) as err:
        read_added_task(path)
    assert "did you mean `share`" in str(err.value)


def test_the_shipped_task_file_adds_to_pathways_multitask():
    from pathsim.presets import preset_dir
    task = read_added_task(preset_dir("workloads") / "added-tasks" / "sign-language-video.yaml")
    grown = expand_workload(load_workload("pathways-multitask"), task)
    assert grown.model.moe.experts == 256 + task.new_experts


# ---- local moves --------------------------------------------------------------------------

@pytest.mark.parametrize("m", [3, 4, 5, 8])
def test_local_moves_reach_the_optimum_on_grahams_tight_lpt_instance(m):
    """Graham (1969): jobs 2m-1, 2m-1, 2m-2, 2m-2, ..., m+1, m+1, m, m, m on m machines: LPT makes 4m-1, the optimum 3m."""
    w = np.array(sorted([2 * m - 1 - k for k in range(m - 1) for _ in range(2)] + [m, m, m], reverse=True), dtype=float)
    ones = np.ones(len(w), dtype=int)
    packed = lpt_pack(w, ones, ones, m, 3)
    assert max(w[r].sum() for r in packed) == 4 * m - 1
    state = LayerMoves(0, packed, w, np.zeros(len(w)), ones, 3)
    rebalance_moves([state])
    assert max(w[r].sum() for r in state.rank_lists) == 3 * m
    assert sorted(i for r in state.rank_lists for i in r) == list(range(len(w)))


def test_moves_respect_the_byte_budget_and_never_raise_a_maximum(rng):
    layers = []
    loads = rng.pareto(1.2, size=(3, 40)) + 0.2
    for l in range(3):
        layers.append([list(range(r, 40, 16)) for r in range(16)])
    price = np.where(np.arange(40) < 30, 10.0, 0.0)  # the last ten are free to move
    states = [LayerMoves(l, layers[l], loads[l], price, np.ones(40, dtype=int), 3) for l in range(3)]
    moves = rebalance_moves(states, byte_budget=55.0)
    spent = np.cumsum([m.bytes for m in moves])
    assert spent[-1] <= 55.0
    assert all(m.gain > 0 for m in moves)
    first_costly = next(k for k, m in enumerate(moves) if m.bytes > 0)
    assert all(m.bytes == 0 for m in moves[:first_costly])  # free moves come first
    for l in range(3):
        before = max(loads[l][r].sum() for r in layers[l])
        after_lists = apply_moves(layers, moves)[l]
        assert max(loads[l][r].sum() for r in after_lists) <= before + 1e-12
        assert sorted(e for r in after_lists for e in r) == list(range(40))
        assert max(len(r) for r in after_lists) <= 3


# ---- migration ----------------------------------------------------------------------------

def test_relabelled_permutation_moves_nothing(rng):
    old = [[int(e) for e in rng.choice(64, size=2, replace=False)] for _ in range(32)]
    for _ in range(5):
        shuffled = [old[i] for i in rng.permutation(32)]
        assert match_ranks(old, shuffled, 64) == [sorted(r) for r in old]


def test_migration_bytes_follow_the_copy_size_exactly():
    setup = prepare_run(CLUSTER, old_workload(), seed=0)
    params = layer_shapes(setup.workload.model).expert_params
    per_chip = params * (2 + OPTIMIZER_STATE_BYTES["sgd"] / setup.layout.expert_replication)
    assert expert_copy_bytes(setup) == pytest.approx(per_chip)
    old = [round_robin(64, 32).layer(0)] * setup.moe_layers
    new = [[list(r) for r in layer] for layer in old]
    new[0][0], new[0][1] = new[0][1], new[0][0]  # ranks 0 and 1 trade all their experts in one layer
    new[1][5] = new[1][5] + [70]  # a brand-new expert costs nothing
    moves = moved_copies(old, new, 64)
    assert len(moves) == 4 and all(m[0] == 0 for m in moves)
    cost = migration_cost(setup, old, new, 64)
    instances = setup.layout.expert_groups * setup.layout.tensor
    assert cost.bytes == pytest.approx(4 * per_chip * instances)
    # No network finishes before the busiest receiver has pulled its bytes through all its links.
    received = 2 * per_chip
    assert cost.seconds >= received / (18 * 25e9) - 1e-12
    assert migration_cost(setup, old, old, 64).bytes == 0


# ---- adding a task ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def added():
    placement = place_experts("balanced", prepare_run(CLUSTER, old_workload(), seed=0), PlanOptions())
    report, placements, setup = add_task(CLUSTER, old_workload(), placement, new_task(), policy="balanced")
    return placement, report, placements, setup


def test_keeping_old_copies_moves_nothing_and_places_every_new_expert(added):
    old, report, placements, setup = added
    keep = report.options[0]
    assert keep.migrated_bytes == 0 and keep.migration_s == 0
    kept = placements[keep.name]
    budget = slot_budget(setup, PlanOptions(replicas=0))
    for l in range(setup.moe_layers):
        for before, after in zip(old.layer(l), kept.layer(l)):
            assert set(before) <= set(after)  # every old copy where it was
        hosted = [e for r in kept.layer(l) for e in r]
        assert set(hosted) == set(range(72))
        assert max(len(r) for r in kept.layer(l)) <= budget.slots_per_rank


def test_moves_trade_bytes_for_step_time_and_replanning_costs_most(added):
    _, report, _, _ = added
    names = [o.name for o in report.options]
    assert names[0] == "keep old copies" and names[-1] == "re-plan (balanced)"
    frontier = report.options[:-1]
    bytes_moved = [o.migrated_bytes for o in frontier]
    assert bytes_moved == sorted(bytes_moved)
    assert frontier[-1].report.imbalance_mean < frontier[0].report.imbalance_mean
    assert frontier[-1].report.step_time_s <= frontier[0].report.step_time_s
    replan = report.options[-1]
    assert replan.migrated_bytes > 0
    for o in report.options[1:]:
        if o.step_saving_s > 0:
            assert o.break_even_steps == pytest.approx(o.migration_s / o.step_saving_s)


def test_an_old_placement_of_another_shape_is_refused():
    with pytest.raises(PathsimConfigError) as err:
        add_task(CLUSTER, old_workload(), round_robin(64, 16), new_task())
    assert "ranks" in str(err.value)


def test_errors_met_running_the_grown_workload_name_the_task_file(tmp_path):
    # A histogram of the wrong shape is found only when the grown workload routes: the task file is to blame.
    np.save(tmp_path / "h.npy", np.ones(10))
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "share": 0.1, "new_experts": 8,
                                    "routing": {"kind": "histogram", "file": "h.npy"}}))
    with pytest.raises(PathsimConfigError) as err:
        add_task(CLUSTER, old_workload(), round_robin(64, 32), path)
    assert (err.value.source, err.value.field) == (str(path), "routing.file")


@pytest.mark.parametrize("field, source, anchored", [
    ("tasks[4].routing.exponent", "task.yaml", "routing.exponent"),
    ("tasks[4].reachable_experts", "task.yaml", "reuses"),
    ("tasks[4].affinity.weight", "task.yaml", "new_expert_weight"),
    ("model.moe.experts", "task.yaml", "new_experts"),
    ("tasks[0].share", "w.yaml with task.yaml added", "tasks[0].share"),
    ("parallelism.expert", "w.yaml with task.yaml added", "parallelism.expert"),
])
def test_grown_workload_errors_are_re_anchored(field, source, anchored):
    grown = expand_workload(old_workload(), new_task())
    with pytest.raises(PathsimConfigError) as err:
        with errors_in_task("w.yaml", "task.yaml", grown, 4):
            raise PathsimConfigError(f"<workload {grown.name}>", field, "wrong", "mend it")
    assert (err.value.source, err.value.field) == (source, anchored)
    with pytest.raises(PathsimConfigError) as err:  # an error that already names a file is left alone
        with errors_in_task("w.yaml", "task.yaml", grown, 4):
            raise PathsimConfigError("cluster.yaml", field, "wrong")
    assert (err.value.source, err.value.field) == ("cluster.yaml", field)


def workload_file(folder):
    path = folder / "w.yaml"
    path.write_text(yaml.safe_dump(skewed_multitask(experts=64, layout="mixed")))
    return path


def planned_files(folder):
    """The old workload, a task to add and the placement `pathsim plan --out` wrote for the workload."""
    workload = workload_file(folder)
    task = folder / "task.yaml"
    task.write_text(yaml.safe_dump(new_task().model_dump(mode="json")))
    before = folder / "before.json"
    assert main(["plan", "--cluster", CLUSTER, "--workload", str(workload), "--out", str(before)]) == 0
    return workload, task, before


def test_cli_adds_a_task_and_simulates_the_result(tmp_path, capsys):
    workload, task, before = planned_files(tmp_path)
    after = tmp_path / "after.json"
    assert main(["plan", "--cluster", CLUSTER, "--workload", str(workload), "--from", str(before), "--add-task", str(task),
                 "--migration-budget", "0B", "--out", str(after), "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "keep old copies" in out and "re-plan (balanced)" in out
    written = json.loads(after.read_text())
    assert written["policy"] == "incremental" and written["experts"] == 72  # the zero-byte option, as budgeted
    grown = after.with_suffix(".workload.yaml")
    assert main(["simulate", "--cluster", CLUSTER, "--workload", str(grown), "--placement", str(after)]) == 0
    assert main(["plan", "--cluster", CLUSTER, "--workload", str(workload), "--add-task", str(task)]) == 2
    assert "--from" in capsys.readouterr().err


# ---- routing drift ------------------------------------------------------------------------

def test_without_drift_replanning_moves_nothing_and_gains_nothing():
    setup = prepare_run(CLUSTER, old_workload(), seed=0)
    still = np.broadcast_to(setup.plan.probabilities, (3, *setup.plan.probabilities.shape)).copy()
    report = routing_drift(CLUSTER, old_workload(), still, replan_every=[1], steps_per_window=10)
    replan = report.strategies[1]
    assert replan.migrated_bytes == 0 and replan.net_gain_s == pytest.approx(0, abs=1e-9)
    assert len({w.step_time_s["fixed"] for w in report.windows_detail}) == 1


def test_drift_grows_a_fixed_placements_imbalance_and_replanning_pays_it_back():
    setup = prepare_run(CLUSTER, old_workload(), seed=0)
    drift = random_walk_drift(setup, windows=5, sigma=0.5, seed=1)
    report = routing_drift(CLUSTER, old_workload(), drift, replan_every=[1], steps_per_window=10_000)
    fixed = [w.imbalance["fixed"] for w in report.windows_detail]
    assert fixed[-1] > fixed[0]
    fixed_total, replan = report.strategies[0], report.strategies[1]
    assert replan.migrated_bytes > 0 and replan.migration_s > 0
    step_sum = sum(10_000 * w.step_time_s["re-plan every 1"] for w in report.windows_detail)
    assert replan.total_time_s == pytest.approx(step_sum + replan.migration_s)
    assert replan.net_gain_s == pytest.approx(fixed_total.total_time_s - replan.total_time_s)
    assert replan.net_gain_s > 0


def test_drift_files_are_checked(tmp_path):
    setup = prepare_run(CLUSTER, old_workload(), seed=0)
    good = tmp_path / "drift.npy"
    np.save(good, np.ones((4, 64)))
    assert read_drift(good, setup).shape == (4, 4, setup.moe_layers, 64)
    for shape in ((4, 63), (1, 64)):
        bad = tmp_path / f"bad{shape[0]}.npy"
        np.save(bad, np.ones(shape))
        with pytest.raises(PathsimConfigError) as err:
            read_drift(bad, setup)
        assert str(bad) in str(err.value)


def test_cli_drift_arguments(tmp_path, capsys):
    workload = workload_file(tmp_path)
    base = ["plan", "--cluster", CLUSTER, "--workload", str(workload)]
    assert main(base + ["--drift", "random-walk:0.4", "--windows", "3", "--replan-every", "1"]) == 0
    assert "re-plan every 1" in capsys.readouterr().out
    assert main(base + ["--drift", "random-walk:x"]) == 2
    assert main(base + ["--drift", "random-walk:0.4", "--compare"]) == 2
    assert main(base + ["--drift", "random-walk:0.4", "--window-steps", "0"]) == 2
    assert "window" in capsys.readouterr().err


def test_a_grown_workload_written_elsewhere_still_finds_its_histograms(tmp_path):
    from pathsim.replanning import write_workload
    home = tmp_path / "home"
    home.mkdir()
    np.save(home / "hist.npy", np.arange(1, 65, dtype=float))
    spec = skewed_multitask(experts=64, layout="mixed")
    spec["tasks"][0]["routing"] = {"kind": "histogram", "file": "hist.npy"}
    (home / "w.yaml").write_text(yaml.safe_dump(spec))
    setup = prepare_run(CLUSTER, expand_workload(load_workload(home / "w.yaml"), new_task()), seed=0)
    written = write_workload(setup, tmp_path / "elsewhere" / "grown.yaml")
    again = prepare_run(CLUSTER, str(written), seed=0)
    assert np.array_equal(again.plan.probabilities, setup.plan.probabilities)


@pytest.mark.parametrize("name", ["pathways-multitask"])
def test_old_routing_stays_bit_identical_at_pod_scale(name):
    from pathsim.presets import preset_dir
    old = load_workload(name)
    grown = expand_workload(old, read_added_task(preset_dir("workloads") / "added-tasks" / "sign-language-video.yaml"))
    before = build_plan(old, resolve_parallelism(old, 512), seed=0)
    after = build_plan(grown, resolve_parallelism(grown, 512), seed=0)
    tasks = len(old.tasks)
    assert np.array_equal(after.probabilities[:tasks, :, :256], before.probabilities)


def test_relabelling_finds_the_optimal_assignment():
    """Keeping 2 copies needs pairing a new rank with an old one it shares nothing with."""
    kept = match_ranks([[1], [0, 2, 3], []], [[2], [3], [0, 1]], 4)
    old = [[1], [0, 2, 3], []]
    assert sum(len(set(a) & set(b)) for a, b in zip(old, kept)) == 2
    assert sorted(e for r in kept for e in r) == [0, 1, 2, 3]


def test_cli_refuses_a_bad_migration_budget(tmp_path, capsys):
    workload, task, before = planned_files(tmp_path)
    base = ["plan", "--cluster", CLUSTER, "--workload", str(workload), "--from", str(before), "--add-task", str(task)]
    for budget in ("lots", "-1GB"):
        assert main(base + [f"--migration-budget={budget}", "--out", str(tmp_path / "a.json")]) == 2
    assert main(base + ["--migration-budget", "1GB"]) == 2
    assert "--migration-budget" in capsys.readouterr().err
