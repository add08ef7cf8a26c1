"""msgspec Structs built from the botocore service model, for operations without a hand mirror.

:mod:`app.api.shapes` mirrors by hand the inputs of the operations the engine is built
around (their members feed the domain). The other operations (tags, action types, third-party
jobs, webhooks, transitions, rules ...) decode into Structs generated here from the model's
shapes, with the same constraints a hand mirror would carry: required members, string
length and pattern (anchored: model patterns are whole-string matches), enum values, numeric
ranges, list and map sizes. ``tests/test_shapes_vs_botocore.py`` walks them against the model
like the hand-written ones.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, Literal

import botocore.session
import msgspec
from botocore.model import ServiceModel, Shape
from msgspec import Meta

__all__ = ["input_struct", "service_model"]


@functools.cache
def service_model() -> ServiceModel:
    return botocore.session.get_session().get_service_model("codepipeline")


def _anchored(pattern: str) -> str | None:
    # A top-level alternation needs a group for the anchors to hold for every branch.
    anchored = f"^(?:{pattern})\\Z" if "|" in pattern else f"^{pattern}\\Z"
    try:
        re.compile(anchored)
    except re.error:  # a Java-only construct: the length limits still hold
        return None
    return anchored


def _meta(shape: Shape) -> dict[str, Any]:
    md = shape.metadata
    out: dict[str, Any] = {}
    if shape.type_name in ("string", "list", "map", "blob"):
        if "min" in md:
            out["min_length"] = int(md["min"])
        if "max" in md:
            out["max_length"] = int(md["max"])
        if shape.type_name == "string" and "pattern" in md:
            pattern = _anchored(md["pattern"])
            if pattern is not None:
                out["pattern"] = pattern
    elif shape.type_name in ("integer", "long"):
        if "min" in md:
            out["ge"] = int(md["min"])
        if "max" in md:
            out["le"] = int(md["max"])
    return out


_cache: dict[str, Any] = {}


def _type(shape: Shape) -> Any:
    if shape.name in _cache:
        return _cache[shape.name]
    t: Any
    kind = shape.type_name
    if kind == "structure":
        t = _struct(shape)
    elif kind == "string" and getattr(shape, "enum", None):
        t = Literal[tuple(shape.enum)]
    elif kind == "string":
        t = str
    elif kind in ("integer", "long"):
        t = int
    elif kind in ("double", "float", "timestamp"):
        t = float  # JSON 1.1 timestamps are epoch seconds
    elif kind == "boolean":
        t = bool
    elif kind == "blob":
        t = bytes
    elif kind == "list":
        t = list[_type(shape.member)]  # type: ignore[misc]
    elif kind == "map":
        t = dict[_type(shape.key), _type(shape.value)]  # type: ignore[misc]
    else:  # pragma: no cover - the model has no other kinds
        t = Any
    meta = _meta(shape)
    if meta and kind not in ("structure",) and not getattr(shape, "enum", None):
        t = Annotated[t, Meta(**meta)]
    _cache[shape.name] = t
    return t


def _struct(shape: Shape) -> type[msgspec.Struct]:
    required = set(shape.required_members)
    fields: list[Any] = []
    optional: list[Any] = []
    for name, member in shape.members.items():
        t = _type(member)
        if name in required:
            fields.append((name, t))
        else:
            optional.append((name, t | None, None))
    return msgspec.defstruct(shape.name, [*fields, *optional], frozen=True, omit_defaults=True)


@functools.cache
def input_struct(operation: str) -> type[msgspec.Struct]:
    """The generated input Struct of ``operation`` (a model operation name)."""
    op = service_model().operation_model(operation)
    if op.input_shape is None:  # pragma: no cover - every CodePipeline operation has one
        return msgspec.defstruct(f"{operation}Input", [], frozen=True)
    struct: type[msgspec.Struct] = _type(op.input_shape)
    return struct
