"""Several jobs on one cluster: each on its own chips, simulated together (the Pathways system view).

    result = pathsim.simulate_shared("workloads/shared-pods/two-moe-jobs-dgx-h100-128.yaml")

A job is a workload on a set of the cluster's chips: whole slices of a
multi-slice cluster (TPU v4 slices cut by the optical circuit switches are
tori of their own) or chip ranges (GPU nodes sharing one fabric, or parts of
one torus). Every job runs in place on the cluster's own topology, so its
traffic lands on the cluster's real link ids and two jobs interfere exactly
where their routes share links.

Interference model (flow level, time-averaged). Each job is first simulated
alone. Then, in rounds, every job is re-simulated on links whose bandwidth is
what the other jobs leave free: a link that job k keeps busy a share u_k of
its step offers job j the bandwidth B · (1 − Σ_{k≠j} u_k), at least
``min_free_share`` of B. Rounds repeat, each from the mean of the last two
rounds' utilisations (damping: without it a slowed job frees its links,
speeds up, and the rounds see-saw), until no job's step time moves by more
than ``tolerance``.
This treats the other jobs' traffic as a steady background: it misses the
extra contention when two jobs' bursts (all-to-alls, gradient buckets)
happen to align and the relief when they interleave, so read it as the
expected slowdown, not a worst case. Jobs whose chips share no link (separate
OCS slices with a non-blocking DCN core) are exactly as fast as alone: that is
what the isolation of slices buys.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, Field, model_validator

from pathsim.cluster import load_cluster
from pathsim.errors import PathsimConfigError
from pathsim.network import get_model
from pathsim.result import SimulationResult
from pathsim.run_setup import RunSetup, prepare_run
from pathsim.simulation import MAX_STEPS, run_steps
from pathsim.topology import MultiSlice, build_topology
from pathsim.trace import TraceRecorder
from pathsim.workload import StrictModel, parse_id_ranges
from pathsim.yaml_config import load_config, resolve_reference


class JobSpec(StrictModel):
    name: str = Field(min_length=1)
    workload: str | dict[str, Any] = Field(description="workload preset name, a YAML path relative to this file, "
                                                       "or (from Python) the workload itself")
    chips: str | list[int] | None = Field(None, description='chip ids of the cluster, e.g. "0-255"')
    slices: list[int] | None = Field(None, min_length=1, description="whole slices of a multi-slice cluster, e.g. [0, 1]")
    placement: str | None = Field(None, description="expert placement policy (default: pathsim simulate's)")

    @model_validator(mode="after")
    def _one_place(self) -> "JobSpec":
        if (self.chips is None) == (self.slices is None):
            raise ValueError(f"job {self.name!r} must give exactly one of `chips:` or `slices:`")
        return self


class SharedPodConfig(StrictModel):
    FIX_HINT: ClassVar[str] = "see the shared-pod presets for working examples (`pathsim presets --kind shared-pods`)"
    name: str
    description: str = ""
    cluster: str | dict[str, Any] = Field(description="cluster preset name, a YAML path relative to this file, "
                                                      "or (from Python) the cluster itself")
    jobs: list[JobSpec] = Field(min_length=1)
    base_dir: str = Field("", description="set by the loader: where relative workload paths start")

    @model_validator(mode="after")
    def _distinct_names(self) -> "SharedPodConfig":
        names = [job.name for job in self.jobs]
        if len(set(names)) != len(names):
            raise ValueError(f"job names must be distinct, got {names}")
        return self


class LinkShare(BaseModel):
    link_id: int
    link: str
    utilisation_by_job: dict[str, float]  # busy share of each job's step, at full link bandwidth


class JobOutcome(BaseModel):
    name: str
    workload: str
    chips: int
    step_time_alone_s: float
    step_time_shared_s: float
    slowdown: float  # shared / alone
    tokens_per_s_alone: float
    tokens_per_s_shared: float
    shared_links: int  # links this job uses that another job uses too
    result: SimulationResult  # the job's simulation with the others' traffic as background


class SharedPodResult(BaseModel):
    name: str
    cluster: str
    chips: int
    chips_used: int
    jobs: list[JobOutcome]
    rounds: int
    converged: bool
    contended_links: list[LinkShare]  # links more than one job uses, busiest total first (at most 10)

    def to_dict(self) -> dict:
        """The result as plain JSON-ready data: what ``--json`` writes."""
        return self.model_dump(mode="json")

    def to_frame(self):
        """A pandas DataFrame, one row per job: its shared-pod figures, then its simulation's summary row
        (``result.step_time.mean_s`` and so on). Needs pandas (``pathsim[frame]``)."""
        from pathsim.frames import job_frame

        return job_frame(self)


def load_shared_pod(spec: "str | Path | dict | SharedPodConfig") -> SharedPodConfig:
    """A SharedPodConfig from a preset name (`pathsim presets --kind shared-pods`), a YAML path or a dict."""
    return load_config(SharedPodConfig, spec, "shared-pods",
                       lambda data, path: data.setdefault("base_dir", str(path.resolve().parent)))


def job_chips(job: JobSpec, topology, source: str, index: int) -> np.ndarray:
    """The cluster chip ids a job runs on, checked against the cluster."""
    field = f"jobs[{index}]"
    if job.slices is not None:
        if not isinstance(topology, MultiSlice):
            raise PathsimConfigError(source, f"{field}.slices", f"the cluster {topology.name} is one slice",
                                     "give the job `chips:` instead")
        bad = [s for s in job.slices if not 0 <= s < topology.slices]
        if bad or len(set(job.slices)) != len(job.slices):
            raise PathsimConfigError(source, f"{field}.slices", f"{job.slices} are not distinct slices of 0..{topology.slices - 1}",
                                     f"use slice ids below {topology.slices}")
        n = topology.chips_per_slice
        return (np.array(sorted(job.slices))[:, None] * n + np.arange(n)).ravel()
    try:
        chips = parse_id_ranges(job.chips, "chip")
    except ValueError as exc:
        raise PathsimConfigError(source, f"{field}.chips", str(exc), 'write chip ranges like "0-255,512-767"') from None
    if chips.max() >= topology.num_chips:
        raise PathsimConfigError(source, f"{field}.chips", f"names chip {chips.max()}, but {topology.name} has "
                                 f"{topology.num_chips} (ids 0..{topology.num_chips - 1})", "use chip ids inside the cluster")
    if isinstance(topology, MultiSlice):
        # Parts of several slices would let tensor, expert and sharded-weight groups cross the DCN unasked.
        n = topology.chips_per_slice
        touched = np.unique(chips // n)
        if len(touched) > 1 and len(chips) != len(touched) * n:
            raise PathsimConfigError(source, f"{field}.chips", f"covers parts of slices {touched.tolist()} of {topology.name}",
                                     "give the job chips inside one slice, or whole slices with `slices:`")
    return chips


def jobs_chips(config: SharedPodConfig, topology, source: str) -> list[np.ndarray]:
    """Every job's chips, checked against the cluster and against each other (no chip runs two jobs)."""
    owners = np.full(topology.num_chips, -1)
    placed = []
    for i, job in enumerate(config.jobs):
        chips = job_chips(job, topology, source, i)
        taken = owners[chips] >= 0
        if taken.any():
            other = config.jobs[int(owners[chips][taken][0])].name
            raise PathsimConfigError(source, f"jobs[{i}]", f"job {job.name!r} shares chip {int(chips[taken][0])} with job {other!r}",
                                     "give every job its own chips")
        owners[chips] = i
        placed.append(chips)
    return placed


def simulate_shared(spec: "str | Path | dict | SharedPodConfig", *, steps: int = 1, seed: int = 0,
                    max_rounds: int = 8, tolerance: float = 1e-3, min_free_share: float = 0.05,
                    trace: "str | Path | None" = None) -> SharedPodResult:
    """Simulate the jobs of `spec` together on its cluster; see the module docstring for the model. `trace`: a file
    for a trace of every job's shared steps (the last round's), each job on processes of its own."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= MAX_STEPS:
        raise PathsimConfigError("<arguments>", "steps", f"must be an integer from 1 to {MAX_STEPS}, got {steps!r}", "e.g. --steps 2")
    for name, value, ok, fix in [("max_rounds", max_rounds, isinstance(max_rounds, int) and max_rounds >= 1, "e.g. 8"),
                                 ("tolerance", tolerance, isinstance(tolerance, (int, float)) and 0 < tolerance < 1, "e.g. 1e-3"),
                                 ("min_free_share", min_free_share,
                                  isinstance(min_free_share, (int, float)) and 0 < min_free_share <= 1, "e.g. 0.05")]:
        if not ok or isinstance(value, bool):
            raise PathsimConfigError("<arguments>", name, f"got {value!r}", fix)
    config = load_shared_pod(spec)
    source = str(spec) if isinstance(spec, (str, Path)) else f"<shared pod {config.name}>"
    cluster = load_cluster(_reference(config, config.cluster, "topologies"))
    topology = build_topology(cluster)
    setups = []
    for i, (job, chips) in enumerate(zip(config.jobs, jobs_chips(config, topology, source))):
        try:
            setups.append(prepare_run(cluster, _reference(config, job.workload, "workloads"), seed=seed, chips=chips,
                                      placement=job.placement))
        except PathsimConfigError as exc:  # say which job of the file the workload's mistake is in
            raise PathsimConfigError(exc.source, exc.field, f"{exc.problem} (job {job.name!r}, jobs[{i}] of {source})",
                                     exc.fix) from None

    bandwidth = topology.link_bandwidth
    recorder = TraceRecorder() if trace is not None else None
    titles = [f"job {job.name}: {s.workload.name} on {s.layout.total_chips} chips" for job, s in zip(config.jobs, setups)]
    alone = [run_steps(s, steps, detail=True, trace=recorder, trace_title=t) for s, t in zip(setups, titles)]
    busy = np.array([_busy_share(r, 1.0) for r in alone])  # jobs × links, at full bandwidth
    shared, converged, rounds = alone, True, 0
    if (np.count_nonzero(busy, axis=0) > 1).any():
        converged = False
        for rounds in range(1, max_rounds + 1):
            free = np.maximum(1.0 - (busy.sum(axis=0)[None, :] - busy), min_free_share)  # what the others leave
            latest = [run_steps(_with_bandwidth(s, bandwidth * free[j]), steps, detail=True, trace=recorder,
                                trace_title=titles[j]) for j, s in enumerate(setups)]
            moved = max(abs(a.step_time.mean_s / b.step_time.mean_s - 1) for a, b in zip(latest, shared))
            # Damped: a job that slows down keeps its links busy for less of its step, which frees them for the
            # others, which speeds it up again; averaging with the last round stops that see-saw.
            fresh = np.array([_busy_share(r, free[j]) for j, r in enumerate(latest)])
            shared, busy = latest, 0.5 * (busy + fresh)
            if moved <= tolerance:
                converged = True
                break
    if recorder is not None:
        recorder.write(trace)
    return _outcome(config, cluster, topology, alone, shared, busy, rounds, converged)


def _reference(config: SharedPodConfig, ref: "str | dict", kind: str) -> "Path | dict":
    """A preset name, or a path relative to the shared-pod file (a dict is the config itself)."""
    if isinstance(ref, dict):
        return ref
    anchor = Path(config.base_dir) / "_" if config.base_dir else None
    return resolve_reference(ref, kind, relative_to=anchor)


def _busy_share(result: SimulationResult, free_share: np.ndarray) -> np.ndarray:
    """Each link's busy share of the job's step at the link's full bandwidth, from a run that saw only
    `free_share` of it."""
    return np.asarray(result.detail.link_utilisation) * free_share


def _with_bandwidth(setup: RunSetup, link_bandwidth: np.ndarray) -> RunSetup:
    topology = setup.topology.with_link_bandwidth(link_bandwidth)
    return replace(setup, topology=topology, network=get_model(setup.network_name, topology))


def _outcome(config, cluster, topology, alone, shared, busy, rounds, converged) -> SharedPodResult:
    users = busy > 0
    contended = np.flatnonzero(users.sum(axis=0) > 1)
    order = contended[np.argsort(-busy[:, contended].sum(axis=0), kind="stable")][:10]
    names = [job.name for job in config.jobs]
    links = [LinkShare(link_id=int(l), link=topology.link_label(int(l)),
                       utilisation_by_job={names[j]: float(busy[j, l]) for j in range(len(names)) if users[j, l]})
             for l in order]
    jobs = []
    for j, job in enumerate(config.jobs):
        a, s = alone[j], shared[j]
        jobs.append(JobOutcome(name=job.name, workload=s.workload, chips=s.chips, step_time_alone_s=a.step_time.mean_s,
                               step_time_shared_s=s.step_time.mean_s, slowdown=s.step_time.mean_s / a.step_time.mean_s,
                               tokens_per_s_alone=a.tokens_per_s, tokens_per_s_shared=s.tokens_per_s,
                               shared_links=int((users[j] & (users.sum(axis=0) > 1)).sum()), result=s))
    return SharedPodResult(name=config.name, cluster=cluster.name, chips=topology.num_chips,
                           chips_used=sum(job.chips for job in jobs), jobs=jobs, rounds=rounds, converged=converged,
                           contended_links=links)


__all__ = ["JobOutcome", "JobSpec", "LinkShare", "SharedPodConfig", "SharedPodResult", "load_shared_pod", "simulate_shared"]
