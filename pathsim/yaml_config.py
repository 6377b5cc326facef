"""Reading config files: safe YAML, ``extends:`` inheritance, validation errors
translated into :class:`PathsimConfigError` with the file and field path.

A config may say ``extends: tpu-v4-8x8x8`` (a preset name) or
``extends: ../my-base.yaml`` (a path relative to the file) and then override
any fields; mappings merge key by key, everything else is replaced.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from pathsim.errors import PathsimConfigError
from pathsim.input_files import parse_yaml, read_text
from pathsim.presets import preset_names, preset_path

ModelT = TypeVar("ModelT", bound=BaseModel)
_SINGULAR = {"topologies": "topology", "workloads": "workload", "shared-pods": "shared-pod"}


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file, or a PathsimConfigError saying why not."""
    data = parse_yaml(read_text(path, str(path), "", "a YAML config (or use a preset name: `pathsim presets`)"), str(path))
    if not isinstance(data, dict):
        raise PathsimConfigError(str(path), "", f"must hold a YAML mapping of fields, found {type(data).__name__}", "start the file with `name: ...` and the other fields")
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; lists and scalars in `override` replace.

    A mapping whose ``kind`` changes (a torus overridden by a graph) replaces
    the base mapping whole: fields of one kind mean nothing to another.
    """
    merged = dict(base)
    for key, value in override.items():
        old = merged.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and value.get("kind", old.get("kind")) == old.get("kind"):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve_reference(ref: str | Path, preset_kind: str, relative_to: Path | None = None) -> Path:
    """A preset name or a file path -> the YAML file it names."""
    text = str(ref)
    looks_like_path = text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text
    if not looks_like_path:
        found = preset_path(preset_kind, text)
        if found is None:
            names = preset_names(preset_kind)
            close = difflib.get_close_matches(text, names, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "run `pathsim presets` to list them"
            raise PathsimConfigError(text, "", f"is not a known {_SINGULAR.get(preset_kind, preset_kind)} preset", hint)
        return found
    path = Path(text)
    if relative_to is not None and not path.is_absolute():
        path = relative_to.parent / path
    return path


def load_with_extends(path: Path, preset_kind: str, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's mapping with every ``extends:`` ancestor merged underneath."""
    path = path.resolve() if path.exists() else path
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise PathsimConfigError(str(path), "extends", f"inheritance cycle: {cycle}", "remove one of the `extends:` lines")
    data = read_yaml_mapping(path)
    parent_ref = data.pop("extends", None)
    if parent_ref is None:
        return data
    if not isinstance(parent_ref, str):
        raise PathsimConfigError(str(path), "extends", f"must be a preset name or a file path, got {parent_ref!r}", "write e.g. `extends: tpu-v4-8x8x8`")
    try:
        parent_path = resolve_reference(parent_ref, preset_kind, relative_to=path)
        parent = load_with_extends(parent_path, preset_kind, (*_chain, path))
    except PathsimConfigError as exc:
        if exc.source == parent_ref:  # the reference itself is bad: blame this file's field
            raise exc.within(str(path), "extends") from None
        raise
    return deep_merge(parent, data)


def _field_path(loc: tuple[Any, ...], data: Any) -> str:
    """pydantic's error location as a dotted field path, without union tags."""
    parts: list[str] = []
    node = data
    for position, item in enumerate(loc):
        if isinstance(item, int):
            parts.append(f"[{item}]")
            node = node[item] if isinstance(node, list) and item < len(node) else None
            continue
        is_last = position == len(loc) - 1
        if parts and (not isinstance(node, (dict, list)) or (item not in node and not is_last)):
            # pydantic inserts union members ('torus', 'constrained-int', 'literal[...]') into the location;
            # a missing field is the one name legitimately absent, and it comes last.
            continue
        parts.append(("." if parts else "") + str(item))
        node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts)


def _member_model(annotation: Any, node: Any) -> Any:
    """The pydantic model an annotation stands for at this node (unions resolved by `kind`)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _member_model(typing.get_args(annotation)[0], node)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if hasattr(a, "model_fields")]
        kind = node.get("kind") if isinstance(node, dict) else None
        for member in members:
            kind_field = member.model_fields.get("kind")
            if kind_field is not None and kind in typing.get_args(kind_field.annotation):
                return member
        return members[0] if len(members) == 1 else None
    return annotation if hasattr(annotation, "model_fields") else None


def _allowed_fields(model: type[BaseModel], loc: tuple[Any, ...], data: Any) -> list[str]:
    """Field names accepted where the unknown field `loc[-1]` was found."""
    current: Any = model
    node = data
    for item in loc[:-1]:
        if current is None:
            return []
        if isinstance(item, int) or (isinstance(node, dict) and item not in node and not hasattr(current, "model_fields")):
            node = node[item] if isinstance(node, (list, dict)) and (isinstance(node, dict) or item < len(node)) else None
            current = _member_model(current, node)
            continue
        fields = getattr(current, "model_fields", None)
        if fields is None or item not in fields:
            continue  # a union tag pydantic inserted into the location
        node = node.get(item) if isinstance(node, dict) else None
        annotation = fields[item].annotation
        container = typing.get_origin(annotation)
        if container in (list, dict):
            current = typing.get_args(annotation)[-1]  # element type; resolved at the next index/key
        else:
            current = _member_model(annotation, node)
    return sorted(getattr(current, "model_fields", {}) or {})


def load_config(model: type[ModelT], spec: "str | Path | dict | BaseModel", kind: str,
                adjust: "typing.Callable[[dict[str, Any], Path], None] | None" = None) -> ModelT:
    """A validated `model` from an instance, a dict, a preset name of `kind` or a YAML path (``extends:`` merged);
    ``adjust(data, path)`` fixes a file's mapping up before validation (paths relative to the file)."""
    if isinstance(spec, model):
        return spec
    if isinstance(spec, dict):
        return validate_model(model, spec, "<python dict>")
    path = resolve_reference(spec, kind)
    data = load_with_extends(path, kind)
    if adjust is not None:
        adjust(data, path)
    return validate_model(model, data, str(path))


# Where to look when a value is wrong, for models that name no FIX_HINT of their own.
DEFAULT_FIX = "see the field's description in README.md"


def validate_model(model: type[ModelT], data: dict[str, Any], source: str, names: dict[str, str] | None = None) -> ModelT:
    """``model.model_validate(data)``, with failures as PathsimConfigError. The fix for a wrong value points where
    the model's ``FIX_HINT`` says (its presets, the command writing such files); `names` renames fields in messages
    (a command line's flags for the options they fill)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = _translate(exc, model, data, source)
        head = error.field.split(".")[0].split("[")[0]
        if names and head in names:
            error = PathsimConfigError(error.source, names[head] + error.field[len(head):], error.problem, error.fix)
        raise error from None


def _translate(exc: ValidationError, model: type[BaseModel], data: Any, source: str) -> PathsimConfigError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = tuple(first["loc"])
    field = _field_path(loc, data)
    kind = first["type"]
    message = str(first["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    # A union field fails once per member ("a valid integer", "'auto'"): say them together.
    same_field = [e for e in errors if _field_path(tuple(e["loc"]), data) == field]
    if len(same_field) > 1 and kind not in ("extra_forbidden", "missing"):
        alternatives = list(dict.fromkeys(str(e["msg"]).removeprefix("Input should be ") for e in same_field))
        message = "Input should be " + " or ".join(alternatives)
    others = len(errors) - max(len(same_field), 1)
    more = f" (and {others} more problem{'s' if others > 1 else ''})" if others > 0 else ""
    if kind == "extra_forbidden":
        allowed = _allowed_fields(model, loc, data)
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        fix = f"did you mean `{close[0]}`?" if close else ("allowed fields: " + ", ".join(allowed) if allowed else "remove it")
        return PathsimConfigError(source, field, f"unknown field{more}", fix)
    if kind == "missing":
        return PathsimConfigError(source, field, f"required field is missing{more}", f"add `{loc[-1]}:` to the file")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return PathsimConfigError(source, field + (".kind" if field else "kind"), message + more, "set `kind:` to one of the values listed")
    fix = getattr(model, "FIX_HINT", DEFAULT_FIX)
    if "input" in first and kind not in ("value_error", "assertion_error") and not isinstance(first["input"], (dict, list)):
        message = f"{message}, got {first['input']!r}"
    return PathsimConfigError(source, field, message + more, fix)
