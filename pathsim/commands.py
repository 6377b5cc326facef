"""What each ``pathsim`` subcommand does, and how it prints its results (the parser is pathsim/cli.py).

Kept apart from the parser so that `pathsim --help` and a mistyped flag answer before the simulator is imported.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from pathsim import console
from pathsim.cluster import load_cluster
from pathsim.collectives import CollectiveResult, run_collective
from pathsim.device import load_profile
from pathsim.engine.categories import CATEGORIES
from pathsim.errors import PathsimConfigError, require_finite
from pathsim.numeric_files import read_numeric_array
from pathsim.output_files import result_csv, write_file
from pathsim.planner import POLICIES, PlanOptions
from pathsim.planning import PlanComparison, compare_placements, write_placement
from pathsim.replanning import DriftReport, TaskAdditionReport, add_task, random_walk_drift, routing_drift, write_workload
from pathsim.run_setup import prepare_run
from pathsim.presets import preset_path
from pathsim.model_math import model_totals
from pathsim.result import SimulationResult
from pathsim.shared_pod import SharedPodResult, load_shared_pod, simulate_shared
from pathsim.task_addition import read_added_task
from pathsim.simulation import simulate
from pathsim.workload import load_workload, parse_id_ranges
from pathsim.topology import build_topology
from pathsim.units import (MAGNITUDE, format_bandwidth, format_bytes, format_flops, format_id_ranges, format_seconds, format_usd,
                           parse_bytes, parse_count, parse_given, parse_seconds)
from pathsim.yaml_config import read_yaml_mapping, validate_model


def _load_matrix(path: Path) -> np.ndarray:
    matrix = read_numeric_array(path, str(path), "", "a square matrix of bytes between ranks")
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise PathsimConfigError(str(path), "", f"must be a square matrix, got shape {matrix.shape}", "one row and one column per rank")
    if not np.all(np.isfinite(matrix)) or matrix.min() < 0 or matrix.max() > MAGNITUDE[1]:
        raise PathsimConfigError(str(path), "", "holds negative, non-finite or absurdly large bytes",
                                 f"use bytes from 0 to {MAGNITUDE[1]:g}")
    if not matrix.sum() > np.trace(matrix):  # a rank's bytes to itself are a local copy that never reaches the network
        raise PathsimConfigError(str(path), "", "sends no bytes between ranks", "give bytes between distinct ranks (off the diagonal)")
    return matrix.astype(np.float64)


_table = console.table


def format_collective(result: CollectiveResult) -> str:
    head = (f"{result.op} on {result.cluster}: {result.groups} group(s) of {result.ranks_per_group} ranks, "
            f"{format_bytes(result.bytes_per_rank)} per rank, {result.model} model, {result.algorithm} algorithm"
            + (f", NCCL {result.protocol} protocol" if result.protocol else ""))
    summary = [
        ("time", format_seconds(result.time_s),
         f"bandwidth {format_seconds(result.bandwidth_time_s)} + latency {format_seconds(result.latency_time_s)}"),
        ("algbw", format_bandwidth(result.algbw_bytes_per_s), "bytes per rank / time"),
        ("busbw", format_bandwidth(result.busbw_bytes_per_s), "algbw x bus factor (NCCL-tests convention)"),
        ("max link utilisation", f"{100 * result.max_link_utilisation:.1f} %", ""),
    ]
    phases = [(p.label, p.repeat, format_seconds(p.time_s), format_bytes(p.network_bytes)) for p in result.phases]
    links = [(l.link, l.link_class, format_bytes(l.bytes), f"{100 * l.utilisation:.1f} %") for l in result.hottest_links]
    return "\n".join([head, _table(summary, ("metric", "value", "note")), "  phases:",
                      _table(phases, ("phase", "repeat", "time each", "network bytes each")), "  hottest links:",
                      _table(links, ("link", "class", "bytes", "utilisation"))])


def format_simulation(result: SimulationResult) -> str:
    p = result.parallelism
    experts = (f"; expert groups of {p['expert']}), {result.sampling} routing, placement {result.placement}"
               if result.layers else "), dense")
    slices = p.get("slices", 1)
    where = f"{result.chips} chips in {slices} slices" if slices > 1 else f"{result.chips} chips"
    stages = f"pipeline {p['pipeline']} x " if p.get("pipeline", 1) > 1 else ""
    context = f" x context {p['context']}" if p.get("context", 1) > 1 else ""
    head = (f"{result.workload} on {result.cluster}: {where} ({stages}data {p['data']}{context} x tensor {p['tensor']}{experts}, "
            f"{result.steps} step(s), seed {result.seed}, {result.network_model} network")
    if result.parallelism_axes:
        head += "\n  axes: " + "; ".join(f"{k} {v}" for k, v in result.parallelism_axes.items())
    st = result.step_time
    summary = [
        ("step time", format_seconds(st.mean_s), f"p50 {format_seconds(st.p50_s)}, p99 {format_seconds(st.p99_s)}"),
        *([("  validation band", f"{format_seconds(result.step_time_band.p10_s)} - {format_seconds(result.step_time_band.p90_s)}",
            f"p10-p90 from {result.step_time_band.describe()}")] if result.step_time_band else []),
        ("IT energy", f"{result.energy.it_j() / 3.6e6:.4g} kWh", "a step's, chips, hosts and network (no PUE)"
         + (f"; band {result.energy_band.p10_j / 3.6e6:.4g} - {result.energy_band.p90_j / 3.6e6:.4g} kWh from "
            f"{result.energy_band.describe()}" if result.energy_band else "")),
        ("tokens/s", f"{result.tokens_per_s:,.0f}", f"{result.tokens_per_step:,} tokens per step"),
        ("MFU", f"{100 * result.mfu:.1f} %", f"HFU {100 * result.hfu:.1f} % (with rematerialisation)"),
        *([("dropped tokens", f"{100 * result.dropped_fraction:.2f} %", "of token-expert assignments")] if result.layers else []),
        ("max link utilisation", f"{100 * result.max_link_utilisation:.1f} %", result.hottest_links[0].link if result.hottest_links else ""),
        ("memory per chip", format_bytes(result.memory.total_bytes),
         f"{'fits' if result.memory.fits else 'DOES NOT FIT'} in {format_bytes(result.memory.hbm_bytes)} HBM"),
    ]
    b = result.breakdown
    total = max(st.mean_s, 1e-30)
    moe_only = ("straggler", "all_to_all")  # a dense run has no expert FFNs to wait for and no tokens to dispatch
    rows = [(c.label, format_seconds(value), f"{100 * value / total:.1f} %")
            for c, value in ((c, getattr(b, c.field)) for c in CATEGORIES)
            if (c.always and (result.layers or c.key not in moe_only)) or value > 0]
    lines = [head, _table(summary, ("metric", "value", "note")), "  where the time goes (critical path, mean step):",
             _table(rows, ("cause", "time", "share"))]
    c = result.communication
    lines.append("    " + (f"all-to-all {format_seconds(c.all_to_all_s)}; " if result.layers else "")
                 + f"gradient sync {format_seconds(c.grad_sync_s)} "
                 f"({format_seconds(c.grad_sync_hidden_s)} hidden behind backward); exposed communication "
                 f"{format_seconds(c.exposed_communication_s)}")
    if result.layers:
        load = [(t.task, t.modality, f"{t.max_over_mean_expert_load:.2f}", f"{100 * t.dropped_fraction:.2f} %") for t in result.tasks[:12]]
        if len(result.tasks) > 12:
            load.append((f"... {len(result.tasks) - 12} more tasks", "", "", ""))
        lines += ["  expert load per task (max/mean over experts, mean over layers):",
                  _table(load, ("task", "modality", "max/mean", "dropped"))]
    if result.pipeline is not None:
        pp = result.pipeline
        lines.append(f"  pipeline: {pp.stages} stages, {pp.schedule}" + (f" x {pp.virtual_stages} chunks" if pp.virtual_stages > 1 else "")
                     + f", {pp.micro_batches} micro-batches; bubble {100 * pp.bubble_fraction:.1f} % of the step "
                     f"(closed form for uniform stages, F = B = W: {100 * pp.closed_form_bubble_fraction:.1f} %)")
        stage_rows = [(str(st.stage), f"{format_id_ranges(st.layers)} ({len(st.layers)})", format_seconds(st.bubble_s),
                       format_bytes(st.memory.total_bytes) + ("" if st.memory.fits else " DOES NOT FIT")
                       + (" (tightest)" if st.stage == pp.tightest_stage else "")) for st in pp.per_stage]
        lines.append(_table(stage_rows, ("stage", "layers", "bubble", "memory per chip")))
    m = result.memory
    lines.append(f"  memory per chip{' (tightest stage)' if result.pipeline else ''}: parameters {format_bytes(m.parameters_bytes)}, gradients {format_bytes(m.gradients_bytes)}, "
                 f"optimizer {format_bytes(m.optimizer_bytes)}, activations {format_bytes(m.activations_bytes)} ({m.note})")
    return "\n".join(lines)


def _emit(args, result, table) -> None:
    """The command's result on stdout: `table()` for people, or with --format the whole result as JSON or CSV."""
    form = getattr(args, "format", "table")
    text = (result.model_dump_json(indent=2) if form == "json" else result_csv(result).rstrip("\n") if form == "csv"
            else table())
    print(text, file=getattr(args, "stdout", None) or sys.stdout)


def _answer(args, result, what: str, table) -> None:
    """A command's result: refused if any number in it is not finite (naming `what`), printed for people or as
    --format asks, and written whole to --json when the command has one and it is given."""
    require_finite(result, what)
    _emit(args, result, table)
    if getattr(args, "json", None):
        _write_json(args.json, result.model_dump_json(indent=2), "--json")


def _write_json(path: Path, text: str, flag: str) -> None:
    write_file(path, text + "\n", flag)
    print(f"wrote {path}")


def _profile(args):
    """--profile as given, or, with --force-profile, loaded and marked for another kind of chip (results record it)."""
    if not getattr(args, "force_profile", False):
        return args.profile
    if args.profile is None:
        raise PathsimConfigError("<command line>", "--force-profile", "forces a --profile, and there is none", "add --profile PROFILE")
    return load_profile(args.profile).model_copy(update={"other_chips": True})


def _cmd_simulate(args) -> int:
    result = simulate(args.cluster, args.workload, placement=args.placement, steps=args.steps, seed=args.seed,
                      network=args.network, sampling=args.sampling, profile=_profile(args), dense=args.dense, trace=args.trace)
    _answer(args, result, "the simulated step", lambda: format_simulation(result))
    _say_trace(args)
    return 0


def _say_trace(args) -> None:
    if getattr(args, "trace", None):
        print(f"wrote {args.trace} (open it in https://ui.perfetto.dev)")


def _trace_placement(args, cluster, workload, placement) -> None:
    """--trace of a planning command: the steps of the placement it chose, simulated once more with the trace on."""
    if args.trace:
        simulate(cluster, workload, placement=placement, steps=args.steps, seed=args.seed, sampling=args.sampling,
                 profile=_profile(args), trace=args.trace)
        _say_trace(args)


def format_shared(result: SharedPodResult) -> str:
    head = (f"{result.name} on {result.cluster}: {len(result.jobs)} job(s) on {result.chips_used} of {result.chips} chips, "
            f"{'converged' if result.converged else 'NOT converged'} after {result.rounds} round(s) of interference")
    rows = [(j.name, j.workload, j.chips, format_seconds(j.step_time_alone_s), format_seconds(j.step_time_shared_s),
             f"{j.slowdown:.4f}", f"{j.tokens_per_s_shared:,.0f}", j.shared_links) for j in result.jobs]
    lines = [head, _table(rows, ("job", "workload", "chips", "step alone", "step shared", "slowdown", "tokens/s shared",
                                 "shared links"))]
    if result.contended_links:
        links = [(l.link, ", ".join(f"{name} {100 * u:.1f} %" for name, u in l.utilisation_by_job.items()))
                 for l in result.contended_links]
        lines += ["  busiest links used by more than one job (busy share of each job's step):",
                  _table(links, ("link", "utilisation by job"))]
    else:
        lines.append("  no link carries traffic of more than one job: the jobs are isolated")
    return "\n".join(lines)


def _cmd_share(args) -> int:
    result = simulate_shared(args.jobs, steps=args.steps, seed=args.seed, trace=args.trace)
    _answer(args, result, "the shared pod's steps", lambda: format_shared(result))
    _say_trace(args)
    return 0


def _headroom(report) -> str:
    """A placement's HBM headroom per chip, marked where the plan does not fit."""
    return format_bytes(report.memory_headroom_bytes) + ("" if report.fits else " OVER")


def format_plan(comparison: PlanComparison) -> str:
    c = comparison
    head = (f"{c.workload} on {c.cluster}: {c.experts} experts x {c.moe_layers} MoE layers over expert-parallel groups of "
            f"{c.expert_ranks} ranks ({c.chips} chips), {c.steps} simulated step(s), seed {c.seed}")
    rows = []
    for r in c.reports:
        relative = f"{r.step_time_vs_round_robin:.3f}" if r.step_time_vs_round_robin is not None else "-"
        rows.append((r.policy + (" *" if r.policy == c.best and len(c.reports) > 1 else ""), format_seconds(r.step_time_s), relative,
                     format_seconds(r.all_to_all_s), f"{r.imbalance_mean:.3f} / {r.imbalance_max:.3f}",
                     format_bytes(r.hop_bytes), format_bytes(r.max_link_bytes), f"{r.replicas:g}",
                     _headroom(r), format_seconds(r.plan_time_s)))
    lines = [head, _table(rows, ("policy", "step time", "vs round_robin", "all-to-all", "imbalance mean/max", "hop-bytes",
                                 "max link", "replicas", "HBM headroom", "plan time"))]
    lines.append("  imbalance: max/mean expected tokens per chip; hop-bytes and max link: one forward micro-batch's "
                 "dispatch+combine; step and all-to-all time: simulated")
    lines += [f"  {r.policy}: {r.note}" for r in c.reports if r.note]
    if len(c.reports) > 1:
        lines.append(f"  * best predicted step time: {c.best}")
    return "\n".join(lines)


def _plan_options(args) -> PlanOptions:
    try:
        together = [parse_id_ranges(t).tolist() for t in args.together]
    except ValueError as exc:
        raise PathsimConfigError("<command line>", "--together", str(exc), 'write expert ids like "0-3" or "5,9"') from None
    return validate_model(PlanOptions, {"replicas": args.replicas, "together": together, "eplb_groups": args.eplb_groups,
                                        "eplb_nodes": args.eplb_nodes, "time_budget_s": args.time_budget,
                                        "max_evaluations": args.max_evaluations}, "<command line>",
                          names={"replicas": "--replicas", "together": "--together", "eplb_groups": "--eplb-groups",
                                 "eplb_nodes": "--eplb-nodes", "time_budget_s": "--time-budget",
                                 "max_evaluations": "--max-evaluations"})


def format_task_addition(report: TaskAdditionReport) -> str:
    r = report
    head = (f"adding {r.task} ({r.new_experts} new experts per MoE layer, {r.old_experts} before) to {r.workload} on {r.cluster}; "
            f"step before: {format_seconds(r.step_time_before_s)}; one expert copy moved = {format_bytes(r.expert_copy_bytes)} per chip")
    rows = []
    for o in r.options:
        if o.break_even_steps is None:
            even = "never"
        else:
            even = "-" if o.migration_s == 0 else f"{o.break_even_steps:,.{1 if o.break_even_steps < 100 else 0}f}"
        rows.append((o.name, format_seconds(o.report.step_time_s), f"{o.report.imbalance_mean:.3f}", f"{o.migrated_copies:,}",
                     format_bytes(o.migrated_bytes), format_seconds(o.migration_s), format_seconds(o.step_saving_s), even,
                     _headroom(o.report)))
    return "\n".join([head, _table(rows, ("option", "step time", "imbalance", "copies moved", "bytes moved", "migration",
                                          "saving/step", "break-even steps", "HBM headroom")),
                      "  copies moved: per expert group and tensor rank, all MoE layers; bytes: the whole cluster; migration: "
                      "the moves as one network phase; saving: against keeping old copies in place"])


def format_drift(report: DriftReport) -> str:
    r = report
    names = [s.name for s in r.strategies]
    head = (f"routing drift: {r.workload} on {r.cluster}, {r.windows} windows of {r.steps_per_window:,} steps, "
            f"{r.policy} placements")
    rows = [(w.window, *(f"{w.imbalance[n]:.3f}" for n in names), *(format_seconds(w.step_time_s[n]) for n in names))
            for w in r.windows_detail]
    totals = [(s.name, format_seconds(s.total_time_s), format_bytes(s.migrated_bytes), format_seconds(s.migration_s),
               format_seconds(s.net_gain_s)) for s in r.strategies]
    return "\n".join([head, _table(rows, ("window", *(f"imbalance {n}" for n in names), *(f"step {n}" for n in names))),
                      _table(totals, ("strategy", "total time", "bytes moved", "migration", "net gain vs fixed")),
                      "  re-plans use the previous window's histogram; imbalance: max/mean expected tokens per chip"])


def _cmd_add_task(args, options: PlanOptions) -> int:
    budget = float("inf")
    if args.migration_budget is not None:
        try:
            budget = parse_bytes(args.migration_budget)
        except ValueError as exc:
            raise PathsimConfigError("<command line>", "--migration-budget", str(exc), "write e.g. 500GB, or 0 to move nothing") from None
        if budget < 0:
            raise PathsimConfigError("<command line>", "--migration-budget", f"{args.migration_budget!r} is negative",
                                     "write e.g. 500GB, or 0 to move nothing")
        if not args.out:
            raise PathsimConfigError("<command line>", "--migration-budget", "picks the option --out writes, and there is no --out",
                                     "add --out PLACEMENT.json")
    report, placements, setup = add_task(args.cluster, args.workload, args.from_placement, args.add_task, policy=args.policy,
                                         options=options, seed=args.seed, steps=args.steps, sampling=args.sampling,
                                         profile=_profile(args))
    _answer(args, report, "the task addition", lambda: format_task_addition(report))
    fits = [o for o in report.options if o.migrated_bytes <= budget]
    chosen = min(fits, key=lambda o: o.report.step_time_s)
    _trace_placement(args, args.cluster, setup.workload, placements[chosen.name])
    if args.out:
        path = write_placement(placements[chosen.name], args.out)
        workload_path = write_workload(setup, path.with_suffix(".workload.yaml"))
        print(f"wrote {path} ({chosen.name}) and {workload_path}; use them with "
              f"`pathsim simulate --workload {workload_path} --placement {path}`")
    return 0


def _cmd_drift(args, options: PlanOptions) -> int:
    drift: "str | np.ndarray" = args.drift
    if args.drift.startswith("random-walk"):
        _, _, sigma = args.drift.partition(":")
        try:
            sigma_value = float(sigma)
        except ValueError:
            raise PathsimConfigError("<command line>", "--drift", f"{args.drift!r} gives no random-walk sigma",
                                     "write e.g. --drift random-walk:0.3") from None
        setup = prepare_run(args.cluster, args.workload, seed=args.seed, sampling=args.sampling, profile=_profile(args), place=False)
        drift = random_walk_drift(setup, args.windows, sigma_value, args.seed)
    report = routing_drift(args.cluster, args.workload, drift, policy=args.policy, replan_every=args.replan_every,
                           steps_per_window=args.window_steps, options=options, seed=args.seed, steps=args.steps,
                           sampling=args.sampling, profile=_profile(args))
    _answer(args, report, "the drift study", lambda: format_drift(report))
    return 0


def _cmd_plan(args) -> int:
    options = _plan_options(args)
    modes = [flag for flag, given in (("--compare", args.compare), ("--add-task", args.add_task is not None),
                                      ("--drift", args.drift is not None)) if given]
    if len(modes) > 1:
        raise PathsimConfigError("<command line>", modes[1], f"cannot be combined with {modes[0]}", "run them one at a time")
    if (args.add_task is None) != (args.from_placement is None):
        raise PathsimConfigError("<command line>", "--add-task" if args.add_task is None else "--from",
                                 "--add-task and --from go together", "give the current placement and the task to add")
    if args.add_task is not None:
        return _cmd_add_task(args, options)
    if args.drift is not None:
        if args.trace:
            raise PathsimConfigError("<command line>", "--trace", "a drift study simulates a placement per window, so "
                                     "there is no one run to trace", "trace a window's placement with `pathsim simulate "
                                     "--placement FILE --trace OUT`")
        return _cmd_drift(args, options)
    policies = POLICIES if args.compare else (args.policy,)
    comparison, placements = compare_placements(args.cluster, args.workload, policies, options, seed=args.seed,
                                                steps=args.steps, sampling=args.sampling, profile=_profile(args))
    _answer(args, comparison, "the placement plan", lambda: format_plan(comparison))
    _trace_placement(args, args.cluster, args.workload, placements[comparison.best])
    if args.out:
        path = write_placement(placements[comparison.best], args.out)
        print(f"wrote {path} ({comparison.best}); use it with `pathsim simulate --placement {path}`")
    return 0


# The keys that say what a config file is, beside `extends:` (which says it for a file that only overrides).
_KIND_KEYS = {"shared-pods": ("jobs",), "added-task": ("new_experts",),
              "workloads": ("model", "training", "parallelism", "tasks"), "topologies": ("topology", "chip", "links", "host")}


def _file_kind(ref: str, _seen: tuple[Path, ...] = ()) -> str:
    """What a preset name or YAML file is: "topologies", "workloads", "shared-pods" or "added-task" — by its preset
    folder, its own keys, or else what its `extends:` parent is (followed through files)."""
    for kind in ("topologies", "workloads", "shared-pods"):
        if preset_path(kind, ref) is not None:
            return kind
    path = Path(ref)
    if path.suffix not in (".yaml", ".yml") or path.resolve() in _seen:
        return "topologies"  # loading it as a cluster gives the error (not a preset, not a YAML file, a cycle)
    mapping = read_yaml_mapping(path)
    for kind, keys in _KIND_KEYS.items():
        if any(key in mapping for key in keys):
            return kind
    parent = mapping.get("extends")
    if not isinstance(parent, str):
        return "topologies"
    if not any(preset_path(kind, parent) for kind in ("topologies", "workloads", "shared-pods")) and not Path(parent).is_absolute():
        parent = str(path.parent / parent)
    return _file_kind(parent, (*_seen, path.resolve()))


def _cmd_validate(args) -> int:
    for file in args.files:
        kind = _file_kind(file)
        if kind == "workloads":
            workload = load_workload(file)
            totals = model_totals(workload.model)
            moe = workload.model.moe
            sparse = (f"{moe.experts} experts top-{moe.top_k} in {len(workload.model.moe_layers)} of {workload.model.layers} layers"
                      if moe else f"dense, {workload.model.layers} layers")
            print(f"{file}: ok - workload {workload.name}: {totals.total_params / 1e9:.1f}B parameters "
                  f"({totals.active_params_per_token / 1e9:.1f}B active per token), {sparse}; {len(workload.tasks)} task(s) over "
                  f"{', '.join(workload.modalities)}")
        elif kind == "shared-pods":
            pod = load_shared_pod(file)
            print(f"{file}: ok - shared pod {pod.name}: {len(pod.jobs)} jobs ({', '.join(job.name for job in pod.jobs)})")
        elif kind == "added-task":
            task = read_added_task(file)
            print(f"{file}: ok - task to add {task.name}: {task.share:.0%} of the tokens, {task.new_experts} new experts per "
                  f"MoE layer (use it with `pathsim plan --add-task {file} --from PLACEMENT.json`)")
        else:
            cluster = load_cluster(file)
            topology = build_topology(cluster, source=file)
            info = topology.describe()
            extra = ", ".join(f"{k} {v}" for k, v in info.items() if k not in ("name", "chips", "switches", "links"))
            print(f"{file}: ok - {cluster.name}: {info['chips']} x {cluster.chip.name}, {info['switches']} switches, "
                  f"{info['links']} directed links" + (f"; {extra}" if extra else ""))
    return 0


def _cmd_collective(args) -> int:
    matrix = _load_matrix(args.matrix) if args.matrix else None
    if matrix is not None and args.op != "all_to_all":
        raise PathsimConfigError("<command line>", "--matrix", f"a traffic matrix applies to all_to_all, not {args.op}", "drop --matrix")
    result = run_collective(args.cluster, args.op, args.bytes, model=args.model, groups=args.groups,
                            algorithm=args.algorithm, matrix=matrix)
    _answer(args, result, "the collective", lambda: format_collective(result))
    return 0


def _cmd_report(args) -> int:
    from pathsim.report import build_report, write_report

    report = build_report(args.cluster, args.workload, compare_clusters=tuple(args.compare_cluster), dense=args.dense,
                          run_tokens=parse_given(args.run_tokens, parse_count, "<command line>", "--run-tokens", "--run-tokens 1T"), run_steps=args.run_steps,
                          deadline_s=parse_given(args.deadline, parse_seconds, "<command line>", "--deadline", "--deadline 30d"), steps=args.steps,
                          seed=args.seed, placement=args.placement, profile=_profile(args), price=args.price,
                          provider=args.provider, region=args.region,
                          grid_intensity=parse_given(args.grid_intensity, float, "<command line>", "--grid-intensity", "--grid-intensity 0.4"), pue=args.pue,
                          trace=args.trace)
    _answer(args, report, "the report", lambda: format_report_summary(report))
    out = args.out or Path("out") / f"{report.workload}-on-{report.cluster}"
    written = write_report(report, out)
    print(f"wrote {len(written)} files under {out}/: open {out / 'index.html'}")
    _say_trace(args)
    return 0


def _amount(value: float | None, unit: str) -> str:
    """A report amount in the unit people read: durations as ms, h or days, money in $ with separators."""
    if value is None:
        return "-"
    if unit == "s":
        return format_seconds(value)
    if unit == "USD":
        return format_usd(value)
    return f"{value:,.0f}" if value >= 1e4 else f"{value:.4g}"


def format_report_summary(report) -> str:
    rows = [(h.metric, "" if h.unit in ("s", "USD") else h.unit, _amount(h.per_step, h.unit), _amount(h.per_million_tokens, h.unit),
             _amount(h.per_run, h.unit)) for h in report.headline]
    lines = [report.title, "  " + report.verdict, _table(rows, ("metric", "unit", "per step", "per million tokens", "per run"))]
    lines += ["  " + text for text in (report.comparison.statement if report.comparison else "", report.recommendation) if text]
    return "\n".join(lines)


def _cmd_fidelity(args) -> int:
    from pathsim.fidelity import format_suite, run_suite, suite_entries
    suite = run_suite(suite_entries(args.only, slow=args.slow))
    _answer(args, suite, "the validation suite", lambda: format_suite(suite))
    if args.residuals:
        from pathsim.fidelity import residuals
        _write_json(args.residuals, json.dumps(residuals(suite), indent=1), "--residuals")
    if args.out:
        from pathsim.report.fidelity_page import write_fidelity_page
        write_fidelity_page(suite, args.out)
        print(f"wrote {args.out / 'index.html'}")
    return 0


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # in sys.modules as None: imports of it are blocked
        return False


def _cmd_calibrate(args) -> int:
    if args.host_devices < 1 or (args.devices is not None and args.devices < 1):
        raise PathsimConfigError("<arguments>", "--devices" if args.host_devices >= 1 else "--host-devices",
                                 "must be at least 1", "give a positive device count")
    if args.validate and args.end_to_end is not None:
        raise PathsimConfigError("<arguments>", "--end-to-end", "cannot run with --validate",
                                 "run `pathsim calibrate --validate PROFILE` and `pathsim calibrate --end-to-end PROFILE` apart")
    # A bad profile fails before jax starts.
    profile = load_profile(args.validate or args.end_to_end) if (args.validate or args.end_to_end) else None
    if profile is not None and not profile.dtypes:
        raise PathsimConfigError(str(args.validate or args.end_to_end), "dtypes",
                                 "holds no measured fits (documented defaults cannot be checked against this machine)",
                                 "use a profile written by `pathsim calibrate`")
    if not _installed("jax"):  # an optional dependency: only calibration runs JAX
        raise PathsimConfigError("<command line>", "calibrate", "measures this machine with JAX, which is not installed",
                                 'pip install "pathsim[calibrate]" (or pip install jax)')
    from pathsim.calibration.environment import force_host_devices

    force_host_devices(args.host_devices)  # before jax starts
    from pathsim.calibration.run import calibrate, stored_validation, validate
    from pathsim.calibration.validation import format_report

    mode = "quick" if args.quick else None
    wanted = args.devices or (profile.devices if profile is not None else None)
    if wanted is not None:
        import jax

        if wanted > len(jax.devices()):
            what = "--devices" if args.devices else f"{args.validate or args.end_to_end}: devices"
            raise PathsimConfigError("<arguments>", what, f"asks for {wanted} devices, JAX sees {len(jax.devices())}",
                                     f"use at most {len(jax.devices())} with --devices (or raise --host-devices on a CPU)")
    reports = {}
    report = None
    if args.validate:
        report = validate(profile, mode=mode, devices=args.devices, progress=not args.no_progress)
    elif not args.end_to_end:
        profile = calibrate(mode or "full", dtypes=tuple(args.dtypes) if args.dtypes else None, devices=args.devices,
                            seed=args.seed, name=args.name, progress=not args.no_progress)
        out = args.out or (Path("calibration/profiles") if Path("calibration/profiles").is_dir() else Path(".")) / f"{profile.name}.json"
        _write_json(out, profile.model_dump_json(), "--out")  # compact: it carries every raw repeat
        print(f"{profile.device_kind}: {profile.devices} device(s); "
              + "; ".join(f"{d} best {format_flops(f.peak_flops)}, {format_bandwidth(f.hbm_bandwidth)}" for d, f in profile.dtypes.items())
              + (f"; link {format_bandwidth(profile.network.link_bandwidth)}, {format_seconds(profile.network.latency_s)} latency"
                 if profile.network else ""))
        print(f"use it with `pathsim simulate --profile {out} ...`")
        report = stored_validation(profile)
    if report is not None:
        print(format_report(report, detail=args.detail))
        reports["validation"] = report.model_dump(mode="json")
    if args.end_to_end is not None:
        from pathsim.calibration.end_to_end import end_to_end, format_end_to_end

        dtype = args.dtypes[0] if args.dtypes else None
        if dtype is not None and dtype not in profile.dtypes:
            raise PathsimConfigError(str(args.end_to_end or "--dtypes"), "dtypes", f"has no fit for {dtype}",
                                     f"use one of {sorted(profile.dtypes)}")
        checked = end_to_end(profile, dtype=dtype, devices=args.devices)
        print(format_end_to_end(checked))
        reports["end_to_end"] = checked.model_dump(mode="json")
    if args.json:
        _write_json(args.json, json.dumps(reports, indent=2), "--json")
    return 0


COMMANDS = {"validate": _cmd_validate, "collective": _cmd_collective, "simulate": _cmd_simulate,
            "share": _cmd_share, "plan": _cmd_plan, "report": _cmd_report, "calibrate": _cmd_calibrate,
            "fidelity": _cmd_fidelity}
