"""Walking a dumped result: the nested dicts and lists of ``model.model_dump()``, leaf by leaf."""

from __future__ import annotations

from typing import Any, Iterator


def leaves(data: Any) -> Iterator[tuple[str, Any]]:
    """(dotted field path, value) of every leaf, depth first in field order; iterative, so depth costs no stack."""
    stack = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((f"{path}.{key}" if path else str(key), item) for key, item in reversed(list(value.items())))
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{path}[{i}]", item) for i, item in reversed(list(enumerate(value))))
        else:
            yield path, value
