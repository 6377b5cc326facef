"""The committed example reports are what reports/generate.py makes today."""

import importlib.util
import json
from pathlib import Path

import pytest

REPORTS = Path(__file__).resolve().parents[1] / "reports"


def _generator():
    spec = importlib.util.spec_from_file_location("generate_reports", REPORTS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_committed_with_its_files():
    for name in _generator().EXAMPLES:
        folder = REPORTS / name
        for file in ("index.html", "summary.md", "report.json"):
            assert (folder / file).is_file(), f"{folder / file} missing: run python reports/generate.py {name}"


def test_an_example_regenerates_to_the_committed_numbers(tmp_path):
    generator = _generator()
    from pathsim.report import build_report

    name = "switch-base-128"
    fresh = json.loads(build_report(**generator.EXAMPLES[name]).model_dump_json())
    committed = json.loads((REPORTS / name / "report.json").read_text())
    stale = f"reports/{name} is stale: run python reports/generate.py {name}"
    assert fresh["pathsim_version"] == committed["pathsim_version"], stale
    for fresh_row, row in zip(fresh["headline"], committed["headline"], strict=True):
        for key in ("per_step", "per_million_tokens", "per_run"):
            assert fresh_row[key] == pytest.approx(row[key], rel=1e-9), stale
    assert [(o["cluster"], o["price_term"], o["usd"]) for o in fresh["clusters"]] == \
        [(o["cluster"], o["price_term"], pytest.approx(o["usd"], rel=1e-9)) for o in committed["clusters"]], stale
