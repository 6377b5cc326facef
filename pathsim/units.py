"""Quantities with units, as users write them in YAML and on the command line.

Inside pathsim everything is SI base units (bytes, seconds, bytes/s, FLOP/s,
watts). Users may write ``"256MiB"``, ``"1.5GB"``, ``"50GB/s"``, ``"400Gb/s"``
(lower-case b = bits), ``"2us"``, ``"275TFLOP/s"`` or ``"700W"``; a bare number
is taken in the base unit. Decimal prefixes are powers of 1000 (GB = 1e9 bytes),
binary ones powers of 1024 (GiB = 2**30 bytes).

The parsed values plug into pydantic models through the ``Annotated`` aliases
at the bottom (``Bytes``, ``BytesPerSecond``, ``Seconds``, ``FlopPerSecond``,
``Watts``), whose validators raise ``ValueError`` with the accepted forms so the
config loader can tell the user exactly what to write.
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator

_DECIMAL = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_BINARY = {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9, "ps": 1e-12, "min": 60.0, "h": 3600.0, "d": 86400.0}

_NUMBER = r"(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)"
_QUANTITY = re.compile(_NUMBER + r"\s*(?P<unit>[^\s\d].*)?$")


def _split(text: str) -> tuple[float, str]:
    match = _QUANTITY.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a number with a unit")
    return float(match.group("num")), (match.group("unit") or "").strip()


def _prefix_scale(prefix: str) -> float | None:
    if prefix in _BINARY:
        return _BINARY[prefix]
    return _DECIMAL.get(prefix)


def _data_scale(unit: str) -> float | None:
    """Scale of a data unit ('GiB', 'Mb', 'B') in bytes, or None if not one."""
    match = re.fullmatch(r"(Ki|Mi|Gi|Ti|Pi|[kKMGTPE]?)(B|b|bit|bits|byte|bytes)", unit)
    if not match:
        return None
    scale = _prefix_scale(match.group(1))
    return scale / 8.0 if match.group(2) in ("b", "bit", "bits") else scale


def _parse(value: object, what: str, base_unit: str, unit_scale, examples: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected {what} such as {examples}, got {value!r}")
    if isinstance(value, (int, float)):
        number, scale = float(value), 1.0
    elif isinstance(value, str):
        try:
            number, unit = _split(value)
        except ValueError:
            raise ValueError(f"expected {what} such as {examples}, got {value!r}") from None
        scale = 1.0 if unit in ("", base_unit) else unit_scale(unit)
        if scale is None:
            raise ValueError(f"unknown unit {unit!r} for {what}; write it like {examples}")
    else:
        raise ValueError(f"expected {what} such as {examples}, got {type(value).__name__}")
    result = number * scale
    if not math.isfinite(result):
        raise ValueError(f"{what} must be finite, got {value!r}")
    if result != 0 and not MAGNITUDE[0] <= abs(result) <= MAGNITUDE[1]:
        # Products and quotients of a run's quantities must stay finite: 1e-300 FLOP/s gave a NaN step time.
        raise ValueError(f"{what} of {value!r} is outside what pathsim computes with ({MAGNITUDE[0]:g} to "
                         f"{MAGNITUDE[1]:g} {base_unit or 'units'}, or 0)")
    return result


MAGNITUDE = (1e-30, 1e30)  # the least and greatest non-zero quantity accepted, in base units (B, s, FLOP/s, W, ...)


def parse_bytes(value: object) -> float:
    """'256MiB' -> 268435456.0; '1.5GB' -> 1.5e9; '400Mb' -> 5e7 (bits / 8)."""
    return _parse(value, "a size in bytes", "B", _data_scale, "'256MiB', '1.5GB' or 1048576")


def parse_bandwidth(value: object) -> float:
    """'50GB/s' -> 5e10 bytes/s; '400Gb/s' -> 5e10 bytes/s (bits / 8)."""

    def scale(unit: str) -> float | None:
        for per in ("/s", "ps", "/sec"):
            if unit.endswith(per):
                return _data_scale(unit[: -len(per)])
        return None

    return _parse(value, "a bandwidth", "B/s", scale, "'50GB/s', '400Gb/s' or 5e10 (bytes/s)")


def parse_seconds(value: object) -> float:
    """'2us' -> 2e-6; '1.5ms' -> 1.5e-3; a bare number is seconds."""
    return _parse(value, "a duration", "s", _TIME.get, "'2us', '1.5ms' or 0.001 (seconds)")


def parse_flop_rate(value: object) -> float:
    """'275TFLOP/s' -> 2.75e14 FLOP/s; also 'TFLOPS'."""

    def scale(unit: str) -> float | None:
        match = re.fullmatch(r"([kKMGTPE]?)(?:FLOP/s|FLOPS|flop/s|flops)", unit)
        return _DECIMAL[match.group(1)] if match else None

    return _parse(value, "a compute rate", "FLOP/s", scale, "'275TFLOP/s' or 2.75e14")


def parse_count(value: object) -> float:
    """A count of things such as tokens: '1T' -> 1e12; '600B' (billion) -> 6e11; '2.5M' -> 2.5e6; '1e12'."""
    scales = {"k": 1e3, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12, "P": 1e15}
    return _parse(value, "a count", "", scales.get, "'1T', '600B', '2.5M' or 1e12")


def parse_watts(value: object) -> float:
    """'700W' -> 700.0; '10.2kW' -> 10200.0."""

    def scale(unit: str) -> float | None:
        match = re.fullmatch(r"([kKMG]?)W", unit)
        return _DECIMAL[match.group(1)] if match else None

    return _parse(value, "a power", "W", scale, "'700W' or '10.2kW'")


def format_bytes(n: float) -> str:
    """Human-readable binary size: 268435456 -> '256 MiB'."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{n:.4g} B"


# (unit, seconds in one, least count of it worth using): "90 min" and "36 h" read better than "1.5 h" and "1.5 d".
_TIME_UNITS = (("d", 86400.0, 2), ("h", 3600.0, 1), ("min", 60.0, 10), ("s", 1.0, 1), ("ms", 1e-3, 1), ("us", 1e-6, 1))


def time_unit(t: float) -> tuple[str, float]:
    """The unit a duration of `t` seconds (or an axis reaching to it) reads in, and the seconds in one."""
    return next(((unit, scale) for unit, scale, least in _TIME_UNITS if abs(t) >= least * scale), ("ns", 1e-9))


def format_seconds(t: float) -> str:
    if t == 0:
        return "0 s"
    unit, scale = time_unit(t)
    return f"{t / scale:.4g} {unit}"


def format_usd(amount: float) -> str:
    """Money as people read it: '$8,960' from $100 up, three significant figures below ('$0.00896')."""
    return f"${amount:,.0f}" if amount >= 100 else f"${amount:.3g}"


def parse_given(value, parse, source: str, field: str, example: str):
    """A quantity given as a number, or as a string `parse` reads ('1T', '30d'); None stays None. A string it
    cannot read is a PathsimConfigError naming `field`."""
    if value is None or not isinstance(value, str):
        return value
    try:
        return parse(value)
    except ValueError as exc:
        from pathsim.errors import PathsimConfigError

        raise PathsimConfigError(source, field, str(exc), f"write e.g. {example}") from None


def format_count(n: float) -> str:
    """A count as people write it, the inverse of parse_count: 1e12 -> '1T', 6e11 -> '600B', 2500 -> '2,500'."""
    for unit, scale in (("P", 1e15), ("T", 1e12), ("B", 1e9), ("M", 1e6)):
        if abs(n) >= scale:
            return f"{n / scale:.4g}{unit}"
    return f"{n:,.0f}" if float(n).is_integer() else f"{n:.4g}"


def format_bandwidth(bw: float) -> str:
    return f"{bw / 1e9:.4g} GB/s"


def format_flops(rate: float) -> str:
    """FLOP/s in the largest decimal unit that keeps the number at least 1: 4.5e10 -> '45 GFLOP/s'."""
    for unit, scale in (("PFLOP/s", 1e15), ("TFLOP/s", 1e12), ("GFLOP/s", 1e9), ("MFLOP/s", 1e6)):
        if abs(rate) >= scale:
            return f"{rate / scale:.4g} {unit}"
    return f"{rate:.4g} FLOP/s"


Bytes = Annotated[float, BeforeValidator(parse_bytes)]
BytesPerSecond = Annotated[float, BeforeValidator(parse_bandwidth)]
Seconds = Annotated[float, BeforeValidator(parse_seconds)]
FlopPerSecond = Annotated[float, BeforeValidator(parse_flop_rate)]
Watts = Annotated[float, BeforeValidator(parse_watts)]


def format_id_ranges(ids) -> str:
    """[0, 1, 2, 7, 8] -> '0-2, 7-8' (the inverse of workload.parse_id_ranges, for people)."""
    values = sorted(int(i) for i in ids)
    if not values:
        return "none"
    runs, start = [], values[0]
    for previous, value in zip(values, values[1:] + [None]):
        if value is None or value != previous + 1:  # the run from start ends at previous
            runs.append(f"{start}" if start == previous else f"{start}-{previous}")
            start = value
    return ", ".join(runs)
