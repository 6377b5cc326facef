"""An error bar on a predicted step time, from the validation suite's residuals in the run's regime.

``validation/residuals.json`` (written by ``pathsim fidelity --slow --residuals validation/residuals.json``)
keeps, for every training entry of the suite, the ratio of the measured step time to the predicted one
(throughput metrics inverted: a predicted 20 % too high throughput is a step 1/1.2 of the measured). A run
falls in a regime by its chip kind (``gpu`` on a GPU fat tree, ``tpu`` on a torus or multi-slice cluster; no
band with fewer than three entries of the kind: today's TPU entries are two) and, where the suite has at least
three such entries, also by what else it is (``pipeline``, ``moe``,
``multi-node``). The band is the p10–p90 of those entries' ratios applied to the predicted step time: where
the model is optimistic on its regime, the whole band lies above the prediction. It is evidence, not a
confidence interval: with few entries it is thin, and it says how many back it.
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
STEP_LIKE = {"step_time_s": -1, "gpu_hours_per_trillion_tokens": -1, "tokens_per_s": 1, "mfu": 1,
             "megatron_tflops_per_gpu": 1, "model_tflops_per_chip": 1}


class StepTimeBand(BaseModel):
    p10_s: float
    p90_s: float
    regime: list[str]  # the tags the entries share with the run
    entries: list[str]  # the validation entries behind it

    def describe(self) -> str:
        return f"{len(self.entries)} validation entries ({', '.join(self.regime)})"


def step_ratio(metric: str, error: float) -> float | None:
    """Measured step time over predicted, from an entry's error (None: the metric is not the step's)."""
    sign = STEP_LIKE.get(metric)
    if sign is None:
        return None
    return (1.0 + error) if sign > 0 else 1.0 / (1.0 + error)


@lru_cache(maxsize=1)
def _residuals() -> tuple[tuple[str, tuple[str, ...], float], ...]:
    path = preset_dir("validation") / "residuals.json"
    if not path.is_file():
        return ()
    data = json.loads(path.read_text())
    return tuple((e["name"], tuple(e["tags"]), float(e["step_ratio"])) for e in data["entries"])


def run_regime(gpu: bool, pipeline: bool, moe: bool, multi_node: bool) -> tuple[str, list[str]]:
    kind = "gpu" if gpu else "tpu"
    return kind, [tag for tag, on in (("pipeline", pipeline), ("moe", moe), ("multi-node", multi_node)) if on]


def step_time_band(step_time_s: float, kind: str, extra: list[str]) -> StepTimeBand | None:
    """The band for a run of this chip kind and these regime tags, or None when the suite has fewer than
    MIN_ENTRIES entries of the kind (a band from one or two points would claim more than it knows)."""
    of_kind = [(name, tags, ratio) for name, tags, ratio in _residuals() if kind in tags]
    if len(of_kind) < MIN_ENTRIES:
        return None
    chosen, regime = of_kind, [kind]
    narrower = [e for e in of_kind if all(tag in e[1] for tag in extra)]
    if extra and len(narrower) >= MIN_ENTRIES:
        chosen, regime = narrower, [kind, *extra]
    ratios = np.array([ratio for _, _, ratio in chosen])
    return StepTimeBand(p10_s=float(step_time_s * np.percentile(ratios, 10)),
                        p90_s=float(step_time_s * np.percentile(ratios, 90)),
                        regime=regime, entries=sorted(name for name, _, _ in chosen))
