"""Results as pandas tables: one row of scalars per run for comparing runs, and one table per list a result holds.

A run's summary row has a column per number or text of the result, named by its
dotted field path (``step_time.mean_s``, ``breakdown.compute_s``,
``memory.fits``), so ``pd.concat([r.to_frame() for r in runs])`` lines a sweep
up column by column. Lists (per step, task, layer, link, stage) are their own
tables, one row per item, because spreading them over columns would give every
run a different set of columns. The full input configs stay out of the row (they
are in ``to_dict()``): they are what a run was asked, not what it answered.
"""

from __future__ import annotations

import typing
from typing import Any

from pathsim.nested import leaves

# The result fields that are lists of records, by the table name that selects them.
_LIST_TABLES = {
    "tasks": "tasks",
    "layers": "layers",
    "modalities": "modalities",
    "links": "hottest_links",
}
# Left out of the summary row: the inputs (a config, not an answer) and the per-op evidence (a timeline, not a figure).
_NOT_SUMMARY = {"inputs", "detail"}
TABLES = ("summary", "steps", *_LIST_TABLES, "stages")


def _pandas():
    try:
        import pandas
    except ImportError:
        raise ImportError("to_frame() needs pandas, which pathsim does not install by default: "
                          "pip install 'pathsim[frame]' (or pip install pandas)") from None
    return pandas


def summary_row(dumped: dict[str, Any]) -> dict[str, Any]:
    """The scalar leaves of a dumped result, by dotted path, lists and the inputs left out."""
    return {path: value for path, value in leaves({k: v for k, v in dumped.items()
                                                   if k not in _NOT_SUMMARY and not isinstance(v, list)})
            if "[" not in path}


def result_frame(result, table: str = "summary"):
    """``table`` of a SimulationResult as a pandas DataFrame (see the module docstring for what each holds)."""
    if table not in TABLES:
        raise ValueError(f"to_frame(table={table!r}): no such table; choose one of {', '.join(TABLES)}")
    pd = _pandas()
    dumped = result.model_dump(mode="json")
    if table == "summary":
        return pd.DataFrame([summary_row(dumped)])
    if table == "steps":
        return pd.DataFrame({"step": range(len(result.step_time.per_step_s)),
                             "step_time_s": result.step_time.per_step_s})
    if table == "stages":
        if result.pipeline is None:
            return pd.DataFrame(columns=["stage", "layers", "busy_s", "bubble_s"])
        return pd.DataFrame([{"stage": s["stage"], "layers": s["layers"], "busy_s": s["busy_s"],
                              "bubble_s": s["bubble_s"],
                              **{f"memory.{k}": v for k, v in summary_row(s["memory"]).items()}}
                             for s in dumped["pipeline"]["per_stage"]])
    field = _LIST_TABLES[table]
    (record,) = typing.get_args(type(result).model_fields[field].annotation)  # list[TaskLoad] -> TaskLoad
    return pd.DataFrame(dumped[field], columns=list(record.model_fields))  # the columns even with no rows


def job_frame(shared):
    """A SharedPodResult as a DataFrame, one row per job: the job's scalars, then ``result.``-prefixed summary columns."""
    pd = _pandas()
    rows = []
    for job in shared.model_dump(mode="json")["jobs"]:
        result = job.pop("result")
        rows.append({**job, **{f"result.{k}": v for k, v in summary_row(result).items()}})
    return pd.DataFrame(rows)
