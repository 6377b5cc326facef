"""Where calibration runs: the devices JAX sees, and how to describe them.

JAX reads ``XLA_FLAGS`` once, when its backend starts, so the host-device
count must be set before anything imports jax. Calibration on a CPU-only
machine splits the host into several devices (the issue's 8 by default) so
collectives and an expert-parallel step have peers to talk to; on GPUs and
TPUs the flag only adds host devices nobody uses.
"""

from __future__ import annotations

import os
import platform
import re
import sys

HOST_DEVICE_FLAG = "--xla_force_host_platform_device_count"


def force_host_devices(count: int) -> None:
    """Ask XLA for `count` CPU devices; must run before jax is imported."""
    flags = re.sub(rf"{HOST_DEVICE_FLAG}=\d+", "", os.environ.get("XLA_FLAGS", "")).strip()
    os.environ["XLA_FLAGS"] = f"{flags} {HOST_DEVICE_FLAG}={count}".strip()
    if "jax" in sys.modules:  # too late if its backend has started: say so rather than calibrate the wrong machine
        import jax

        have = len(jax.devices("cpu"))
        if have < count:
            raise RuntimeError(f"jax started with {have} host device(s) before {HOST_DEVICE_FLAG}={count} was set; "
                               f"set XLA_FLAGS={HOST_DEVICE_FLAG}={count} before importing jax")


def _processor() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(used: int | None = None) -> dict:
    """Device kind, device count, versions and host of the default JAX backend (`used` of its devices calibrated)."""
    import jax
    import jax.extend.backend
    import jaxlib

    devices = jax.devices()
    first = devices[0]
    host = f"{platform.node()} ({platform.system()} {platform.machine()}, {_processor()}, {os.cpu_count()} cores)"
    kind = first.device_kind
    if first.platform == "cpu":
        kind = f"cpu: {_processor()}, {os.cpu_count()} cores as {used or len(devices)} host devices"
    versions = {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "python": platform.python_version(),
                "backend": jax.extend.backend.get_backend().platform_version}
    return {"device_kind": kind, "platform": first.platform, "devices": len(devices), "host": host, "versions": versions}
