"""A walker of output documents against the botocore CodePipeline model: required members,
unknown members, nulls, enums, string lengths and patterns, numeric ranges, list sizes.

Shared by the read-model tests (documents built in memory) and the end-to-end conformance
test (documents as a live server sends them).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import botocore.parsers
import botocore.session

MODEL = botocore.session.get_session().get_service_model("codepipeline")

# Shapes AWS itself sends below the model's minimum: ``RetryAttempt`` (min 1) is 0 in
# ``retryStageMetadata`` for the kind of retry that never happened.
SENT_BELOW_MIN = frozenset({"RetryAttempt"})


def check(shape: Any, value: Any, path: str, errors: list[str]) -> None:
    t = shape.type_name
    meta = shape.metadata
    if t == "structure":
        if not isinstance(value, dict):
            errors.append(f"{path}: {shape.name} must be an object, got {type(value).__name__}")
            return
        for req in shape.required_members:
            if req not in value:
                errors.append(f"{path}: required member {req!r} of {shape.name} missing")
        for k, v in value.items():
            if k not in shape.members:
                errors.append(f"{path}: {k!r} is not a member of {shape.name}")
                continue
            if v is None:
                errors.append(f"{path}.{k}: null (None values must be omitted)")
                continue
            check(shape.members[k], v, f"{path}.{k}", errors)
    elif t == "list":
        if not isinstance(value, list):
            errors.append(f"{path}: {shape.name} must be a list")
            return
        if "min" in meta and len(value) < meta["min"]:
            errors.append(f"{path}: fewer than {meta['min']} items")
        if "max" in meta and len(value) > meta["max"]:
            errors.append(f"{path}: more than {meta['max']} items")
        for i, v in enumerate(value):
            check(shape.member, v, f"{path}[{i}]", errors)
    elif t == "map":
        if not isinstance(value, dict):
            errors.append(f"{path}: {shape.name} must be an object (map)")
            return
        for k, v in value.items():
            check(shape.key, k, f"{path}<key {k!r}>", errors)
            check(shape.value, v, f"{path}[{k!r}]", errors)
    elif t == "string":
        if not isinstance(value, str):
            errors.append(f"{path}: {shape.name} must be a string, got {value!r}")
            return
        if shape.enum and value not in shape.enum:
            errors.append(f"{path}: {value!r} not in enum {shape.enum}")
        if "min" in meta and len(value) < meta["min"]:
            errors.append(f"{path}: shorter than {meta['min']}")
        if "max" in meta and len(value) > meta["max"]:
            errors.append(f"{path}: longer than {meta['max']}")
        if "pattern" in meta and re.fullmatch(meta["pattern"], value, re.DOTALL) is None:
            errors.append(f"{path}: {value!r} does not match {meta['pattern']!r}")
    elif t in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{path}: {shape.name} must be an integer, got {value!r}")
            return
        if "min" in meta and value < meta["min"] and shape.name not in SENT_BELOW_MIN:
            errors.append(f"{path}: {value} < {meta['min']}")
        if "max" in meta and value > meta["max"]:
            errors.append(f"{path}: {value} > {meta['max']}")
    elif t == "boolean":
        if not isinstance(value, bool):
            errors.append(f"{path}: {shape.name} must be a boolean")
    elif t == "timestamp":
        if isinstance(value, bool) or not isinstance(value, int | float):
            errors.append(f"{path}: timestamp must be epoch seconds (a number), got {value!r}")
    elif t in ("double", "float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            errors.append(f"{path}: {shape.name} must be a number")
    else:
        errors.append(f"{path}: unexpected shape type {t}")


def _epochs(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, dict):
        return {k: _epochs(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_epochs(v) for v in value]
    return value


def walk(operation: str, doc: dict[str, Any]) -> list[str]:
    """Every way ``doc`` is not a valid output of ``operation``."""
    errors: list[str] = []
    shape = MODEL.operation_model(operation).output_shape
    if shape is None:  # an operation without output: an empty object
        return [] if doc == {} else [f"{operation}: no output shape, got {doc!r}"]
    check(shape, doc, operation, errors)
    return errors


def conforms(operation: str, doc: dict[str, Any]) -> dict[str, Any]:
    """Assert ``doc`` is a valid output of ``operation``; return botocore's parse of it."""
    shape = MODEL.operation_model(operation).output_shape
    errors: list[str] = []
    check(shape, doc, operation, errors)
    assert not errors, "\n".join(errors)
    body = json.dumps(doc).encode()  # must be plain JSON
    parser = botocore.parsers.create_parser("json")
    parsed = parser.parse({"status_code": 200, "headers": {}, "body": body}, shape)
    parsed.pop("ResponseMetadata", None)
    assert _epochs(parsed) == doc  # nothing dropped or altered by the SDK's parser
    return dict(parsed)
