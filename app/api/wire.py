"""The HTTP front door: AWS JSON 1.1 (``X-Amz-Target``) over a small raw ASGI app.

``POST /`` with ``X-Amz-Target: CodePipeline_20150709.<Operation>`` and a JSON body is decoded
into the operation's input Struct (:data:`app.api.shapes.OPERATIONS`) and passed to the
handler registered for the operation. What the handler returns is sent back as JSON; an
:class:`AwsError` it raises becomes ``{"__type": ..., "message": ...}`` with the
``x-amzn-ErrorType`` header, which botocore turns into ``client.exceptions.<Name>``.

Order of checks for ``POST /``: body size -> authentication (when credentials are
configured) -> target -> content type -> body shape -> replay (mutating operations, when
authenticated) -> handler. ``GET /health`` is never authenticated.

Authentication: with ``credentials`` (access key id -> secret) every ``POST`` must carry a
valid SigV4 signature (:func:`app.api.sigv4.verify_sigv4`: scope, signed headers, payload
hash, clock skew) whose signature was not accepted before for a mutating operation
(:mod:`app.api.replay`); the request's actor is the key's principal, an IAM-user-like ARN
(``arn:aws:iam::<account>:user/<name>``). Without credentials nothing is verified and the
actor is ``"anonymous"``; an access key id *claimed* in an ``Authorization`` header is kept
apart in :attr:`RequestContext.claimed_key`, unverified, and is never the actor.
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

import anyio
import anyio.to_thread
import botocore.session
import msgspec
import msgspec.inspect as mi
import numpy as np
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.api import cbor
from app.api.errors import AwsError
from app.api.replay import MemoryReplayCache, ReplayCache
from app.api.shapes import OPERATIONS
from app.api.sigv4 import (
    DEFAULT_MAX_SKEW_SECONDS,
    DEFAULT_REGION,
    verify_sigv4,
)

__all__ = [
    "ANONYMOUS",
    "DEFAULT_ACCOUNT",
    "TARGET_PREFIX",
    "ASGIApp",
    "AwsError",
    "Handler",
    "RequestContext",
    "build_app",
    "is_read_only",
    "principal_arn",
    "validation_message",
]

logger = logging.getLogger("stageline.api")

TARGET_PREFIX = "CodePipeline_20150709."
# X-Amz-Target prefix -> the service a credential scope must name for it.
SERVICE_BY_TARGET_PREFIX = {TARGET_PREFIX: "codepipeline", "Logs_20140328.": "logs"}
DEFAULT_SERVICE = "codepipeline"
# Operations that change nothing: their signatures may be repeated (an SDK polling twice in
# one second signs identical requests identically).
READ_ONLY_PREFIXES = ("Get", "List", "Describe", "Filter", "BatchGet")
READ_ONLY_OPERATIONS = frozenset({"PollForJobs", "PollForThirdPartyJobs"})
ANONYMOUS = "anonymous"
DEFAULT_ACCOUNT = "000000000000"
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
    # The verified principal (``arn:aws:iam::<account>:user/<name>``), or "anonymous" when
    # auth is off: then nothing about the caller is verified.
    actor: str
    source: str  # peer address "host:port" as seen by the server, or "unknown"
    received_at: float  # epoch seconds, from the app's clock
    # The SDK's ``amz-sdk-invocation-id``: one per call, the same on every retry of it.
    invocation_id: str | None = None
    # Auth off only: the access key id an Authorization header *claims*. UNVERIFIED: anyone
    # can write anything there; never use it as an identity.
    claimed_key: str | None = None
    host: str | None = None  # the request's Host header (webhook URLs are built on it)

    @property
    def authenticated(self) -> bool:
        return self.actor != ANONYMOUS


def principal_arn(name: str, account: str = DEFAULT_ACCOUNT) -> str:
    """The actor recorded for an access key: an IAM-user-like ARN (``name`` may be one)."""
    if name.startswith("arn:"):
        return name
    return f"arn:aws:iam::{account}:user/{name}"


def is_read_only(operation: str) -> bool:
    """True for operations that record nothing (exempt from the replay check)."""
    return operation in READ_ONLY_OPERATIONS or operation.startswith(READ_ONLY_PREFIXES)


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

_QUOTE, _OPENS, _CLOSES = ord('"'), (ord("["), ord("{")), (ord("]"), ord("}"))
# Above this size, validating a body is handed to a worker thread (off the event loop).
OFFLOAD_BYTES = 64 * 1024


def json_depth_exceeds(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when ``body`` nests arrays/objects more than ``limit`` deep (strings ignored).

    Linear time, a handful of passes over the bytes, none in Python: escaped backslashes
    and then escaped quotes are dropped (``bytes.replace``, left to right: exactly how JSON
    pairs them), so the quotes left alternate open/close; a byte is inside a string when an
    odd number of quotes precedes it; the depth is the running sum of the bracket steps
    outside strings (numpy comparisons, ``xor.accumulate`` and ``cumsum``). Exact for valid
    JSON; for anything else the answer only decides which 400 the caller gets, since the
    JSON decoder refuses it anyway.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    text = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    raw = np.frombuffer(text, dtype=np.uint8)
    opens = (raw == _OPENS[0]) | (raw == _OPENS[1])
    closes = (raw == _CLOSES[0]) | (raw == _CLOSES[1])
    steps = opens.view(np.int8) - closes.view(np.int8)  # +1, -1 or 0 per byte
    quotes = raw == _QUOTE
    if quotes.any():
        inside = np.bitwise_xor.accumulate(quotes.view(np.uint8))  # odd number of quotes
        steps *= (inside ^ 1).view(np.int8)
    return bool(np.cumsum(steps, dtype=np.int32).max() > limit)


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


async def _send_error(send: Send, err: AwsError, request_id: str, rpc_cbor: bool = False) -> None:
    extra = [(b"x-amzn-errortype", err.type_name.encode())]
    if isinstance(err, _MethodNotAllowed):
        extra.append((b"allow", err.allow.encode()))
    if rpc_cbor:
        await _send_cbor(send, err.status, cbor.encode_error(err), request_id, extra)
        return
    body = msgspec.json.encode({"__type": err.type_name, "message": err.message})
    await _send(send, err.status, body, request_id, extra)


async def _send_cbor(
    send: Send,
    status: int,
    body: bytes,
    request_id: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", cbor.CONTENT_TYPE),
        (b"content-length", str(len(body)).encode()),
        (b"x-amzn-requestid", request_id.encode()),
        (b"smithy-protocol", cbor.PROTOCOL),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# --- event store faults -------------------------------------------------------------------

STORE_OUT_OF_MEMORY = "event store is out of memory"
STORE_UNREACHABLE = "event store unreachable"
STORE_FAILING_OVER = "event store failing over"
STORE_NOT_REPLICATED = "event store write not acknowledged by its replicas"


def store_error(exc: BaseException) -> AwsError | None:
    """The 503 for a Redis fault (SDKs retry 503 by themselves), or None for anything else.

    Full: ``OOM command not allowed`` (redis-py's ``OutOfMemoryError``, or the same reply
    from inside a Lua script). Unreachable: connection refused/reset/timed out, or a server
    still loading its data set. Not replicated: an append that fewer than
    ``--min-replica-acks`` replicas confirmed in time. Failing over: a cluster without a
    master for a slot (CLUSTERDOWN), a slot in migration (TRYAGAIN), a demoted master
    (READONLY).
    """
    if isinstance(exc, OutOfMemoryError) or (
        isinstance(exc, ResponseError) and "OOM command not allowed" in str(exc)
    ):
        return AwsError("ServiceUnavailableException", STORE_OUT_OF_MEMORY, 503)
    from redis.exceptions import (
        ClusterDownError,
        ClusterError,
        ReadOnlyError,
        RedisClusterException,
        TryAgainError,
    )

    from app.store.connection import NotReplicated

    if isinstance(exc, NotReplicated):
        return AwsError("ServiceUnavailableException", f"{STORE_NOT_REPLICATED}: {exc}", 503)
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return AwsError("ServiceUnavailableException", STORE_UNREACHABLE, 503)
    if isinstance(exc, ClusterDownError | TryAgainError | ReadOnlyError | ClusterError):
        return AwsError(
            "ServiceUnavailableException", f"{STORE_FAILING_OVER} ({type(exc).__name__})", 503
        )
    if isinstance(exc, RedisClusterException) or (
        isinstance(exc, ResponseError) and str(exc).startswith(("CLUSTERDOWN", "TRYAGAIN"))
    ):
        return AwsError(
            "ServiceUnavailableException", f"{STORE_FAILING_OVER} ({type(exc).__name__})", 503
        )
    return None


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


# The access key id an Authorization header claims (auth off: read, never believed).
_CLAIMED_KEY = re.compile(r"\bCredential=([A-Za-z0-9._:+=@-]{1,128})/")


def _expected_service(target: str | None) -> str:
    for prefix, service in SERVICE_BY_TARGET_PREFIX.items():
        if target is not None and target.startswith(prefix):
            return service
    return DEFAULT_SERVICE


def _source(scope: Scope) -> str:
    client = scope.get("client")
    if client:
        return f"{client[0]}:{client[1]}"
    return "unknown"


@dataclass(frozen=True)
class _Caller:
    actor: str
    claimed_key: str | None = None
    signature: str | None = None  # verified SigV4 signature
    signed_at: float = 0.0


class _App:
    def __init__(
        self,
        handlers: Mapping[str, Handler],
        credentials: Mapping[str, str] | None,
        health: Callable[[], Awaitable[bool]] | None,
        max_body_bytes: int,
        clock: Callable[[], float],
        *,
        principals: Mapping[str, str] | None = None,
        region: str = DEFAULT_REGION,
        max_clock_skew: float = DEFAULT_MAX_SKEW_SECONDS,
        replay_cache: ReplayCache | None = None,
        max_in_flight: int | None = None,
        extra_targets: Mapping[str, Handler] | None = None,
    ) -> None:
        # other services' JSON 1.1 targets (full X-Amz-Target -> handler of the JSON object)
        self.extra_targets = dict(extra_targets or {})
        unknown = sorted(set(handlers) - set(OPERATIONS))
        if unknown:
            raise ValueError(f"handlers for operations without an input shape: {unknown}")
        self.handlers = dict(handlers)
        self.credentials = None if not credentials else dict(credentials)
        self.principals = dict(principals or {})
        self.region = region
        self.max_clock_skew = max_clock_skew
        self.replay_cache: ReplayCache = replay_cache or MemoryReplayCache()
        self.max_in_flight = max_in_flight
        self.in_flight = 0
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
        if self.max_in_flight is None or scope["path"] == "/health":
            await self._http_request(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            err = AwsError(
                "ThrottlingException",
                f"too many requests in flight (limit {self.max_in_flight}); retry shortly",
                503,
            )
            await _send_error(send, err, str(uuid.uuid4()))
            return
        self.in_flight += 1
        try:
            await self._http_request(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _http_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = str(uuid.uuid4())
        received_at = self.clock()
        try:
            body = await _read_body(receive, self.max_body_bytes)
        except _Disconnected:
            return
        rpc_cbor = scope["path"].startswith("/service/")  # smithy rpc-v2-cbor
        try:
            await self._route(scope, body, request_id, received_at, send)
        except AwsError as err:
            await _send_error(send, err, request_id, rpc_cbor)
        except Exception as exc:  # a bug outside the handler: still an AWS-shaped answer
            fault = store_error(exc)
            if fault is not None:  # e.g. the replay cache's Redis
                logger.warning("request %s: %s: %s", request_id, fault.message, exc)
                await _send_error(send, fault, request_id, rpc_cbor)
                return
            logger.exception("request %s failed", request_id)
            failure = AwsError("InternalFailure", f"internal error; request id {request_id}", 500)
            await _send_error(send, failure, request_id, rpc_cbor)

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
        cbor_op = cbor.operation_from_path(path)  # rpc-v2-cbor: the operation is in the path
        if path != "/" and cbor_op is None:
            raise AwsError("NotFoundException", f"no such resource: {path}", 404)
        if method != "POST":
            raise _MethodNotAllowed(method, path, "POST")
        if body is None:
            raise AwsError(
                "ValidationException",
                f"request body too large (limit {self.max_body_bytes} bytes)",
            )
        headers = _headers(scope)
        big = len(body) > OFFLOAD_BYTES  # hash, scan and decode it off the event loop
        if big and self.credentials is not None:
            caller = await anyio.to_thread.run_sync(self._authenticate, scope, headers, body)
        else:
            caller = self._authenticate(scope, headers, body)
        extra = self.extra_targets.get(_header(headers, "x-amz-target") or "")
        if extra is not None:
            ctx = RequestContext(
                request_id,
                caller.actor,
                _source(scope),
                received_at,
                claimed_key=caller.claimed_key,
            )
            await self._extra(extra, headers, body, ctx, send)
            return
        invocation_id = _invocation_id(headers)
        decode: Callable[[str, bytes], Any] = self._decode
        if cbor_op is not None:
            op = self._supported(cbor_op)
            cbor.check_headers(headers, body)
            decode = _decode_cbor
        else:
            op = self._operation(headers)
            self._check_content_type(headers)
        if big:
            request = await anyio.to_thread.run_sync(decode, op, body)
        else:
            request = decode(op, body)
        reserved = False  # this request recorded its signature as used
        if caller.signature is not None and not is_read_only(op):
            reserved = await self._check_replay(caller, invocation_id, request)
        ctx = RequestContext(
            request_id,
            caller.actor,
            _source(scope),
            received_at,
            invocation_id,
            claimed_key=caller.claimed_key,
            host=_header(headers, "host"),
        )
        try:
            result = await self.handlers[op](request, ctx)
            payload = encode_result(result) if cbor_op is None else _encode_cbor(op, result)
        except AwsError as err:
            if reserved and err.status < 500 and caller.signature is not None:
                # refused: nothing was accepted, so a repeat of the call may try again
                await self.replay_cache.release(caller.signature, invocation_id)
            raise
        except Exception as exc:
            fault = store_error(exc)
            if fault is not None:
                logger.warning("%s (request %s): %s: %s", op, request_id, fault.message, exc)
                raise fault from None
            logger.exception("%s failed (request %s)", op, request_id)
            raise AwsError(
                "InternalFailure",
                f"internal error processing {op}; request id {request_id}",
                500,
            ) from None
        if cbor_op is not None:
            await _send_cbor(send, 200, payload, request_id)
            return
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

    def _authenticate(
        self, scope: Scope, headers: list[tuple[str, str]], body: bytes
    ) -> _Caller:
        if self.credentials is None:
            value = _header(headers, "authorization")
            m = _CLAIMED_KEY.search(value) if value is not None else None
            return _Caller(ANONYMOUS, claimed_key=m[1] if m else None)
        raw_path: bytes | None = scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        verified = verify_sigv4(
            scope["method"],
            path,
            query,
            headers,
            body,
            self.credentials,
            now=self.clock(),
            service=_expected_service(_header(headers, "x-amz-target")),
            region=self.region,
            max_skew_seconds=self.max_clock_skew,
        )
        actor = self.principals.get(verified.access_key) or principal_arn(verified.access_key)
        return _Caller(actor, signature=verified.signature, signed_at=verified.signed_at)

    async def _check_replay(
        self, caller: _Caller, invocation_id: str | None, request: Any
    ) -> bool:
        """Refuse a reused signature; True when this request is its first use."""
        assert caller.signature is not None
        # Remember it until its X-Amz-Date leaves the window (plus a second of rounding).
        ttl = caller.signed_at + self.max_clock_skew - self.clock() + 1
        use = await self.replay_cache.use(caller.signature, invocation_id, ttl)
        if use == "new":
            return True
        # The same SDK call again (a same-second retry): the command id makes it harmless. A
        # signed idempotency token likewise: the engine answers it with the first call's
        # result (AWS semantics for a client retrying with the same token).
        if use == "repeat" or getattr(request, "clientRequestToken", None):
            return False
        raise AwsError(
            "InvalidSignatureException",
            "Signature already used: a request with this signature was accepted before; "
            "sign every request afresh",
            403,
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
        return self._supported(target.removeprefix(TARGET_PREFIX))

    def _supported(self, op: str) -> str:
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
            from app.api.validation import json_message  # (it builds on this module)

            raise AwsError("ValidationException", json_message(exc, OPERATIONS[op], body)) from None
        except msgspec.DecodeError as exc:
            raise AwsError(
                "ValidationException", f"request body is not valid JSON: {exc}"
            ) from None
        except RecursionError:  # msgspec's decoder recurses: a deeply nested body ends here
            raise AwsError(
                "ValidationException", "request body is not valid JSON: nested too deeply"
            ) from None


def _decode_cbor(op: str, body: bytes) -> Any:
    from app.api.validation import aws_validation_message

    return cbor.decode_request(body, OPERATIONS[op], aws_validation_message)


def _encode_cbor(op: str, result: Any) -> bytes:
    return cbor.encode_result(op, msgspec.json.decode(encode_result(result)))


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
    principals: Mapping[str, str] | None = None,
    region: str = DEFAULT_REGION,
    max_clock_skew: float = DEFAULT_MAX_SKEW_SECONDS,
    replay_cache: ReplayCache | None = None,
    max_in_flight: int | None = None,
    health: Callable[[], Awaitable[bool]] | None = None,
    max_body_bytes: int = 1_048_576,
    clock: Callable[[], float] = time.time,
    extra_targets: Mapping[str, Handler] | None = None,
) -> ASGIApp:
    """The ASGI app serving ``handlers`` (operation name -> async handler).

    ``handlers`` keys must be operations of :data:`app.api.shapes.OPERATIONS`. CodePipeline
    operations without a handler answer ``UnsupportedOperationException``; other targets
    ``UnknownOperationException``. ``credentials`` (access key id -> secret) switches SigV4
    verification on; ``principals`` maps an access key id to the actor recorded for it
    (default :func:`principal_arn` of the key id); a credential scope must name ``region``;
    ``max_clock_skew`` is the signing-time window in seconds; ``replay_cache`` remembers the
    signatures accepted for mutating operations (default: in this process's memory).
    ``max_in_flight`` caps the requests handled at once (over it: ``503 ThrottlingException``,
    which the SDKs retry; ``/health`` is exempt). ``health`` backs ``GET /health`` (200 when
    it returns True, else 503). ``extra_targets`` serves other JSON 1.1 services on the same
    endpoint and auth (full ``X-Amz-Target`` -> handler of the request's JSON object), e.g.
    the logs API.
    """
    return _App(
        handlers,
        credentials,
        health,
        max_body_bytes,
        clock,
        principals=principals,
        region=region,
        max_clock_skew=max_clock_skew,
        replay_cache=replay_cache,
        max_in_flight=max_in_flight,
        extra_targets=extra_targets,
    )
