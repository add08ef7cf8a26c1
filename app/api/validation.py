"""AWS's wording for a refused input member: ``Value 'not-a-uuid' at 'pipelineExecutionId'
failed to satisfy constraint: ...``.

:func:`app.api.wire.validation_message` names the member and the constraint; this adds the
offending value, read from the request document at the error's path (scalars only, as AWS:
a list or an object is not repeated back), cut to :data:`MAX_SHOWN` characters.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from app.api.wire import validation_message

__all__ = ["MAX_SHOWN", "aws_validation_message", "value_at"]

MAX_SHOWN = 256
_PATH = re.compile(r" - at `(?P<path>\$[^`]*)`$", re.S)
_SEGMENT = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]")


def value_at(document: Any, path: str) -> Any:
    """The value at a msgspec error path ``$.a.b[0].c`` of ``document``, or None."""
    node = document
    for name, index in _SEGMENT.findall(path.removeprefix("$")):
        if name and isinstance(node, dict) and name in node:
            node = node[name]
        elif index and isinstance(node, list) and int(index) < len(node):
            node = node[int(index)]
        else:
            return None
    return node


def _shown(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        text = str(value)
        return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."
    return None


def aws_validation_message(
    exc: msgspec.ValidationError, cls: type[msgspec.Struct], document: Any
) -> str:
    """:func:`validation_message` with the offending value, when there is one to show."""
    message = validation_message(exc, cls)
    m = _PATH.search(str(exc))
    if m is None or " Value at '" not in message:
        return message
    shown = _shown(value_at(document, m["path"]))
    if shown is None:
        return message
    return message.replace(" Value at '", f" Value '{shown}' at '", 1)


def json_message(exc: msgspec.ValidationError, cls: type[msgspec.Struct], body: bytes) -> str:
    try:
        document = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return validation_message(exc, cls)
    return aws_validation_message(exc, cls, document)
