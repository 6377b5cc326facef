"""The ``pathsim`` command: a thin shell over the Python API.

User mistakes (bad files, fields, units, presets, arguments) print one or two
lines naming the file, the field and the fix, and exit with status 2. Ctrl-C
exits 130 and SIGTERM 143 (the shell's 128 + signal), each with one line and
no traceback; outputs are written whole or not at all (pathsim/output_files.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from pathlib import Path

from pathsim.version import __version__
from pathsim.choices import ALGORITHMS, DEFAULT_POLICY, NETWORK_MODELS, OPS, POLICIES, SAMPLING_MODES
from pathsim.errors import PathsimConfigError
from pathsim.output_files import FORMATS, check_distinct, check_output
from pathsim.presets import PRESET_KINDS

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own usage errors: same exit code, no traceback
        self.print_usage(sys.stderr)
        print(f"pathsim: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)


# What each subcommand's --help shows under its options: commands a user can paste (outputs under out/).
EXAMPLES = {
    "presets": ["pathsim presets", "pathsim presets --kind workloads"],
    "validate": ["pathsim validate my-cluster.yaml my-workload.yaml", "pathsim validate dgx-h100-32"],
    "collective": ["pathsim collective --cluster dgx-h100-1 --op all_reduce --bytes 16MiB",
                   "pathsim collective --cluster tpu-v4-4x4x4 --op all_to_all --bytes 64MiB --model fluid --format json"],
    "simulate": ["pathsim simulate --cluster tpu-v4-8x8x8 --workload switch-base-128 --steps 3",
                 "pathsim simulate --cluster dgx-h100-32 --workload mixtral-8x7b --json out/run.json --trace out/trace.json"],
    "share": ["pathsim share two-moe-jobs-dgx-h100-128-4to1"],
    "plan": ["pathsim plan --cluster dgx-h100-32 --workload pathways-multitask --compare --out out/placement.json",
             "pathsim plan --cluster tpu-v4-8x8x8 --workload pathways-multitask --from out/placement.json "
             "--add-task workloads/added-tasks/sign-language-video.yaml --out out/after.json"],
    "report": ["pathsim report --cluster tpu-v4-8x8x8 --workload switch-base-128 --run-tokens 1T "
               "--compare-cluster tpu-v5p-8x8x8 dgx-h100-32 --deadline 30d --out out/my-plan/"],
    "calibrate": ["pathsim calibrate --quick", "pathsim calibrate --validate NAME --detail"],
    "fidelity": ["pathsim fidelity", "pathsim fidelity --slow --out out/fidelity"],
    "completion": ["pathsim completion bash > ~/.local/share/bash-completion/completions/pathsim",
                   "pathsim completion zsh > ~/.zfunc/_pathsim   # with fpath+=~/.zfunc before compinit in ~/.zshrc"],
}


def _add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="table",
                        help="stdout as a table for people (default), or the whole result as JSON or CSV (field,value) "
                             "for other tools; other lines go to stderr")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pathsim", description="Simulate sparse (MoE) models on TPU and GPU pods.")
    parser.add_argument("--version", action="version", version=f"pathsim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    presets = sub.add_parser("presets", help="list built-in presets")
    presets.add_argument("--kind", choices=PRESET_KINDS, help="only this kind of preset")

    validate = sub.add_parser("validate", help="check cluster, workload, shared-pod or added-task files (or preset names) and summarise them")
    validate.add_argument("files", nargs="+", metavar="FILE")

    coll = sub.add_parser("collective", help="time one collective on a cluster")
    _add_format(coll)
    coll.add_argument("--cluster", required=True, help="preset name or YAML file")
    coll.add_argument("--op", required=True, choices=OPS)
    coll.add_argument("--bytes", required=True, help="per-rank buffer size, e.g. 256MiB")
    coll.add_argument("--model", default="fast", choices=NETWORK_MODELS, help="network model (default: fast)")
    coll.add_argument("--algorithm", default="auto", choices=ALGORITHMS)
    coll.add_argument("--groups", type=int, default=None, help="split the chips into N equal, consecutive groups running concurrently")
    coll.add_argument("--matrix", type=Path, help="all_to_all only: bytes between ranks, a .npy or .csv square matrix")
    coll.add_argument("--json", type=Path, metavar="OUT", help="also write the full result as JSON")
    sim = sub.add_parser("simulate", help="simulate training steps of a workload on a cluster")
    _add_format(sim)
    sim.add_argument("--cluster", required=True, help="cluster preset name or YAML file")
    sim.add_argument("--workload", required=True, help="workload preset name or YAML file")
    sim.add_argument("--placement", default=None, help=f"expert placement: {' | '.join(POLICIES)} (planned with default options) or a placement JSON from `pathsim plan --out` (default {DEFAULT_POLICY}, as plan's)")
    sim.add_argument("--steps", type=int, default=1, help="training steps to simulate (default 1)")
    sim.add_argument("--seed", type=int, default=0, help="routing seed (default 0)")
    sim.add_argument("--network", default="fast", help="network model: fast (fluid is for single phases: `pathsim collective --model fluid`)")
    sim.add_argument("--sampling", default="auto", choices=SAMPLING_MODES, help="routing sampler fidelity (default: auto)")
    sim.add_argument("--profile", type=Path, help="device profile JSON (default: documented efficiencies)")
    sim.add_argument("--force-profile", action="store_true", help="apply --profile though it was measured on another kind of chip")
    sim.add_argument("--dense", choices=("active_flops", "total_params"), help="simulate the dense counterpart instead")
    sim.add_argument("--json", type=Path, metavar="OUT", help="also write the full result as JSON")
    sim.add_argument("--trace", type=Path, metavar="OUT", help="write a Perfetto/Chrome trace (open in ui.perfetto.dev)")

    share = sub.add_parser("share", help="simulate several jobs together on one cluster, each on its own chips: "
                                          "step time alone and shared, and the links they contend for")
    _add_format(share)
    share.add_argument("jobs", metavar="JOBS", help="shared-pod preset name (`pathsim presets --kind shared-pods`) or YAML file")
    share.add_argument("--steps", type=int, default=1, help="training steps per job and round (default 1)")
    share.add_argument("--seed", type=int, default=0, help="routing seed (default 0)")
    share.add_argument("--json", type=Path, metavar="OUT", help="also write the full result as JSON")
    share.add_argument("--trace", type=Path, metavar="OUT", help="write a Perfetto trace of every job's shared steps, "
                                                                  "each job on processes of its own")

    plan = sub.add_parser("plan", help="plan expert placement (replicas of hot experts included) and judge it by simulation")
    _add_format(plan)
    plan.add_argument("--cluster", required=True, help="cluster preset name or YAML file")
    plan.add_argument("--workload", required=True, help="workload preset name or YAML file")
    plan.add_argument("--policy", default=DEFAULT_POLICY, choices=POLICIES, help=f"placement policy (default {DEFAULT_POLICY})")
    plan.add_argument("--compare", action="store_true", help="run every policy and print them side by side")
    plan.add_argument("--replicas", type=int, default=None, help="extra expert copies per MoE layer and expert-parallel group")
    plan.add_argument("--together", action="append", default=[], metavar="IDS",
                      help='experts that must share a chip, e.g. "0-3" or "5,9" (repeatable)')
    plan.add_argument("--eplb-groups", type=int, default=1, help="EPLB: expert groups of group-limited routing (default 1: global policy)")
    plan.add_argument("--eplb-nodes", type=int, default=None, help="EPLB: nodes per expert-parallel group (default: fat-tree servers; 1 on a torus)")
    plan.add_argument("--time-budget", type=float, default=None, metavar="S",
                      help="search: seconds at most (default none: --max-evaluations stops it, the same placement on any "
                           "machine; a time stop depends on the machine's speed)")
    plan.add_argument("--max-evaluations", type=int, default=2000, help="search: placements evaluated at most (default 2000)")
    plan.add_argument("--steps", type=int, default=1, help="training steps simulated to judge each placement (default 1)")
    plan.add_argument("--seed", type=int, default=0, help="routing seed (default 0)")
    plan.add_argument("--sampling", default="auto", choices=SAMPLING_MODES, help="routing sampler fidelity (default: auto)")
    plan.add_argument("--profile", type=Path, help="device profile JSON (default: documented efficiencies)")
    plan.add_argument("--force-profile", action="store_true", help="apply --profile though it was measured on another kind of chip")
    plan.add_argument("--out", type=Path, metavar="PLACEMENT.json", help="write the placement (with --compare: the best one)")
    plan.add_argument("--json", type=Path, metavar="OUT", help="also write the report(s) as JSON")
    plan.add_argument("--trace", type=Path, metavar="OUT", help="write a Perfetto trace of the steps with the chosen "
                                                                 "placement (with --compare: the best; with --add-task: the option --out writes)")
    grow = plan.add_argument_group("a task added to a placed model (SEN / Pathways: learn new tasks)")
    grow.add_argument("--from", dest="from_placement", type=Path, metavar="PLACEMENT.json", help="the placement the model runs with now")
    grow.add_argument("--add-task", type=Path, metavar="TASK.yaml", help="the task to add, with its new experts (see workloads/added-tasks/)")
    grow.add_argument("--migration-budget", default=None, metavar="BYTES",
                      help="most bytes to migrate for --out (e.g. 500GB; default: no limit)")
    drift = plan.add_argument_group("routing drift")
    drift.add_argument("--drift", default=None, metavar="FILE|random-walk:SIGMA",
                       help="routing histograms per window (.npy/.csv, windows first), or a synthetic log-normal random walk")
    drift.add_argument("--windows", type=int, default=8, help="random-walk drift: windows (default 8)")
    drift.add_argument("--window-steps", type=int, default=1000, help="training steps per window (default 1000)")
    drift.add_argument("--replan-every", type=int, nargs="+", default=[1, 2], metavar="K",
                       help="re-planning intervals to compare, in windows (default 1 2)")

    rep = sub.add_parser("report", help="cost, energy and carbon report of a workload on a cluster: HTML with plots, "
                                        "Markdown, and the data as CSV/JSON")
    _add_format(rep)
    rep.add_argument("--cluster", required=True, help="cluster preset name or YAML file")
    rep.add_argument("--workload", required=True, help="workload preset name or YAML file")
    rep.add_argument("--compare-cluster", nargs="+", action="extend", default=[], metavar="CLUSTER",
                     help="other candidate clusters: cost against time, with the Pareto front (repeatable)")
    rep.add_argument("--run-tokens", metavar="TOKENS", help="size of the training run, e.g. 1T or 600B (rounded up to whole steps)")
    rep.add_argument("--run-steps", type=int, metavar="N", help="size of the training run in steps (instead of --run-tokens)")
    rep.add_argument("--deadline", metavar="DURATION", help="mark which clusters finish the run in time, e.g. 30d or 72h")
    rep.add_argument("--dense", default="both", choices=("both", "active_flops", "total_params", "none"),
                     help="dense counterparts to compare against (default both)")
    rep.add_argument("--price", default="on_demand", metavar="TERM|USD",
                     help="on_demand (default), commit_1y, commit_3y (topologies/economics/prices.yaml) or USD per chip-hour")
    rep.add_argument("--provider", help="which cloud's offer for the chip, when prices.yaml lists several (default: the first)")
    rep.add_argument("--region", help="grid region (topologies/economics/grid-intensity.yaml; default: the offer's)")
    rep.add_argument("--grid-intensity", metavar="KG_PER_KWH", help="grid carbon intensity in kg CO2e per kWh, instead of --region")
    rep.add_argument("--pue", help="power usage effectiveness: a number >= 1 or an operator in topologies/economics/facilities.yaml "
                                   "(default: the offer's provider)")
    rep.add_argument("--steps", type=int, default=2, help="training steps to simulate per cluster (default 2)")
    rep.add_argument("--seed", type=int, default=0, help="routing seed (default 0)")
    rep.add_argument("--placement", default=None, help=f"expert placement policy or placement JSON (default {DEFAULT_POLICY}, as simulate's and plan's)")
    rep.add_argument("--profile", type=Path, help="device profile JSON for the main cluster (default: the cluster's)")
    rep.add_argument("--force-profile", action="store_true", help="apply --profile though it was measured on another kind of chip")
    rep.add_argument("--out", type=Path, metavar="DIR", help="folder to write (default out/WORKLOAD-on-CLUSTER/)")
    rep.add_argument("--trace", type=Path, metavar="OUT", help="write a Perfetto trace of the main cluster's simulated steps")

    cal = sub.add_parser("calibrate", help="time pathsim's kernels with JAX on this machine, fit a device profile, measure its error")
    cal.add_argument("--quick", action="store_true", help="a small bf16 sweep (about a minute on 2 CPU cores) instead of the full one")
    cal.add_argument("--dtypes", nargs="+", choices=("bf16", "f32"), help="dtypes to measure (default: bf16 and f32; --quick: bf16)")
    cal.add_argument("--devices", type=int, help="devices to run every kernel on at once (default: all JAX sees)")
    cal.add_argument("--host-devices", type=int, default=8,
                     help="CPU devices to split the host into (XLA's host platform device count; default 8)")
    cal.add_argument("--seed", type=int, default=0, help="picks the sweep's shapes (default 0)")
    cal.add_argument("--name", help="profile name (default: from the device kind and count)")
    cal.add_argument("--out", type=Path, help="profile JSON to write (default: calibration/profiles/NAME.json in a checkout, else NAME.json)")
    cal.add_argument("--validate", type=Path, metavar="PROFILE", help="measure held-out shapes now against this profile instead")
    cal.add_argument("--end-to-end", nargs="?", const="", metavar="PROFILE",
                     help="time a real expert-parallel MoE training step and compare it with pathsim's prediction from "
                          "PROFILE (a file or a shipped name); alone, from the profile this calibration writes")
    cal.add_argument("--detail", action="store_true", help="list every held-out shape with its prediction and measurement")
    cal.add_argument("--json", type=Path, metavar="OUT", help="also write the reports as JSON: {\"validation\": ..., \"end_to_end\": ...}")
    cal.add_argument("--no-progress", action="store_true", help="no progress bar")
    fid = sub.add_parser("fidelity", help="predict the validation suite's published measurements and print each error, "
                                          "with the median and p90")
    _add_format(fid)
    fid.add_argument("--only", nargs="+", metavar="NAME", help="these entries only (names: pathsim presets --kind validation)")
    fid.add_argument("--slow", action="store_true", help="also the slow entries (the largest pipelines: minutes)")
    fid.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    fid.add_argument("--out", type=Path, metavar="DIR", help="also write an HTML page (predicted against measured) to DIR")
    fid.add_argument("--residuals", type=Path, metavar="OUT",
                     help="write each training entry's measured / predicted step-time ratio, the error bars' evidence "
                          "(run with --slow to ship it as validation/residuals.json)")
    comp = sub.add_parser("completion", help="print a shell completion script for pathsim (subcommands, flags, "
                                             "choices, preset names and paths)")
    comp.add_argument("shell", choices=("bash", "zsh"))
    for action in sub._choices_actions:  # each subcommand's --help opens with its summary and ends with examples
        command = sub.choices[action.dest]
        command.description = action.help
        command.formatter_class = argparse.RawDescriptionHelpFormatter
        command.epilog = "examples:\n" + "\n".join(f"  {example}" for example in EXAMPLES[action.dest])
    return parser


# What each command's --out names; every --json, --trace and --residuals is a file.
_OUT_KIND = {"plan": "file", "calibrate": "file", "report": "folder", "fidelity": "folder"}


def _check_outputs(args) -> None:
    """Every output path the command line names, checked before any work: a long run must not end in "cannot write"."""
    outputs = {}
    for attribute, kind in (("json", "file"), ("trace", "file"), ("residuals", "file"), ("out", _OUT_KIND.get(args.command))):
        path = getattr(args, attribute, None)
        if path is not None and kind is not None:
            outputs[f"--{attribute}"] = check_output(path, f"--{attribute}", kind)
    check_distinct(outputs)


def _fitted(command, args) -> int:
    """Run a command whose stdout is for people: every line it prints fits the terminal (pathsim/console.py)."""
    from pathsim.console import FittedStream

    stream = FittedStream(sys.stdout)
    args.stdout = stream
    try:
        with contextlib.redirect_stdout(stream):
            return command(args)
    finally:
        stream.flush()


class _Terminated(BaseException):
    """SIGTERM as an exception, so the same clean-up as for Ctrl-C runs (no half-written output is left)."""


class _StopSignals:
    """Ctrl-C and SIGTERM as exceptions that cannot be lost. Python raises a signal's exception wherever the main
    thread happens to be, and where that is a garbage-collector callback (JAX registers one, so `calibrate` meets
    it often while JAX imports and compiles) the exception is printed as "ignored" and the run goes on. So the
    first signal also starts a thread that delivers it again every second (``_thread.interrupt_main``) until
    :func:`main` has caught it, and the "ignored" report of a lost one is kept off the terminal (the signal is not
    lost; no traceback is shown); once caught, further signals are ignored while the clean-up runs."""

    REPEAT_S = 1.0
    EXCEPTIONS = {signal.SIGINT: KeyboardInterrupt}

    def __init__(self):
        self.caught = False
        self._repeating = False
        self._previous = {}
        self._unraisable = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():  # (signals can only be set from the main thread)
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)
                              if signal.getsignal(s) is not signal.SIG_IGN}  # (a background job's stays ignored)
            self._unraisable = sys.unraisablehook
            sys.unraisablehook = self._quiet_if_stopping

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        if self._unraisable is not None:
            sys.unraisablehook = self._unraisable

    def _quiet_if_stopping(self, unraisable) -> None:
        if not issubclass(unraisable.exc_type, (KeyboardInterrupt, _Terminated)):
            self._unraisable(unraisable)

    def _handle(self, signum, frame):
        if self.caught:
            return
        if not self._repeating:
            self._repeating = True
            threading.Thread(target=self._repeat, args=(signum,), daemon=True, name="pathsim-stop-signal").start()
        raise self.EXCEPTIONS.get(signum, _Terminated)

    def _repeat(self, signum: int) -> None:
        import _thread
        import time

        while True:
            time.sleep(self.REPEAT_S)
            if self.caught:
                return
            _thread.interrupt_main(signum)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    stops = _StopSignals()
    stops.install()
    try:
        _check_outputs(args)
        if args.command == "presets":  # a listing: no simulator needed
            from pathsim.presets import print_presets

            return _fitted(print_presets, args)
        if args.command == "completion":  # generated from this parser; needs no simulator either
            from pathsim.completion import completion_script

            sys.stdout.write(completion_script(_parser(), args.shell))
            return 0
        from pathsim.commands import COMMANDS  # the simulator, imported once the command line is known to be good

        if getattr(args, "format", "table") != "table":
            args.stdout = sys.stdout  # the result's stream; every other line goes to stderr
            with contextlib.redirect_stdout(sys.stderr):
                return COMMANDS[args.command](args)
        return _fitted(COMMANDS[args.command], args)
    except PathsimConfigError as exc:
        print(f"pathsim: error: {exc.one_line()}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # output piped into `head`: stop quietly
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        stops.caught = True
        print("\npathsim: interrupted; nothing half-written was left behind", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _Terminated:
        stops.caught = True
        print("pathsim: terminated; nothing half-written was left behind", file=sys.stderr)
        return EXIT_TERMINATED
    finally:
        stops.caught = True
        stops.restore()


if __name__ == "__main__":
    sys.exit(main())
