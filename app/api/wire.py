"""The HTTP front door: AWS JSON 1.1 (``X-Amz-Target``) over a small raw ASGI app.

``POST /`` with ``X-Amz-Target: CodePipeline_20150709.<Operation>`` and a JSON body is decoded
into the operation's input Struct (:data:`app.api.shapes.OPERATIONS`) and passed to the
handler registered for the operation. What the handler returns is sent back as JSON; an
:class:`AwsError` it raises becomes ``{"__type": ..., "message": ...}`` with the
``x-amzn-ErrorType`` header, which botocore turns into ``client.exceptions.<Name>``.

Order of checks for ``POST /``: body size -> authentication (when credentials are
configured) -> target -> content type -> body shape -> handler. ``GET /health`` is never
authenticated.

Authentication: with ``credentials`` (access key id -> secret) every ``POST`` must carry a
valid SigV4 signature and the request's actor is the access key id. Without credentials
nothing is verified; the actor is then the access key id *claimed* in an ``Authorization``
header if there is one (unverified, for attribution only), else ``"anonymous"``.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import botocore.session
import msgspec
import msgspec.inspect as mi

from app.api.errors import AwsError
from app.api.shapes import OPERATIONS
from app.api.sigv4 import parse_authorization, verify_sigv4

__all__ = [
    "TARGET_PREFIX",
    "ASGIApp",
    "AwsError",
    "Handler",
    "RequestContext",
    "build_app",
    "validation_message",
]

logger = logging.getLogger("stageline.api")

TARGET_PREFIX = "CodePipeline_20150709."
ACCEPTED_CONTENT_TYPES = frozenset(
    {"application/x-amz-json-1.1", "application/x-amz-json-1.0", "application/json"}
)
RESPONSE_CONTENT_TYPE = b"application/x-amz-json-1.1"
# After the body passes max_body_bytes, up to this many more bytes are read and discarded so
# the client gets the error response instead of a reset connection; beyond it we stop reading.
DRAIN_LIMIT = 8 * 1024 * 1024
# Deepest array/object nesting a request body may have. CodePipeline's inputs nest about ten
# levels; msgspec (C) and the response code (Python) recurse per level, so a body nested
# hundreds deep could be stored and then break every read of it.
MAX_JSON_DEPTH = 64

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class RequestContext:
    """Who asked, when, and under which request id (recorded with every command)."""

    request_id: str
    actor: str  # access key id; "anonymous" when auth is off and no Authorization header
    source: str  # peer address "host:port" as seen by the server, or "unknown"
    received_at: float  # epoch seconds, from the app's clock
    # The SDK's ``amz-sdk-invocation-id``: one per call, the same on every retry of it.
    invocation_id: str | None = None


Handler = Callable[[Any, RequestContext], Awaitable[Any]]


@functools.cache
def _model_operation_names() -> frozenset[str]:
    model = botocore.session.get_session().get_service_model("codepipeline")
    return frozenset(model.operation_names)


# --- validation messages ------------------------------------------------------------------

_AT_RE = re.compile(
    r"^(?P<msg>.*?)(?: - at `(?P<key>key)` in `(?P<kpath>[^`]*)`| - at `(?P<path>[^`]*)`)?$", re.S
)
_SEGMENT_RE = re.compile(r"\.([^.\[\]]+)|\[([^\]]*)\]")
_MISSING_RE = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")
_LEN_RE = re.compile(r"^Expected `\w+` of length (?P<op>[<>]=) (?P<n>\d+)$")
_NUM_RE = re.compile(r"^Expected `(?:int|float)` (?P<op>[<>]=?) (?P<n>\S+)$")
_REGEX_RE = re.compile(r"^Expected `str` matching regex '(?P<re>.*)'$", re.S)
_OBJECT_RE = re.compile(r"^Expected `object`, got `(?P<got>\w+)`$")
_OPS = {
    "<=": "less than or equal to",
    ">=": "greater than or equal to",
    "<": "less than",
    ">": "greater than",
}


def _strip_anchors(pattern: str) -> str:
    pattern = pattern.removeprefix("^")
    for end in ("\\Z", "$"):
        if pattern.endswith(end):
            return pattern[: -len(end)]
    return pattern


@functools.cache
def _type_info(cls: type[msgspec.Struct]) -> mi.Type:
    return mi.type_info(cls)


def _unwrap(t: mi.Type) -> mi.Type:
    if isinstance(t, mi.UnionType):
        rest = [x for x in t.types if not isinstance(x, mi.NoneType)]
        if len(rest) == 1:
            return rest[0]
    return t


def _type_at(cls: type[msgspec.Struct], path: str) -> mi.Type | None:
    """The msgspec type at a ``$.a.b[0].c`` path of ``cls``, if it can be followed."""
    t: mi.Type = _type_info(cls)
    for name, _index in _SEGMENT_RE.findall(path.removeprefix("$")):
        t = _unwrap(t)
        if name:
            if not isinstance(t, mi.StructType):
                return None
            found = [f.type for f in t.fields if f.encode_name == name]
            if not found:
                return None
            t = found[0]
        elif isinstance(t, mi.ListType):
            t = t.item_type
        elif isinstance(t, mi.DictType):
            t = t.value_type
        else:
            return None
    return _unwrap(t)


def _constraint(msg: str, cls: type[msgspec.Struct] | None, path: str) -> str:
    if (lm := _LEN_RE.match(msg)) is not None:
        return f"Member must have length {_OPS[lm['op']]} {lm['n']}"
    if (nm := _NUM_RE.match(msg)) is not None:
        return f"Member must have value {_OPS[nm['op']]} {nm['n']}"
    if (rm := _REGEX_RE.match(msg)) is not None:
        pattern = _strip_anchors(rm["re"].replace("\\\\", "\\"))  # msgspec shows a repr
        return f"Member must satisfy regular expression pattern: {pattern}"
    if msg.startswith("Invalid enum value"):
        t = _type_at(cls, path) if cls is not None else None
        if isinstance(t, mi.LiteralType):
            allowed = ", ".join(str(v) for v in t.values)
            return f"Member must satisfy enum value set: [{allowed}] ({msg})"
    return msg.replace(" | null`", "`")


def validation_message(
    exc: msgspec.ValidationError, cls: type[msgspec.Struct] | None = None
) -> str:
    """Turn msgspec's ``<problem> - at `$.a.b[0]``` into an AWS-style sentence naming the field.

    e.g. ``1 validation error detected: Value at 'stageName' failed to satisfy constraint:
    Member must have length less than or equal to 100``. ``cls`` (the decoded Struct) lets
    enum errors list the allowed values.
    """
    m = _AT_RE.match(str(exc))
    msg = m["msg"] if m else str(exc)
    if m and m["key"]:
        field = m["kpath"].removeprefix("$").removeprefix(".")
        constraint = _constraint(msg, None, "$")
        return (
            f"1 validation error detected: a key of map '{field}' failed to satisfy "
            f"constraint: {constraint}"
        )
    path = (m["path"] if m else None) or "$"
    missing = _MISSING_RE.match(msg)
    if missing:
        path = f"{path}.{missing['field']}"
        msg = "Member must not be null"
    field = path.removeprefix("$").removeprefix(".")
    if not field:
        obj = _OBJECT_RE.match(msg)
        if obj:
            return (
                "1 validation error detected: the request body must be a JSON object, "
                f"got {obj['got']}"
            )
        return f"1 validation error detected: {msg}"
    constraint = _constraint(msg, cls, path)
    return (
        f"1 validation error detected: Value at '{field}' failed to satisfy constraint: "
        f"{constraint}"
    )


# --- nesting depth ------------------------------------------------------------------------

_JSON_STRING_RE = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth_exceeds(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when ``body`` nests arrays/objects more than ``limit`` deep (strings ignored)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth = 0
    for c in _JSON_STRING_RE.sub(b"", body).translate(None, _NOT_BRACKETS):
        if c in b"[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


# --- responses ----------------------------------------------------------------------------


def _prune(value: Any) -> Any:
    """Drop None-valued keys (recursively); datetimes become epoch seconds."""
    if isinstance(value, dict):
        return {k: _prune(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.timestamp()
    return value


def encode_result(result: Any) -> bytes:
    """A handler's result (Struct, dict or None) as a JSON object body."""
    if result is None:
        return b"{}"
    builtins = _prune(msgspec.to_builtins(result, builtin_types=(dt.datetime,)))
    if not isinstance(builtins, dict):
        raise TypeError(f"handler returned {type(result).__name__}, not an object")
    return msgspec.json.encode(builtins)


async def _send(
    send: Send,
    status: int,
    body: bytes,
    request_id: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", RESPONSE_CONTENT_TYPE),
        (b"content-length", str(len(body)).encode()),
        (b"x-amzn-requestid", request_id.encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, err: AwsError, request_id: str) -> None:
    body = msgspec.json.encode({"__type": err.type_name, "message": err.message})
    extra = [(b"x-amzn-errortype", err.type_name.encode())]
    if isinstance(err, _MethodNotAllowed):
        extra.append((b"allow", err.allow.encode()))
    await _send(send, err.status, body, request_id, extra)


# --- request plumbing ---------------------------------------------------------------------


class _MethodNotAllowed(AwsError):
    def __init__(self, method: str, path: str, allow: str) -> None:
        super().__init__("MethodNotAllowedException", f"{method} {path}: use {allow}", 405)
        self.allow = allow


class _Disconnected(Exception):
    pass


async def _read_body(receive: Receive, cap: int) -> bytes | None:
    """The request body, or None when it is larger than ``cap`` (the excess is discarded)."""
    chunks: list[bytes] = []
    size = 0
    too_big = False
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        if message["type"] != "http.request":
            continue
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if not too_big and size > cap:
            too_big = True
            chunks.clear()
        elif not too_big:
            chunks.append(chunk)
        if not message.get("more_body", False) or size > cap + DRAIN_LIMIT:
            break
    return None if too_big else b"".join(chunks)


def _headers(scope: Scope) -> list[tuple[str, str]]:
    return [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]


_INVOCATION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _invocation_id(headers: list[tuple[str, str]]) -> str | None:
    value = _header(headers, "amz-sdk-invocation-id")
    return value if value is not None and _INVOCATION_ID.fullmatch(value) else None


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    for k, v in headers:
        if k == name:
            return v
    return None


def _source(scope: Scope) -> str:
    client = scope.get("client")
    if client:
        return f"{client[0]}:{client[1]}"
    return "unknown"


class _App:
    def __init__(
        self,
        handlers: Mapping[str, Handler],
        credentials: Mapping[str, str] | None,
        health: Callable[[], Awaitable[bool]] | None,
        max_body_bytes: int,
        clock: Callable[[], float],
        extra_targets: Mapping[str, Handler] | None = None,
    ) -> None:
        # other services' JSON 1.1 targets (full X-Amz-Target -> handler of the JSON object)
        self.extra_targets = dict(extra_targets or {})
        unknown = sorted(set(handlers) - set(OPERATIONS))
        if unknown:
            raise ValueError(f"handlers for operations without an input shape: {unknown}")
        self.handlers = dict(handlers)
        self.credentials = None if credentials is None else dict(credentials)
        self.health = health
        self.max_body_bytes = max_body_bytes
        self.clock = clock
        self.model_operations = _model_operation_names()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)
        elif kind == "websocket":
            await receive()
            await send({"type": "websocket.close", "code": 1003})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = str(uuid.uuid4())
        received_at = self.clock()
        try:
            body = await _read_body(receive, self.max_body_bytes)
        except _Disconnected:
            return
        try:
            await self._route(scope, body, request_id, received_at, send)
        except AwsError as err:
            await _send_error(send, err, request_id)
        except Exception:  # a bug outside the handler: still an AWS-shaped answer, no page
            logger.exception("request %s failed", request_id)
            failure = AwsError("InternalFailure", f"internal error; request id {request_id}", 500)
            await _send_error(send, failure, request_id)

    async def _route(
        self, scope: Scope, body: bytes | None, request_id: str, received_at: float, send: Send
    ) -> None:
        method: str = scope["method"]
        path: str = scope["path"]
        if path == "/health":
            if method != "GET":
                raise _MethodNotAllowed(method, path, "GET")
            await self._health(send, request_id)
            return
        if path != "/":
            raise AwsError("NotFoundException", f"no such resource: {path}", 404)
        if method != "POST":
            raise _MethodNotAllowed(method, path, "POST")
        if body is None:
            raise AwsError(
                "ValidationException",
                f"request body too large (limit {self.max_body_bytes} bytes)",
            )
        headers = _headers(scope)
        actor = self._authenticate(scope, headers, body)
        extra = self.extra_targets.get(_header(headers, "x-amz-target") or "")
        if extra is not None:
            ctx = RequestContext(request_id, actor, _source(scope), received_at)
            await self._extra(extra, headers, body, ctx, send)
            return
        op = self._operation(headers)
        self._check_content_type(headers)
        request = self._decode(op, body)
        ctx = RequestContext(
            request_id, actor, _source(scope), received_at, _invocation_id(headers)
        )
        try:
            result = await self.handlers[op](request, ctx)
            payload = encode_result(result)
        except AwsError:
            raise
        except Exception:
            logger.exception("%s failed (request %s)", op, request_id)
            raise AwsError(
                "InternalFailure",
                f"internal error processing {op}; request id {request_id}",
                500,
            ) from None
        await _send(send, 200, payload, request_id)

    async def _extra(
        self,
        handler: Handler,
        headers: list[tuple[str, str]],
        body: bytes,
        ctx: RequestContext,
        send: Send,
    ) -> None:
        self._check_content_type(headers)
        if json_depth_exceeds(body):
            raise AwsError("ValidationException", "request body is nested too deeply")
        try:
            request = msgspec.json.decode(body.strip() or b"{}")
        except (msgspec.DecodeError, RecursionError):
            raise AwsError("ValidationException", "request body is not valid JSON") from None
        if not isinstance(request, dict):
            raise AwsError("ValidationException", "the request body must be a JSON object")
        try:
            payload = encode_result(await handler(request, ctx))
        except AwsError:
            raise
        except Exception:
            logger.exception("request %s failed", ctx.request_id)
            raise AwsError(
                "InternalFailure", f"internal error; request id {ctx.request_id}", 500
            ) from None
        await _send(send, 200, payload, ctx.request_id)

    async def _health(self, send: Send, request_id: str) -> None:
        ok = True
        if self.health is not None:
            try:
                ok = bool(await self.health())
            except Exception:
                logger.exception("health check failed")
                ok = False
        body = b'{"status":"ok"}' if ok else b'{"status":"unavailable"}'
        await _send(send, 200 if ok else 503, body, request_id)

    def _authenticate(self, scope: Scope, headers: list[tuple[str, str]], body: bytes) -> str:
        if self.credentials is None:
            value = _header(headers, "authorization")
            if value is None:
                return "anonymous"
            try:
                return parse_authorization(value).access_key
            except AwsError:
                return "anonymous"
        raw_path: bytes | None = scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        return verify_sigv4(
            scope["method"], path, query, headers, body, self.credentials, now=self.clock()
        )

    def _operation(self, headers: list[tuple[str, str]]) -> str:
        target = _header(headers, "x-amz-target")
        if target is None:
            raise AwsError("UnknownOperationException", "missing X-Amz-Target header")
        if not target.startswith(TARGET_PREFIX):
            raise AwsError(
                "UnknownOperationException",
                f"unknown target {target!r}: expected {TARGET_PREFIX}<Operation>",
            )
        op = target.removeprefix(TARGET_PREFIX)
        if op not in self.model_operations:
            raise AwsError("UnknownOperationException", f"unknown operation {op!r}")
        if op not in self.handlers:
            raise AwsError(
                "UnsupportedOperationException",
                f"stageline does not implement the CodePipeline operation {op}",
            )
        return op

    @staticmethod
    def _check_content_type(headers: list[tuple[str, str]]) -> None:
        value = _header(headers, "content-type")
        media = (value or "").split(";", 1)[0].strip().lower()
        if media not in ACCEPTED_CONTENT_TYPES:
            shown = repr(value) if value is not None else "none"
            raise AwsError(
                "ValidationException",
                f"unsupported Content-Type {shown}: send application/x-amz-json-1.1",
            )

    @staticmethod
    def _decode(op: str, body: bytes) -> Any:
        if not body.strip():
            body = b"{}"
        if json_depth_exceeds(body):
            raise AwsError(
                "ValidationException",
                f"request body is nested more than {MAX_JSON_DEPTH} levels deep",
            )
        try:
            return msgspec.json.decode(body, type=OPERATIONS[op])
        except msgspec.ValidationError as exc:
            raise AwsError("ValidationException", validation_message(exc, OPERATIONS[op])) from None
        except msgspec.DecodeError as exc:
            raise AwsError(
                "ValidationException", f"request body is not valid JSON: {exc}"
            ) from None
        except RecursionError:  # msgspec's decoder recurses: a deeply nested body ends here
            raise AwsError(
                "ValidationException", "request body is not valid JSON: nested too deeply"
            ) from None


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def build_app(
    handlers: Mapping[str, Handler],
    *,
    credentials: Mapping[str, str] | None = None,
    health: Callable[[], Awaitable[bool]] | None = None,
    max_body_bytes: int = 1_048_576,
    clock: Callable[[], float] = time.time,
    extra_targets: Mapping[str, Handler] | None = None,
) -> ASGIApp:
    """The ASGI app serving ``handlers`` (operation name -> async handler).

    ``handlers`` keys must be operations of :data:`app.api.shapes.OPERATIONS`. CodePipeline
    operations without a handler answer ``UnsupportedOperationException``; other targets
    ``UnknownOperationException``. ``credentials`` switches SigV4 verification on.
    ``health`` backs ``GET /health`` (200 when it returns True, else 503).
    ``extra_targets`` serves other JSON 1.1 services on the same endpoint and auth (full
    ``X-Amz-Target`` -> handler of the request's JSON object), e.g. the logs API.
    """
    return _App(handlers, credentials, health, max_body_bytes, clock, extra_targets)
