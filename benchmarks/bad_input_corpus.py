"""A careless and hostile input corpus: every field of a few small presets set to values a user might write by
mistake, each run through `pathsim simulate` in a process of its own, which must exit 0 (the value is legal) or 2 (a
one-line error naming the field), never with a traceback, a crash or a hang.

    python benchmarks/bad_input_corpus.py            # the whole corpus (2,268 cases: about twenty minutes on 2 cores)
    python benchmarks/bad_input_corpus.py --every 7  # one case in seven, for a quick look

It prints how many cases it tried, how many were refused and how many ran, and every case that broke the rule,
with its field, value and the end of its output. The tests hold the classes this found (tests/test_fuzz_configs.py
and the bad-input tests); this corpus is the wide net, too slow for CI.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pathsim.cli import main as main_cli  # noqa: E402
from pathsim.cluster import load_cluster  # noqa: E402
import pathsim.commands  # noqa: E402,F401  (imported once here, so each forked case starts warm)
from pathsim.workload import load_workload  # noqa: E402

CLUSTERS = ("tpu-v4-4x4x4", "dgx-h100-1")
WORKLOAD = "switch-base-128"
# What a careless or hostile hand writes into a field: wrong sign, zero, overflow, the wrong type, text with units
# or markup, a huge count, nothing.
HOSTILE = (0, -1, 1e308, -1e308, 1e-300, float("nan"), "inf", 10**30, "1e400", "abc", "$\\bogus$", "=HYPERLINK(1)",
           [], {}, None, True, "12 parsecs", 2**63)
TIMEOUT_S = 60


def leaves(data, path=()):
    if isinstance(data, dict):
        for key, value in data.items():
            yield from leaves(value, path + (key,))
    elif isinstance(data, list) and data and len(data) <= 8:
        for i, value in enumerate(data):
            yield from leaves(value, path + (i,))
    else:
        yield path


def mutated(data, path, value):
    data = json.loads(json.dumps(data))
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


def cases():
    cluster = load_cluster(CLUSTERS[0]).model_dump(mode="json", exclude_none=True)
    gpu = load_cluster(CLUSTERS[1]).model_dump(mode="json", exclude_none=True)
    workload = load_workload(WORKLOAD).model_dump(mode="json", exclude_none=True, exclude={"base_dir"})
    for kind, base in (("cluster", cluster), ("cluster", gpu), ("workload", workload)):
        for path in leaves(base):
            if path[-1] in ("name", "description", "source", "notes"):
                continue  # free text: any value is legal
            for value in HOSTILE:
                yield kind, base, path, value


def run_case(folder: Path, kind: str, base: dict, path: tuple, value, other: dict) -> tuple[int, str, float]:
    """The case in a child forked from this process (pathsim already imported: no interpreter start per case), its
    exit status and the end of its stderr; a child that outlives TIMEOUT_S is killed and counted as a hang."""
    data = mutated(base, path, value)
    cluster_file, workload_file = folder / "cluster.yaml", folder / "workload.yaml"
    cluster_file.write_text(yaml.safe_dump(data if kind == "cluster" else other["cluster"], allow_unicode=True))
    workload_file.write_text(yaml.safe_dump(data if kind == "workload" else other["workload"], allow_unicode=True))
    err_file = folder / "stderr.txt"
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: the command line, as `pathsim simulate` would run it
        code = 1
        try:  # nothing may leave this block but os._exit: the child must not run the parent's code on
            err = open(err_file, "w")
            os.dup2(err.fileno(), 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            sys.stderr, sys.stdout = err, open(os.devnull, "w")
            try:
                code = main_cli(["simulate", "--cluster", str(cluster_file), "--workload", str(workload_file)])
            except BaseException:  # a traceback is the failure this corpus looks for: print it, as Python would
                traceback.print_exc()
                code = 1
            err.flush()
        finally:
            os._exit(code if isinstance(code, int) else 1)
    deadline = start + TIMEOUT_S
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.perf_counter() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -999, f"no answer in {TIMEOUT_S} s", time.perf_counter() - start
        time.sleep(0.005)
    rc = os.waitstatus_to_exitcode(status)
    return rc, err_file.read_text()[-600:], time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=int, default=1, help="try one case in N (default 1: all)")
    args = parser.parse_args()
    other = {"cluster": load_cluster(CLUSTERS[0]).model_dump(mode="json", exclude_none=True),
             "workload": load_workload(WORKLOAD).model_dump(mode="json", exclude_none=True, exclude={"base_dir"})}
    tried = refused = ran = 0
    broken = []
    slowest = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for i, (kind, base, path, value) in enumerate(cases()):
            if i % args.every:
                continue
            rc, err, seconds = run_case(Path(tmp), kind, base, path, value, other)
            tried += 1
            slowest = max(slowest, seconds)
            one_error = err.startswith("pathsim: error: ") and "Traceback" not in err
            if rc == 2 and one_error:
                refused += 1
            elif rc == 0 and "Traceback" not in err:
                ran += 1
            else:
                broken.append((kind, ".".join(map(str, path)), value, rc, err.strip().splitlines()[-1:] or [""]))
    print(f"{tried} cases: {refused} refused with exit 2, {ran} ran (a legal value), {len(broken)} broke the rule; "
          f"slowest {slowest:.1f} s")
    for kind, field, value, rc, last in broken:
        print(f"  {kind} {field} = {value!r}: exit {rc}: {last[0][:200]}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
