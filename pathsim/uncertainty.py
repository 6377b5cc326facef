"""An error bar on a predicted step time, from the validation suite's residuals in the run's regime.

``validation/residuals.json`` (written by ``pathsim fidelity --slow --residuals validation/residuals.json``)
keeps, for every training entry of the suite, the ratio of the measured step time to the predicted one
(throughput metrics inverted: a predicted 20 % too high throughput is a step 1/1.2 of the measured). A run
falls in a regime by its chip kind (``gpu`` on a GPU fat tree, ``tpu`` on a torus or multi-slice cluster; no
band with fewer than three entries of the kind) and, where the suite has at least
three such entries, also by what else it is (``pipeline``, ``moe``,
``multi-node``). The band is the p10–p90 of those entries' ratios applied to the predicted step time: where
the model is optimistic on its regime, the whole band lies above the prediction. It is evidence, not a
confidence interval: with few entries it is thin, and it says how many back it.

The step's IT energy gets a band too where the suite also has three power entries of the chip kind (measured
system power per accelerator, host included: Patterson et al. 2021's TPU v3 runs today): energy is power × time,
so its band is the step band times the p10–p90 of the measured / predicted power ratios (the product of the
two ends, wider than the product's own quantiles would be if the two errors were independent).
"""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
from pydantic import BaseModel

from pathsim.presets import preset_dir

MIN_ENTRIES = 3  # below this a narrower regime falls back to the chip kind alone
# Metrics whose error is the step time's: step_time_s-like (ratio measured / predicted = 1 / (1 + error)) or
# throughput-like (ratio = 1 + error). HFU counts rematerialisation by its own accounting: left out.
STEP_LIKE = {"step_time_s": -1, "gpu_hours_per_trillion_tokens": -1, "training_days": -1, "tokens_per_s": 1, "mfu": 1,
             "megatron_tflops_per_gpu": 1, "model_tflops_per_chip": 1}


class StepTimeBand(BaseModel):
    p10_s: float
    p90_s: float
    regime: list[str]  # the tags the entries share with the run
    entries: list[str]  # the validation entries behind it

    def describe(self) -> str:
        return f"{len(self.entries)} validation entries ({', '.join(self.regime)})"


class EnergyBand(BaseModel):
    p10_j: float  # IT energy per step (chips, hosts, network; no PUE)
    p90_j: float
    regime: list[str]
    entries: list[str]  # the step entries and the power entries behind it

    def describe(self) -> str:
        return f"{len(self.entries)} validation entries ({', '.join(self.regime)}; power entries of the chip kind)"


def power_ratio(metric: str, error: float) -> float | None:
    """Measured power over predicted, from an entry's error (None: the metric is not a power)."""
    return 1.0 / (1.0 + error) if metric == "it_w_per_chip" else None


def step_ratio(metric: str, error: float) -> float | None:
    """Measured step time over predicted, from an entry's error (None: the metric is not the step's)."""
    sign = STEP_LIKE.get(metric)
    if sign is None:
        return None
    return (1.0 + error) if sign > 0 else 1.0 / (1.0 + error)


@lru_cache(maxsize=1)
def _residuals() -> tuple[tuple[str, tuple[str, ...], str, float], ...]:
    """(name, tags, "step" or "power", measured / predicted ratio) of every entry the bands draw on."""
    path = preset_dir("validation") / "residuals.json"
    if not path.is_file():
        return ()
    data = json.loads(path.read_text())
    return tuple((e["name"], tuple(e["tags"]), "power" if "power_ratio" in e else "step",
                  float(e.get("power_ratio", e.get("step_ratio")))) for e in data["entries"])


def _evidence(quantity: str, kind: str, extra: list[str]) -> tuple[list[tuple[str, float]], list[str]] | None:
    """The (name, ratio) entries of `quantity` for a run of this chip kind, narrowed to its regime tags where
    MIN_ENTRIES share them, and the regime chosen; None with fewer than MIN_ENTRIES of the kind."""
    of_kind = [(name, tags, ratio) for name, tags, q, ratio in _residuals() if q == quantity and kind in tags]
    if len(of_kind) < MIN_ENTRIES:
        return None
    chosen, regime = of_kind, [kind]
    narrower = [e for e in of_kind if all(tag in e[1] for tag in extra)]
    if extra and len(narrower) >= MIN_ENTRIES:
        chosen, regime = narrower, [kind, *extra]
    return [(name, ratio) for name, _, ratio in chosen], regime


def _p10_p90(evidence: list[tuple[str, float]]) -> tuple[float, float]:
    ratios = np.array([ratio for _, ratio in evidence])
    return float(np.percentile(ratios, 10)), float(np.percentile(ratios, 90))


def run_regime(gpu: bool, pipeline: bool, moe: bool, multi_node: bool) -> tuple[str, list[str]]:
    kind = "gpu" if gpu else "tpu"
    return kind, [tag for tag, on in (("pipeline", pipeline), ("moe", moe), ("multi-node", multi_node)) if on]


def step_time_band(step_time_s: float, kind: str, extra: list[str]) -> StepTimeBand | None:
    """The band for a run of this chip kind and these regime tags, or None when the suite has fewer than
    MIN_ENTRIES entries of the kind (a band from one or two points would claim more than it knows)."""
    found = _evidence("step", kind, extra)
    if found is None:
        return None
    chosen, regime = found
    low, high = _p10_p90(chosen)
    return StepTimeBand(p10_s=step_time_s * low, p90_s=step_time_s * high, regime=regime,
                        entries=sorted(name for name, _ in chosen))


def energy_band(energy_j: float, kind: str, extra: list[str]) -> EnergyBand | None:
    """The band of a step's IT energy: its step band's ratios times the chip kind's power ratios (None without
    MIN_ENTRIES of either)."""
    steps, power = _evidence("step", kind, extra), _evidence("power", kind, [])
    if steps is None or power is None:
        return None
    (step_low, step_high), (power_low, power_high) = _p10_p90(steps[0]), _p10_p90(power[0])
    return EnergyBand(p10_j=energy_j * step_low * power_low, p90_j=energy_j * step_high * power_high, regime=steps[1],
                      entries=sorted(name for name, _ in steps[0] + power[0]))
