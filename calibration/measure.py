"""Measuring kernels: the sweep's shapes, timed on the mesh, as KernelSamples."""

from __future__ import annotations

import numpy as np

from pathsim.device import KernelSample

from pathsim.calibration import kernels as kn
from pathsim.calibration.harness import Budget, KernelTimer, Progress, make_mesh
from pathsim.calibration.sweeps import shapes


def measure_kernels(mode: str, dtypes: tuple[str, ...], budget: Budget, rounds: int = 1, devices: int | None = None,
                    variants: tuple[str, ...] | None = None, held_out: bool = True, fit: bool = True,
                    seed: int = 0, progress: bool = True) -> list[KernelSample]:
    """Time the sweep's shapes; each shape's repeats are spread over `rounds` passes in shuffled order."""
    import jax

    mesh = make_mesh(devices)
    platform = jax.devices()[0].platform
    plan = []
    for variant in variants or tuple(kn.VARIANTS):
        fit_shapes, held_shapes = shapes(variant, mode, platform, seed)
        for dtype in dtypes:
            plan += [(variant, shape, dtype, False) for shape in fit_shapes] if fit else []
            plan += [(variant, shape, dtype, True) for shape in held_shapes] if held_out else []
    kernels = [kn.build(variant, shape, dtype) for variant, shape, dtype, _ in plan]
    timer = KernelTimer(mesh, budget, rounds)
    times: list[list[float]] = [[] for _ in plan]
    rng = np.random.default_rng(seed)
    bar = Progress(len(plan) * rounds, "calibrate") if progress else None
    for round_ in range(rounds):
        for i in rng.permutation(len(plan)).tolist():
            times[i] += timer.time(i, kernels[i], seed=seed + i + round_ * len(plan))
            if bar:
                bar.step(f"{plan[i][0]} {plan[i][2]}")
    return [KernelSample(kernel=variant, family=kernel.family, dtype=dtype, shape=shape, flops=kernel.cost.flops,
                         nbytes=kernel.cost.nbytes, times_s=t, held_out=is_held_out)
            for (variant, shape, dtype, is_held_out), kernel, t in zip(plan, kernels, times)]
