"""A report on disk: a self-contained HTML page, a Markdown summary, the JSON and the CSV behind each figure.

``write_report(report, "reports/NAME")`` writes::

    index.html          one page, every figure embedded (opens offline, no browser scripts)
    summary.md          the tables and the figures (as files) for a pull request or a wiki
    report.json         the whole Report: every number, every simulation, every input
    figures/NAME.png    the figures
    data/NAME.csv       the numbers behind each figure

The HTML is well-formed XML (tests parse it strictly), and every number the
Markdown prints is a field of report.json formatted by :func:`fmt`.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path

from pathsim.output_files import csv_cell, write_folder
from pathsim.units import format_seconds
from pathsim.report.content import Report
from pathsim.report.figures import (Drawn, breakdown_figure, cost_time_figure, energy_figure, expert_load_figure,
                                    gantt_figure, link_figure, png_bytes)


def fmt(value: float | int | None) -> str:
    """Four significant figures; whole thousands with separators; '-' for nothing."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def _energy_parts(variant) -> tuple[dict[str, float], float]:
    """kWh per million tokens by component, and their total (the facility energy)."""
    e = variant.footprint.energy_per_step
    scale = 1e6 / variant.footprint.tokens_per_step
    parts = {"chips: compute": e.chips_compute_kwh, "chips: communication": e.chips_communication_kwh,
             "chips: idle": e.chips_idle_kwh, "hosts": e.hosts_kwh, "network": e.network_kwh,
             "facility overhead (PUE)": e.facility_overhead_kwh}
    return {k: v * scale for k, v in parts.items()}, variant.footprint.per_million_tokens.facility_kwh


def draw_figures(report: Report) -> list[Drawn]:
    main = report.main.result
    site = report.main.footprint.site
    drawn = [breakdown_figure([(v.label, v.result) for v in report.variants]), gantt_figure(main), link_figure(main)]
    load = expert_load_figure(main)
    if load is not None:
        drawn.append(load)
    note = (f"PUE {site.pue:g}; grid {site.kg_co2e_per_kwh:g} kg CO2e/kWh ({site.grid_region}); "
            f"power inputs in the Inputs table.")
    drawn.append(energy_figure([(v.label, *_energy_parts(v)) for v in report.variants], note))
    drawn.append(cost_time_figure(report.clusters, report.basis, report.deadline_s))
    return drawn


def _headline_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    return (["metric", "unit", "per step", "per million tokens", "per run"],
            [[h.metric, h.unit, fmt(h.per_step), fmt(h.per_million_tokens), fmt(h.per_run)] for h in report.headline])


def _variant_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    first = report.variants[0].footprint.per_million_tokens.facility_kwh
    return (["variant", "step time (s)", "facility kWh per million tokens", "USD per million tokens", "energy vs the first"],
            [[v.label, fmt(v.result.step_time.mean_s), fmt(v.footprint.per_million_tokens.facility_kwh),
              fmt(v.footprint.per_million_tokens.usd), fmt(v.footprint.per_million_tokens.facility_kwh / first)]
             for v in report.variants])


def _cluster_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    what = "the run" if report.basis == "run" else "a million tokens"
    return (["cluster", "chips", "price term", "USD per chip-hour", f"time for {what} (s)", "USD", "facility kWh", "tCO2e",
             "fits in HBM", "Pareto front", "meets deadline"],
            [[o.cluster, fmt(o.chips), o.price_term, fmt(o.usd_per_chip_hour), fmt(o.time_s), fmt(o.usd),
              fmt(o.facility_kwh), fmt(o.tco2e), fmt(o.memory_fits), fmt(o.pareto), fmt(o.meets_deadline)]
             for o in report.clusters])


def _input_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    return ["input", "value", "source"], [[i.name, i.value, i.source] for i in report.inputs]


_MARKDOWN_SPECIAL = str.maketrans({c: "\\" + c for c in "\\*_[]|#"})  # not `: inline code is inert, and ours


def md(text: str) -> str:
    """Text as literal Markdown: names come from users' files, and raw `<script>`, `[link](...)` or `# ` in one would
    become markup in summary.md."""
    return html.escape(str(text), quote=False).translate(_MARKDOWN_SPECIAL)


def _markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(md(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(md(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _band_sentence(quantity: str, how: str, span: "tuple[float, float, str] | None", band, evidence: str) -> str:
    """A validation band in words, or why there is none."""
    if band is None:
        return f" No validation band for {quantity}: the suite has too few {evidence} of this kind of chip."
    low, high, unit = span
    return f" Validation band of {quantity} (p10–p90 of {how}, from {band.describe()}): {fmt(low)} – {fmt(high)} {unit}."


def _sections(report: Report) -> list[tuple[str, str, tuple[list[str], list[list[str]]]]]:
    """(heading, text before the table, table) for every tabular section, shared by the HTML and the Markdown."""
    run = (f"The run: {fmt(report.run_steps)} steps, {fmt(report.run_tokens)} tokens." if report.run_steps else
           "No run size given (`--run-tokens` or `--run-steps`): per-run figures are left out.")
    result = report.main.result
    step, energy = result.step_time_band, result.energy_band
    run += _band_sentence("the step time", "the measured / predicted ratios", step and (step.p10_s, step.p90_s, "s"),
                          step, "measured runs")
    run += _band_sentence("a step's IT energy", "the step band times measured / predicted power",
                          energy and (energy.p10_j / 3.6e6, energy.p90_j / 3.6e6, "kWh"), energy, "measured powers")
    sections = [("Headline", f"{report.verdict} {run}".strip(), _headline_rows(report))]
    if len(report.variants) > 1:
        sections.append(("Sparse against dense", report.comparison.statement if report.comparison else "", _variant_rows(report)))
    deadline = f" Deadline: {format_seconds(report.deadline_s)}." if report.deadline_s is not None else ""
    sections.append(("Clusters", "Every candidate cluster at every published price term; the Pareto front is what "
                                 "nothing fitting in HBM beats on both time and money." + deadline
                                 + (f" {report.recommendation}" if report.recommendation else ""), _cluster_rows(report)))
    sections.append(("Inputs", "Every number above is made of these.", _input_rows(report)))
    return sections


def markdown(report: Report, drawn: list[Drawn]) -> str:
    parts = [f"# {md(report.title)}", "", f"pathsim {report.pathsim_version}; the whole report, with every input, is `report.json`.", ""]
    for heading, text, (headers, rows) in _sections(report):
        parts += [f"## {md(heading)}", "", md(text), "", _markdown_table(headers, rows), ""]
    parts += ["## Figures", ""]
    for d in drawn:
        parts += [f"### {md(d.title)}", "", f"![{md(d.title)}](figures/{d.name}.png)", "", f"{md(d.caption)} Data: `data/{d.name}.csv`.", ""]
    return "\n".join(parts)


_STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f4f4f4; } figure { margin: 1.2em 0; } img { max-width: 100%; }
figcaption { font-size: 0.85em; color: #555; } .note { color: #555; font-size: 0.9em; }
"""


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    def cell(text: str) -> str:
        numeric = text.replace(",", "").replace(".", "", 1).replace("e-", "").replace("e+", "").lstrip("-").isdigit()
        return f'<td class="num">{html.escape(text)}</td>' if numeric else f"<td>{html.escape(text)}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_page(report: Report, drawn: list[Drawn], pngs: dict[str, bytes]) -> str:
    parts = ['<?xml version="1.0" encoding="utf-8"?>', "<!DOCTYPE html>",
             '<html xmlns="http://www.w3.org/1999/xhtml" lang="en"><head><meta charset="utf-8" />',
             f"<title>{html.escape(report.title)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{html.escape(report.title)}</h1>",
             f'<p class="note">pathsim {html.escape(report.pathsim_version)}. The data behind every figure is in '
             f"<code>data/</code>; every number and input in <code>report.json</code>.</p>"]
    for heading, text, (headers, rows) in _sections(report):
        parts += [f"<h2>{html.escape(heading)}</h2>", f"<p>{html.escape(text)}</p>", _html_table(headers, rows)]
    parts.append("<h2>Figures</h2>")
    for d in drawn:
        encoded = base64.b64encode(pngs[d.name]).decode("ascii")
        parts.append(f'<figure id="{d.name}"><h3>{html.escape(d.title)}</h3><img alt="{html.escape(d.title)}" '
                     f'src="data:image/png;base64,{encoded}" /><figcaption>{html.escape(d.caption)} Data: '
                     f"<code>data/{d.name}.csv</code>.</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _csv(columns: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([[repr(c) if isinstance(c, float) else csv_cell(c) for c in row] for row in rows])
    return buffer.getvalue()


def write_report(report: Report, out: "str | Path") -> list[Path]:
    """Write the report's files under `out`; returns their paths."""
    out = Path(out)
    drawn = draw_figures(report)
    pngs = {d.name: png_bytes(d.figure) for d in drawn}
    files = {Path("index.html"): html_page(report, drawn, pngs).encode(),
             Path("summary.md"): markdown(report, drawn).encode(),
             Path("report.json"): (report.model_dump_json() + "\n").encode()}
    for d in drawn:
        files[Path("figures") / f"{d.name}.png"] = pngs[d.name]
        files[Path("data") / f"{d.name}.csv"] = _csv(d.columns, d.rows).encode()
    return write_folder(out, files, "--out")
