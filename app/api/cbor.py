"""The smithy ``rpc-v2-cbor`` protocol, beside JSON 1.1, for the same handlers.

A request is ``POST /service/CodePipeline_20150709/operation/<Operation>`` with
``smithy-protocol: rpc-v2-cbor`` and ``Content-Type: application/cbor`` (an empty body is an
empty input). Its CBOR map decodes into the operation's input Struct (the same one JSON 1.1
uses, so every constraint holds alike); timestamps arrive as tag 1 (epoch seconds). The
handler's result is sent back as a CBOR map with timestamps as tag 1, following the output
shape of the botocore model; an error is a CBOR map ``{"__type", "message"}`` with the
HTTP status of the JSON protocol. Every response carries ``smithy-protocol: rpc-v2-cbor``.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from typing import Any

import cbor2
import msgspec

from app.api.errors import AwsError
from app.api.modelshapes import service_model

__all__ = [
    "CONTENT_TYPE",
    "PROTOCOL",
    "decode_request",
    "encode_error",
    "encode_result",
    "operation_from_path",
]

CONTENT_TYPE = b"application/cbor"
PROTOCOL = b"rpc-v2-cbor"
SERVICE = "CodePipeline_20150709"
_PATH = re.compile(r"^/service/(?P<service>[^/]+)/operation/(?P<op>[^/]+)$")


def operation_from_path(path: str) -> str | None:
    """The operation an rpc-v2-cbor path names, None when ``path`` is not one; an unknown
    service or operation is ``UnknownOperationException``."""
    m = _PATH.match(path)
    if m is None:
        return None
    if m["service"] != SERVICE:
        raise AwsError(
            "UnknownOperationException",
            f"unknown service {m['service']!r}: expected {SERVICE}",
        )
    op = m["op"]
    if op not in service_model().operation_names:
        raise AwsError("UnknownOperationException", f"unknown operation {op!r}")
    return op


def check_headers(headers: list[tuple[str, str]], body: bytes) -> None:
    values = dict(headers)
    if values.get("smithy-protocol") != PROTOCOL.decode():
        raise AwsError(
            "ValidationException",
            "rpc-v2-cbor requests must carry the header 'smithy-protocol: rpc-v2-cbor'",
        )
    media = (values.get("content-type") or "").split(";", 1)[0].strip().lower()
    if body and media != CONTENT_TYPE.decode():
        raise AwsError(
            "ValidationException",
            f"unsupported Content-Type {values.get('content-type')!r}: send application/cbor",
        )


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.timestamp()
    if isinstance(value, cbor2.CBORTag) and value.tag == 1:
        return float(value.value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def decode_request(body: bytes, cls: type[msgspec.Struct], message: Any) -> Any:
    """``body`` as ``cls``; ``message(exc, cls, document)`` turns a msgspec.ValidationError
    into the AWS sentence."""
    if not body:
        obj: Any = {}
    else:
        try:
            obj = cbor2.loads(body)
        except (cbor2.CBORDecodeError, ValueError, RecursionError) as exc:
            message_ = f"request body is not valid CBOR: {exc}"
            raise AwsError("ValidationException", message_) from None
    if not isinstance(obj, dict):
        raise AwsError(
            "ValidationException",
            f"1 validation error detected: the request body must be a CBOR map, "
            f"got {type(obj).__name__}",
        )
    plain = _plain(obj)
    try:
        return msgspec.convert(plain, type=cls)
    except msgspec.ValidationError as exc:
        raise AwsError("ValidationException", message(exc, cls, plain)) from None


def _tag_timestamps(shape: Any, value: Any) -> Any:
    if shape is None:
        return value
    kind = shape.type_name
    if kind == "timestamp" and isinstance(value, int | float) and not isinstance(value, bool):
        return cbor2.CBORTag(1, value)
    if kind == "structure" and isinstance(value, dict):
        members = shape.members
        return {k: _tag_timestamps(members.get(k), v) for k, v in value.items()}
    if kind == "list" and isinstance(value, list):
        return [_tag_timestamps(shape.member, v) for v in value]
    if kind == "map" and isinstance(value, dict):
        return {k: _tag_timestamps(shape.value, v) for k, v in value.items()}
    return value


@functools.cache
def _output_shape(op: str) -> Any:
    return service_model().operation_model(op).output_shape


def encode_result(op: str, doc: dict[str, Any]) -> bytes:
    """A handler's JSON-ready result (epoch-second floats for timestamps) as CBOR."""
    return bytes(cbor2.dumps(_tag_timestamps(_output_shape(op), doc)))


def encode_error(err: AwsError) -> bytes:
    return bytes(cbor2.dumps({"__type": err.type_name, "message": err.message}))
