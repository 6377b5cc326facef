"""Fit the device model per chip family to the suite's training entries: how far each family's kernels sit from the
documented default efficiencies (``pathsim/device.py``).

One parameter per family, the chip's ``kernel_efficiency``: a scale on every kernel family's ``flops_efficiency``
(capped at 1), the share of the defaults' arithmetic rate that family's kernels reach. It is scanned over a coarse
grid (0.5 to 1.5), then a fine one around the coarse grid's best; each entry's time ratio (measured / predicted
step or layer time, so throughputs and times count alike) is taken at every point, and the fit is the least RMS
log ratio (the vertex of the parabola through the best fine-grid points).
A family with fewer than MIN_ENTRIES such entries is not fitted. Prints each family's curve, its fit and a
leave-one-out check: each entry's error at the scale fitted without it.

    python validation/fit_device.py            # the fast entries (a few minutes)
    python validation/fit_device.py --slow     # every entry (about twenty minutes on 2 cores)
"""

from __future__ import annotations

import sys

import numpy as np

from pathsim.device import scaled_defaults
from pathsim.fidelity import LAYER_METRICS, SETUP_ASSUMED, metric_value, suite_entries
from pathsim.simulation import simulate
from pathsim.uncertainty import STEP_LIKE, step_ratio
from pathsim.workload import load_workload

FAMILIES = ("a100", "h100", "h800", "v100", "tpu-v3", "tpu-v4", "tpu-v5p", "tpu-v5e")
COARSE = np.round(np.arange(0.5, 1.5001, 0.1), 3)
FINE_STEP, FINE_POINTS = 0.025, 4  # the fine grid: the coarse best ± 4 steps of 0.025
MIN_ENTRIES = 3


def _ratio(metric: str, error: float) -> float:
    """Measured over predicted time (a layer time counts like a step time)."""
    return 1.0 / (1.0 + error) if metric in LAYER_METRICS else step_ratio(metric, error)


def log_ratios(entries, scale: float) -> np.ndarray:
    """Each entry's log(measured / predicted step) with every flops efficiency scaled by `scale`; entries sharing
    a simulation (PaLM's three figures) share one run."""
    profile, runs, out = scaled_defaults(scale, "this fit", f"kernel_efficiency {scale:g} on trial"), {}, []
    for e in entries:
        key = (e.cluster, e.workload, e.metric in LAYER_METRICS)
        if key not in runs:
            runs[key] = simulate(e.cluster, load_workload(e.workload), steps=e.steps, seed=e.seed, profile=profile, placement=e.placement,
                                 detail=key[2])
        value = metric_value(e, runs[key], load_workload(e.workload))
        out.append(np.log(_ratio(e.metric, value / e.measured - 1)))
    return np.array(out)


def _vertex(scales: np.ndarray, rms: np.ndarray) -> float:
    """The scale of least RMS: the vertex of the parabola through the best grid point and its neighbours (the
    best grid point itself at the grid's ends)."""
    j = int(np.argmin(rms))
    if j == 0 or j == len(scales) - 1:
        return float(scales[j])
    x, y = scales[j - 1:j + 2], rms[j - 1:j + 2]
    a, b, _ = np.polyfit(x, y, 2)
    return float(-b / (2 * a)) if a > 0 else float(scales[j])


def _rms(table: np.ndarray) -> np.ndarray:
    return np.sqrt((table ** 2).mean(axis=1))


def metric_error(metric: str, log_ratio: float) -> float:
    """An entry's error in its own metric (predicted / measured − 1) from its log time ratio."""
    time_like = metric in LAYER_METRICS or STEP_LIKE[metric] < 0
    return float(np.exp(-log_ratio) - 1) if time_like else float(np.exp(log_ratio) - 1)


def fit(entries) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, dict[str, float]]:
    """(the fine grid's scales; log ratios there, scales × entries; the fitted scale; the entries' log ratios there;
    each entry's leave-one-out log ratio: at the scale fitted without it, interpolated between fine-grid points)."""
    coarse = np.array([log_ratios(entries, s) for s in COARSE])
    best = float(COARSE[int(np.argmin(_rms(coarse)))])
    scales = np.round(best + FINE_STEP * np.arange(-FINE_POINTS, FINE_POINTS + 1), 4)
    table = np.array([log_ratios(entries, s) for s in scales])
    scale = _vertex(scales, _rms(table))
    at_fit = log_ratios(entries, scale)
    held_out = {}
    for k, e in enumerate(entries):
        without = _vertex(scales, _rms(np.delete(table, k, axis=1)))
        held_out[e.name] = float(np.interp(without, scales, table[:, k]))
    return scales, table, scale, at_fit, held_out


def families(slow: bool, names: "set[str] | None" = None) -> dict[str, list]:
    """Each chip family's timed training entries (of `names`, by default all)."""
    entries = [e for e in suite_entries(slow=slow)
               if e.workload is not None and (e.metric in LAYER_METRICS or step_ratio(e.metric, 0.0) is not None)
               and SETUP_ASSUMED not in e.tags and (names is None or e.name in names)]
    return {family: [e for e in entries if family in e.tags] for family in FAMILIES}


def main(argv: list[str]) -> int:
    for family, members in families("--slow" in argv).items():
        if len(members) < MIN_ENTRIES:
            print(f"{family}: {len(members)} step entr{'y' if len(members) == 1 else 'ies'}, not fitted (needs {MIN_ENTRIES})")
            continue
        scales, table, scale, at_fit, held_out = fit(members)
        curve = "  ".join(f"{s:.3f}: {r:.3f}" for s, r in zip(scales, _rms(table)))
        print(f"{family}: {len(members)} entries; RMS log time ratio by scale: {curve}")
        print(f"{family}: fitted kernel_efficiency {scale:.3f} (RMS {np.sqrt((at_fit ** 2).mean()):.3f}; "
              f"at 1: {np.sqrt((log_ratios(members, 1.0) ** 2).mean()):.3f})")
        for e, ratio in zip(members, at_fit):
            print(f"    {e.name:48s} time error at the fit {np.exp(-ratio) - 1:+.1%}, "
                  f"held out {np.exp(-held_out[e.name]) - 1:+.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
