"""How much memory one pathsim run may allocate, checked before a large array is made.

A careless size (a million experts, an all-to-all over 65,536 chips as a dense matrix) would otherwise end in
numpy's MemoryError after minutes of swapping, or in the kernel killing the process. Every allocation that grows
with a user's sizes is estimated first and refused, with the estimate and the budget, when it cannot fit.
"""

from __future__ import annotations

import os

from pathsim.errors import PathsimConfigError
from pathsim.units import format_bytes, parse_bytes

BUDGET_ENV = "PATHSIM_MEMORY_BUDGET"  # e.g. "64GiB": overrides the default, half the machine's physical memory


def memory_budget_bytes() -> float:
    """The most one array (or one step's working set) may take: $PATHSIM_MEMORY_BUDGET, else half of physical RAM."""
    text = os.environ.get(BUDGET_ENV)
    if text:
        try:
            return parse_bytes(text)
        except ValueError as exc:
            raise PathsimConfigError(f"${BUDGET_ENV}", "", f"is not a size ({exc})", "write e.g. PATHSIM_MEMORY_BUDGET=64GiB") from None
    try:
        return 0.5 * os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # a platform without sysconf: assume a small machine
        return 8 * 2**30


def check_allocation(nbytes: float, what: str, source: str, field: str, fix: str) -> None:
    """Refuse `nbytes` (an estimate, made before allocating) above the memory budget."""
    budget = memory_budget_bytes()
    if not nbytes <= budget:  # also refuses NaN
        raise PathsimConfigError(source, field, f"{what} would take {format_bytes(nbytes)}, above the {format_bytes(budget)} "
                                 f"pathsim may use here (${BUDGET_ENV}, default half the machine's memory)", fix)
