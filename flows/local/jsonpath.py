"""The JSONPath subset flow definitions use: ``$``, ``$.a.b``, ``$.a[0]`` and combinations.

Paths are parsed once, when a flow is loaded, into steps (keys are ``str``, list
indexes ``int``); reading or writing a step that is not there raises
:class:`PathNotFound`, which the interpreter turns into the Flows error
``States.Runtime``-like failure of the state.
"""

from __future__ import annotations

import re
from typing import Any

from flows.errors import FlowDefinitionError


class PathNotFound(Exception):
    """A JSONPath step is not present in the document (internal; the interpreter reports it)."""


_PATH_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_\-]*)|\[(\d+)\]")


def parse_path(path: Any, where: str) -> tuple[str | int, ...]:
    """Steps of a JSONPath ``$``, ``$.a.b``, ``$.a[0].b`` (keys are str, indexes int)."""
    if not isinstance(path, str) or not path.startswith("$"):
        raise FlowDefinitionError(f"{where}: {path!r} is not a JSONPath starting with '$'")
    steps: list[str | int] = []
    position = 1
    while position < len(path):
        match = _PATH_STEP.match(path, position)
        if not match:
            raise FlowDefinitionError(
                f"{where}: JSONPath {path!r} is not supported at {path[position:]!r} "
                "(supported: $, $.key, $.key[0])"
            )
        steps.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
        position = match.end()
    return tuple(steps)


def get_path(document: Any, steps: tuple[str | int, ...]) -> Any:
    value = document
    for step in steps:
        if isinstance(step, int):
            if not isinstance(value, list) or step >= len(value):
                raise PathNotFound()
        elif not isinstance(value, dict) or step not in value:
            raise PathNotFound()
        value = value[step]
    return value


def set_path(document: Any, steps: tuple[str | int, ...], value: Any) -> Any:
    """``document`` with ``value`` placed at ``steps`` (objects on the way are created)."""
    if not steps:
        return value
    if not isinstance(document, dict) and not (
        isinstance(document, list) and isinstance(steps[0], int)
    ):
        raise PathNotFound()
    head, rest = steps[0], steps[1:]
    if isinstance(head, int):
        if not isinstance(document, list) or head >= len(document):
            raise PathNotFound()
        document[head] = set_path(document[head], rest, value)
    else:
        assert isinstance(document, dict)  # lists were handled above
        child = document.get(head)
        if child is None and rest:
            child = {}
        document[head] = set_path(child, rest, value)
    return document


def format_path(steps: tuple[str | int, ...]) -> str:
    return "$" + "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in steps)
