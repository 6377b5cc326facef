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

    report = pathsim.build_report("tpu-v4-8x8x8", "switch-base-128", run_tokens="1T", deadline_s="30d")
    pathsim.write_report(report, "out/switch-base-128/")
"""

from pathsim.version import __version__

# Where each public name lives. They are imported on first use (PEP 562), so `import pathsim` — and the command
# line's `--help` — does not load the simulator, numpy and scipy before they are needed.
_PUBLIC = {
    "pathsim.errors": ("PathsimConfigError",),
    "pathsim.cluster": ("ClusterConfig", "load_cluster"),
    "pathsim.traffic": ("Traffic",),
    "pathsim.topology": ("Topology", "build_topology"),
    "pathsim.network": ("get_model",),
    "pathsim.collectives": ("CollectiveResult", "run_collective"),
    "pathsim.workload": ("WorkloadConfig", "dense_counterpart", "load_workload"),
    "pathsim.placement": ("Placement",),
    "pathsim.choices": ("POLICIES",),
    "pathsim.planner": ("PlanOptions", "place_experts"),
    "pathsim.device": ("DeviceProfile", "default_profile", "load_profile"),
    "pathsim.result": ("SimulationResult",),
    "pathsim.simulation": ("simulate",),
    "pathsim.shared_pod": ("SharedPodResult", "simulate_shared"),
    "pathsim.planning": ("PlacementReport", "PlanComparison", "compare_placements", "plan"),
    "pathsim.task_addition": ("AddedTask", "expand_workload"),
    "pathsim.replanning": ("DriftReport", "TaskAdditionReport", "add_task", "random_walk_drift", "routing_drift"),
    "pathsim.report": ("Report", "build_report", "write_report"),
    "pathsim.footprint": ("Footprint", "resolve_site"),  # and pathsim.footprint.footprint: the module has its name
}
_MODULE_OF = {name: module for module, names in _PUBLIC.items() for name in names}


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'pathsim' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))


__all__ = [
    "Report",
    "build_report",
    "write_report",
    "Footprint",
    "resolve_site",
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
