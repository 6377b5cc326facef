"""The validation suite's leave-one-out check: each entry's error when predicted by models fitted without it.

pathsim's parameters fitted to the suite are the link efficiencies (``validation/fit_network.py``, each a geometric
mean over the nccl-tests entries that measure it): an entry those fits use is predicted from the fit of the others
(NVLS, the only entry of its share, by the model without that share). Every other entry (training steps, layer
times, throughputs, power) is fitted by nothing, so its held-out error is its error. The device model's efficiencies are the documented defaults, fitted to no entry.

    pathsim fidelity --slow --json suite.json      # every entry (minutes); or without --slow, the fast ones
    python validation/leave_one_out.py suite.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fit_network import fits  # noqa: E402  (a sibling script, not a package)


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
    held_out = {name: error for *_, out in fits() for name, error in out.items() if name in errors}
    rows = [(name, errors[name], held_out.get(name, errors[name]), name in held_out) for name in sorted(errors)]
    for name, error, loo, fitted in rows:
        print(f"{name:48s} error {error:+7.1%}  held out {loo:+7.1%}{'  (fitted: link efficiency)' if fitted else ''}")
    loo = np.abs([r[2] for r in rows])
    print(f"{len(rows)} entries, {sum(r[3] for r in rows)} of them in a fit: leave-one-out median |error| "
          f"{np.median(loo):.1%}, p90 {np.percentile(loo, 90):.1%} (goal: median <= 10%)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
