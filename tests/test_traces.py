"""--trace on the commands beyond simulate: share (every job), plan (the chosen placement), report (the main run)."""

from __future__ import annotations

import json

import pytest

from pathsim.cli import main
from tests.test_shared_pod import dumbbell_jobs


def _processes(path) -> list[str]:
    events = json.loads(path.read_text())["traceEvents"]
    return [e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"]


def test_share_traces_every_job_on_processes_of_its_own(tmp_path, capsys):
    pod = tmp_path / "pod.yaml"
    pod.write_text(json.dumps(dumbbell_jobs("0-3", "4-7")))
    assert main(["share", str(pod), "--trace", str(tmp_path / "t.json")]) == 0
    names = _processes(tmp_path / "t.json")
    assert names == ["job a: grad-bound on 4 chips", "job a: grad-bound on 4 chips: cluster power and links",
                     "job b: grad-bound on 4 chips", "job b: grad-bound on 4 chips: cluster power and links"]
    assert "wrote" in capsys.readouterr().out


def test_plan_traces_the_placement_it_chose(tmp_path, capsys):
    trace = tmp_path / "t.json"
    assert main(["plan", "--cluster", "tpu-v4-4x4x4", "--workload", "switch-base-128", "--trace", str(trace),
                 "--out", str(tmp_path / "p.json")]) == 0
    assert main(["simulate", "--cluster", "tpu-v4-4x4x4", "--workload", "switch-base-128", "--placement",
                 str(tmp_path / "p.json"), "--trace", str(tmp_path / "again.json")]) == 0
    # The plan's trace is the trace of simulating the placement it wrote, event for event.
    assert json.loads(trace.read_text()) == json.loads((tmp_path / "again.json").read_text())


def test_report_traces_its_main_run(tmp_path, capsys):
    assert main(["report", "--cluster", "tpu-v4-4x4x4", "--workload", "switch-base-128", "--dense", "none", "--steps", "1",
                 "--out", str(tmp_path / "r"), "--trace", str(tmp_path / "t.json")]) == 0
    assert _processes(tmp_path / "t.json")[0] == "switch-base-128 on tpu-v4-4x4x4"


def test_a_drift_study_has_no_one_run_to_trace(refused, tmp_path):
    err = refused(["plan", "--cluster", "tpu-v4-4x4x4", "--workload", "switch-base-128", "--drift", "random-walk:0.3",
                   "--trace", str(tmp_path / "t.json")])
    assert "--trace" in err and not (tmp_path / "t.json").exists()


@pytest.mark.parametrize("command", [["share", "two-jobs-own-slices-tpu-v4"],
                                     ["report", "--cluster", "tpu-v4-4x4x4", "--workload", "switch-base-128"]])
def test_a_trace_path_is_checked_before_the_run(refused, tmp_path, command):
    (tmp_path / "a-file").write_text("")
    err = refused(command + ["--trace", str(tmp_path / "a-file" / "t.json")])  # under a file: no folder to write in
    assert "--trace" in err and "not a writable folder" in err
