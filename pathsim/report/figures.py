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
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator
from matplotlib.transforms import Bbox

from pathsim.cluster import ClusterConfig
from pathsim.report.content import ClusterOption
from pathsim.energy import STATES, StateTimeline, power_timeline
from pathsim.result import SimulationResult
from pathsim.engine import DCN
from pathsim.engine.categories import CATEGORIES
from pathsim.topology import FatTree, MultiSlice, Torus, build_topology
from pathsim.topology.torus import AXIS_NAMES
from pathsim.units import format_seconds, time_unit

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
    _place_footer(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None}, bbox_inches="tight")
    return buffer.getvalue()


_FOOTER = "pathsim-footer"  # the gid that marks a figure's footnote
_FOOTER_GAP_PT = 6.0


def _footer(figure: Figure, text: str) -> None:
    """A note under the whole figure; :func:`png_bytes` moves it below the lowest thing the axes draw (tick labels,
    axis label, colour bar), so it never covers an axis label however short the figure is."""
    figure.text(0.01, 0.0, text, fontsize=7, color="#555555", ha="left", va="top", gid=_FOOTER)


def _renderer(figure: Figure):
    """The Agg renderer that will draw the figure: text sizes are known only to it."""
    if not isinstance(figure.canvas, FigureCanvasAgg):
        FigureCanvasAgg(figure)
    return figure.canvas.get_renderer()


def _place_footer(figure: Figure) -> None:
    notes = [t for t in figure.texts if t.get_gid() == _FOOTER]
    if not notes or not figure.axes:
        return
    renderer = _renderer(figure)
    lowest = min(ax.get_tightbbox(renderer).y0 for ax in figure.axes)  # display pixels from the figure's bottom
    gap = _FOOTER_GAP_PT * figure.dpi / 72.0
    notes[0].set_position((0.01, (lowest - gap) / figure.bbox.height))


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
    # A row per stream of work the step ran, in the registry's order; a stream it did not run (no tensor parallelism,
    # no sharded weights) gets no empty row. What crosses a multi-slice cluster's data-center network has its own.
    ran = {"dcn" if s.resource == DCN else s.category for s in detail.timeline}
    streams = [c.key for c in CATEGORIES if c.track and c.track != "compute"] + ["dcn"]
    tracks = ["compute"] + [t for t in streams if t in ran]
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
    handles = [Patch(color=CATEGORY_COLOURS[c], label=names[c]) for c in shown]
    if "optimizer" in ran:  # drawn on the compute row
        handles.append(Patch(color=CATEGORY_COLOURS["optimizer"], label="optimizer"))
    if any(s.straggler_s > 0 for s in detail.timeline):
        handles.append(Patch(color=CAUSE_COLOURS["straggler"], label="waiting for the slowest chip"))
    ax.legend(handles=handles, ncols=min(len(handles), 6), fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0),
              frameon=False)

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
    unit, scale = time_unit(step_s)  # a 30 ms step reads in ms, not as 0.000 to 0.030 s
    power.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / scale:.4g}"))
    power.set_xlabel(f"time in the step ({unit})")
    power.legend(handles=[Patch(color=STATE_COLOURS[s], alpha=0.5, label=f"mean chip {s}") for s in STATES], fontsize=7,
                 loc="center left", bbox_to_anchor=(1.005, 0.5), frameon=False)  # beside the strip, which it would cover
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


def _mantissa(value: float) -> int:
    """The leading digit of a positive number, as a minor tick of a log axis sits on (2 for 200, 3 for 0.03)."""
    return int(round(value / 10 ** np.floor(np.log10(value) + 1e-9)))


def _log_span(values: np.ndarray, margin: float) -> tuple[float, float]:
    """Log-axis limits around positive `values`, `margin` of their span (in decades, at least 0.15) on each side."""
    low, high = np.log10(values.min()), np.log10(values.max())
    pad = max(margin * (high - low), 0.15)
    return 10 ** (low - pad), 10 ** (high + pad)


def _deadline(ax, at: float, text: str):
    """A vertical deadline at `at` if it lies within 1.5x of the axis, the axis widened to it; else an arrow at the
    edge it lies beyond, saying where. Returns the line for the legend, or None when the arrow stands in for it."""
    low, high = ax.get_xlim()
    if low / 1.5 <= at <= high * 1.5:
        ax.set_xlim(min(low, at / 1.15), max(high, at * 1.15))
        return ax.axvline(at, color="black", linestyle="--", linewidth=0.8, label=f"deadline {text}")
    right = at > high
    ax.annotate(f"deadline {text} →" if right else f"← deadline {text}",
                xy=(1.0 if right else 0.0, 0.02), xycoords="axes fraction", ha="right" if right else "left",
                va="bottom", fontsize=7, color="black",
                xytext=(-3 if right else 3, 0), textcoords="offset points")
    return None


# Where a point's label may go, tried in order (offset in points, alignment): beside, then above or below.
_LABEL_SPOTS = (((5, 3), "left", "bottom"), ((5, -3), "left", "top"), ((-5, 3), "right", "bottom"),
                ((-5, -3), "right", "top"), ((0, 7), "center", "bottom"), ((0, -7), "center", "top"))


def _label_points(ax, points: list[tuple[float, float]], labels: list[str]) -> None:
    """Label each point where its text overlaps no label placed before it, no marker and no axis edge: the first
    free spot of _LABEL_SPOTS, else the one overlapping least. Deterministic: the same points give the same figure."""
    renderer = _renderer(ax.figure)
    frame = ax.get_window_extent(renderer)
    to_pixels = ax.transData.transform
    markers = [Bbox.from_bounds(px - 5, py - 5, 10, 10) for px, py in (to_pixels(p) for p in points)]
    placed: list[Bbox] = []

    def overlap(box: Bbox) -> float:
        area = sum(_area(box, other) for other in placed + markers)
        inside = _area(box, frame)
        return area + (box.width * box.height - inside) * 4  # outside the axes is worse than a neighbour

    for (x, y), label in zip(points, labels):
        best = None
        for offset, ha, va in _LABEL_SPOTS:
            text = ax.annotate(label, (x, y), xytext=offset, textcoords="offset points", fontsize=7, ha=ha, va=va)
            box = text.get_window_extent(renderer)
            cost = overlap(box)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, text, box)
            else:
                text.remove()
            if cost == 0:
                break
        placed.append(best[2])


def _area(a: Bbox, b: Bbox) -> float:
    """Area of the intersection of two boxes (0 when they do not meet)."""
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(width, 0.0) * max(height, 0.0)


@plain_text
def cost_time_figure(options: list[ClusterOption], basis: str, deadline_s: float | None) -> Drawn:
    """Money against time for each candidate cluster and price term, the Pareto front joined."""
    figure = Figure(figsize=(8, 4.6))
    ax = figure.add_subplot()
    markers = {"on_demand": "o", "commit_1y": "s", "commit_3y": "D", "user": "*"}
    unit, scale = time_unit(max(o.time_s for o in options))
    unit = {"d": "days", "h": "hours", "min": "minutes"}.get(unit, unit)
    times = np.array([o.time_s / scale for o in options])
    usds = np.array([o.usd for o in options])
    unfit = "#AAAAAA"  # a candidate the model does not fit on: drawn hollow, never on the front
    for o, x, y in zip(options, times, usds):
        colour = "#C44E52" if o.pareto else "#4C72B0" if o.memory_fits else unfit
        ax.scatter(x, y, marker=markers[o.price_term], zorder=3, s=36,
                   **({"color": colour} if o.memory_fits else {"facecolors": "none", "edgecolors": unfit}))
    front = sorted((o for o in options if o.pareto), key=lambda o: o.time_s)
    ax.plot([o.time_s / scale for o in front], [o.usd for o in front], color="#C44E52", linewidth=1, zorder=2,
            drawstyle="steps-post", label="Pareto front (nothing both faster and cheaper)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    # Limits from the points alone, with room for their labels: a deadline far beyond them must not squash them
    # into a corner of a decade-wide axis, so it is drawn where it is only when it falls near the points.
    ax.set_xlim(*_log_span(times, 0.25))
    ax.set_ylim(*_log_span(usds, 0.25))
    deadline_line = None
    if deadline_s is not None:
        deadline_line = _deadline(ax, deadline_s / scale, f"{format_seconds(deadline_s)}")
    for axis, money in ((ax.xaxis, False), (ax.yaxis, True)):
        formatter = FuncFormatter(lambda v, _, money=money: (f"${v:,.0f}" if v >= 10 else f"${v:.3g}") if money else f"{v:.3g}")
        axis.set_major_formatter(formatter)
        # The time axis labels its minor ticks at 2, 3 and 5 times a power of ten only: side by side, 9 would print
        # over 10. The money axis stacks its labels, so each has room.
        shown = (1, 2, 3, 4, 5, 6, 7, 8, 9) if money else (2, 3, 5)
        axis.set_minor_formatter(FuncFormatter(lambda v, pos, f=formatter, shown=shown:
                                               f(v, pos) if _mantissa(v) in shown else ""))
        axis.set_tick_params(which="both", labelsize=7)
    ax.set_xlabel(f"time for {'the run' if basis == 'run' else 'a million tokens'} ({unit}, log)")
    ax.set_ylabel(f"USD for {'the run' if basis == 'run' else 'a million tokens'} (log)")
    kinds = [patch for patch, present in (
        (Patch(color="#C44E52", label="on the Pareto front"), any(o.pareto for o in options)),
        (Patch(color="#4C72B0", label="dominated"), any(o.memory_fits and not o.pareto for o in options)),
        (Patch(facecolor="none", edgecolor=unfit, label="does not fit in HBM"), not all(o.memory_fits for o in options)))
        if present]  # only the kinds of point drawn
    handles = kinds + ([deadline_line] if deadline_line is not None else [])
    ax.legend(handles=handles, fontsize=7, ncols=len(handles), loc="lower center", bbox_to_anchor=(0.5, 1.0),
              frameon=False)  # above the axes: a legend inside would sit on points or the deadline
    _label_points(ax, list(zip(times, usds)), [f"{o.cluster} ({o.price_term})" for o in options])
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
