"""Console text fits the terminal: tables wrap their text and fold their extra columns, prose wraps under its
indent, and every command's output for people stays within 100 columns where there is no terminal."""

from __future__ import annotations

import io

import pytest

from pathsim.cli import main
from pathsim.console import FittedStream, fit, table

NOTE = "a long note about where this figure comes from, in words that must not be split in two"


def test_a_table_that_fits_is_left_as_it_is():
    text = table([("a", "1"), ("bb", "22")], ("name", "value"), columns=100)
    assert text.splitlines() == ["    name  value", "    ----  -----", "    a     1", "    bb    22"]


def test_a_text_column_wraps_between_words_and_numbers_stay_whole():
    rows = [("step time", "227.9 s", NOTE), ("tokens/s", "18,406", "short")]
    lines = table(rows, ("metric", "value", "note"), columns=60).splitlines()
    assert max(map(len, lines)) <= 60 and len(lines) > 4
    words = " ".join(line[line.index(" " * 2, 20):].strip() for line in lines[2:] if line.strip())
    assert all(word in words.split() for word in NOTE.split())  # every word printed whole
    assert "227.9 s" in lines[2] and "18,406" in "".join(lines)


def test_columns_that_still_do_not_fit_fold_into_a_block_led_by_the_first_column():
    headers = ("policy",) + tuple(f"figure {i}" for i in range(12))
    rows = [("round_robin", *(f"{i}.000 s" for i in range(12))), ("balanced", *(f"{i}.500 s" for i in range(12)))]
    text = table(rows, headers, columns=80)
    blocks = text.split("\n\n")
    assert len(blocks) >= 2 and all(max(map(len, b.splitlines())) <= 80 for b in blocks)
    assert all(b.splitlines()[0].split()[0] == "policy" and "balanced" in b for b in blocks)
    shown = [cell for b in blocks for line in b.splitlines()[2:3] for cell in line.split("  ") if cell.strip()]
    assert [c.strip() for c in shown if c.strip() != "round_robin"] == [f"{i}.000 s" for i in range(12)]  # each once


def test_prose_wraps_under_its_indent():
    wrapped = fit("  " + NOTE + " " + NOTE, 50).splitlines()
    assert wrapped[0].startswith("  a long") and all(line.startswith("    ") for line in wrapped[1:])
    assert max(map(len, wrapped)) <= 50 and " ".join(w.strip() for w in wrapped) == (NOTE + " " + NOTE)


def test_a_fitted_stream_fits_whole_lines_however_they_are_written():
    out = io.StringIO()
    stream = FittedStream(out, columns=40)
    stream.write("short\n" + "word " * 20)
    stream.write("end\n")
    stream.flush()
    assert all(len(line) <= 40 for line in out.getvalue().splitlines()) and out.getvalue().endswith("end\n")


@pytest.mark.parametrize("argv", [
    ["presets"],
    ["validate", "dgx-h100-32", "switch-base-128"],
    ["simulate", "--cluster", "tpu-v4-4x4x4", "--workload", "pathways-multitask"],
    ["plan", "--cluster", "tpu-v4-4x4x4", "--workload", "switch-base-128", "--compare", "--max-evaluations", "20"],
    ["fidelity", "--only", "deepseek-v3-gpu-hours", "korthikanti-22b-layer-selective-sequence-backward"],
])
def test_every_command_prints_within_100_columns(capsys, monkeypatch, argv):
    monkeypatch.delenv("COLUMNS", raising=False)  # no terminal under the tests: the default width
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out and max(map(len, out.splitlines())) <= 100
