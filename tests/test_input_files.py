"""Files that are not what they claim: every one exits 2 naming the file, quickly, with no traceback.

The classes: special files and folders where a file belongs (a read of /dev/zero never ends), files too large
to be configs, duplicate keys (YAML and JSON keep the last one silently), runaway nesting (the parsers recurse),
YAML alias bombs, non-finite numbers in JSON and in numeric arrays, and .npy headers that claim more data than
the file holds (numpy would allocate the claim first).
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from pathsim.cluster import load_cluster
from pathsim.device import load_profile
from pathsim.errors import PathsimConfigError
from pathsim.input_files import MAX_DEPTH, TEXT_LIMIT_BYTES, parse_yaml
from pathsim.numeric_files import read_numeric_array
from pathsim.placement import read_placement


def test_a_device_a_pipe_and_a_folder_are_refused_unread(tmp_path, refused):
    fifo = tmp_path / "cluster.yaml"
    os.mkfifo(fifo)  # opening a FIFO for reading blocks until a writer comes: it must never be opened
    assert "not a regular file" in refused(["validate", str(fifo)])
    assert "not a regular file" in refused(["collective", "--cluster", "/dev/zero", "--op", "all_reduce", "--bytes", "1MiB"])
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    assert "is a folder" in refused(["validate", str(folder)])


def test_extends_naming_a_special_file_blames_the_extends_field(tmp_path, refused):
    child = tmp_path / "child.yaml"
    child.write_text("extends: /dev/zero\nname: x\n")
    err = refused(["validate", str(child)])
    assert f"{child}: extends" in err and "not a regular file" in err


def test_a_file_larger_than_any_config_is_refused_before_it_is_read(tmp_path, refused):
    big = tmp_path / "big.yaml"
    with open(big, "wb") as handle:  # sparse: the size is claimed, not written
        handle.truncate(TEXT_LIMIT_BYTES + 1)
    err = refused(["validate", str(big)])
    assert f"{TEXT_LIMIT_BYTES + 1:,} bytes" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_says_so(tmp_path, refused):
    path = tmp_path / "secret.yaml"
    path.write_text("name: x\n")
    path.chmod(0)
    assert "Permission denied" in refused(["validate", str(path)])


@pytest.mark.parametrize("text, field, lines", [
    ("extends: tpu-v4-4x4x4\nname: x\nlinks:\n  ici:\n    bandwidth: 50GB/s\n    bandwidth: 25GB/s\n", "links.ici.bandwidth", (5, 6)),
    ("extends: tpu-v4-4x4x4\nname: x\nname: y\n", "name", (2, 3)),
    ("extends: tpu-v4-4x4x4\nname: x\nlinks: {ici: {bandwidth: 50GB/s, bandwidth: 25GB/s}}\n", "links.ici.bandwidth", (3, 3)),
])
def test_a_key_given_twice_names_both_lines(tmp_path, refused, text, field, lines):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    err = refused(["validate", str(path)])
    assert f"{path}: {field}: is given twice, at lines {lines[0]} and {lines[1]}" in err


def test_a_merge_key_may_be_overridden_and_anchors_still_work():
    data = parse_yaml("base: &b {bandwidth: 1, latency: 2}\nici:\n  <<: *b\n  bandwidth: 3\nsame: *b\n", "f.yaml")
    assert data == {"base": {"bandwidth": 1, "latency": 2}, "ici": {"bandwidth": 3, "latency": 2},
                    "same": {"bandwidth": 1, "latency": 2}}


@pytest.mark.parametrize("text", [
    "a: " + "[" * 10_000 + "]" * 10_000 + "\n",  # deep enough to overflow the parser's recursion
    "a: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "\n",
    # Depth through an alias: neither the anchor nor the reference is deep alone.
    "a: &a " + "[" * 40 + "1" + "]" * 40 + "\nb: " + "[" * 40 + "*a" + "]" * 40 + "\n",
])
def test_runaway_nesting_is_refused(text):
    with pytest.raises(PathsimConfigError, match="nests deeper than"):
        parse_yaml(text, "f.yaml")


def test_an_alias_bomb_is_refused_before_it_expands():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]  # 10^9 values expanded
    with pytest.raises(PathsimConfigError, match="expands to more than"):
        parse_yaml("\n".join(lines) + "\n", "bomb.yaml")


def test_json_refuses_duplicates_non_finite_numbers_and_deep_nesting(tmp_path):
    cases = {
        "dup.json": '{"name": "a", "name": "b"}',
        "inf.json": '{"name": "a", "peak": Infinity}',
        "nan.json": '{"name": "a", "peak": NaN}',
        "deep.json": "[" * 100_000 + "]" * 100_000,
        "shallow-but-too-deep.json": "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1),
    }
    needles = {"dup.json": "given twice", "inf.json": "Infinity", "nan.json": "NaN", "deep.json": "nests deeper",
               "shallow-but-too-deep.json": "nests deeper"}
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        for reader in (load_profile, read_placement):
            with pytest.raises(PathsimConfigError, match=needles[name]):
                reader(str(path))


def test_a_profile_that_is_a_device_is_refused():
    with pytest.raises(PathsimConfigError, match="not a regular file"):
        load_profile("/dev/zero")


def test_a_npy_header_claiming_more_than_the_file_holds_is_refused_unallocated(tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)})
    path = tmp_path / "hist.npy"
    path.write_bytes(header.getvalue() + bytes(64))  # claims 8 TB
    with pytest.raises(PathsimConfigError, match="claims 8,000,000,000,000 bytes"):
        read_numeric_array(path, "w.yaml", "tasks[0].routing.file", "tokens per expert")


@pytest.mark.parametrize("text", ["1,2\n3,nan\n", "1,inf\n", "-inf,1\n"])
def test_a_numeric_file_with_a_non_finite_value_names_where(tmp_path, text):
    path = tmp_path / "matrix.csv"
    path.write_text(text)
    with pytest.raises(PathsimConfigError, match=r"matrix.csv holds .*at index"):
        read_numeric_array(path, "<command line>", "--matrix", "a square matrix of bytes between ranks")


def test_good_files_still_load(tmp_path):
    np.save(tmp_path / "m.npy", np.eye(3))
    assert read_numeric_array(tmp_path / "m.npy", "x", "f", "m").shape == (3, 3)
    assert load_cluster("tpu-v4-4x4x4").num_chips == 64
