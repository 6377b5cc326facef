"""The validation suite's leave-one-out check: each entry's error when predicted by models fitted without it.

pathsim's parameters fitted to the suite are the link efficiencies and TPU v5e's per-hop latency
(``validation/fit_network.py``) and each chip family's kernel efficiency (``validation/fit_device.py``, for the
families with at least three timed training entries: the A100's, H100's, V100's and TPU v3's; entries whose set-up
is assumed are in no fit). An entry a fit uses is predicted from the fit of the others (NVLS, the only entry of
its share, by the model without that share). Every other entry is fitted by nothing, so its held-out error is
its error. The fits' grids take most of the time (about twenty minutes on 2 cores).

    pathsim fidelity --slow --json out/suite.json      # every entry (minutes); or without --slow, the fast ones
    python validation/leave_one_out.py out/suite.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fit_device import MIN_ENTRIES, families, fit, metric_error  # noqa: E402  (sibling scripts, not a package)
from fit_network import fits, latency_fits  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    path = Path(argv[0])
    try:
        suite = json.loads(path.read_text(encoding="utf-8"))
        errors = {entry["name"]: float(entry["error"]) for entry in suite["entries"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"leave_one_out: {path}: not the JSON of `pathsim fidelity --json` ({exc})", file=sys.stderr)
        return 2
    held_out = {name: (error, "link efficiency") for *_, out in fits() for name, error in out.items() if name in errors}
    for _, fitted, _, out in latency_fits():  # held out, the fitted entry has the latency assumed before the fit
        if fitted in errors:
            held_out[fitted] = (out[fitted], "per-hop latency")
    for members in families(slow=True, names=set(errors)).values():
        if len(members) >= MIN_ENTRIES:  # the chip family's kernel efficiency, fitted without each entry in turn
            *_, out = fit(members)
            held_out.update({e.name: (metric_error(e.metric, out[e.name]), "kernel efficiency") for e in members})
    rows = [(name, errors[name], *held_out.get(name, (errors[name], None))) for name in sorted(errors)]
    for name, error, loo, fitted in rows:
        print(f"{name:48s} error {error:+7.1%}  held out {loo:+7.1%}{f'  (fitted: {fitted})' if fitted else ''}")
    loo = np.abs([r[2] for r in rows])
    print(f"{len(rows)} entries, {sum(r[3] is not None for r in rows)} of them in a fit: leave-one-out median |error| "
          f"{np.median(loo):.1%}, p90 {np.percentile(loo, 90):.1%} (goal: median <= 10%)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
