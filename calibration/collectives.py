"""Collectives timed for real with ``shard_map``, and the network they imply.

all-to-all, all-reduce and all-gather run over every calibrated device
(``jax.lax.all_to_all`` / ``psum`` / ``all_gather``), sizes in NCCL-tests'
convention (the per-rank buffer, the gathered output for all-gather), the same
convention as :mod:`pathsim.collectives`. The devices are then described as
pathsim sees a node: every device on one link to a shared switch. The link's
bandwidth and latency are fitted so that pathsim's own collective algorithms,
routed on that graph by the fast network model, reproduce the measured times:
pathsim's time is linear in (1/bandwidth, latency), so the fit is a
non-negative least squares on relative error (``scipy.optimize.nnls``).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls

from pathsim.collectives import collective_phases
from pathsim.device import CollectiveSample, NetworkFit
from pathsim.network import get_model
from pathsim.topology import build_topology
from pathsim.cluster import ClusterConfig

COLLECTIVES: tuple[str, ...] = CollectiveSample.model_fields["op"].annotation.__args__
SIZES = {"quick": (1 << 18, 1 << 20, 1 << 22), "full": tuple(1 << k for k in range(16, 25, 2))}
HELD_OUT_SIZES = {"quick": (3 << 19,), "full": tuple(3 << k for k in range(15, 24, 2))}  # between the fit sizes
_ELEMENT_BYTES = 4  # float32 buffers


def host_cluster_config(devices: int, link_bandwidth: float, latency_s: float, *, name: str = "calibrated-host",
                        chip_name: str = "calibrated device", peak_flops: dict[str, float] | None = None,
                        hbm_bytes: float = 16e9, hbm_bandwidth: float = 1e11, source: str = "pathsim calibrate") -> ClusterConfig:
    """The calibrated devices as a cluster: each on one link (of the fitted speed) to a shared switch."""
    edges = [{"a": i, "b": "switch", "link": "device_link"} for i in range(devices)]
    return ClusterConfig.model_validate({
        "name": name,
        "description": f"{devices} calibrated devices on one switch",
        "source": source,
        "chip": {"name": chip_name, "peak_flops": peak_flops or {"bf16": 1e12}, "hbm_bytes": hbm_bytes,
                 "hbm_bandwidth": hbm_bandwidth, "idle_power": 0.0, "peak_power": 1.0, "source": source},
        "host": {"chips_per_host": devices, "power": 0.0, "source": source},
        "links": {"device_link": {"bandwidth": link_bandwidth, "latency": latency_s, "source": source}},
        "topology": {"kind": "graph", "chips": devices, "switches": ["switch"], "edges": edges},
    })


def _model_terms(op: str, nbytes: float, devices: int) -> tuple[float, float]:
    """pathsim's (seconds × bytes/s, hops' latency count) for one collective: time = a / bandwidth + b × latency."""
    topology = build_topology(host_cluster_config(devices, 1.0, 1.0))
    network = get_model("fast", topology)
    _, phases = collective_phases(topology, op, nbytes, np.arange(devices)[None, :])
    bandwidth_term = latency_term = 0.0
    for phase in phases:
        timing = network.phase(phase.traffic)
        bandwidth_term += phase.repeat * timing.bandwidth_time_s
        latency_term += phase.repeat * timing.latency_s
    return bandwidth_term, latency_term


def predict(fit: NetworkFit, op: str, nbytes: float, devices: int) -> float:
    a, b = _model_terms(op, nbytes, devices)
    return a / fit.link_bandwidth + b * fit.latency_s


def fit_network(samples: list[CollectiveSample]) -> NetworkFit:
    """Link bandwidth and latency minimising relative error over the collectives not held out."""
    rows, targets = [], []
    for s in samples:
        a, b = _model_terms(s.op, s.nbytes, s.devices)
        rows.append([a / s.median_s, b / s.median_s])
        targets.append(1.0)
    (inverse_bandwidth, latency), _ = nnls(np.array(rows), np.array(targets))
    if inverse_bandwidth <= 0:
        raise ValueError("the collectives' times do not grow with their size; time larger buffers")
    return NetworkFit(link_bandwidth=1.0 / inverse_bandwidth, latency_s=latency, samples=list(samples))


def _collective_fn(op: str, mesh, nbytes: int):
    import jax
    from jax.sharding import PartitionSpec

    from pathsim.calibration.harness import AXIS

    n = mesh.devices.size
    elements = nbytes // _ELEMENT_BYTES
    if op == "all_to_all":
        def body(x):
            return jax.lax.all_to_all(x.reshape(n, -1), AXIS, 0, 0, tiled=True).reshape(1, -1)
        shape = (n, elements)
    elif op == "all_reduce":
        def body(x):
            return jax.lax.psum(x, AXIS)
        shape = (n, elements)
    else:  # all_gather: each device contributes nbytes / n and ends with nbytes
        def body(x):
            return jax.lax.all_gather(x, AXIS, axis=1, tiled=True)
        shape = (n, elements // n)
    spec = PartitionSpec(AXIS)
    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=spec, out_specs=spec)), shape


def measure_collectives(sizes: tuple[int, ...], mesh, repeats: int, min_time_s: float, max_repeats: int,
                        progress: bool = True) -> list[CollectiveSample]:
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from pathsim.calibration.harness import AXIS, Progress, time_call

    n = mesh.devices.size
    if n < 2:
        return []
    plan = [(op, size) for op in COLLECTIVES for size in sizes]
    bar = Progress(len(plan), "collectives") if progress else None
    samples = []
    for op, size in plan:
        fn, shape = _collective_fn(op, mesh, size)
        x = jax.device_put(jnp.ones(shape, jnp.float32), NamedSharding(mesh, PartitionSpec(AXIS)))
        jax.block_until_ready(fn(x))
        jax.block_until_ready(fn(x))
        samples.append(CollectiveSample(op=op, devices=n, nbytes=float(size),
                                        times_s=time_call(fn, (x,), repeats, min_time_s, max_repeats)))
        if bar:
            bar.step(f"{op} {size >> 10} KiB")
    return samples
