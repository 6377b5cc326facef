"""Reading the files users hand pathsim: regular files only, of bounded size, parsed without surprises.

Every file pathsim reads (cluster and workload YAML, ``extends:`` parents, profiles, placements, numeric arrays)
comes through here, so every careless or hostile one fails the same way — a PathsimConfigError naming the file,
the field it was given for and the fix — and none can hang, exhaust memory or end in a traceback:

- only regular files are opened: ``/dev/zero``, a FIFO or a folder never ends (or never starts) a read;
- a file is refused above a size limit before it is read, and read no further than the limit if it grows;
- YAML and JSON refuse duplicate keys (a second ``bandwidth:`` silently winning is a wrong answer), nesting
  deeper than any config needs (the parsers and everything after them recurse), and YAML aliases that expand
  beyond any config's size (the "billion laughs"); JSON refuses ``NaN`` and ``Infinity``, which no measured
  quantity is.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from pathsim.errors import PathsimConfigError

TEXT_LIMIT_BYTES = 64 * 2**20  # a config, profile or placement file; the largest shipped is a few hundred KiB
MAX_DEPTH = 64  # nesting of mappings and lists: the deepest shipped config is 6 levels
MAX_NODES = 2_000_000  # scalars, mappings and lists once aliases are expanded


def open_regular(path: Path, source: str, field: str, what: str, limit: int = TEXT_LIMIT_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; `what` says what the file should hold (for the fix)."""
    it = "" if source == str(path) else f" {str(path)!r}"  # the message names the file where the source does not
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise PathsimConfigError(source, field, f"file{it} not found", f"check the path; give {what}") from None
    except OSError as exc:
        raise PathsimConfigError(source, field, f"file{it} cannot be read ({exc.strerror})", f"give {what}") from None
    if stat.S_ISDIR(info.st_mode):
        raise PathsimConfigError(source, field, f"file{it} is a folder, not a file", f"name a file inside it holding {what}")
    if not stat.S_ISREG(info.st_mode):
        raise PathsimConfigError(source, field, f"file{it} is not a regular file (a device, pipe or socket)",
                                 f"give a file holding {what}")
    if info.st_size > limit:
        raise PathsimConfigError(source, field, f"file{it} is {info.st_size:,} bytes, above the {limit:,} pathsim reads",
                                 f"give a smaller file holding {what}")
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise PathsimConfigError(source, field, f"file{it} cannot be read ({exc.strerror})",
                                 "check its permissions (`ls -l`)" if isinstance(exc, PermissionError) else f"give {what}") from None
    if len(data) > limit:
        raise PathsimConfigError(source, field, f"file{it} grew past the {limit:,} bytes pathsim reads while being read",
                                 f"give a smaller file holding {what}")
    return data


def read_text(path: Path, source: str, field: str, what: str, limit: int = TEXT_LIMIT_BYTES) -> str:
    """A regular file's UTF-8 text (see :func:`open_regular`)."""
    data = open_regular(path, source, field, what, limit)
    it = "" if source == str(path) else f" {str(path)!r}"
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PathsimConfigError(source, field, f"file{it} is not UTF-8 text (byte {exc.start})", f"give a text file holding {what}") from None


# ---- YAML ---------------------------------------------------------------------------------------------------------

def _check_shape(node: yaml.Node, source: str) -> None:
    """Before anything is constructed: refuse a key given twice in one mapping (naming both lines), nesting deeper
    than MAX_DEPTH, and more than MAX_NODES nodes once aliases are expanded."""
    _walk(node, 0, "", {}, source)


def _too_deep(node: yaml.Node, where: str, source: str) -> PathsimConfigError:
    return PathsimConfigError(source, where, f"nests deeper than {MAX_DEPTH} levels (at line {node.start_mark.line + 1})",
                              "flatten the file: no pathsim config nests that deep")


def _walk(node: yaml.Node, depth: int, where: str, known: dict[int, tuple[int, int]], source: str) -> tuple[int, int]:
    """(expanded size, height) of a node; `known` holds them by id(node), since an alias is the same node again.
    (A module function, not a closure: a recursive closure is a reference cycle the collector must free.)"""
    if depth > MAX_DEPTH:
        raise _too_deep(node, where, source)
    if id(node) in known:
        if depth + known[id(node)][1] > MAX_DEPTH:
            raise _too_deep(node, where, source)
        return known[id(node)]
    children: list[tuple[yaml.Node, str]] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[tuple[str, str], yaml.Node] = {}
        for key, value in node.value:
            label = key.value if isinstance(key, yaml.ScalarNode) else "?"
            inner = f"{where}.{label}" if where else label
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":  # `<<:` keys may be overridden
                first = seen.setdefault((key.tag, key.value), key)
                if first is not key:
                    raise PathsimConfigError(source, inner, f"is given twice, at lines {first.start_mark.line + 1} and "
                                             f"{key.start_mark.line + 1}", "keep one of them (YAML would silently keep the last)")
            children += [(key, inner), (value, inner)]
    elif isinstance(node, yaml.SequenceNode):
        children = [(v, f"{where}[{i}]") for i, v in enumerate(node.value)]
    total, height = 1, 0
    for child, inner in children:
        child_size, child_height = _walk(child, depth + 1, inner, known, source)
        total, height = total + child_size, max(height, child_height + 1)
        if total > MAX_NODES:
            raise PathsimConfigError(source, where, f"expands to more than {MAX_NODES:,} values (YAML aliases repeated "
                                     "inside aliases?)", "write the values out, or use fewer nested `*alias` references")
    known[id(node)] = (total, height)
    return total, height


def parse_yaml(text: str, source: str) -> Any:
    """The YAML document in `text`, strictly: duplicate keys, runaway nesting and alias bombs refused."""
    def syntax_error(exc: yaml.YAMLError) -> PathsimConfigError:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid syntax"
        return PathsimConfigError(source, "", f"is not valid YAML{where}: {problem}",
                                  "fix the YAML syntax (indentation, colons, quotes)")

    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise PathsimConfigError(source, "", f"nests deeper than {MAX_DEPTH} levels", "flatten the file: no pathsim config nests that deep") from None
        except yaml.YAMLError as exc:
            raise syntax_error(exc) from None
        if node is None:
            return None
        _check_shape(node, source)
        try:
            return loader.construct_document(node)
        except yaml.YAMLError as exc:
            raise syntax_error(exc) from None
    finally:
        loader.dispose()


# ---- JSON ---------------------------------------------------------------------------------------------------------

class _JsonDuplicate(ValueError):
    pass


def _pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _JsonDuplicate(key)
        out[key] = value
    return out


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number pathsim accepts")


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of parsed JSON, iteratively (so a deep file cannot overflow the stack here)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def read_json(path: Path, source: str, field: str, what: str) -> Any:
    """A regular file's JSON, strictly: duplicate keys, NaN / Infinity and runaway nesting refused."""
    text = read_text(path, source, field, what)
    try:
        data = json.loads(text, object_pairs_hook=_pairs_without_duplicates, parse_constant=_refuse_constant)
    except _JsonDuplicate as dup:
        raise PathsimConfigError(source, str(dup), "is given twice in one object", "keep one of them") from None
    except RecursionError:
        raise PathsimConfigError(source, field, f"nests deeper than {MAX_DEPTH} levels", f"give {what}") from None
    except ValueError as exc:  # json.JSONDecodeError is a ValueError, as is a refused constant
        raise PathsimConfigError(source, field, f"is not valid JSON ({exc})", f"give {what}") from None
    if _depth(data, MAX_DEPTH) > MAX_DEPTH:
        raise PathsimConfigError(source, field, f"nests deeper than {MAX_DEPTH} levels", f"give {what}")
    return data
