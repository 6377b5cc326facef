"""Regenerate the example reports in this folder from built-in presets.

    python reports/generate.py            # all of them (about a minute on 2 cores)
    python reports/generate.py glam-1024  # one

Each example is one `pathsim report` call; EXAMPLES below is the list, with the
reason each is here. tests/test_examples.py regenerates one and checks it
against the committed report.json, so a model change that moves the numbers
asks for this script to be re-run.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pathsim.report import build_report, write_report

HERE = Path(__file__).resolve().parent

# name -> build_report arguments
EXAMPLES: dict[str, dict] = {
    # The quick-start model and cluster, against the other TPU generation and an H100 SuperPOD unit, for the
    # Switch paper's 550k steps of 2^20 tokens (Fedus et al. 2021, Sec. 4.1).
    "switch-base-128": dict(cluster="tpu-v4-8x8x8", workload="switch-base-128", run_steps=550_000,
                            compare_clusters=("tpu-v5p-8x8x8", "dgx-h100-32")),
    # The Pathways / Patterson et al. 2021 claim: a sparsely activated model against dense models of the same size.
    "switch-c-2048": dict(cluster="tpu-v4-8x8x16", workload="switch-c-2048", run_tokens=1e12),
    # GLaM as trained: 1024 TPU v4 chips, 600B tokens (Du et al. 2022).
    "glam-1024": dict(cluster="tpu-v4-8x8x16", workload="glam", run_tokens=600e9, dense="active_flops"),
    # Multi-task, multi-modal routing on GPUs and TPUs, and which cluster meets a 30-day deadline for 1T tokens.
    "pathways-multitask": dict(cluster="dgx-h100-32", workload="pathways-multitask", run_tokens=1e12,
                               deadline_s=30 * 86400.0, compare_clusters=("tpu-v4-8x8x8", "tpu-v5p-8x8x8", "dgx-h100-128")),
}


def generate(name: str) -> Path:
    report = build_report(**EXAMPLES[name])
    write_report(report, HERE / name)
    return HERE / name


if __name__ == "__main__":
    names = sys.argv[1:] or list(EXAMPLES)
    unknown = [n for n in names if n not in EXAMPLES]
    if unknown:
        sys.exit(f"unknown example(s) {unknown}; choose from {list(EXAMPLES)}")
    for name in names:
        print(f"wrote {generate(name)}")
