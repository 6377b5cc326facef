"""What a simulation returns: a pydantic model that serialises to JSON and back.

It carries the answer (step time and where it goes), the evidence (expert
load, drops, link utilisation, memory) and everything needed to reproduce it
(the full input configs, seed, sampling mode and pathsim version).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, create_model

from pathsim.collectives import LinkUsage
from pathsim.energy import StepEnergy
from pathsim.engine.categories import CATEGORIES
from pathsim.memory import MemoryReport
from pathsim.uncertainty import EnergyBand, StepTimeBand
from pathsim.version import __version__


class StepTimeStats(BaseModel):
    mean_s: float
    p50_s: float
    p99_s: float
    min_s: float
    max_s: float
    per_step_s: list[float]


class _BreakdownBase(BaseModel):
    """The critical path of a step (of the mean pipeline stage), by cause; the fields add up to the step time."""

    def total_s(self) -> float:
        return sum(getattr(self, f) for f in type(self).model_fields)

    def causes(self) -> list[tuple[str, float]]:
        """(cause, seconds) for every field, named for a reader."""
        return [(c.label, getattr(self, c.field)) for c in CATEGORIES]


# One field per cause of pathsim.engine.categories, in its order.
Breakdown = create_model("Breakdown", __base__=_BreakdownBase,
                         **{c.field: (float, Field(0.0, description=c.label)) for c in CATEGORIES})


class CommunicationTotals(BaseModel):
    all_to_all_s: float
    grad_sync_s: float  # all gradient all-reduce time, hidden or not
    grad_sync_hidden_s: float
    weight_gather_s: float = 0.0  # all ZeRO-3 weight all-gather time, hidden or not
    exposed_communication_s: float  # step time not spent computing


class TaskLoad(BaseModel):
    task: str
    modality: str
    tokens_per_step: float
    assignments_routed: float  # tokens × top_k
    dropped_fraction: float
    max_over_mean_expert_load: float  # this task's busiest expert against its mean, averaged over layers


class LayerLoad(BaseModel):
    layer: int
    max_over_mean_expert_load: float
    max_over_mean_chip_load: float
    dropped_fraction: float


class ModalityLoad(BaseModel):
    modality: str
    tasks: list[str]
    dropped_fraction: float
    max_over_mean_expert_load: float


class TimelineSpan(BaseModel):
    """One op of the step shown in a timeline, as the schedule ran it."""

    name: str
    category: str
    resource: str
    stream: str
    layer: int
    start_s: float
    end_s: float
    straggler_s: float
    waited_s: float
    group: int = 0  # the pipeline stage it ran on


class SimulationDetail(BaseModel):
    """The per-op, per-link and per-expert evidence behind a result (``simulate(..., detail=True)``); for reports."""

    timeline_step: int  # the simulated step shown: the one nearest the median step time
    timeline: list[TimelineSpan]
    state_boundaries_s: list[float]  # the mean chip's states over that step (pathsim.energy)
    states: list[str]
    link_utilisation: list[float]  # per link id of the cluster's topology, mean over steps
    expert_load_layer: int  # the MoE layer whose busiest expert is furthest above the mean (-1: dense)
    expert_load: list[list[float]]  # in that layer, per task, per expert: assignments per step


class StageSummary(BaseModel):
    """One pipeline stage: the layers it holds, how its step went and its HBM verdict."""

    stage: int
    layers: list[int]
    busy_s: float  # its critical stream's ops (compute and the communication it waits for), mean step
    bubble_s: float  # nothing to do: waiting for a micro-batch that has not reached it, or for the others to finish
    memory: MemoryReport


class PipelineSummary(BaseModel):
    stages: int
    schedule: str
    virtual_stages: int
    micro_batches: int
    bubble_fraction: float  # of the step, mean over stages (simulated)
    closed_form_bubble_fraction: float  # the schedule's idle share for uniform stages, free communication, F = B = W (bubble_fraction)
    tightest_stage: int  # the stage with the least HBM headroom (result.memory is its)
    per_stage: list[StageSummary]


class SimulationResult(BaseModel):
    cluster: str
    workload: str
    chips: int
    parallelism: dict[str, int]
    parallelism_axes: dict[str, str]  # tori: which axes (and how much of each) each degree spans
    placement: str
    network_model: str
    sampling: str
    seed: int
    steps: int
    step_time: StepTimeStats
    breakdown: Breakdown
    communication: CommunicationTotals
    tokens_per_step: int
    tokens_per_s: float
    model_flops_per_step: float
    mfu: float  # model FLOPs / (step time × chips × peak)
    hfu: float  # hardware FLOPs (with rematerialisation) / the same
    total_params: int
    active_params_per_token: int
    dropped_fraction: float
    tasks: list[TaskLoad]
    modalities: list[ModalityLoad]
    layers: list[LayerLoad]
    max_link_utilisation: float
    hottest_links: list[LinkUsage]
    memory: MemoryReport
    events_per_step: int
    step_time_band: StepTimeBand | None = None  # p10-p90 from the validation suite's residuals in the run's regime
    energy_band: EnergyBand | None = None  # p10-p90 of the step's IT energy, from the step and power residuals
    energy: StepEnergy  # IT energy of the mean step (chips, hosts, network), with its inputs
    inputs: dict[str, Any]  # the full cluster, workload and device-profile configs
    pathsim_version: str = __version__
    detail: SimulationDetail | None = None
    pipeline: PipelineSummary | None = None  # pipeline-parallel runs only

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON-ready data: what ``--json`` writes, nested as the fields are."""
        return self.model_dump(mode="json")

    def to_frame(self, table: str = "summary"):
        """A pandas DataFrame: ``summary`` (one row, a column per dotted field), or ``steps``, ``tasks``,
        ``layers``, ``modalities``, ``links`` or ``stages`` (a row per item). Needs pandas (``pathsim[frame]``)."""
        from pathsim.frames import result_frame

        return result_frame(self, table)
