"""``pathsim.simulate``: one call from configs to a SimulationResult.

    result = pathsim.simulate("tpu-v4-8x8x8", "switch-base-128", steps=3, seed=0)

Stages, each in its own module: configs (cluster, workload) → topology and
layout → placement → routing plan → per-step: routing samples → op costs →
SimPy schedule → aggregated result (and optionally a Perfetto trace).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from pathsim.cluster import ClusterConfig
from pathsim.collectives import LinkUsage
from pathsim.device import DeviceProfile
from pathsim.builders.pipeline import Pipeline, bubble_fraction
from pathsim.builders.training import TrainingStep
from pathsim.engine import Span, StepRun, run_graph
from pathsim.engine.categories import category
from pathsim.engine.collector import collector_paused
from pathsim.engine.table import SpanTable, added_in_order
from pathsim.energy import STATES, ChipActivity, power_inputs, state_timeline, step_energy
from pathsim.errors import PathsimConfigError
from pathsim.network.linear import add_link_bytes
from pathsim.memory import expert_slots_on_busiest_chip, memory_per_chip
from pathsim.model_math import model_totals
from pathsim.placement import Placement
from pathsim.result import (Breakdown, CommunicationTotals, LayerLoad, ModalityLoad, PipelineSummary, SimulationDetail,
                            SimulationResult, StageSummary, StepTimeStats, TaskLoad, TimelineSpan)
from pathsim.routing import LoadSample, step_rng
from pathsim.run_setup import RunSetup, prepare_run
from pathsim.step_ops import StepCoster
from pathsim.topology import FatTree, MultiSlice, Torus
from pathsim.trace import TraceRecorder
from pathsim.uncertainty import energy_band, run_regime, step_time_band
from pathsim.workload import WorkloadConfig

MAX_STEPS = 10_000


def simulate(cluster: "str | Path | dict | ClusterConfig", workload: "str | Path | dict | WorkloadConfig", *,
             placement: "str | Path | Placement | None" = None, steps: int = 1, seed: int = 0,
             network: str = "fast", sampling: str = "auto", profile: "str | Path | DeviceProfile | None" = None,
             dense: Literal["active_flops", "total_params"] | None = None,
             trace: "str | Path | None" = None, detail: bool = False) -> SimulationResult:
    """Simulate `steps` training steps of `workload` on `cluster`.

    ``placement`` is a policy name (planned here with default options; see
    ``pathsim.plan`` for replicas and constraints), a placement JSON or a
    Placement. ``dense`` simulates the workload's dense counterpart instead
    (same activated FLOPs or same total parameters); ``trace`` writes a
    Perfetto trace; ``detail`` adds the timeline of one step, every link's
    utilisation and every expert's load per task (``result.detail``), which
    reports plot.
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= MAX_STEPS:
        raise PathsimConfigError("<arguments>", "steps", f"must be an integer from 1 to {MAX_STEPS}, got {steps!r}", "e.g. --steps 5")
    setup = prepare_run(cluster, workload, seed=seed, network=network, sampling=sampling, profile=profile, dense=dense,
                        placement=placement)
    return run_steps(setup, int(steps), trace, detail)


def run_steps(setup: RunSetup, steps: int, trace: "str | Path | TraceRecorder | None" = None, detail: bool = False,
              trace_title: str | None = None) -> SimulationResult:
    """Simulate `steps` steps of a prepared run, with the placement it holds. `trace`: a file to write the steps'
    trace to, or a TraceRecorder to add them to (under `trace_title`, which replaces an earlier run of that title)."""
    workload, layout, placement = setup.workload, setup.layout, setup.placement
    if setup.plan is not None and placement is None:
        raise ValueError("an MoE run needs its placement resolved first (prepare_run places, or setup.with_placement)")

    def coster(stage: int = 0, held=None) -> StepCoster:
        return StepCoster(workload, layout.for_stage(stage), setup.topology, setup.network, setup.device, placement, held)

    builder = Pipeline(workload, coster) if layout.pipeline > 1 else TrainingStep(coster())
    runs: list[StepRun] = []
    routings: list[list[LoadSample]] = []
    with collector_paused():  # (a step leaves no cycles: what it drops, reference counting frees at once)
        for step in range(steps):
            graph, samples = builder.step_graph(setup.plan, placement, step_rng(setup.seed, step))
            runs.append(run_graph(graph))
            del graph
            routings += samples
        if trace is not None:
            recorder = trace if isinstance(trace, TraceRecorder) else TraceRecorder()
            recorder.add(trace_title or f"{workload.name} on {setup.cluster.name}", runs, setup.topology,
                         power_inputs(setup.cluster, setup.topology, layout.all_chips()))
            if recorder is not trace:
                recorder.write(trace)
        result = _result(setup.cluster, workload, setup.device_profile, setup.topology, layout, builder.coster,
                         placement, setup.plan, runs, routings, setup.network_name, setup.seed, detail,
                         builder if isinstance(builder, Pipeline) else None)
        del runs, routings, builder  # freed before the collector resumes, so it never walks them
    return result


def _pipeline_summary(pipeline: Pipeline, paths: dict[str, dict[str, float]], steps: int, workload: WorkloadConfig,
                      placement, hbm_bytes: float, mean_time: float) -> PipelineSummary:
    """Each stage's layers, bubble (from its critical path, summed over `steps`) and memory."""
    stages = []
    for s, held in enumerate(pipeline.held):
        bubble = paths[f"stage {s}"]["pipeline_bubble_s"] / steps
        coster = pipeline.costers[s]
        memory = memory_per_chip(workload, coster.layout, expert_slots_on_busiest_chip(workload, placement, held), hbm_bytes, held)
        stages.append(StageSummary(stage=s, layers=list(held.layers), busy_s=mean_time - bubble, bubble_s=bubble, memory=memory))
    tightest = min(stages, key=lambda st: (st.memory.headroom_bytes, st.stage)).stage
    return PipelineSummary(stages=pipeline.stages, schedule=pipeline.schedule, virtual_stages=pipeline.virtual,
                           micro_batches=pipeline.micro_batches,
                           bubble_fraction=float(np.mean([st.bubble_s for st in stages]) / mean_time),
                           closed_form_bubble_fraction=bubble_fraction(pipeline.stages, pipeline.micro_batches, pipeline.virtual,
                                                                       pipeline.schedule),
                           tightest_stage=tightest, per_stage=stages)


def _union_s(starts: np.ndarray, ends: np.ndarray) -> float:
    """Total length of the union of the intervals [starts[i], ends[i]]."""
    if len(starts) == 0:
        return 0.0
    order = np.lexsort((ends, starts))  # (by start, then end)
    starts, ends = starts[order], ends[order]
    reach = np.maximum.accumulate(ends)
    after = np.maximum(starts, np.concatenate([[-np.inf], reach[:-1]]))  # what each adds past those before
    return float(np.clip(ends - after, 0.0, None).sum())


def _holders(table: SpanTable, names: set[str] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per resource (of `names`, by default all), the (start, end, category) of the spans that held it, in time
    order. A stream's own spans never overlap its own waits (it runs one op at a time), so one index serves every
    stream."""
    on: dict[str, list[np.ndarray]] = {}
    for code, held in enumerate(table.helds):  # (few distinct sets of resources: one per kind of op and group)
        wanted = [name for name in held if names is None or name in names]
        if wanted:
            rows = np.flatnonzero(table.held_code == code)
            for name in wanted:
                on.setdefault(name, []).append(rows)
    out = {}
    for name, parts in on.items():
        rows = np.concatenate(parts)
        starts, ends, categories = table.start[rows], table.end[rows], table.category_names[rows]
        order = np.lexsort((categories, ends, starts))  # (by start, end, then category)
        out[name] = (starts[order], ends[order], categories[order])
    return out


def _wait_causes(spans: list[Span], stream: str = "main", held=None) -> dict[str, float]:
    """Seconds `stream` waited for a resource, split by the category of the ops that held that resource meanwhile
    (one op holds a resource at a time, so they fill each wait); `held`: :func:`_holders` of the run's spans, if
    built."""
    held = _holders(SpanTable(spans)) if held is None else held
    causes: dict[str, float] = {}
    for span in spans:
        if span.stream != stream:
            continue
        for name, lo, hi in span.waits:
            overlap: dict[str, float] = {}
            if name in held:
                starts, ends, categories = held[name]
                first, last = np.searchsorted(ends, lo, side="right"), np.searchsorted(starts, hi, side="left")
                seconds = np.minimum(ends[first:last], hi) - np.maximum(starts[first:last], lo)
                for category, value in zip(categories[first:last], seconds):
                    overlap[str(category)] = overlap.get(str(category), 0.0) + float(value)
            total = sum(overlap.values())
            if total <= 0:  # a wait too short to show against the spans' float times
                overlap, total = {"grad_sync": 1.0}, 1.0
            for category, value in overlap.items():
                causes[category] = causes.get(category, 0.0) + (hi - lo) * value / total
    return causes


def critical_path(run: StepRun, stream: str, into: dict[str, float], table: SpanTable, held) -> None:
    """Add where one critical stream's step went to `into`: seconds by breakdown field (they add up to the step
    time), and its compute and all-to-all busy seconds (``compute_busy``, ``all_to_all_busy``). `table`: the
    run's spans as a :class:`SpanTable`; `held`: :func:`_holders` of them.

    Its own ops count by their category (an expert FFN's wait for the slowest chip as straggler); its waits for a
    resource go to whoever held it; its recorded waits for a dependency (a pipeline stage's input) by theirs;
    whatever is left before its last op is the gradient sync it waited for before the optimizer, and after its
    last op, waiting for the other stages to finish, a pipeline bubble. Each figure is summed span after span,
    in the order they ran, so it is the same float however the spans are selected."""
    rows = table.of_stream(stream)
    spans = table.spans
    waiting = [spans[i] for i in rows[table.waited[rows]]]
    for cause, seconds in _wait_causes(waiting, stream, held).items():
        into[category(cause).field] += seconds
    duration = table.end[rows] - table.start[rows]
    codes = table.category_code[rows]
    busy = added_in_order(0.0, duration)
    waited = 0.0
    for span in waiting:
        waited += span.waited_s
    for code, key in enumerate(table.categories):
        mine = codes == code
        if not mine.any():
            continue
        if key == "compute":
            straggler = table.straggler[rows][mine]
            into["compute_s"] = added_in_order(into["compute_s"], duration[mine] - straggler)
            into["straggler_s"] = added_in_order(into["straggler_s"], straggler)
        else:
            field = category(key).field
            into[field] = added_in_order(into[field], duration[mine])
        if key == "all_to_all":
            into["all_to_all_busy"] = added_in_order(into["all_to_all_busy"], duration[mine])
    into["compute_busy"] = added_in_order(into["compute_busy"], duration[table.on_compute[rows]])
    idle = 0.0
    for gap in run.idle:
        if gap.stream == stream:  # few: one per bubble
            into[category(gap.category).field] += gap.end_s - gap.start_s
            idle += gap.end_s - gap.start_s
    end = float(table.end[rows].max()) if len(rows) else 0.0
    into["pipeline_bubble_s"] += run.step_time_s - end
    into["grad_sync_exposed_s"] += end - busy - waited - idle


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q, method="linear"))


def _result(cluster, workload: WorkloadConfig, profile, topology, layout, coster, placement, plan, runs, routings,
            network, seed, detail: bool, pipeline: Pipeline | None = None) -> SimulationResult:
    times = np.array([r.step_time_s for r in runs])
    mean_time = float(times.mean())

    # Critical path by cause of each critical stream (one per group of chips), summed over steps.
    paths = {stream: dict.fromkeys([*Breakdown.model_fields, "compute_busy", "all_to_all_busy"], 0.0)
             for stream in runs[0].critical}
    by_group: list[list[np.ndarray]] = []  # per run, per group: its rows of the run's table (for the chips' states)
    tables: list[SpanTable] = []
    grad_total = gather_total = 0.0
    link_bytes = np.zeros(topology.num_links)
    hardware_flops = 0.0
    for run in runs:
        table = SpanTable(run.spans)
        # Pipelined buckets overlap each other on the slice's network and the DCN: count wall time, not op time.
        grad, gather = table.of_category("grad_sync"), table.of_category("weight_gather")
        grad_total += _union_s(table.start[grad], table.end[grad])
        gather_total += _union_s(table.start[gather], table.end[gather])
        # Ops priced once and run many times (a pipeline's sends, a layer's collectives) share their link bytes:
        # add each array once, times its count, rather than once per span.
        counted: dict[int, list] = {}
        for op in table.ops:
            if op.link_bytes is not None:
                counted.setdefault(id(op.link_bytes), [op.link_bytes, 0])[1] += 1
        # each group (pipeline stage) is 1/groups of the chips
        hardware_flops = added_in_order(hardware_flops, table.flops[table.on_compute] / run.groups)
        waited: set[str] = set()  # resources some op waited for
        for i in table.rows(table.waited):
            waited.update(name for name, _, _ in run.spans[i].waits)
        add_link_bytes(link_bytes, [(record, count) for record, count in counted.values()])
        by_group.append([table.of_group(g) for g in range(run.groups)])
        tables.append(table)
        held = _holders(table, waited)
        for stream in run.critical:
            critical_path(run, stream, paths[stream], table, held)
    # The mean chip: each critical stream is one group of chips, all groups equal in size.
    sums = {key: sum(path[key] for path in paths.values()) / len(paths) for key in paths[runs[0].critical[0]]}
    compute_busy, a2a_total = sums.pop("compute_busy"), sums.pop("all_to_all_busy")
    n = len(runs)
    breakdown = Breakdown(**{k: v / n for k, v in sums.items()})
    comm = CommunicationTotals(all_to_all_s=a2a_total / n, grad_sync_s=grad_total / n,
                               grad_sync_hidden_s=max(0.0, grad_total / n - breakdown.grad_sync_exposed_s),
                               weight_gather_s=gather_total / n,
                               exposed_communication_s=mean_time - compute_busy / n)

    totals = model_totals(workload.model)
    tokens = workload.training.tokens_per_step
    model_flops = 3.0 * totals.forward_flops_per_token * tokens
    if plan is not None:  # dropped assignments skip their expert: that work is not done
        dropped_assignments = sum(float(r.dropped.sum()) for batch in routings for r in batch) / len(runs)
        model_flops -= 3.0 * 2.0 * coster.shapes.expert_params * dropped_assignments
    # MFU is against the datasheet peak, whatever a measured profile says the chip reaches.
    # (an emulated dtype's against the rate of the dtype its matrix units multiply it in)
    matrix_dtype = cluster.chip.matrix_dtype(workload.model.dtype)
    datasheet_peak = cluster.chip.peak_flops[matrix_dtype] if matrix_dtype else coster.device.peak_flops
    peak = datasheet_peak * layout.total_chips
    utilisation = link_bytes / topology.link_bandwidth / times.sum()
    hottest = np.argsort(-utilisation, kind="stable")[:5]

    routed = _summed_routed(routings) if plan is not None and routings and routings[0] else None
    tasks, modalities, layers, dropped_fraction = _loads(workload, routings, routed)
    # The mean chip's states: each group of chips (pipeline stage) from its own ops, all groups equal in size.
    timelines = [state_timeline(table, run.step_time_s, rows)
                 for run, table, groups in zip(runs, tables, by_group) for rows in groups]
    energy = step_energy(ChipActivity.mean_of(timelines), power_inputs(cluster, topology, layout.all_chips()))
    summary = (_pipeline_summary(pipeline, paths, n, workload, placement, cluster.chip.hbm_bytes, mean_time)
               if pipeline else None)
    if summary is not None:
        memory = summary.per_stage[summary.tightest_stage].memory
    else:
        memory = memory_per_chip(workload, layout, expert_slots_on_busiest_chip(workload, placement), cluster.chip.hbm_bytes)
    gpu = isinstance(topology, FatTree)
    kind, extra = run_regime(gpu, layout.pipeline > 1, plan is not None, gpu and layout.total_chips > topology.gpus_per_node)
    banded = gpu or isinstance(topology, (Torus, MultiSlice))
    band = step_time_band(mean_time, kind, extra) if banded else None
    joules_band = energy_band(energy.it_j(), kind, extra) if banded else None
    parallelism = dict(data=layout.data // layout.context, tensor=layout.tensor, expert=layout.expert,
                       expert_groups=layout.expert_groups, slices=layout.slices)
    if layout.context > 1:
        parallelism["context"] = layout.context
    if layout.pipeline > 1:
        parallelism["pipeline"] = layout.pipeline
    return SimulationResult(
        cluster=cluster.name, workload=workload.name, chips=layout.total_chips,
        parallelism=parallelism,
        parallelism_axes=layout.axes,
        placement=placement.policy if placement else "none", network_model=network,
        sampling=plan.sampling if plan else "none", seed=seed, steps=n,
        step_time=StepTimeStats(mean_s=mean_time, p50_s=_percentile(times, 50), p99_s=_percentile(times, 99),
                                min_s=float(times.min()), max_s=float(times.max()), per_step_s=times.tolist()),
        breakdown=breakdown, communication=comm,
        tokens_per_step=tokens, tokens_per_s=tokens / mean_time,
        model_flops_per_step=model_flops, mfu=model_flops / (mean_time * peak),
        hfu=hardware_flops / n / mean_time / datasheet_peak,
        total_params=totals.total_params, active_params_per_token=totals.active_params_per_token,
        dropped_fraction=dropped_fraction, tasks=tasks, modalities=modalities, layers=layers,
        max_link_utilisation=float(utilisation.max(initial=0.0)),
        hottest_links=[LinkUsage(link=topology.link_label(int(i)), link_class=str(topology.link_class[i]),
                                 bytes=float(link_bytes[i] / n), utilisation=float(utilisation[i])) for i in hottest],
        memory=memory, pipeline=summary,
        events_per_step=int(np.mean([r.events for r in runs])),
        step_time_band=band,
        energy_band=joules_band,
        energy=energy,
        detail=_detail(runs, timelines[::runs[0].groups], times, utilisation, workload, routed, n) if detail else None,
        inputs={"cluster": cluster.model_dump(mode="json"), "workload": workload.model_dump(mode="json"),
                "device_profile": profile.model_dump(mode="json")},
    )


def _detail(runs: list[StepRun], timelines, times: np.ndarray, utilisation: np.ndarray, workload: WorkloadConfig,
            routed: np.ndarray | None, steps: int) -> SimulationDetail:
    """`routed`: :func:`_summed_routed` of the run's routing samples (None for a dense model)."""
    shown = int(np.argmin(np.abs(times - np.median(times))))
    spans = [TimelineSpan(name=s.op.name, category=s.op.category, resource=s.op.resource, stream=s.stream, layer=s.op.layer,
                          start_s=s.start_s, end_s=s.end_s, straggler_s=s.op.straggler_s, waited_s=s.waited_s,
                          group=s.group)
             for s in sorted(runs[shown].op_spans(), key=lambda s: (s.start_s, s.end_s))]
    expert_load: list[list[float]] = []
    hottest_layer = -1
    if routed is not None:
        per_step = routed / steps  # (layers, tasks, experts)
        j = int(np.argmax(_max_over_mean(per_step.sum(axis=1))))
        hottest_layer, expert_load = workload.model.moe_layers[j], per_step[j].tolist()
    states = timelines[shown]
    return SimulationDetail(timeline_step=shown, timeline=spans, state_boundaries_s=states.boundaries_s.tolist(),
                            states=[STATES[i] for i in states.states], link_utilisation=utilisation.tolist(),
                            expert_load_layer=hottest_layer, expert_load=expert_load)


def _summed_routed(routings: list[list[LoadSample]]) -> np.ndarray:
    """Assignments routed to each expert (layers × tasks × experts), summed over every sample (step and
    micro-batch): whole counts, so any order of summing gives the same floats. (Not stacked first: DeepSeek-V3's
    step alone would stack 57 MB.)"""
    total = np.zeros((len(routings[0]), *routings[0][0].routed.shape))
    for batch in routings:
        for j, sample in enumerate(batch):
            total[j] += sample.routed
    return total


def _max_over_mean(load: np.ndarray, axis: int = -1) -> np.ndarray:
    mean = load.mean(axis=axis)
    return np.divide(load.max(axis=axis), mean, out=np.ones_like(mean), where=mean > 0)


def _loads(workload: WorkloadConfig, routings: list[list[LoadSample]], routed: np.ndarray | None):
    """Per task, per modality and per layer: routed load, skew and drops, over all steps and micro-batches.
    `routed`: :func:`_summed_routed` of `routings` (None for a dense model)."""
    names = [t.name for t in workload.tasks]
    step_tokens = np.array([float(t.share * workload.training.tokens_per_step) for t in workload.tasks])
    if routed is None:
        tasks = [TaskLoad(task=t.name, modality=t.modality, tokens_per_step=step_tokens[i], assignments_routed=0.0,
                          dropped_fraction=0.0, max_over_mean_expert_load=1.0) for i, t in enumerate(workload.tasks)]
        modalities = [ModalityLoad(modality=m, tasks=[t.name for t in workload.tasks if t.modality == m],
                                   dropped_fraction=0.0, max_over_mean_expert_load=1.0) for m in workload.modalities]
        return tasks, modalities, [], 0.0
    dropped = np.array([[r.dropped for r in batch] for batch in routings])  # (samples, layers, tasks)
    chip_skew = np.array([[r.chip_max_over_mean for r in batch] for batch in routings])  # (samples, layers)
    per_task_routed = routed.sum(axis=(0, 2))
    per_task_dropped = dropped.sum(axis=(0, 1))
    task_skew = _max_over_mean(routed, axis=-1).mean(axis=0)  # (tasks,)
    tasks = [TaskLoad(task=t.name, modality=t.modality, tokens_per_step=step_tokens[i],
                      assignments_routed=float(per_task_routed[i] / len(routings) * workload.training.micro_batches),
                      dropped_fraction=float(per_task_dropped[i] / per_task_routed[i]) if per_task_routed[i] else 0.0,
                      max_over_mean_expert_load=float(task_skew[i])) for i, t in enumerate(workload.tasks)]
    modalities = []
    for m in workload.modalities:
        members = [i for i, t in enumerate(workload.tasks) if t.modality == m]
        m_routed = routed[:, members].sum(axis=1)  # (layers, experts)
        total = per_task_routed[members].sum()
        modalities.append(ModalityLoad(modality=m, tasks=[names[i] for i in members],
                                       dropped_fraction=float(per_task_dropped[members].sum() / total) if total else 0.0,
                                       max_over_mean_expert_load=float(_max_over_mean(m_routed).mean())))
    layer_routed = routed.sum(axis=1)  # (layers, experts)
    layer_dropped = dropped.sum(axis=(0, 2))
    layers = [LayerLoad(layer=int(layer), max_over_mean_expert_load=float(_max_over_mean(layer_routed[j])),
                        max_over_mean_chip_load=float(chip_skew[:, j].mean()),
                        dropped_fraction=float(layer_dropped[j] / layer_routed[j].sum()))
              for j, layer in enumerate(workload.model.moe_layers)]
    return tasks, modalities, layers, float(per_task_dropped.sum() / per_task_routed.sum())
