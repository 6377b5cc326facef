"""A run's spans as columns: what the passes over every span of a step read, built once.

A pipelined MoE step records ~90K spans, and its result walks them for the
breakdown, the critical path of each stage, the holders of each contended
resource and each stage's energy states. A :class:`SpanTable` reads each span's
fields once into numpy columns (rows in the order the spans were recorded);
those passes then select rows instead of looping in Python. Sums that must
equal adding span after span use :func:`added_in_order`, which adds in that
order (numpy's ``sum`` would add pairwise and round differently).
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from pathsim.engine.graph import COMPUTE
from pathsim.engine.run import Span


def _column(values: list, dtype) -> np.ndarray:
    return np.fromiter(values, dtype=dtype, count=len(values))  # (faster than np.array from a list)


def _codes(values: list) -> tuple[np.ndarray, list]:
    """Each value's index in the list of distinct values (in order of first appearance), and that list."""
    distinct = list(dict.fromkeys(values))
    index = {value: code for code, value in enumerate(distinct)}
    return _column([index[value] for value in values], np.int64), distinct


def added_in_order(total: float, values: np.ndarray) -> float:
    """``total`` plus each of `values` in turn: the float a Python loop of ``+=`` would give."""
    if len(values) == 0:
        return total
    return float(np.add.accumulate(np.concatenate([[total], values]))[-1])


class SpanTable:
    """Columns of one run's spans, one row per span in recorded order."""

    def __init__(self, spans: list[Span]):
        self.spans = spans
        self.ops = ops = [span.op for span in spans]
        self.start = _column([span.start_s for span in spans], np.float64)
        self.end = _column([span.end_s for span in spans], np.float64)
        self.group = _column([span.group for span in spans], np.int64)
        self.stream_code, self.streams = _codes([span.stream for span in spans])
        self.category_code, self.categories = _codes([op.category for op in ops])
        self.held_code, self.helds = _codes([span.held for span in spans])
        self.on_compute = _column([op.resource == COMPUTE for op in ops], bool)
        self.straggler = _column([op.straggler_s for op in ops], np.float64)
        self.flops = _column([op.flops for op in ops], np.float64)
        self.waited = _column([bool(span.waits) for span in spans], bool)  # asked for a held resource first
        # Fused ops that wait for the slowest chip inside their parts: their states come from the parts.
        self.split_parts = _column([bool(op.parts) and op.straggler_s > 0 for op in ops], bool)

    def __len__(self) -> int:
        return len(self.spans)

    @cached_property
    def category_names(self) -> np.ndarray:
        """Each row's category, as strings."""
        return np.array(self.categories, dtype=str)[self.category_code] if len(self) else np.array([], dtype=str)

    def rows(self, mask: np.ndarray | None = None) -> np.ndarray:
        """Row numbers (in recorded order) where `mask` holds; all rows without one."""
        return np.arange(len(self)) if mask is None else np.flatnonzero(mask)

    def of_category(self, key: str) -> np.ndarray:
        """Rows whose op has category `key`, in recorded order."""
        if key not in self.categories:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self.category_code == self.categories.index(key))

    def of_stream(self, name: str) -> np.ndarray:
        """Rows run by stream `name`, in recorded order."""
        if name not in self.streams:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self.stream_code == self.streams.index(name))

    def of_group(self, group: int) -> np.ndarray:
        """Rows that ran on group `group`, in recorded order."""
        return np.flatnonzero(self.group == group)
