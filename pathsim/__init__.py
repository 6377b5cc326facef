"""pathsim: simulate and plan sparse (Mixture-of-Experts), multi-task models on TPU and GPU pods.

The public API, usable from a notebook as from the CLI::

    import pathsim
    cluster = pathsim.load_cluster("tpu-v4-8x8x8")
    result = pathsim.run_collective(cluster, "all_to_all", "256MiB", model="fast")
    print(result.time_s, result.busbw_bytes_per_s)

    step = pathsim.simulate("tpu-v4-8x8x8", "switch-base-128", steps=3, seed=0)
    print(step.step_time.mean_s, step.breakdown)

    shared = pathsim.simulate_shared("two-moe-jobs-dgx-h100-128")  # several jobs on one cluster
    print([(job.name, job.slowdown) for job in shared.jobs])
"""

from pathsim.version import __version__
from pathsim.errors import PathsimConfigError
from pathsim.cluster import ClusterConfig, load_cluster
from pathsim.traffic import Traffic
from pathsim.topology import Topology, build_topology
from pathsim.network import get_model
from pathsim.collectives import CollectiveResult, run_collective
from pathsim.workload import WorkloadConfig, dense_counterpart, load_workload
from pathsim.placement import Placement
from pathsim.planner import POLICIES, PlanOptions, place_experts
from pathsim.device import DeviceProfile, default_profile, load_profile
from pathsim.result import SimulationResult
from pathsim.simulation import simulate
from pathsim.shared_pod import SharedPodResult, simulate_shared
from pathsim.planning import PlacementReport, PlanComparison, compare_placements, plan
from pathsim.task_addition import AddedTask, expand_workload
from pathsim.replanning import DriftReport, TaskAdditionReport, add_task, random_walk_drift, routing_drift

__all__ = [
    "ClusterConfig",
    "DeviceProfile",
    "Placement",
    "SimulationResult",
    "WorkloadConfig",
    "default_profile",
    "dense_counterpart",
    "load_profile",
    "load_workload",
    "place_experts",
    "PlanOptions",
    "POLICIES",
    "simulate",
    "simulate_shared",
    "SharedPodResult",
    "plan",
    "compare_placements",
    "PlacementReport",
    "PlanComparison",
    "AddedTask",
    "expand_workload",
    "add_task",
    "TaskAdditionReport",
    "routing_drift",
    "random_walk_drift",
    "DriftReport",
    "CollectiveResult",
    "PathsimConfigError",
    "Topology",
    "Traffic",
    "__version__",
    "build_topology",
    "get_model",
    "load_cluster",
    "run_collective",
]
