"""Property: whatever a cluster or workload file holds, pathsim answers or refuses it (exit 2, file and field
named); it never ends in a traceback, and it stays inside a time and memory bound.

Each example takes a shipped preset and damages it the ways careless and hostile files do: a field set to a
value of the wrong type, sign or magnitude, deleted, renamed or buried in nesting; then `pathsim validate` reads
it, and a cluster also times one small collective and a workload one simulated step (the paths that build
topologies and routing from the damaged numbers).
"""

from __future__ import annotations

import resource

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings, strategies as st

from pathsim.cli import main
from pathsim.limits import BUDGET_ENV
from pathsim.presets import preset_path

JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, -1, 1e-300, 1e300, 2**63, "1e999GB/s", "-5us"]),
    st.text(max_size=12), st.sampled_from(["50GB/s", "1us", "275TFLOP/s", "16GiB", "$\\bogus$", "=HYPERLINK(1)"]),
    st.lists(st.integers(min_value=-3, max_value=10**6), max_size=4), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def _paths(node, prefix=()):
    """Every (path, value) in a nested mapping / list."""
    yield prefix, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


@st.composite
def damaged(draw, preset: tuple[str, str]):
    kind, name = preset
    data = yaml.safe_load(preset_path(kind, name).read_text())
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = [p for p, _ in _paths(data) if p and p[0] != "extends"]
        path = draw(st.sampled_from(paths))
        parent = data
        for step in path[:-1]:
            parent = parent[step]
        how = draw(st.sampled_from(["replace", "delete", "rename", "nest"]))
        if how == "replace" or (how in ("delete", "rename") and isinstance(parent, list)):
            parent[path[-1]] = draw(JUNK)
        elif how == "delete":
            del parent[path[-1]]
        elif how == "rename":
            parent[f"{path[-1]}x"] = parent.pop(path[-1])
        else:
            parent[path[-1]] = {"value": parent[path[-1]]}
    return data


CLUSTERS = [("topologies", n) for n in ("tpu-v4-4x4x4", "dgx-h100-4", "dgx-h100-32-2fabrics", "tpu-v4-4x4x8-twisted")]
WORKLOADS = [("workloads", n) for n in ("switch-base-128", "palm-8b")]


def _run(argv: list[str], capsys) -> None:
    code = main(argv)
    err = capsys.readouterr().err
    event(f"{argv[0]} exit {code}")
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err
    if code == 2:
        assert err.startswith("pathsim: error: ")


@pytest.fixture(autouse=True)
def bounded(monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "512MiB")  # what any one array may take: the refusal path, not the swap file


@settings(max_examples=40, deadline=20_000, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_a_damaged_cluster_is_answered_or_refused(tmp_path, capsys, data):
    preset = data.draw(st.sampled_from([c for c in CLUSTERS if preset_path(*c)]))
    config = data.draw(damaged(preset))
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    _run(["validate", str(path)], capsys)
    _run(["collective", "--cluster", str(path), "--op", data.draw(st.sampled_from(["all_reduce", "all_to_all"])), "--bytes", "1MiB"], capsys)


@settings(max_examples=30, deadline=30_000, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_a_damaged_workload_is_answered_or_refused(tmp_path, capsys, data):
    config = data.draw(damaged(data.draw(st.sampled_from(WORKLOADS))))
    path = tmp_path / "workload.yaml"
    path.write_text(yaml.safe_dump(config))
    _run(["validate", str(path)], capsys)
    _run(["simulate", "--cluster", "tpu-v4-4x4x4", "--workload", str(path), "--steps", "1"], capsys)


def test_the_fuzzing_stays_inside_its_memory_bound():
    # Run last in this module (pytest keeps file order): the process's peak resident memory after all the damaged
    # configs above, a bound that would catch an allocation slipping past the budget.
    peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert peak_bytes < 4 * 2**30
