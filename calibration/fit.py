"""Fitting the device model to timed kernels.

Per dtype, the anchors are the best rates measured: ``peak`` = the highest
FLOP/s and ``bandwidth`` = the highest bytes/s any sample reached, so every
efficiency is at most 1 relative to something this device really did. Per
kernel family, :class:`pathsim.device.KernelModel`'s parameters are then
fitted by robust nonlinear least squares (``scipy.optimize.least_squares``,
soft-L1 loss) on the *log* of the time, so a 10 µs kernel counts as much as a
10 ms one. The model is the one the simulator evaluates
(:func:`pathsim.device.kernel_seconds`):

    t = overhead + ((u·F/peak + b)^p + (v·B/bandwidth)^p)^(1/p),   u, v >= 1;  b, overhead >= 0;  p >= 1

with flops_efficiency = 1/u, half_efficiency_flops = b·peak/u,
memory_efficiency = 1/v and overlap_exponent = p (fitted as q = 1/p in
[0, 1]; q near 0 is the hard roofline max). A family whose samples do no
arithmetic (gathers, copies) fits only v and the overhead. The objective is
only piecewise smooth, so the fit starts from several points and keeps the best.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy.optimize import least_squares

from pathsim.device import KERNEL_FAMILIES, DtypeFit, KernelModel, KernelSample, kernel_seconds

_STARTS = ((1.0, 1.0, 0.05), (2.0, 1.0, 0.5), (1.0, 3.0, 1.0), (4.0, 4.0, 0.2), (10.0, 2.0, 0.05))
_HARD_MAX_Q = 0.02  # below this, p > 50: indistinguishable from the max, stored as such


def _model(u: float, b_s: float, v: float, overhead_s: float, q: float, peak: float) -> KernelModel:
    return KernelModel.model_construct(flops_efficiency=min(1.0, 1.0 / u), half_efficiency_flops=b_s * peak / u,
                                       memory_efficiency=min(1.0, 1.0 / v), overhead_s=overhead_s,
                                       overlap_exponent=None if q < _HARD_MAX_Q else 1.0 / q)


def fit_family(flops: np.ndarray, nbytes: np.ndarray, times: np.ndarray, peak: float, bandwidth: float) -> KernelModel:
    """The KernelModel that best explains (flops, bytes) -> median seconds, in relative error."""
    flops, nbytes, times = (np.asarray(a, dtype=np.float64) for a in (flops, nbytes, times))
    computes = bool(np.any(flops > 0))
    scale = float(np.min(times))  # b and overhead in units of the fastest sample, so the problem is well scaled

    def unpack(x) -> KernelModel:
        u, b, v, o, q = x if computes else (1.0, 0.0, x[0], x[1], 0.0)
        return _model(u, b * scale, v, o * scale, q, peak)

    def residuals(x):
        return np.log(kernel_seconds(unpack(x), flops, nbytes, peak, bandwidth)) - np.log(times)

    best = None
    for u0, v0, q0 in _STARTS:
        if computes:
            x0, lower, upper = [u0, 0.0, v0, 0.5, q0], [1.0, 0.0, 1.0, 0.0, 0.0], [np.inf, np.inf, np.inf, np.inf, 1.0]
        else:
            x0, lower, upper = [v0, 0.5], [1.0, 0.0], [np.inf, np.inf]
        result = least_squares(residuals, x0, bounds=(lower, upper), loss="soft_l1", f_scale=0.05, method="trf")
        if best is None or result.cost < best.cost:
            best = result
    return KernelModel.model_validate(unpack(best.x).model_dump())


def anchors(samples: list[KernelSample]) -> tuple[float, float]:
    """(best FLOP/s, best bytes/s) over the samples."""
    flop_rates = [s.flops / s.median_s for s in samples if s.flops > 0]
    byte_rates = [s.nbytes / s.median_s for s in samples]
    if not flop_rates:
        raise ValueError("no sample does arithmetic; the compute anchor needs at least one matmul")
    return max(flop_rates), max(byte_rates)


def fit_dtype(samples: list[KernelSample]) -> DtypeFit:
    """Every family's model for one dtype's (fit, not held-out) samples."""
    peak, bandwidth = anchors(samples)
    by_family: dict[str, list[KernelSample]] = defaultdict(list)
    for s in samples:
        by_family[s.family].append(s)
    missing = [f for f in KERNEL_FAMILIES if f not in by_family]
    if missing:
        raise ValueError(f"no samples for kernel families {missing}")
    kernels = {}
    for family, group in by_family.items():
        kernels[family] = fit_family(np.array([s.flops for s in group]), np.array([s.nbytes for s in group]),
                                     np.array([s.median_s for s in group]), peak, bandwidth)
    return DtypeFit(peak_flops=peak, hbm_bandwidth=bandwidth, kernels=kernels)


def fit_profile_dtypes(samples: list[KernelSample]) -> dict[str, DtypeFit]:
    """Fits per dtype from the samples not held out."""
    by_dtype: dict[str, list[KernelSample]] = defaultdict(list)
    for s in samples:
        if not s.held_out:
            by_dtype[s.dtype].append(s)
    return {dtype: fit_dtype(group) for dtype, group in sorted(by_dtype.items())}
