"""What a new user waits for: the command line's answers and the README's main command, in fresh processes.

    python benchmarks/bench_first_hour.py

Each figure is the best of a few runs of a fresh interpreter (as a user's shell starts one), printed beside a bare
`python -c pass` from the same run, so the ratio holds on a loaded machine. The README states the --help time.
"""

from __future__ import annotations

import subprocess
import sys

from timing import best_of


def run(*argv: str) -> None:
    subprocess.run([sys.executable, *argv], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    cases = {
        "python -c pass (the floor)": ("-c", "pass"),
        "pathsim --help": ("-m", "pathsim.cli", "--help"),
        "pathsim --version": ("-m", "pathsim.cli", "--version"),
        "pathsim presets": ("-m", "pathsim.cli", "presets"),
        "pathsim simulate (the README's main command)": ("-m", "pathsim.cli", "simulate", "--cluster", "tpu-v4-8x8x8",
                                                          "--workload", "switch-base-128", "--steps", "3"),
    }
    floor = None
    for name, argv in cases.items():
        seconds = best_of(lambda argv=argv: run(*argv), repeat=3 if "simulate" in name else 5)
        floor = floor or seconds
        print(f"{name:48s} {seconds:7.3f} s  ({seconds / floor:5.1f} x the floor)")


if __name__ == "__main__":
    main()
