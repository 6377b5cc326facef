"""Results as pandas tables: the summary row carries the result's own numbers, the list tables its records."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import pathsim
from pathsim.shared_pod import simulate_shared
from tests.test_multi_slice import moe_workload
from tests.test_pipeline import uniform_model
from tests.test_shared_pod import dumbbell_jobs, grad_bound_workload


@pytest.fixture(scope="module")
def result():
    return pathsim.simulate("tpu-v4-4x4x4", moe_workload(), steps=3)


def test_summary_row_holds_the_result_numbers(result):
    row = result.to_frame()
    assert len(row) == 1
    assert row["step_time.mean_s"][0] == result.step_time.mean_s
    assert row["breakdown.all_to_all_s"][0] == result.breakdown.all_to_all_s
    assert row["memory.fits"][0] == result.memory.fits
    # No inputs and no list-valued fields: every cell is a scalar a sweep can compare.
    assert not any(c.startswith(("inputs", "detail")) for c in row.columns)
    assert not any("[" in c or c.endswith("per_step_s") for c in row.columns)
    assert sum(row[f"breakdown.{f}"][0] for f in type(result.breakdown).model_fields) == pytest.approx(result.step_time.mean_s)


def test_runs_concatenate_into_aligned_columns(result):
    other = pathsim.simulate("tpu-v4-4x4x4", moe_workload(), steps=3, seed=1)
    frame = pd.concat([result.to_frame(), other.to_frame()], ignore_index=True)
    assert list(frame.columns) == list(result.to_frame().columns)
    assert list(frame["seed"]) == [result.seed, 1]


def test_list_tables_have_a_row_per_record(result):
    steps = result.to_frame("steps")
    assert list(steps["step_time_s"]) == result.step_time.per_step_s
    tasks = result.to_frame("tasks")
    assert list(tasks["task"]) == [t.task for t in result.tasks]
    assert tasks["tokens_per_step"].sum() == pytest.approx(sum(t.tokens_per_step for t in result.tasks))
    assert len(result.to_frame("layers")) == len(result.layers)
    assert list(result.to_frame("links")["link"]) == [link.link for link in result.hottest_links]
    stages = result.to_frame("stages")  # not pipelined: the columns, no rows
    assert len(stages) == 0 and "busy_s" in stages.columns


def test_pipeline_stages_table():
    result = pathsim.simulate("dgx-h100-1", uniform_model(stages=2, micro_batches=4))
    stages = result.to_frame("stages")
    assert list(stages["stage"]) == [0, 1]
    assert list(stages["busy_s"]) == [s.busy_s for s in result.pipeline.per_stage]
    assert "memory.fits" in stages.columns


def test_to_dict_is_what_json_writes(result):
    assert result.to_dict() == json.loads(result.model_dump_json())


def test_an_unknown_table_names_the_choices(result):
    with pytest.raises(ValueError, match="choose one of summary, steps, tasks"):
        result.to_frame("jobs")


def test_shared_pod_frame_has_a_row_per_job():
    shared = simulate_shared(dumbbell_jobs("0-3", "4-7"))
    frame = shared.to_frame()
    assert list(frame["name"]) == ["a", "b"]
    assert list(frame["result.step_time.mean_s"]) == [job.result.step_time.mean_s for job in shared.jobs]
    assert grad_bound_workload()["name"] == frame["workload"][0]


def test_without_pandas_the_error_says_how_to_install_it(result, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pandas", None)  # what `import pandas` meets when it is absent
    with pytest.raises(ImportError, match=r"pip install 'pathsim\[frame\]'"):
        result.to_frame()
