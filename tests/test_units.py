import math

import pytest

from pathsim.units import parse_bandwidth, parse_bytes, parse_flop_rate, parse_seconds, parse_watts


@pytest.mark.parametrize("text, expected", [
    ("256MiB", 256 * 2**20), ("1.5GB", 1.5e9), ("32GiB", 32 * 2**30), ("400Mb", 50e6),
    ("1024", 1024.0), (4096, 4096.0), ("2 KiB", 2048.0), ("1e3B", 1000.0),
])
def test_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("50GB/s", 50e9), ("400Gb/s", 50e9), ("3.35TB/s", 3.35e12), ("1GiB/s", 2**30), (5e10, 5e10),
])
def test_bandwidth(text, expected):
    assert math.isclose(parse_bandwidth(text), expected)


@pytest.mark.parametrize("text, expected", [("2us", 2e-6), ("1.5ms", 1.5e-3), ("100ns", 1e-7), ("3", 3.0), ("2µs", 2e-6)])
def test_seconds(text, expected):
    assert math.isclose(parse_seconds(text), expected)


def test_rates_and_power():
    assert parse_flop_rate("275TFLOP/s") == 275e12
    assert parse_flop_rate("989TFLOPS") == 989e12
    assert parse_watts("10.2kW") == 10200.0


@pytest.mark.parametrize("parser, text", [
    (parse_bytes, "12 parsecs"), (parse_bytes, "GB"), (parse_bytes, "1.5GB/s"), (parse_bandwidth, "50GB"),
    (parse_seconds, "2 lightyears"), (parse_bytes, True), (parse_bytes, [1]), (parse_bytes, "inf"), (parse_watts, "5J"),
])
def test_rejects_bad_units(parser, text):
    with pytest.raises(ValueError, match="expected|unknown unit|finite"):
        parser(text)


def test_layer_lists_print_as_ranges():
    from pathsim.units import format_id_ranges
    assert format_id_ranges([0, 1, 2, 7, 8]) == "0-2, 7-8"
    assert format_id_ranges([8, 0, 1]) == "0-1, 8"  # a DualPipe stage's two blocks, in any order
    assert format_id_ranges([5]) == "5" and format_id_ranges([]) == "none"


@pytest.mark.parametrize("count, text", [(1e12, "1T"), (6e11, "600B"), (2.5e6, "2.5M"), (2500, "2,500")])
def test_counts_read_as_people_write_them_and_parse_back(count, text):
    from pathsim.units import format_count, parse_count
    assert format_count(count) == text and parse_count(text.replace(",", "")) == count
