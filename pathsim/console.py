"""Console text that fits the terminal: tables whose long text columns wrap and whose extra columns fold into a
second block, and prose lines that wrap under their own indent.

The width is the terminal's (``$COLUMNS`` first, as the shell sets it), or 100 where there is no terminal (a pipe,
a file, the tests), so the same command prints the same text wherever its output is not a terminal.
"""

from __future__ import annotations

import shutil
import textwrap

DEFAULT_WIDTH = 100  # where stdout is no terminal
MIN_WIDTH = 60  # a narrower terminal gets this width anyway: a table folded thinner reads worse than one that wraps
MIN_TEXT_COLUMN = 24  # a column of text narrower than this is not wrapped further; its table folds instead
GAP = "  "


def width() -> int:
    return max(MIN_WIDTH, shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns)


def table(rows: list[tuple], headers: tuple, indent: str = "    ", columns: int | None = None) -> str:
    """Rows under headers, aligned, fitting `columns` (default: :func:`width`): text columns wider than
    MIN_TEXT_COLUMN wrap first (the widest first, down to that), then the columns that still do not fit fold into
    further blocks below, each led by the first column so a row can be followed across."""
    columns = columns or width()
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    room = columns - len(indent)

    def total(indices) -> int:
        return sum(widths[i] for i in indices) + len(GAP) * (len(indices) - 1)

    everything = list(range(len(widths)))
    # A column of text (a cell with a space in it) wraps between words, so no narrower than its longest word; a
    # column of single tokens (names, numbers) never wraps.
    least = [max(MIN_TEXT_COLUMN, *(len(word) for r in cells[1:] for word in r[i].split()))
             if any(" " in r[i] for r in cells[1:]) else widths[i] for i in everything]
    while total(everything) > room:  # wrap the widest text column that can still narrow
        narrowable = [i for i in everything if widths[i] > least[i]]
        if not narrowable:
            break
        widest = max(narrowable, key=lambda i: widths[i])
        widths[widest] = max(least[widest], widths[widest] - (total(everything) - room))
    blocks, block = [], [0]
    for i in everything[1:]:
        if total(block + [i]) > room and len(block) > 1:
            blocks.append(block)
            block = [0]
        block.append(i)
    blocks.append(block)
    return "\n\n".join(_block(cells, widths, block, indent) for block in blocks)


def _block(cells: list[list[str]], widths: list[int], block: list[int], indent: str) -> str:
    lines = []
    for r, row in enumerate(cells):
        wrapped = [textwrap.wrap(row[i], widths[i], break_on_hyphens=False, break_long_words=False) or [""]
                   for i in block]
        for k in range(max(len(w) for w in wrapped)):
            lines.append(indent + GAP.join((w[k] if k < len(w) else "").ljust(widths[i])
                                           for w, i in zip(wrapped, block)).rstrip())
        if r == 0:
            lines.append(indent + GAP.join("-" * widths[i] for i in block))
    return "\n".join(lines)


def fit(text: str, columns: int | None = None) -> str:
    """Each line longer than the width wrapped, its continuation lines under its own indent plus two spaces."""
    columns = columns or width()
    out = []
    for line in text.split("\n"):
        if len(line) <= columns:
            out.append(line)
            continue
        lead = line[: len(line) - len(line.lstrip(" "))]
        out += textwrap.wrap(line.strip(), columns, initial_indent=lead, subsequent_indent=lead + "  ",
                             break_on_hyphens=False, break_long_words=False)
    return "\n".join(out)


class FittedStream:
    """A text stream that passes each whole line through :func:`fit` on its way to `stream`: every line a command
    prints for people (a summary, a `wrote ...` note) fits the terminal, whoever printed it."""

    def __init__(self, stream, columns: int | None = None):
        self.stream, self.columns, self._pending = stream, columns or width(), ""

    def write(self, text: str) -> int:
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            self.stream.write(fit(line, self.columns) + "\n")
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self.stream.write(fit(self._pending, self.columns))
            self._pending = ""
        self.stream.flush()
