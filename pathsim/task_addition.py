"""A task added to a model that is already trained and placed (the SEN / Pathways "learn new tasks" case).

The new task brings experts of its own (appended after the existing ids, in
every MoE layer) and routes to them and, optionally, to some old experts.
The tasks trained before keep their routers: they reach only the old
experts, with exactly the routing they had (each task draws its skew from its
own random stream over the experts it reaches). The new task takes ``share``
of the global batch; the others keep their proportions in the rest.

A task file (YAML)::

    name: sign-language          # a new task name
    modality: video
    share: 0.05                  # of the global tokens once added
    new_experts: 16              # experts it brings, per MoE layer
    routing: {kind: zipf, exponent: 0.5}   # skew over the experts it reaches
    new_expert_weight: 0.8       # routing mass on its own new experts (1: only them)
    reuses: "128-207"            # old experts it also reaches (default: all of them)
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import ClassVar, Iterator

import numpy as np
from pydantic import Field, StrictInt, model_validator

from pathsim.cluster import StrictModel
from pathsim.errors import PathsimConfigError
from pathsim.workload import RoutingSpec, UniformRouting, WorkloadConfig, parse_id_ranges
from pathsim.yaml_config import read_yaml_mapping, validate_model


class AddedTask(StrictModel):
    FIX_HINT: ClassVar[str] = "see the added-task examples in workloads/added-tasks/"
    name: str = Field(min_length=1)
    description: str = ""
    source: str = ""
    modality: str = "text"
    share: float = Field(gt=0, lt=1, allow_inf_nan=False, description="fraction of the global tokens once the task is added")
    new_experts: StrictInt = Field(ge=0, description="experts the task brings, per MoE layer (ids follow the existing ones)")
    routing: RoutingSpec = Field(default_factory=lambda: UniformRouting(kind="uniform"))
    new_expert_weight: float = Field(1.0, ge=0, le=1, allow_inf_nan=False,
                                     description="fraction of the task's routing mass on its new experts")
    reuses: str | list[StrictInt] | None = Field(None, description='old expert ids the task also routes to, e.g. "0-127" (default: all)')

    @model_validator(mode="after")
    def _reaches_something(self) -> "AddedTask":
        if self.new_experts == 0 and self.new_expert_weight > 0:
            raise ValueError("new_experts is 0, so new_expert_weight must be 0 (the task routes to old experts only)")
        if self.new_experts > 0 and self.new_expert_weight == 0:
            raise ValueError("new_expert_weight 0 sends no tokens to the new experts; raise it or set new_experts: 0")
        if self.new_expert_weight == 1 and self.reuses is not None:
            raise ValueError("reuses names old experts, but new_expert_weight 1 routes only to the new ones; lower it or drop reuses")
        if self.reuses is not None:
            try:
                parse_id_ranges(self.reuses)
            except ValueError as exc:
                raise ValueError(f"reuses: {exc}") from None
        return self


def read_added_task(path: "str | Path") -> AddedTask:
    path = Path(path)
    data = read_yaml_mapping(path)
    task = validate_model(AddedTask, data, str(path))
    if task.routing.kind == "histogram" and not Path(task.routing.file).is_absolute():
        task = task.model_copy(update={"routing": task.routing.model_copy(update={"file": str(path.resolve().parent / task.routing.file)})})
    return task


def _id_ranges(ids: np.ndarray) -> str:
    """Sorted ids as '0-127,200-207' (what a workload file would say)."""
    breaks = np.flatnonzero(np.diff(ids) != 1)
    starts = np.concatenate([[ids[0]], ids[breaks + 1]])
    ends = np.concatenate([ids[breaks], [ids[-1]]])
    return ",".join(f"{a}-{b}" if b > a else f"{a}" for a, b in zip(starts.tolist(), ends.tolist()))


def expand_workload(workload: WorkloadConfig, task: AddedTask, source: str = "<task>") -> WorkloadConfig:
    """The workload once `task` is added: more experts, one more task, the old routing untouched."""
    moe = workload.model.moe
    if moe is None:
        raise PathsimConfigError(source, "new_experts", f"{workload.name} has no MoE layers to add experts to", "add a task to an MoE workload")
    if task.name in {t.name for t in workload.tasks}:
        raise PathsimConfigError(source, "name", f"{workload.name} already has a task named {task.name!r}", "give the new task a new name")
    old = moe.experts
    if task.reuses is not None:
        reused = parse_id_ranges(task.reuses)
        if reused.max() >= old:
            raise PathsimConfigError(source, "reuses", f"names expert {reused.max()}, but {workload.name} has {old} (ids 0..{old - 1})",
                                     "list old experts only; the new ones are reached through new_expert_weight")
    else:
        reused = np.arange(old)
    new_ids = np.arange(old, old + task.new_experts)
    reach = new_ids if task.new_expert_weight == 1 else np.concatenate([reused, new_ids])
    if len(reach) < moe.top_k:
        raise PathsimConfigError(source, "new_experts" if task.new_expert_weight == 1 else "reuses",
                                 f"the task reaches {len(reach)} experts, fewer than top_k={moe.top_k}",
                                 f"bring at least {moe.top_k} new experts, or lower new_expert_weight and reuse old ones")
    data = workload.model_dump(exclude={"base_dir"})
    data["name"] = f"{workload.name}+{task.name}"
    data["description"] = f"{workload.name} with task {task.name} added ({task.new_experts} new experts)"
    data["model"]["moe"]["experts"] = old + task.new_experts
    tasks = []
    total = sum(t.share for t in workload.tasks)  # 1 within validation's tolerance: renormalise exactly
    for spec, dumped in zip(workload.tasks, data["tasks"]):
        dumped["share"] = spec.share / total * (1 - task.share)
        if spec.reachable_experts is None:
            dumped["reachable_experts"] = _id_ranges(np.arange(old))
        tasks.append(dumped)
    new_task = {"name": task.name, "modality": task.modality, "share": task.share,
                "routing": task.routing.model_dump(), "reachable_experts": _id_ranges(np.sort(reach))}
    if 0 < task.new_expert_weight < 1 and task.new_experts:
        new_task["affinity"] = {"experts": _id_ranges(new_ids), "weight": task.new_expert_weight}
    data["tasks"] = tasks + [new_task]
    # Shares are rescaled in floating point; make them sum to 1 exactly as validation asks.
    data["tasks"][-1]["share"] = 1.0 - sum(t["share"] for t in tasks)
    expanded = validate_model(WorkloadConfig, data, source)
    return expanded.model_copy(update={"base_dir": workload.base_dir})


# Fields of the grown workload's new task that a task file sets under another name.
_TASK_FIELD = {"reachable_experts": "reuses", "affinity": "new_expert_weight"}


@contextlib.contextmanager
def errors_in_task(workload_source: str, task_source: str, grown: WorkloadConfig, index: int) -> Iterator[None]:
    """Re-anchor a mistake met while running the grown workload where the user would mend it: the new task's own
    fields (``tasks[index].…``) and the grown expert count in the task file; anything else in the workload, saying
    which task was added. Errors that already name a file pass through."""
    try:
        yield
    except PathsimConfigError as error:
        if error.source != f"<workload {grown.name}>":
            raise
        prefix = f"tasks[{index}]"
        if error.field == prefix or error.field.startswith(prefix + "."):
            rest = error.field[len(prefix) + 1:]
            head = rest.split(".")[0]
            field = _TASK_FIELD[head] if head in _TASK_FIELD else rest
            raise PathsimConfigError(task_source, field, error.problem, error.fix) from None
        if error.field.startswith("model.moe.experts"):
            raise PathsimConfigError(task_source, "new_experts", f"{error.problem} (the workload's experts and the "
                                     "new ones together)", error.fix) from None
        raise PathsimConfigError(f"{workload_source} with {task_source} added", error.field, error.problem,
                                 error.fix) from None
