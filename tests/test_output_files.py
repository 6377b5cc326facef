"""Outputs: refused before the work when they cannot be written, and each written whole or not at all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pathsim.cli import main
from pathsim.errors import PathsimConfigError
from pathsim.output_files import check_output, write_file, write_folder

SIMULATE = ["simulate", "--cluster", "tpu-v4-4x4x4", "--workload", "switch-base-128"]


@pytest.mark.parametrize("flags, needle", [
    (["--json", "/dev/full"], "not a regular file"),  # writing beside it and renaming would replace the device
    (["--json", "/dev/null"], "not a regular file"),
    (["--trace", "{tmp}"], "is a folder"),
    (["--json", "{tmp}/a.json", "--trace", "{tmp}/a.json"], "is also given to --json"),
])
def test_an_output_that_cannot_be_written_is_refused_before_the_run(tmp_path, capsys, flags, needle, refused):
    flags = [f.format(tmp=tmp_path) for f in flags]
    err = refused(SIMULATE + flags)
    assert needle in err
    assert "step time" not in capsys.readouterr().out  # refused before simulating, not after


def test_a_report_folder_over_a_users_other_files_is_refused(tmp_path, refused):
    (tmp_path / "thesis.tex").write_text("years of work")
    err = refused(["report", "--cluster", "tpu-v4-4x4x4", "--workload", "switch-base-128", "--out", str(tmp_path)])
    assert "holds other files" in err
    assert (tmp_path / "thesis.tex").read_text() == "years of work"


def test_a_file_is_replaced_whole(tmp_path):
    path = tmp_path / "r.json"
    write_file(path, "old", "--json")
    write_file(path, "new", "--json")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["r.json"]


def _run_limited(code: str, limit_bytes: int) -> subprocess.CompletedProcess:
    """`code` in a child whose files may not grow past `limit_bytes` (RLIMIT_FSIZE): a full disk, for real."""
    prelude = textwrap.dedent(f"""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes}, {limit_bytes}))
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_a_write_that_runs_out_of_space_leaves_the_old_file_and_no_partial(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("the good old result")
    done = _run_limited(f"""
        from pathsim.output_files import write_file
        from pathsim.errors import PathsimConfigError
        try:
            write_file({str(path)!r}, "x" * 100_000, "--json")
        except PathsimConfigError as exc:
            print(exc.one_line())
    """, 10_000)
    assert "cannot write the result (File too large)" in done.stdout, done.stderr
    assert path.read_text() == "the good old result"
    assert os.listdir(tmp_path) == ["r.json"]


def test_a_report_that_runs_out_of_space_leaves_the_old_report(tmp_path):
    out = tmp_path / "report"
    write_folder(out, {"report.json": b"{}", "index.html": b"old page"}, "--out")
    done = _run_limited(f"""
        from pathlib import Path
        from pathsim.output_files import write_folder
        from pathsim.errors import PathsimConfigError
        try:
            write_folder({str(out)!r}, {{Path("report.json"): b"{{}}", Path("figures/big.png"): b"x" * 100_000}}, "--out")
        except PathsimConfigError as exc:
            print(exc.one_line())
    """, 10_000)
    assert "cannot write the report" in done.stdout, done.stderr
    assert (out / "index.html").read_bytes() == b"old page" and not (out / "figures").exists()
    assert os.listdir(tmp_path) == ["report"]


def test_a_folder_output_must_be_new_empty_or_a_report():
    with pytest.raises(PathsimConfigError, match="exists and is not a folder"):
        check_output("/dev/null", "--out", "folder")


def test_ctrl_c_exits_130_in_one_line_and_leaves_the_old_report(tmp_path):
    out = tmp_path / "fidelity"
    write_folder(out, {"fidelity.json": b"{}", "index.html": b"old page"}, "--out")
    child = subprocess.Popen([sys.executable, "-m", "pathsim.cli", "fidelity", "--slow", "--out", str(out),
                              "--json", str(tmp_path / "suite.json")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(8)  # past the imports (a second or two), inside the suite (tens of seconds)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines() == ["pathsim: interrupted; nothing half-written was left behind"]
    assert (out / "index.html").read_bytes() == b"old page"
    assert sorted(os.listdir(tmp_path)) == ["fidelity"]


def test_a_ctrl_c_lost_in_a_garbage_collector_callback_still_stops_the_run(tmp_path):
    """Python raises a signal's exception wherever the main thread is; in a gc callback (JAX has one) it is printed
    as "ignored" and lost. Here the first collection after main() starts delivers the Ctrl-C inside the callback."""
    script = textwrap.dedent(f"""
        import gc, signal, sys
        from pathsim.cli import main
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, whatever the test runner left
        sent = []
        def deliver_inside_gc(phase, info):  # once main() has set its handler (its imports collect soon after)
            if phase == "start" and not sent and signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
                sent.append(1)
                signal.raise_signal(signal.SIGINT)  # the handler's KeyboardInterrupt is swallowed by the collector
        def start(argv):
            gc.callbacks.append(deliver_inside_gc)
            return main(argv)
        sys.exit(start(["fidelity", "--slow", "--json", {str(tmp_path / "s.json")!r}]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines() == ["pathsim: interrupted; nothing half-written was left behind"]
    assert os.listdir(tmp_path) == []


def test_sigterm_exits_143(tmp_path):
    child = subprocess.Popen([sys.executable, "-m", "pathsim.cli", "fidelity", "--slow", "--json", str(tmp_path / "s.json")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(8)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 143 and "Traceback" not in err, err
    assert not (tmp_path / "s.json").exists() and os.listdir(tmp_path) == []


def test_outputs_written_by_the_cli_are_complete_json(tmp_path):
    assert main(SIMULATE + ["--json", str(tmp_path / "new" / "r.json")]) == 0
    assert json.loads((tmp_path / "new" / "r.json").read_text())["tokens_per_s"] > 0
