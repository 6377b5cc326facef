"""What a cost / energy report says: the simulations it runs and the numbers it derives from them.

``build_report`` simulates the workload on the cluster (with the detail the
figures need), its dense counterparts on the same cluster, and the workload on
every candidate cluster; it prices each with :mod:`pathsim.footprint`. The
result is one pydantic object — written as ``report.json`` — from which the
HTML, the Markdown and every figure are rendered, so they cannot disagree.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from pathsim.errors import PathsimConfigError
from pathsim.footprint import PRICE_TERMS, Footprint, footprint, resolve_site, run_step_count
from pathsim.result import SimulationResult
from pathsim.run_setup import prepare_run
from pathsim.simulation import simulate
from pathsim.units import format_bytes, format_count, format_seconds, format_usd, parse_count, parse_given, parse_seconds
from pathsim.version import __version__

DENSE_CHOICES = ("both", "active_flops", "total_params", "none")
# Patterson et al. 2021 ("Carbon Emissions and Large Neural Network Training") and the Pathways announcement.
SPARSE_CLAIM = 0.1


class Variant(BaseModel):
    key: str  # sparse, dense_active_flops, dense_total_params
    label: str
    result: SimulationResult
    footprint: Footprint


class ClusterOption(BaseModel):
    cluster: str
    chips: int
    chip: str
    price_term: str
    usd_per_chip_hour: float
    step_time_s: float
    time_s: float  # for the basis: the run, or a million tokens
    usd: float
    facility_kwh: float
    tco2e: float
    memory_fits: bool
    pareto: bool
    meets_deadline: bool | None


class DenseComparison(BaseModel):
    """Facility energy per token of the sparse model over its dense counterparts', on the same cluster."""

    same_params_ratio: float | None
    same_flops_ratio: float | None
    statement: str


class HeadlineRow(BaseModel):
    metric: str
    unit: str
    per_step: float
    per_million_tokens: float
    per_run: float | None


class InputRow(BaseModel):
    name: str
    value: str
    source: str


class Report(BaseModel):
    title: str
    cluster: str
    workload: str
    basis: Literal["run", "million_tokens"]
    run_tokens: float | None
    run_steps: int | None
    deadline_s: float | None
    headline: list[HeadlineRow]
    comparison: DenseComparison | None
    clusters: list[ClusterOption]
    inputs: list[InputRow]
    variants: list[Variant]
    verdict: str = ""  # whether the run as configured fits in HBM, in a sentence
    recommendation: str = ""  # which candidate cluster to pick and why, in a sentence
    pathsim_version: str = __version__

    @property
    def main(self) -> Variant:
        return self.variants[0]


@contextmanager
def _on_cluster(name: str):
    """Name the candidate cluster in an error that arose while simulating or pricing on it."""
    try:
        yield
    except PathsimConfigError as exc:
        raise PathsimConfigError(exc.source, exc.field, f"{exc.problem} (on cluster {name})", exc.fix) from None


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (lower is better), by the first coordinate."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def _recommendation(options: list[ClusterOption], deadline_s: float | None, basis: str) -> str:
    """Which candidate to pick and why: the cheapest that fits in HBM (and meets the deadline, if there is one)."""
    if not options:
        return ""
    usable = [o for o in options if o.memory_fits and o.meets_deadline is not False]
    if not usable:
        why = "fits in HBM" + (" and meets the deadline" if deadline_s is not None else "")
        return f"No candidate {why}: none can be recommended."
    pick = min(usable, key=lambda o: (o.usd, o.time_s))
    fastest = min(usable, key=lambda o: (o.time_s, o.usd))
    per = "the run" if basis == "run" else "a million tokens"
    why = "the cheapest that fits in HBM" + (" and meets the deadline" if deadline_s is not None else "")
    text = (f"Pick {pick.cluster} at {pick.price_term.replace('_', ' ')} ({pick.chips:,} chips): {why}, "
            f"{format_usd(pick.usd)} and {format_seconds(pick.time_s)} for {per}.")
    if fastest is not pick and fastest.time_s < pick.time_s:
        text += (f" The fastest, {fastest.cluster} at {fastest.price_term.replace('_', ' ')}, takes {format_seconds(fastest.time_s)} "
                 f"for {format_usd(fastest.usd)}.")
    return text


def _headline(fp: Footprint) -> list[HeadlineRow]:
    def row(metric: str, unit: str, field: str) -> HeadlineRow:
        return HeadlineRow(metric=metric, unit=unit, per_step=getattr(fp.per_step, field),
                           per_million_tokens=getattr(fp.per_million_tokens, field),
                           per_run=getattr(fp.per_run, field) if fp.per_run is not None else None)

    return [row("time", "s", "time_s"), row("IT energy", "kWh", "it_kwh"), row("facility energy", "kWh", "facility_kwh"),
            row("carbon", "tCO2e", "tco2e"), row("cost", "USD", "usd")]


def _inputs(main: Variant, steps: int, seed: int) -> list[InputRow]:
    e, site, r = main.result.energy.inputs, main.footprint.site, main.result
    watts = e.chip_watts()
    return [
        InputRow(name="chips", value=f"{e.chips} × {r.inputs['cluster']['chip']['name']}", source=r.inputs["cluster"]["chip"]["source"]),
        InputRow(name="chip power idle / communicating / computing",
                 value=f"{watts['idle']:.0f} / {watts['communication']:.0f} / {watts['compute']:.0f} W "
                       f"(communication activity {e.communication_activity:g})", source=e.power_source),
        InputRow(name="hosts", value=f"{e.hosts} × {e.host_w:.0f} W", source=r.inputs["cluster"]["host"]["source"]),
        InputRow(name="network", value=f"{e.network_switches} switches × {e.switch_w:.0f} W + {e.chips} × {e.network_per_chip_w:g} W per chip",
                 source=(r.inputs["cluster"].get("network_power") or {}).get("source", "not given in the cluster file (0 W)")),
        InputRow(name="PUE", value=f"{site.pue:g}", source=site.pue_source),
        InputRow(name="grid intensity", value=f"{site.kg_co2e_per_kwh:g} kg CO2e/kWh ({site.grid_region})", source=site.grid_source),
        InputRow(name="price", value=f"{site.usd_per_chip_hour:g} USD per chip-hour ({site.price_term}, {site.provider})",
                 source=site.price_source),
        InputRow(name="simulation", value=f"{steps} step(s), seed {seed}, placement {r.placement}, {r.sampling} routing, "
                                          f"{r.network_model} network", source=f"pathsim {__version__}"),
    ]


def _comparison(variants: list[Variant]) -> DenseComparison | None:
    sparse = variants[0]
    by_key = {v.key: v for v in variants}
    if len(variants) == 1 or sparse.result.layers == []:
        return None
    energy = lambda v: v.footprint.per_million_tokens.facility_kwh  # noqa: E731
    ratios = {key: energy(sparse) / energy(by_key[key]) if key in by_key else None
              for key in ("dense_total_params", "dense_active_flops")}
    parts = []
    same_params = ratios["dense_total_params"]
    if same_params is not None:
        holds = "holds" if same_params < SPARSE_CLAIM else "does not hold"
        parts.append(f"Per token, {sparse.result.workload} uses {same_params:.3g}× the facility energy of a dense model with the "
                     f"same total parameters ({1 / same_params:.3g} times less) on {sparse.result.cluster}: the Pathways / "
                     f"Patterson et al. 2021 claim that sparsely activated models can use under 1/10 of the energy of dense "
                     f"models of similar size {holds} here.")
    same_flops = ratios["dense_active_flops"]
    if same_flops is not None:
        parts.append(f"Against a dense model doing the same FLOPs per token, the ratio is {same_flops:.3g}: the price of "
                     f"routing (all-to-alls, stragglers, drops) at equal compute.")
    return DenseComparison(same_params_ratio=same_params, same_flops_ratio=same_flops, statement=" ".join(parts))


def build_report(cluster: "str | Path", workload: "str | Path", *, compare_clusters: tuple = (), dense: str = "both",
                 run_tokens: "float | str | None" = None, run_steps: int | None = None, deadline_s: "float | str | None" = None,
                 steps: int = 2, seed: int = 0, placement: "str | Path | None" = None, profile: "str | Path | None" = None,
                 price: "str | float" = "on_demand", provider: str | None = None, region: str | None = None,
                 grid_intensity: float | None = None, pue: "str | float | None" = None,
                 trace: "str | Path | None" = None) -> Report:
    """Simulate and price `workload` on `cluster` (and its dense counterparts, and other clusters) for a report.
    `run_tokens` and `deadline_s` take numbers or the command line's strings ("1T", "30d"); `trace`, a file for the
    trace of the main cluster's simulated steps."""
    run_tokens = parse_given(run_tokens, parse_count, "<arguments>", "run_tokens", "1T")
    deadline_s = parse_given(deadline_s, parse_seconds, "<arguments>", "deadline_s", "30d")
    if dense not in DENSE_CHOICES:
        raise PathsimConfigError("<arguments>", "dense", f"unknown choice {dense!r}", f"use one of {', '.join(DENSE_CHOICES)}")
    if deadline_s is not None and not deadline_s > 0:
        raise PathsimConfigError("<arguments>", "deadline", f"must be a positive duration, got {deadline_s!r}", "e.g. --deadline 30d")
    setup = prepare_run(cluster, workload, seed=seed, place=False)  # fail fast on bad configs, and learn the chip
    chip = setup.cluster.chip.name
    site_options = dict(provider=provider, region=region, grid_intensity=grid_intensity, pue=pue)
    site = resolve_site(chip, price=price, **site_options)
    run_step_count(setup.workload.training.tokens_per_step, run_tokens, run_steps)  # validates before simulating
    if deadline_s is not None and run_tokens is None and run_steps is None:
        raise PathsimConfigError("<arguments>", "deadline", "a deadline needs a run to meet it", "add --run-tokens or --run-steps")

    def priced(key: str, label: str, result: SimulationResult, at=site) -> Variant:
        return Variant(key=key, label=label, result=result,
                       footprint=footprint(result, at, run_tokens=run_tokens, run_steps=run_steps))

    main = simulate(setup.cluster, setup.workload, placement=placement, steps=steps, seed=seed, profile=profile, detail=True,
                    trace=trace)
    variants = [priced("sparse" if main.layers else "dense", f"{main.workload} (as configured)", main)]
    if setup.plan is not None:
        for match in ("active_flops", "total_params"):
            if dense in (match, "both"):
                result = simulate(setup.cluster, setup.workload, steps=steps, seed=seed, profile=profile, dense=match)
                fits = "" if result.memory.fits else ", does not fit in HBM"
                what = "activated FLOPs per token" if match == "active_flops" else "total parameters"
                variants.append(priced(f"dense_{match}", f"dense, same {what}{fits}", result))

    basis = "run" if variants[0].footprint.per_run is not None else "million_tokens"
    options: list[ClusterOption] = []
    candidates = [(setup.cluster.name, main)]
    for other in compare_clusters:
        with _on_cluster(str(other)):
            candidates.append((str(other), simulate(other, setup.workload, steps=steps, seed=seed)))
    user_price = price not in PRICE_TERMS
    for name, result in candidates:
        chip_name = result.inputs["cluster"]["chip"]["name"]
        if user_price and chip_name != chip:
            raise PathsimConfigError("<arguments>", "price", f"a price of {price} USD per chip-hour is for {chip}, but cluster "
                                     f"{name} has {chip_name}", "compare clusters at a price term (on_demand, commit_1y, commit_3y)")
        terms = [price] if user_price else PRICE_TERMS
        for term in terms:
            with _on_cluster(name):
                try:
                    at = resolve_site(chip_name, price=term, **site_options)
                except PathsimConfigError:
                    if term == price:
                        raise
                    continue  # this offer publishes no such commitment term
            fp = footprint(result, at, run_tokens=run_tokens, run_steps=run_steps)
            amounts = fp.per_run if basis == "run" else fp.per_million_tokens
            options.append(ClusterOption(cluster=result.cluster, chips=result.chips, chip=chip_name, price_term=at.price_term,
                                         usd_per_chip_hour=at.usd_per_chip_hour, step_time_s=result.step_time.mean_s,
                                         time_s=amounts.time_s, usd=amounts.usd, facility_kwh=amounts.facility_kwh,
                                         tco2e=amounts.tco2e, memory_fits=result.memory.fits, pareto=False,
                                         meets_deadline=None if deadline_s is None else amounts.time_s <= deadline_s))
    # A candidate the model does not fit on is no option at all: it stays in the table, off the front.
    fitting = [i for i, o in enumerate(options) if o.memory_fits]
    for j in pareto_front([(options[i].time_s, options[i].usd) for i in fitting]):
        options[fitting[j]].pareto = True

    what = (f"a {format_seconds(variants[0].footprint.per_run.time_s)} run of {format_count(variants[0].footprint.run_tokens)} tokens"
            if basis == "run" else "a million tokens")
    memory = main.memory
    verdict = (f"Fits in HBM: {format_bytes(memory.total_bytes)} of {format_bytes(memory.hbm_bytes)} per chip." if memory.fits else
               f"DOES NOT FIT in HBM: {format_bytes(memory.total_bytes)} per chip against {format_bytes(memory.hbm_bytes)}, so the "
               "run as configured cannot happen; the costs are what it would cost if it did (shard, recompute or add chips).")
    return Report(title=f"{main.workload} on {main.cluster}: cost, energy and carbon of {what}", cluster=main.cluster,
                  verdict=verdict, recommendation=_recommendation(options, deadline_s, basis),
                  workload=main.workload, basis=basis, run_tokens=variants[0].footprint.run_tokens,
                  run_steps=variants[0].footprint.run_steps, deadline_s=deadline_s, headline=_headline(variants[0].footprint),
                  comparison=_comparison(variants), clusters=options, inputs=_inputs(variants[0], steps, seed),
                  variants=variants)
