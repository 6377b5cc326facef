"""The report's figures, drawn with matplotlib's object API (no pyplot state, no display needed).

Each function takes the report's data and returns a :class:`Figure` plus the
rows behind it (written next to the figure as CSV), so every plotted number
can be checked and re-plotted.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator
from matplotlib.transforms import offset_copy

from pathsim.cluster import ClusterConfig
from pathsim.report.content import ClusterOption
from pathsim.energy import STATES, StateTimeline, power_timeline
from pathsim.result import SimulationResult
from pathsim.engine import DCN
from pathsim.engine.categories import CATEGORIES
from pathsim.topology import FatTree, MultiSlice, Torus, build_topology
from pathsim.topology.torus import AXIS_NAMES
from pathsim.units import format_seconds

# One colour per cause (pathsim.engine.categories), used by every figure that shows it.
CAUSE_COLOURS = {c.label: c.colour for c in CATEGORIES}
CATEGORY_COLOURS = {**{c.key: c.colour for c in CATEGORIES}, "dcn": "#DA8BC3"}
STATE_COLOURS = {"compute": "#4C72B0", "communication": "#DD8452", "idle": "#BBBBBB"}
ENERGY_COLOURS = {"chips: compute": "#4C72B0", "chips: communication": "#DD8452", "chips: idle": "#BBBBBB",
                  "hosts": "#55A868", "network": "#937860", "facility overhead (PUE)": "#C44E52"}


def plain_text(draw):
    """Draw with matplotlib's mathtext off for every text made here: names come from users' files, and a `$\\bogus$`
    in one would be parsed as TeX and fail the whole report. Tick labels matplotlib makes itself when the figure
    renders (a log axis's 10^k) keep their mathtext: rendering is outside."""
    @functools.wraps(draw)
    def drawn(*args, **kwargs):
        with matplotlib.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)
    return drawn


@dataclass
class Drawn:
    """A figure and the table of numbers it plots."""

    name: str
    title: str
    caption: str
    figure: Figure
    columns: list[str]
    rows: list[list]


def png_bytes(figure: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG, without the matplotlib version stamp (the same inputs give the same bytes)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None}, bbox_inches="tight")
    return buffer.getvalue()


def _footer(figure: Figure, text: str) -> None:
    """A note under the whole figure (below its bottom edge, so it never covers an axis label)."""
    below = offset_copy(figure.transFigure, fig=figure, y=-6, units="points")
    figure.text(0.01, 0.0, text, transform=below, fontsize=7, color="#555555", ha="left", va="top")


@plain_text
def breakdown_figure(variants: list[tuple[str, SimulationResult]]) -> Drawn:
    """Where a step's time goes, one bar per simulated variant, as shares of its step time."""
    figure = Figure(figsize=(9, 1.1 + 0.55 * len(variants)))
    ax = figure.add_subplot()
    # The legend names the causes some variant has (a run without sharded weights gathers none).
    causes = [cause for cause, _ in variants[0][1].breakdown.causes()
              if any(dict(result.breakdown.causes())[cause] > 0 for _, result in variants)]
    rows = []
    for y, (label, result) in enumerate(variants):
        total = result.breakdown.total_s() or 1.0
        left = 0.0
        for cause, seconds in result.breakdown.causes():
            share = seconds / total
            ax.barh(y, share, left=left, color=CAUSE_COLOURS[cause], edgecolor="white", linewidth=0.5)
            if share > 0.07:
                ax.text(left + share / 2, y, f"{100 * share:.0f}%", ha="center", va="center", fontsize=7, color="white")
            left += share
            rows.append([label, cause, seconds, share])
        ax.text(1.01, y, f"{format_seconds(result.step_time.mean_s)} per step", va="center", fontsize=8)
    ax.set_yticks(range(len(variants)), [label for label, _ in variants], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the step (critical path, mean step)")
    ax.legend(handles=[Patch(color=CAUSE_COLOURS[c], label=c) for c in causes], ncols=len(causes), fontsize=7,
              loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    figure.subplots_adjust(left=0.3, right=0.85)
    return Drawn("step_breakdown", "Where a step's time goes",
                 "Critical path of the mean simulated step by cause; the causes add up to the step time.",
                 figure, ["variant", "cause", "seconds", "share"], rows)


@plain_text
def gantt_figure(result: SimulationResult) -> Drawn:
    """One step as it ran: ops per stream of work, and the IT power it drew."""
    detail = result.detail
    figure = Figure(figsize=(11, 4.2))
    grid = figure.add_gridspec(2, 1, height_ratios=[3, 1.3], hspace=0.08)
    ax = figure.add_subplot(grid[0])
    tracks = ["compute", "all_to_all", "tensor_parallel", "grad_sync"]
    if any(s.category == "weight_gather" for s in detail.timeline):
        tracks.insert(3, "weight_gather")  # sharded weights (ZeRO-3): their gathers get their own row
    if any(s.category == "pipeline_p2p" for s in detail.timeline):
        tracks.append("pipeline_p2p")  # activations and their gradients between pipeline stages
    if any(s.resource == DCN for s in detail.timeline):
        tracks.append("dcn")  # a multi-slice cluster: what crosses the data-center network gets its own row
    names = {**{c.key: c.track for c in CATEGORIES}, "dcn": "DCN (between slices)"}
    stages = result.pipeline.stages if result.pipeline else 1
    if stages > 1:  # one compute row per pipeline stage: its bubbles are the gaps
        tracks = [f"stage {g}" for g in range(stages)] + tracks[1:]
        names.update({f"stage {g}": f"stage {g} compute" for g in range(stages)})

    def row_of(s) -> str:
        kind = "dcn" if s.resource == DCN else s.category
        return f"stage {s.group}" if stages > 1 and kind in ("compute", "optimizer") else kind

    rows = []
    for category in tracks + ["optimizer"]:
        spans = [s for s in detail.timeline if row_of(s) == category]
        if not spans:
            continue
        y = tracks.index("compute" if category == "optimizer" else category)
        busy = [(s.start_s, s.end_s - s.start_s - s.straggler_s) for s in spans]
        colours = (CATEGORY_COLOURS[category] if category in CATEGORY_COLOURS
                   else [CATEGORY_COLOURS[s.category] for s in spans])  # a stage's row: compute and its optimizer step
        ax.broken_barh(busy, (y - 0.35, 0.7), facecolors=colours, linewidth=0)
        tails = [(s.end_s - s.straggler_s, s.straggler_s) for s in spans if s.straggler_s > 0]
        if tails:
            ax.broken_barh(tails, (y - 0.35, 0.7), facecolors=CAUSE_COLOURS["straggler"], linewidth=0)
        rows += [[s.name, s.category, s.stream, s.layer, s.start_s, s.end_s, s.straggler_s, s.waited_s] for s in spans]
    ax.set_yticks(range(len(tracks)), [names[t] for t in tracks], fontsize=8)
    ax.invert_yaxis()
    step_s = result.detail.state_boundaries_s[-1]
    ax.set_xlim(0, step_s)
    ax.tick_params(labelbottom=False)
    shown = ["compute", *(t for t in tracks if not t.startswith("stage ") and t != "compute")]
    ax.legend(handles=[Patch(color=CATEGORY_COLOURS[c], label=names[c]) for c in shown]
              + [Patch(color=CATEGORY_COLOURS["optimizer"], label="optimizer")]  # drawn on the compute row
              + [Patch(color=CAUSE_COLOURS["straggler"], label="waiting for the slowest chip")],
              ncols=6, fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)

    power = figure.add_subplot(grid[1], sharex=ax)
    inputs = result.energy.inputs
    chip_watts = inputs.chip_watts()
    states = StateTimeline(np.array(detail.state_boundaries_s), np.array([STATES.index(s) for s in detail.states]))
    boundaries, watts = power_timeline(states, inputs)
    power.stairs(watts / 1e3, boundaries, color="black", linewidth=0.8)
    for state in STATES:
        mask = np.array([s == state for s in detail.states])
        if mask.any():
            power.broken_barh(list(zip(boundaries[:-1][mask], np.diff(boundaries)[mask])), (0, 1), facecolors=STATE_COLOURS[state],
                              alpha=0.35, transform=power.get_xaxis_transform(), linewidth=0)
    power.set_ylim(0, watts.max(initial=1.0) / 1e3 * 1.15)
    power.set_ylabel("IT power (kW)", fontsize=8)
    power.set_xlabel("time in the step (s)")
    power.legend(handles=[Patch(color=STATE_COLOURS[s], alpha=0.5, label=f"mean chip {s}") for s in STATES], fontsize=7,
                 ncols=3, loc="lower right", frameon=False)
    _footer(figure, f"Step {detail.timeline_step} of {result.steps} (the one nearest the median). Power: {inputs.chips} chips at "
                    f"{chip_watts['idle']:.0f}/{chip_watts['communication']:.0f}/{chip_watts['compute']:.0f} W idle/communicating/"
                    f"computing, {inputs.hosts} hosts at {inputs.host_w:.0f} W, network {inputs.network_w():.0f} W."
                    + (" The power strip follows pipeline stage 0's chips (the step's energy averages every stage)."
                       if stages > 1 else ""))
    return Drawn("timeline", "One step, op by op",
                 "Each stream of work of the step nearest the median, and the cluster's IT power over it "
                 "(pale blue: the slowest chip's extra expert time, which the other chips spend waiting).",
                 figure, ["op", "category", "stream", "layer", "start_s", "end_s", "straggler_s", "waited_s"], rows)


def _heat(ax, image: np.ndarray, title: str, xlabel: str, ylabel: str, vmax: float):
    shown = ax.imshow(image, aspect="auto", origin="lower", cmap="magma", vmin=0.0, vmax=vmax, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    for axis in (ax.xaxis, ax.yaxis):  # every panel indexes whole things: chips, hosts, slices
        axis.set_major_locator(MaxNLocator(integer=True))
    if image.shape[0] == 1:  # one row (links sorted, slice uplinks): no y axis to read
        ax.set_yticks([])
    return shown


@plain_text
def link_figure(result: SimulationResult) -> Drawn:
    """Link utilisation over the step, laid out on the topology: per torus plane, or per fat-tree tier."""
    topology = build_topology(ClusterConfig.model_validate(result.inputs["cluster"]))
    utilisation = np.array(result.detail.link_utilisation)
    busiest = float(np.nanmax(utilisation, initial=0.0))
    # An absolute scale: 0 idle to 1 busy the whole step, so an 8 %-busy network does not look saturated and two
    # reports' figures compare by eye (a busiest link above 1 cannot occur: it would be busy longer than the step).
    vmax = max(1.0, busiest)
    rows = [[i, topology.link_label(i), str(topology.link_class[i]), float(u)] for i, u in enumerate(utilisation)]
    if isinstance(topology, MultiSlice):
        # The slices' own links, each the busiest over the slices, then the hosts' NICs and the slices' uplinks.
        inside = np.max([utilisation[topology.slice_links(k)] for k in range(topology.slices)], axis=0)
        panels, note = _topology_panels(topology.inner, inside)
        tiers = topology.by_tier(utilisation)
        panels.append((tiers["nic"].max(axis=1).reshape(topology.slices, -1), "host NICs (DCN)", "host in slice", "slice"))
        panels.append((tiers["dcn_uplink"].max(axis=1)[None, :], "slice uplinks (DCN)", "slice", ""))
        note += f"; slice links: the busiest of the {topology.slices} slices"
    else:
        panels, note = _topology_panels(topology, utilisation)
    figure = Figure(figsize=(3.6 * len(panels) + 0.8, 3.4))
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    shown = None
    for ax, (image, title, xlabel, ylabel) in zip(axes, panels):
        shown = _heat(ax, np.where(image < 0, np.nan, image), title, xlabel, ylabel, vmax)
    figure.colorbar(shown, ax=list(axes), label="utilisation (busy share of the step)", shrink=0.9)
    _footer(figure, f"{result.cluster}: bytes each link carried over the simulated steps / (bandwidth × time); {note}. "
                    f"Busiest link {100 * busiest:.1f} %.")
    return Drawn("link_utilisation", "Link utilisation on the topology",
                 f"Share of the step each link is busy, laid out on the {type(topology).__name__.lower()} ({note}).",
                 figure, ["link_id", "link", "class", "utilisation"], rows)


def _topology_panels(topology, utilisation: np.ndarray) -> tuple[list[tuple[np.ndarray, str, str, str]], str]:
    """Heat-map panels of one slice's links (image, title, x label, y label) and what they show."""
    panels: list[tuple[np.ndarray, str, str, str]] = []
    if isinstance(topology, Torus):
        grid = topology.by_direction(utilisation)  # (chips, dims, ±)
        busiest = np.nanmax(np.nan_to_num(grid, nan=-1.0), axis=2).reshape(*topology.dims, topology.ndim)
        for d, k in enumerate(topology.dims):
            if k < 2:
                continue
            along = np.moveaxis(busiest[..., d], d, 0)  # (k, *other dims)
            others = [AXIS_NAMES[e] for e in range(topology.ndim) if e != d]
            if topology.ndim == 3:
                image = along.mean(axis=0)  # the plane across dimension d, averaged along d
                panels.append((image, f"{AXIS_NAMES[d]} links, mean along {AXIS_NAMES[d]}", others[1], others[0]))
            elif topology.ndim == 2:
                panels.append((along.T, f"{AXIS_NAMES[d]} links", AXIS_NAMES[d], others[0]))
            else:
                panels.append((along[None, :], f"{AXIS_NAMES[d]} links", AXIS_NAMES[d], ""))
        note = "each chip's busier direction (+ or −) along the dimension"
    elif isinstance(topology, FatTree):
        labels = {"nvlink": ("NVLink (GPU ↔ NVSwitch)", "GPU in node", "node"), "nic": ("NIC (GPU ↔ leaf)", "GPU in node", "node"),
                  "fabric": ("fabric (leaf ↔ spine of its pod)", "spine", "leaf"),
                  "core": ("core (spine ↔ core switch)", "core switch", "spine")}
        for tier, values in topology.by_tier(utilisation).items():
            panels.append((values.max(axis=2),) + labels[tier])
        note = "the busier direction (up or down) of each cable"
    else:
        order = np.argsort(-utilisation, kind="stable")
        panels.append((utilisation[order][None, :], "every link, busiest first", "link (sorted)", ""))
        note = "custom graph: links sorted by utilisation"
    return panels, note


@plain_text
def expert_load_figure(result: SimulationResult) -> Drawn | None:
    """Per task (and modality), each expert's load in the most skewed MoE layer: which experts each task heats."""
    detail = result.detail
    load = np.array(detail.expert_load)
    if load.size == 0:
        return None
    tasks = result.tasks
    labels = [f"{t.task} · {t.modality}" for t in tasks]
    modalities = result.modalities
    if len(modalities) > 1:
        by_modality = [load[[i for i, t in enumerate(tasks) if t.modality == m.modality]].sum(axis=0) for m in modalities]
        load = np.vstack([load] + by_modality)
        labels += [f"all {m.modality}" for m in modalities]
    order = np.argsort(-load[: len(tasks)].sum(axis=0), kind="stable")
    mean = load.mean(axis=1, keepdims=True)
    relative = np.divide(load, mean, out=np.zeros_like(load), where=mean > 0)[:, order]
    figure = Figure(figsize=(10, 1.4 + 0.3 * len(labels)))
    ax = figure.add_subplot()
    shown = ax.imshow(relative, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0.0,
                      vmax=max(2.0, float(np.percentile(relative, 99.5))))
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    if len(modalities) > 1:
        ax.axhline(len(tasks) - 0.5, color="white", linewidth=1.5)
    ax.set_xlabel(f"expert of MoE layer {detail.expert_load_layer} (sorted by the layer's load, busiest first)", fontsize=8)
    figure.colorbar(shown, ax=ax, label="load / row mean", shrink=0.9)
    rows = [[labels[i], int(e), float(load[i, e]), float(relative[i, j])] for i in range(len(labels)) for j, e in enumerate(order)]
    _footer(figure, f"Token-expert assignments per step in layer {detail.expert_load_layer}, the MoE layer whose busiest expert is "
                    f"furthest above the mean, over {result.steps} step(s); 1 = the row's mean load.")
    return Drawn("expert_load", "Expert load per task and modality",
                 "How unevenly each task (and each modality) spreads its tokens over the experts of the most skewed MoE "
                 "layer; bright columns are hot experts, the cause of straggler time and drops.", figure,
                 ["row", "expert", "assignments_per_step", "load_over_row_mean"], rows)


@plain_text
def energy_figure(variants: list[tuple[str, dict[str, float], float]], inputs_note: str) -> Drawn:
    """Energy per million tokens of every variant: what it is made of (shares) and how much (log scale).

    ``variants``: (label, kWh per million tokens by component, total) — the components add up to the total.
    """
    figure = Figure(figsize=(11, 1.4 + 0.55 * len(variants)))
    shares, totals_ax = figure.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [1.2, 1], "wspace": 0.05})
    ys = np.arange(len(variants))
    for y, (label, parts, total) in zip(ys, variants):
        start = 0.0
        for component, kwh in parts.items():
            share = kwh / total if total > 0 else 0.0
            shares.barh(y, share, left=start, color=ENERGY_COLOURS[component], edgecolor="white", linewidth=0.5)
            if share > 0.08:
                shares.text(start + share / 2, y, f"{100 * share:.0f}%", ha="center", va="center", fontsize=7, color="white")
            start += share
    shares.set_yticks(ys, [v[0] for v in variants], fontsize=8)
    shares.invert_yaxis()
    shares.set_xlim(0, 1)
    shares.set_xlabel("share of the facility energy")
    shares.legend(handles=[Patch(color=c, label=k) for k, c in ENERGY_COLOURS.items()], ncols=3, fontsize=7,
                  loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    totals = np.array([v[2] for v in variants])
    totals_ax.barh(ys, totals, color=["#4C72B0"] + ["#999999"] * (len(variants) - 1))
    totals_ax.set_xscale("log")
    totals_ax.set_xlabel("facility kWh per million tokens (log)")
    for y, value in zip(ys, totals):
        ratio = "" if y == 0 else f"   {value / totals[0]:.3g}× the first"
        totals_ax.text(value, y, f" {value:.3g} kWh{ratio}", va="center", fontsize=7)
    totals_ax.set_xlim(totals.min() / 3, totals.max() * 60)
    _footer(figure, inputs_note)
    rows = [[v[0], component, kwh] for v in variants for component, kwh in v[1].items()]
    return Drawn("energy", "Energy per million tokens",
                 "Facility energy (IT × PUE) per million training tokens, by component, for the model as configured and "
                 "each variant on the same cluster.", figure, ["variant", "component", "kwh_per_million_tokens"], rows)


@plain_text
def cost_time_figure(options: list[ClusterOption], basis: str, deadline_s: float | None) -> Drawn:
    """Money against time for each candidate cluster and price term, the Pareto front joined."""
    figure = Figure(figsize=(8, 4.6))
    ax = figure.add_subplot()
    markers = {"on_demand": "o", "commit_1y": "s", "commit_3y": "D", "user": "*"}
    longest = max(o.time_s for o in options)
    unit, scale = next((u, k) for u, k in (("days", 86400.0), ("hours", 3600.0), ("minutes", 60.0), ("seconds", 1.0))
                       if longest >= 2 * k or k == 1.0)
    unfit = "#AAAAAA"  # a candidate the model does not fit on: drawn hollow, never on the front
    for o in options:
        colour = "#C44E52" if o.pareto else "#4C72B0" if o.memory_fits else unfit
        ax.scatter(o.time_s / scale, o.usd, marker=markers[o.price_term], zorder=3, s=36,
                   **({"color": colour} if o.memory_fits else {"facecolors": "none", "edgecolors": unfit}))
        ax.annotate(f"{o.cluster} ({o.price_term})", (o.time_s / scale, o.usd), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    front = sorted((o for o in options if o.pareto), key=lambda o: o.time_s)
    ax.plot([o.time_s / scale for o in front], [o.usd for o in front], color="#C44E52", linewidth=1, zorder=2,
            drawstyle="steps-post", label="Pareto front (nothing both faster and cheaper)")
    if deadline_s is not None:
        ax.axvline(deadline_s / scale, color="black", linestyle="--", linewidth=0.8, label="deadline")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis, money in ((ax.xaxis, False), (ax.yaxis, True)):
        formatter = FuncFormatter(lambda v, _, money=money: (f"${v:,.0f}" if v >= 10 else f"${v:.3g}") if money else f"{v:.3g}")
        axis.set_major_formatter(formatter)
        axis.set_minor_formatter(formatter)
        axis.set_tick_params(which="minor", labelsize=7)
    ax.set_xlabel(f"time for {'the run' if basis == 'run' else 'a million tokens'} ({unit}, log)")
    ax.set_ylabel(f"USD for {'the run' if basis == 'run' else 'a million tokens'} (log)")
    kinds = [Patch(color="#C44E52", label="on the Pareto front"), Patch(color="#4C72B0", label="dominated")]
    if not all(o.memory_fits for o in options):
        kinds.append(Patch(facecolor="none", edgecolor=unfit, label="does not fit in HBM"))
    ax.legend(handles=kinds + ([ax.get_lines()[-1]] if deadline_s is not None else []), fontsize=7, loc="upper right", frameon=False)
    ax.margins(0.25)
    rows = [[o.cluster, o.chips, o.price_term, o.usd_per_chip_hour, o.time_s, o.usd, o.memory_fits, o.pareto] for o in options]
    _footer(figure, "Markers: circle on demand, square 1-year commitment, diamond 3-year commitment, star user price.")
    return Drawn("cost_vs_time", "Cost against time across clusters",
                 "Each candidate cluster at each price term; red points are on the Pareto front of those that fit in HBM, "
                 "hollow grey ones do not fit.", figure,
                 ["cluster", "chips", "price_term", "usd_per_chip_hour", "time_s", "usd", "memory_fits", "pareto"], rows)


@plain_text
def fidelity_figure(suite) -> Drawn:
    """Left: predicted against measured for every validation entry, log-log (each in its own unit: the diagonal and
    its ±10 % band are unit-free), coloured by metric. Right: each entry's error, sorted, in the same colours."""
    entries = suite.entries
    figure = Figure(figsize=(12.5, max(5.0, 0.22 * len(entries) + 1.5)))
    ax, bars = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1.0, 1.2]})
    metrics = sorted({e.metric for e in entries})
    palette = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]
    colours = {m: palette[i % len(palette)] for i, m in enumerate(metrics)}
    measured = np.array([e.measured for e in entries])
    predicted = np.array([e.predicted for e in entries])
    low, high = min(measured.min(), predicted.min()) / 2, max(measured.max(), predicted.max()) * 2
    line = np.geomspace(low, high, 50)
    ax.fill_between(line, line / 1.1, line * 1.1, color="#DDDDDD", label="±10 %", zorder=0)
    ax.plot(line, line, color="#555555", linewidth=0.8, zorder=1)
    for metric in metrics:
        chosen = [e for e in entries if e.metric == metric]
        ax.scatter([e.measured for e in chosen], [e.predicted for e in chosen], s=22, color=colours[metric], label=metric,
                   zorder=2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_xlabel("measured (each entry's unit)")
    ax.set_ylabel("predicted by pathsim (same unit)")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(f"median |error| {suite.median_abs_error:.1%}, p90 {suite.p90_abs_error:.1%}", fontsize=9)
    ordered = sorted(entries, key=lambda e: e.error)
    y = np.arange(len(ordered))
    bars.axvspan(-10, 10, color="#DDDDDD", zorder=0)
    bars.axvline(0, color="#555555", linewidth=0.8)
    bars.scatter([100 * e.error for e in ordered], y, s=22, color=[colours[e.metric] for e in ordered], zorder=2)
    bars.set_yticks(y, [e.name for e in ordered], fontsize=7)
    bars.set_xlabel("error: predicted / measured − 1 (%)")
    bars.set_ylim(-0.8, len(ordered) - 0.2)
    bars.grid(axis="x", color="#EEEEEE")
    figure.tight_layout()
    rows = [[e.name, e.metric, e.unit, e.measured, e.predicted, e.error] for e in entries]
    return Drawn("fidelity", "Predicted against measured", "Every validation entry: on the left, points on the diagonal "
                 "are exact; on the right, each entry's error. The grey bands are ±10 %.", figure,
                 ["entry", "metric", "unit", "measured", "predicted", "error"], rows)
