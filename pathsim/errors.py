"""The one error type for user mistakes.

Every mistake a user can make in a config file or on the command line ends up
as a :class:`PathsimConfigError` that names the file, the field path, what was
wrong and how to fix it. The CLI prints it in one or two lines and exits 2;
internal bugs raise ordinary exceptions so they are not mistaken for user
errors.
"""

from __future__ import annotations


class PathsimConfigError(Exception):
    """A user mistake in a config file, a preset name or a CLI argument.

    Attributes:
        source: the file (or "<command line>", "<python>") the mistake is in.
        field: dotted path of the offending field, e.g. ``topology.dims``;
            empty when the mistake is about the whole file.
        problem: what is wrong, in words.
        fix: what to do about it.
    """

    def __init__(self, source: str, field: str, problem: str, fix: str = ""):
        self.source = str(source)
        self.field = field
        self.problem = problem
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = self.source + (f": {self.field}" if self.field else "")
        text = f"{where}: {self.problem}"
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text

    def within(self, source: str | None = None, prefix: str = "") -> "PathsimConfigError":
        """The same error re-anchored in an outer file / under an outer field."""
        field = ".".join(p for p in (prefix, self.field) if p)
        return PathsimConfigError(source or self.source, field, self.problem, self.fix)


def require_finite(result, what: str) -> None:
    """Stop with a user error where a result (a pydantic model) holds NaN or infinity: every input passed its own
    checks, so their magnitudes together overflowed the models, and a printed `inf d` or `nan %` would be taken for
    an answer. The field named is the first non-finite one, depth first."""
    import math

    from pathsim.nested import leaves

    for path, value in leaves(result.model_dump()):
        if isinstance(value, float) and not math.isfinite(value):
            raise PathsimConfigError("<result>", path, f"came out {value} in {what}: the inputs' magnitudes "
                                     "together overflow the models, though each passed its own check",
                                     "check the cluster's rates and the workload's sizes for extreme values")
