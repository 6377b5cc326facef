"""What a run needs before any step: configs → topology, layout, device model, routing plan, expert placement.

``pathsim.simulate`` and the placement planner build the same things from a
cluster and a workload; this is the one place that does it. The placement is
resolved here too (a policy planned by :mod:`pathsim.planner`, a file, or a
Placement), so the simulation runs a setup whose placement is fixed: a sweep
can hold one placement while it varies everything else (``with_placement``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from pathsim.cluster import ClusterConfig, load_cluster
from pathsim.device import DeviceModel, DeviceProfile, check_profile_fits, load_profile
from pathsim.errors import PathsimConfigError
from pathsim.network import MODELS, get_model
from pathsim.network.timing import NetworkModel
from pathsim.placement import Placement
from pathsim.planner import resolve_placement
from pathsim.routing import RoutingPlan, build_plan
from pathsim.topology import MultiSlice, Torus, build_topology
from pathsim.topology.base import Topology
from pathsim.workload import Layout, WorkloadConfig, check_pipeline, dense_counterpart, load_workload, resolve_parallelism

STEP_MODELS = ("fast",)  # the fluid model takes minutes per all-to-all of a training step


@dataclass(frozen=True)
class RunSetup:
    cluster: ClusterConfig
    workload: WorkloadConfig
    source: str  # where the workload came from, for error messages
    topology: Topology
    layout: Layout
    network: NetworkModel
    network_name: str
    device_profile: DeviceProfile
    device: DeviceModel
    plan: RoutingPlan | None  # None for a dense model
    seed: int
    placement: Placement | None = None  # experts → chips (None for a dense model, or not yet resolved)

    @property
    def moe_layers(self) -> int:
        return len(self.workload.model.moe_layers)

    def with_placement(self, placement: Placement | None) -> "RunSetup":
        """The same run with another (already resolved) placement."""
        return replace(self, placement=placement)


def layout_on(workload: WorkloadConfig, topology: Topology, source: str, chips: np.ndarray | None = None) -> Layout:
    """The workload's parallel layout on this topology (a multi-slice cluster lays ranks out slice by slice),
    or on only its `chips` (a job sharing the cluster; whole slices of a multi-slice cluster keep their axes).
    With pipeline stages, the layout of stage 0 — the first block of chips — that every stage repeats on its own
    block (``Layout.for_stage``)."""
    if chips is not None and len(chips) == topology.num_chips:
        chips = None  # a job on the whole cluster is laid out as the cluster's own
    par = workload.parallelism
    if par.pipeline > 1 or par.virtual_stages > 1 or par.stage_layers is not None:
        if chips is not None:
            raise PathsimConfigError(source, "parallelism.pipeline", "pipeline parallelism runs on a whole cluster, not "
                                     "on a job sharing one", "remove pipeline from this job, or give it its own cluster")
        stage_chips = check_pipeline(workload, topology.num_chips, source)
        if isinstance(topology, MultiSlice) and stage_chips % topology.chips_per_slice and topology.chips_per_slice % stage_chips:
            raise PathsimConfigError(source, "parallelism.pipeline", f"stages of {stage_chips} chips straddle the "
                                     f"{topology.chips_per_slice}-chip slices", "use stages of whole slices or a divisor of a slice")
        if par.axes_order and stage_chips != topology.num_chips:
            raise PathsimConfigError(source, "parallelism.axes_order", "does not apply to a stage's block of a torus yet",
                                     "remove axes_order")
        flat = workload.model_copy(update={"parallelism": par.model_copy(update={"pipeline": 1, "virtual_stages": 1,
                                                                                  "stage_layers": None})})
        try:
            stage = layout_on(flat, topology, source, np.arange(stage_chips))  # check_pipeline: pipeline > 1 here
        except PathsimConfigError as error:  # the degrees apply inside a stage: say so
            raise PathsimConfigError(error.source, error.field, f"{error.problem} (in each of the {par.pipeline} "
                                     f"pipeline stages of {stage_chips} chips)", error.fix) from None
        return stage.model_copy(update={"pipeline": par.pipeline})
    if chips is None:
        slices, inner = (topology.slices, topology.inner) if isinstance(topology, MultiSlice) else (1, topology)
        return resolve_parallelism(workload, topology.num_chips, source, inner.dims if isinstance(inner, Torus) else None,
                                   slices)
    chips = np.unique(np.asarray(chips, dtype=np.int64))  # in id order, as the ranks take them
    slices, dims = 1, None
    if isinstance(topology, MultiSlice):
        touched = len(np.unique(chips // topology.chips_per_slice))
        if len(chips) == touched * topology.chips_per_slice:  # whole slices
            slices, dims = touched, topology.inner.dims if isinstance(topology.inner, Torus) else None
    if dims is None and workload.parallelism.axes_order and isinstance(getattr(topology, "inner", topology), Torus):
        raise PathsimConfigError(source, "parallelism.axes_order", "applies to a job on whole tori (the cluster, or whole "
                                 "slices of it); this job has part of one", "remove axes_order, or give the job whole slices")
    layout = resolve_parallelism(workload, len(chips), source, dims, slices)
    physical = chips[layout.chip(np.arange(len(chips)))]
    return layout.model_copy(update={"chip_of_rank": tuple(int(c) for c in physical), "cluster_chips": topology.num_chips})


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not hasattr(seed, "__index__") or seed < 0:
        raise PathsimConfigError("<arguments>", "seed", f"must be a non-negative integer, got {seed!r}", "e.g. --seed 0")
    return int(seed)


def prepare_run(cluster: "str | Path | dict | ClusterConfig", workload: "str | Path | dict | WorkloadConfig", *,
                seed: int = 0, network: str = "fast", sampling: str = "auto",
                profile: "str | Path | DeviceProfile | None" = None,
                dense: Literal["active_flops", "total_params"] | None = None,
                chips: np.ndarray | None = None,
                placement: "str | Path | Placement | None" = None, place: bool = True) -> RunSetup:
    """Everything a run needs; `chips` runs the workload on those chips of the cluster only. An MoE run's
    `placement` (a policy, default pathsim.choices.DEFAULT_POLICY; a placement JSON; a Placement) is resolved unless `place` is
    false (a planner about to place the experts itself)."""
    seed = check_seed(seed)
    if network not in STEP_MODELS:
        why = ("the fluid model re-solves rates at every flow completion, which takes minutes per all-to-all of a "
               "training step" if network in MODELS else f"unknown network model {network!r}")
        raise PathsimConfigError("<arguments>", "network", why,
                                 "simulate steps with the fast model; check single phases with `pathsim collective --model fluid`")
    cluster_config = load_cluster(cluster)
    workload_config = load_workload(workload)
    source = str(workload) if isinstance(workload, (str, Path)) else f"<workload {workload_config.name}>"
    if dense is not None:
        workload_config = dense_counterpart(workload_config, dense)
    topology = build_topology(cluster_config)
    layout = layout_on(workload_config, topology, source, chips)
    device_profile = load_profile(profile if profile is not None else cluster_config.profile, cluster_config.chip)
    check_profile_fits(device_profile, cluster_config.chip, "<arguments>" if profile is not None else cluster_config.name)
    device = DeviceModel(cluster_config.chip, workload_config.model.dtype, device_profile, source,
                         workload_config.training.compute_share, workload_config.model.matmul_precision)
    plan = build_plan(workload_config, layout, seed, sampling, source) if workload_config.model.moe else None
    if placement is not None and plan is None:
        raise PathsimConfigError("<arguments>", "placement", f"{workload_config.name} has no experts to place", "drop --placement")
    setup = RunSetup(cluster=cluster_config, workload=workload_config, source=source, topology=topology, layout=layout,
                     network=get_model(network, topology), network_name=network, device_profile=device_profile,
                     device=device, plan=plan, seed=seed)
    if plan is None or not place:
        return setup
    return setup.with_placement(resolve_placement(placement, setup))
