"""The validation suite as a page: the predicted-against-measured figure and every entry's error, with its source.

``write_fidelity_page(suite, "reports/fidelity")`` writes ``index.html`` (the figure embedded), ``fidelity.json``
(the whole :class:`~pathsim.fidelity.SuiteResult`), ``figures/fidelity.png`` and ``data/fidelity.csv``.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from pathsim.fidelity import GOALS, SETUP_ASSUMED, SuiteResult
from pathsim.report.figures import fidelity_figure, png_bytes
from pathsim.output_files import write_folder
from pathsim.report.render import _STYLE, _csv, _html_table
from pathsim.version import __version__


def fidelity_html(suite: SuiteResult, png: bytes) -> str:
    headers = ["entry", "metric", "measured", "predicted", "error", "set-up", "source"]
    rows = [[e.name + (" (set-up assumed)" if SETUP_ASSUMED in e.tags else ""), e.metric, f"{e.measured:.4g} {e.unit}",
             f"{e.predicted:.4g}", f"{e.error:+.1%}", e.setup, e.source] for e in suite.entries]
    verdict = "meets" if suite.meets_goals() else "misses"
    encoded = base64.b64encode(png).decode("ascii")
    title = "pathsim against published measurements"
    return "\n".join([
        '<?xml version="1.0" encoding="utf-8"?>', "<!DOCTYPE html>",
        '<html xmlns="http://www.w3.org/1999/xhtml" lang="en"><head><meta charset="utf-8" />',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">pathsim {html.escape(__version__)}, default models (no per-entry adjustment). '
        f"{len(suite.entries)} entries: median |error| {suite.median_abs_error:.1%}, p90 {suite.p90_abs_error:.1%} "
        f"({verdict} the goals: median at most {GOALS['median']:.0%}, p90 at most {GOALS['p90']:.0%}). "
        "Error is predicted / measured − 1. Entries marked <em>set-up assumed</em> reproduce a run whose cluster or "
        "layout their source does not publish: scored, but left out of the fits and the error bars. "
        "Every number is in <code>fidelity.json</code>.</p>",
        f'<figure id="fidelity"><img alt="predicted against measured" src="data:image/png;base64,{encoded}" />'
        "<figcaption>Points on the diagonal are exact; the grey band is ±10 %. Data: <code>data/fidelity.csv</code>."
        "</figcaption></figure>",
        "<h2>Entries</h2>", _html_table(headers, rows), "</body></html>"]) + "\n"


def write_fidelity_page(suite: SuiteResult, out: "str | Path") -> list[Path]:
    drawn = fidelity_figure(suite)
    png = png_bytes(drawn.figure)
    return write_folder(out, {Path("index.html"): fidelity_html(suite, png).encode(),
                             Path("fidelity.json"): (suite.model_dump_json(indent=2) + "\n").encode(),
                             Path("figures/fidelity.png"): png,
                             Path("data/fidelity.csv"): _csv(drawn.columns, drawn.rows).encode()}, "--out", "the fidelity page")
