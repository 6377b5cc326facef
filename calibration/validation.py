"""How far the fitted device model is from measurements it was not fitted to.

Every number here comes from timed kernels: the held-out shapes lie between
the fit grid's points, and each prediction is the simulator's own
(:class:`pathsim.device.DeviceModel` on the profile, costs from
:mod:`pathsim.kernel_costs`). The measurement's own repeatability is reported
beside the error: a model cannot be judged more finely than the machine
repeats itself.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from pydantic import BaseModel

from pathsim.calibration.collectives import predict
from pathsim.device import CollectiveSample, DeviceModel, DeviceProfile, KernelSample, NetworkFit
from pathsim.units import format_seconds

GOAL_MEDIAN, GOAL_P90 = 5.0, 10.0  # % absolute error, issue 7


class Prediction(BaseModel):
    kernel: str
    family: str
    dtype: str
    shape: dict[str, int]
    predicted_s: float
    measured_s: float
    repeat_spread: float  # (p75 - p25) / median of the repeats

    @property
    def error_pct(self) -> float:
        return 100.0 * (self.predicted_s / self.measured_s - 1.0)


class FamilyError(BaseModel):
    family: str
    dtype: str
    shapes: int
    median_abs_pct: float
    p90_abs_pct: float
    repeat_spread_pct: float  # median over shapes of the repeats' interquartile range / median

    @property
    def meets_goal(self) -> bool:
        return self.median_abs_pct <= GOAL_MEDIAN and self.p90_abs_pct <= GOAL_P90


class ValidationReport(BaseModel):
    profile: str
    device_kind: str
    predictions: list[Prediction]
    families: list[FamilyError]
    collectives: list[Prediction]

    def summary(self) -> tuple[float, float]:
        """Median and p90 absolute % error over every held-out kernel shape."""
        errors = np.abs([p.error_pct for p in self.predictions])
        return float(np.median(errors)), float(np.percentile(errors, 90))


def _spread(times: list[float]) -> float:
    q25, q50, q75 = np.percentile(times, [25, 50, 75])
    return float((q75 - q25) / q50)


def predict_kernels(profile: DeviceProfile, samples: list[KernelSample]) -> list[Prediction]:
    models = {dtype: DeviceModel(None, dtype, profile) for dtype in {s.dtype for s in samples}}
    return [Prediction(kernel=s.kernel, family=s.family, dtype=s.dtype, shape=s.shape,
                       predicted_s=float(models[s.dtype].time_s(s.family, s.flops, s.nbytes)), measured_s=s.median_s,
                       repeat_spread=_spread(s.times_s)) for s in samples]


def predict_collectives(network: NetworkFit, samples: list[CollectiveSample]) -> list[Prediction]:
    return [Prediction(kernel=f"collective/{s.op}", family=s.op, dtype="f32", shape={"bytes": int(s.nbytes), "devices": s.devices},
                       predicted_s=predict(network, s.op, s.nbytes, s.devices), measured_s=s.median_s,
                       repeat_spread=_spread(s.times_s)) for s in samples]


def family_errors(predictions: list[Prediction]) -> list[FamilyError]:
    groups: dict[tuple[str, str], list[Prediction]] = defaultdict(list)
    for p in predictions:
        groups[(p.family, p.dtype)].append(p)
    out = []
    for (family, dtype), group in sorted(groups.items()):
        errors = np.abs([p.error_pct for p in group])
        out.append(FamilyError(family=family, dtype=dtype, shapes=len(group), median_abs_pct=float(np.median(errors)),
                               p90_abs_pct=float(np.percentile(errors, 90)),
                               repeat_spread_pct=100.0 * float(np.median([p.repeat_spread for p in group]))))
    return out


def report(profile: DeviceProfile, held_out: list[KernelSample], collectives: list[CollectiveSample]) -> ValidationReport:
    predictions = predict_kernels(profile, held_out)
    coll = predict_collectives(profile.network, collectives) if profile.network is not None and collectives else []
    return ValidationReport(profile=profile.name, device_kind=profile.device_kind, predictions=predictions,
                            families=family_errors(predictions + coll), collectives=coll)


def format_report(rep: ValidationReport, detail: bool = False) -> str:
    lines = [f"held-out validation of profile {rep.profile!r} ({rep.device_kind}); goal: median <= {GOAL_MEDIAN:g} %, "
             f"p90 <= {GOAL_P90:g} % absolute error",
             f"    {'family':16s} {'dtype':5s} {'shapes':>6s} {'median':>8s} {'p90':>8s} {'repeat IQR':>10s}  goal"]
    for f in rep.families:
        lines.append(f"    {f.family:16s} {f.dtype:5s} {f.shapes:6d} {f.median_abs_pct:7.1f}% {f.p90_abs_pct:7.1f}% "
                     f"{f.repeat_spread_pct:9.1f}%  {'met' if f.meets_goal else 'missed'}")
    if rep.predictions:
        median, p90 = rep.summary()
        lines.append(f"    all kernels: median {median:.1f} %, p90 {p90:.1f} % over {len(rep.predictions)} held-out shapes")
    if detail:
        lines.append(f"    {'kernel':28s} {'dtype':5s} {'shape':44s} {'predicted':>10s} {'measured':>10s} {'error':>7s}")
        for p in rep.predictions + rep.collectives:
            shape = " ".join(f"{k}={v}" for k, v in p.shape.items())
            lines.append(f"    {p.kernel:28s} {p.dtype:5s} {shape:44s} {format_seconds(p.predicted_s):>10s} "
                         f"{format_seconds(p.measured_s):>10s} {p.error_pct:+6.1f}%")
    return "\n".join(lines)
