"""What ``stageline serve`` puts in front of the API app: the web console (``/console``), its
JSON read models and live event stream (``/console/api/...``), ``GET /status``,
``GET /metrics``, the access log and the request metrics.

Everything else (``POST /`` with ``X-Amz-Target``, ``GET /health``) goes to the API app
unchanged. See docs/console.md for the routes and how the console authenticates.

Authentication (when access keys are configured):

- ``POST /console/api/login`` must be SigV4-signed (the console signs it in the browser with
  the key the user typed); the answer sets an HttpOnly, SameSite=Strict session cookie.
- ``/console/api/*`` (reads and the event stream) and ``GET /status`` need that cookie or a
  SigV4 ``Authorization`` header.
- Commands (retry, approve, stop) are ordinary API calls, SigV4-signed in the browser.
- ``/console`` (the page and its static files), ``/health`` and ``/metrics`` are open.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any

import anyio
import msgspec
from redis.asyncio import Redis

from app.api.errors import AwsError
from app.api.shapes import OPERATIONS
from app.api.sigv4 import DEFAULT_MAX_SKEW_SECONDS, DEFAULT_REGION, Verified, verify_sigv4
from app.api.wire import TARGET_PREFIX, ASGIApp
from app.console import views
from app.console.feed import EventFeed, FeedItem
from app.domain.errors import DomainError
from app.engine import Engine
from app.metrics import CONTENT_TYPE, Metrics
from app.status import collect_status
from app.store.keys import Keys

access_log = logging.getLogger("stageline.access")
event_log = logging.getLogger("stageline.events")
log = logging.getLogger("stageline.console")

Scope = Any
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]

SESSION_COOKIE = "stageline_session"
SESSION_TTL_S = 8 * 3600
SSE_LIFETIME_S = 10.0  # then the browser reconnects (lets a shutdown finish quickly)
SSE_KEEPALIVE_S = 5.0
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


def _static(name: str) -> bytes | None:
    if "/" in name or name.startswith(".") or not name:
        return None
    f = resources.files("app.console").joinpath("static", name)
    try:
        return f.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def _headers(scope: Scope) -> list[tuple[str, str]]:
    return [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    for k, v in headers:
        if k == name:
            return v
    return None


def _operation_label(scope: Scope) -> str:
    path: str = scope.get("path", "")
    if path == "/" and scope.get("method") == "POST":
        target = _header(_headers(scope), "x-amz-target") or ""
        op = target.removeprefix(TARGET_PREFIX)
        return op if target.startswith(TARGET_PREFIX) and op in OPERATIONS else "unknown"
    if path in ("/health", "/metrics", "/status"):
        return path
    if path.startswith("/console/api/events"):
        return "/console/api/events"
    if path.startswith("/console/api/"):
        return "/console/api"
    if path.startswith("/console"):
        return "/console"
    if path.startswith(("/webhooks/", "/triggers/")):
        return path[: path.index("/", 1)]
    return "other"


async def _read_body(receive: Receive, cap: int = 65536) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        m = await receive()
        if m["type"] == "http.disconnect":
            return b""
        chunk = m.get("body", b"")
        size += len(chunk)
        if size <= cap:
            chunks.append(chunk)
        if not m.get("more_body", False):
            return b"".join(chunks)


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str = "application/json",
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, doc: Any, extra: Any = None) -> None:
    await _respond(send, status, msgspec.json.encode(doc), "application/json", extra)


async def _error(send: Send, status: int, type_name: str, message: str) -> None:
    await _json(
        send,
        status,
        {"__type": type_name, "message": message},
        [(b"x-amzn-errortype", type_name.encode())],
    )


class _Sessions:
    def __init__(self) -> None:
        self._by_token: dict[str, tuple[str, float]] = {}

    def new(self, actor: str) -> str:
        now = time.time()
        self._by_token = {t: v for t, v in self._by_token.items() if v[1] > now}
        token = secrets.token_urlsafe(32)
        self._by_token[token] = (actor, now + SESSION_TTL_S)
        return token

    def actor(self, token: str | None) -> str | None:
        if not token:
            return None
        found = self._by_token.get(token)
        if found is None or found[1] < time.time():
            return None
        return found[0]

    def drop(self, token: str | None) -> None:
        if token:
            self._by_token.pop(token, None)


def _cookie(headers: list[tuple[str, str]], name: str) -> str | None:
    raw = _header(headers, "cookie")
    if not raw:
        return None
    for part in raw.split(";"):
        k, _, v = part.strip().partition("=")
        if k == name:
            return v
    return None


# The console's own endpoints carry no X-Amz-Target: the signed method and path bind a
# signature to its endpoint (the API's operations need the target signed, see sigv4.py).
CONSOLE_SIGNED = ("host", "x-amz-date")


class Console:
    """The ASGI app in front of the API app (see the module docstring)."""

    def __init__(
        self,
        api: ASGIApp,
        engine: Engine,
        *,
        credentials: Mapping[str, str] | None = None,
        principals: Mapping[str, str] | None = None,
        region: str = DEFAULT_REGION,
        max_clock_skew: float = DEFAULT_MAX_SKEW_SECONDS,
        access_log_format: str | None = "text",
        metrics: Metrics | None = None,
        webhooks: ASGIApp | None = None,
    ) -> None:
        self.api = api
        self.webhooks = webhooks  # POST /webhooks/..., /triggers/... (app/webhooks/receive.py)
        self.engine = engine
        self.credentials = dict(credentials) if credentials else None
        self.principals = dict(principals or {})  # access key id -> principal ARN
        self.region = region
        self.max_clock_skew = max_clock_skew
        self.access_log_format = access_log_format
        self.metrics = metrics or Metrics()
        self.feed = EventFeed(engine.redis, engine.keys)
        self.feed.on_items(self.metrics.fold)
        self.feed.on_items(EventLogger())
        self.sessions = _Sessions()

    # --- ASGI ---------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return
        started = time.perf_counter()
        status: dict[str, Any] = {"code": 0, "bytes": 0, "request_id": ""}

        async def tracking_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                for k, v in message.get("headers", []):
                    if k == b"x-amzn-requestid":
                        status["request_id"] = v.decode("latin-1")
            elif message["type"] == "http.response.body":
                status["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self._route(scope, receive, tracking_send)
        finally:
            elapsed = time.perf_counter() - started
            op = _operation_label(scope)
            self.metrics.observe_request(op, status["code"], elapsed)
            self._access(scope, op, status, elapsed)

    def _access(self, scope: Scope, op: str, status: dict[str, Any], elapsed: float) -> None:
        if self.access_log_format is None:
            return
        client = scope.get("client")
        peer = f"{client[0]}:{client[1]}" if client else "-"
        path = scope.get("path", "")
        if path.startswith("/webhooks/"):
            path = "/webhooks/…"  # a webhook's URL id is its only secret when UNAUTHENTICATED
        if self.access_log_format == "json":
            access_log.info(
                json.dumps(
                    {
                        "time": time.time(),
                        "client": peer,
                        "method": scope.get("method"),
                        "path": path,
                        "operation": op if path == "/" else None,
                        "status": status["code"],
                        "bytes": status["bytes"],
                        "ms": round(elapsed * 1000, 2),
                        "requestId": status["request_id"] or None,
                    },
                    separators=(",", ":"),
                )
            )
            return
        what = f"{scope.get('method')} {path}" + (f" {op}" if path == "/" else "")
        access_log.info(
            '%s "%s" %s %dB %.1fms%s',
            peer,
            what,
            status["code"],
            status["bytes"],
            elapsed * 1000,
            f" {status['request_id']}" if status["request_id"] else "",
        )

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as tg:
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    tg.start_soon(self.feed.run)
                    tg.start_soon(self.metrics.ping_every, self.engine.redis)
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    tg.cancel_scope.cancel()
                    break
        await send({"type": "lifespan.shutdown.complete"})

    # --- routing ------------------------------------------------------------------------------

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/metrics" and method == "GET":
            body = await self.metrics.render(self.engine.redis, self.engine.keys)
            await _respond(send, 200, body, CONTENT_TYPE)
            return
        if path == "/status" and method == "GET":
            if await self._authorized(scope, b"") is None:
                await _error(send, 403, "AccessDeniedException", "sign the request (SigV4)")
                return
            doc = await collect_status(self.engine.redis, self.engine.keys)
            await _json(send, 200, doc)
            return
        if path in ("/console", "/console/"):
            await self._static(send, "index.html")
            return
        if path.startswith("/console/static/"):
            await self._static(send, path.removeprefix("/console/static/"))
            return
        if path.startswith("/console/api/"):
            await self._api(scope, receive, send, path.removeprefix("/console/api/"), method)
            return
        if self.webhooks is not None and path.startswith(("/webhooks/", "/triggers/")):
            await self.webhooks(scope, receive, send)
            return
        await self.api(scope, receive, send)

    async def _static(self, send: Send, name: str) -> None:
        body = _static(name)
        if body is None:
            await _error(send, 404, "NotFoundException", f"no such file: {name}")
            return
        ext = name[name.rfind(".") :]
        await _respond(
            send,
            200,
            body,
            STATIC_TYPES.get(ext, "application/octet-stream"),
            [
                (
                    b"content-security-policy",
                    b"default-src 'self'; connect-src 'self'; img-src 'self' data:; "
                    b"style-src 'self'; script-src 'self'; frame-ancestors 'none'",
                ),
                (b"referrer-policy", b"no-referrer"),
            ],
        )

    def _principal(self, v: Verified) -> str:
        return self.principals.get(v.access_key, v.access_key)

    async def _authorized(self, scope: Scope, body: bytes) -> str | None:
        """The caller (session or SigV4), or None when auth is on and neither is valid."""
        if self.credentials is None:
            return "anonymous"
        headers = _headers(scope)
        actor = self.sessions.actor(_cookie(headers, SESSION_COOKIE))
        if actor is not None:
            return actor
        if _header(headers, "authorization") is None:
            return None
        raw_path: bytes | None = scope.get("raw_path")
        p = raw_path.decode("latin-1") if raw_path else scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        try:
            return self._principal(
                verify_sigv4(
                    scope["method"],
                    p,
                    query,
                    headers,
                    body,
                    self.credentials,
                    now=time.time(),
                    region=self.region,
                    max_skew_seconds=self.max_clock_skew,
                    required=CONSOLE_SIGNED,
                )
            )
        except AwsError:
            return None

    async def _api(
        self, scope: Scope, receive: Receive, send: Send, route: str, method: str
    ) -> None:
        body = await _read_body(receive) if method == "POST" else b""
        if route == "config" and method == "GET":
            await _json(send, 200, {"auth": self.credentials is not None, "region": "us-east-1"})
            return
        if route == "login" and method == "POST":
            await self._login(scope, body, send)
            return
        actor = await self._authorized(scope, body)
        if actor is None:
            await _error(send, 401, "AccessDeniedException", "log in to the console first")
            return
        if route == "logout" and method == "POST":
            token = _cookie(_headers(scope), SESSION_COOKIE)
            self.sessions.drop(token)
            await _json(send, 200, {}, [(b"set-cookie", self._cookie_header("", 0))])
            return
        if method != "GET":
            await _error(send, 405, "MethodNotAllowedException", f"{method} {scope['path']}")
            return
        parts = [urllib.parse.unquote(x) for x in route.split("/") if x]
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            if parts == ["whoami"]:
                await _json(send, 200, {"actor": actor, "auth": self.credentials is not None})
            elif parts == ["events"]:
                await self._events(receive, send, (query.get("pipeline") or [None])[0])
            elif parts == ["pipelines"]:
                await _json(send, 200, await views.pipelines(self.engine))
            elif len(parts) == 2 and parts[0] == "pipelines":
                await _json(send, 200, await views.pipeline(self.engine, parts[1]))
            elif len(parts) == 4 and parts[0] == "pipelines" and parts[2] == "executions":
                await _json(send, 200, await views.execution(self.engine, parts[1], parts[3]))
            elif len(parts) == 5 and parts[2] == "executions" and parts[4] == "timeline":
                await _json(send, 200, await views.timeline(self.engine, parts[1], parts[3]))
            else:
                await _error(send, 404, "NotFoundException", f"no such resource: {scope['path']}")
        except DomainError as err:
            await _error(send, err.status if err.status != 400 else 404, err.type_name, err.message)

    def _cookie_header(self, token: str, max_age: int) -> bytes:
        return (
            f"{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}"
        ).encode()

    async def _login(self, scope: Scope, body: bytes, send: Send) -> None:
        if self.credentials is None:
            await _json(send, 200, {"actor": "anonymous", "auth": False})
            return
        headers = _headers(scope)
        raw_path: bytes | None = scope.get("raw_path")
        p = raw_path.decode("latin-1") if raw_path else scope["path"]
        try:
            actor = self._principal(
                verify_sigv4(
                    "POST",
                    p,
                    "",
                    headers,
                    body,
                    self.credentials,
                    now=time.time(),
                    region=self.region,
                    max_skew_seconds=self.max_clock_skew,
                    required=CONSOLE_SIGNED,
                )
            )
        except AwsError as err:
            await _error(send, 403, err.type_name, err.message)
            return
        token = self.sessions.new(actor)
        await _json(
            send,
            200,
            {"actor": actor, "auth": True},
            [(b"set-cookie", self._cookie_header(token, SESSION_TTL_S))],
        )

    async def _events(self, receive: Receive, send: Send, pipeline: str | None) -> None:
        """Server-sent events: ``hello`` on connect, then ``change`` per batch of events."""
        sub = self.feed.subscribe()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-store"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )

        async def chunk(text: str) -> None:
            await send({"type": "http.response.body", "body": text.encode(), "more_body": True})

        await chunk("retry: 1000\nevent: hello\ndata: {}\n\n")
        try:
            async with anyio.create_task_group() as tg:

                async def disconnected() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(disconnected)
                with anyio.move_on_after(SSE_LIFETIME_S):
                    while True:
                        items: list[FeedItem] | None = None
                        with anyio.move_on_after(SSE_KEEPALIVE_S):
                            items = await sub.receive()
                        if items is None:
                            await chunk(": keepalive\n\n")
                            continue
                        mine = [i for i in items if pipeline is None or i.pipeline == pipeline]
                        if mine:
                            doc = [
                                {
                                    "pipeline": i.pipeline,
                                    "version": i.version,
                                    "type": i.type,
                                    "executionId": getattr(
                                        i.envelope.event if i.envelope else None,
                                        "executionId",
                                        None,
                                    ),
                                }
                                for i in mine
                            ]
                            await chunk(f"event: change\ndata: {json.dumps(doc)}\n\n")
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                tg.cancel_scope.cancel()
        except OSError:  # the client went away mid-write
            pass
        finally:
            sub.close()


_LOGGED = {
    "ExecutionStarted",
    "ExecutionSucceeded",
    "ExecutionFailed",
    "ExecutionStopped",
    "StageRetryStarted",
    "StageRetryRejected",
    "ActionExecutionSucceeded",
    "ActionExecutionFailed",
}


class EventLogger:
    """One INFO line per execution, retry and action outcome (``stageline.events``), so a
    running ``stageline serve`` shows what happens."""

    def __init__(self, remember: int = 10_000) -> None:
        self._names: OrderedDict[str, str] = OrderedDict()  # action execution id -> Stage/action
        self._remember = remember

    def __call__(self, items: list[FeedItem]) -> None:
        if not event_log.isEnabledFor(logging.INFO):
            return
        for item in items:
            if item.envelope is None:
                continue
            e: Any = item.envelope.event
            if item.type == "ActionExecutionScheduled":
                self._names[e.actionExecutionId] = f"{e.stageName}/{e.actionName}"
                if len(self._names) > self._remember:
                    self._names.popitem(last=False)
            if item.type not in _LOGGED:
                continue
            where = f"{item.pipeline} {str(getattr(e, 'executionId', ''))[:8]}"
            if item.type.startswith("ActionExecution"):
                name = self._names.get(e.actionExecutionId, e.actionExecutionId[:8])
                if item.type == "ActionExecutionFailed":
                    detail = f"Failed {e.errorCode}: {e.message or e.summary or ''}"
                else:
                    detail = f"Succeeded {e.summary or ''}"
                event_log.info("%s %s %s", where, name, detail.strip())
            elif item.type.startswith("StageRetry"):
                how = getattr(e, "retryMode", None) or getattr(e, "reason", "")
                event_log.info("%s %s %s %s", where, item.type, e.stageName, how)
            else:
                event_log.info("%s %s %s", where, item.type, getattr(e, "reason", "") or "")


def mount(
    api: ASGIApp,
    engine: Engine,
    *,
    credentials: Mapping[str, str] | None = None,
    principals: Mapping[str, str] | None = None,
    region: str = DEFAULT_REGION,
    max_clock_skew: float = DEFAULT_MAX_SKEW_SECONDS,
    access_log_format: str | None = "text",
    webhooks: ASGIApp | None = None,
) -> Console:
    return Console(
        api,
        engine,
        credentials=credentials,
        principals=principals,
        region=region,
        max_clock_skew=max_clock_skew,
        access_log_format=access_log_format,
        webhooks=webhooks,
    )


def metrics_only_app(redis: Redis, keys: Keys, metrics: Metrics) -> ASGIApp:
    """``/metrics`` and ``/health`` alone (``stageline worker --metrics-port``)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/metrics":
            await _respond(send, 200, await metrics.render(redis, keys), CONTENT_TYPE)
        elif scope["path"] == "/health":
            try:
                ok = bool(await redis.ping())
            except Exception:
                ok = False
            await _json(send, 200 if ok else 503, {"status": "ok" if ok else "unavailable"})
        else:
            await _error(send, 404, "NotFoundException", f"no such resource: {scope['path']}")

    return app
