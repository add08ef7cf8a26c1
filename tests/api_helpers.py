"""Shared helpers for the API tests: servers on loopback, boto3 clients, raw HTTP, ASGI calls.

- :func:`serve` runs any ASGI app under uvicorn in a thread on a free port.
- :func:`run_stageline` runs the real ``stageline serve`` (:func:`app.api.server.serve`:
  uvicorn + engine + in-process workers) in a thread with its own event loop.
- :func:`client` is a real ``boto3.client("codepipeline")`` aimed at a URL.
- :func:`asgi_call` drives an ASGI app directly (no network), for fuzzing.
"""

from __future__ import annotations

import functools
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import boto3
import botocore.config
import msgspec
import uvicorn
from hypothesis import strategies as st

from app.api.server import ServeConfig
from app.api.server import serve as stageline_serve
from app.api.shapes import OPERATIONS
from app.api.wire import TARGET_PREFIX, ASGIApp

AKID = "AKIDEXAMPLE"
SECRET = "secret"
JSON11 = "application/x-amz-json-1.1"


# --- servers ------------------------------------------------------------------------------


@contextmanager
def serve(app: ASGIApp) -> Iterator[str]:
    """``app`` under uvicorn on 127.0.0.1:<free port>; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@dataclass
class Stageline:
    """A running ``stageline serve`` (see :func:`run_stageline`)."""

    url: str
    port: int
    config: ServeConfig
    server: Any  # the uvicorn.Server


@contextmanager
def run_stageline(cfg: ServeConfig, *, start_timeout: float = 20) -> Iterator[Stageline]:
    """Run :func:`app.api.server.serve` (``signals=False``) in a thread with its own event loop.

    ``cfg.port`` 0 picks a free port (read back from uvicorn's socket). On exit the server is
    asked to stop (``should_exit``) the way a signal would, and the thread is joined.
    """
    started = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            box["server"] = await tg.start(functools.partial(stageline_serve, cfg, signals=False))
            started.set()

    def run() -> None:
        try:
            anyio.run(main)
        except BaseException as exc:  # surfaced to the test thread below
            box["error"] = exc
        finally:
            started.set()

    thread = threading.Thread(target=run, name="stageline-serve", daemon=True)
    thread.start()
    if not started.wait(start_timeout):
        raise RuntimeError("stageline serve did not start in time")
    if "server" not in box:
        raise RuntimeError(f"stageline serve failed to start: {box.get('error')!r}")
    server = box["server"]
    port = cfg.port or server.servers[0].sockets[0].getsockname()[1]
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "") else cfg.host
    try:
        yield Stageline(f"http://{host}:{port}", port, cfg, server)
    finally:
        server.should_exit = True
        thread.join(30)
        if thread.is_alive():
            server.force_exit = True
            thread.join(10)
        if "error" in box:
            raise RuntimeError("stageline serve crashed") from box["error"]


def wait_for(
    fn: Callable[[], Any], *, timeout: float = 15, interval: float = 0.05, what: str = ""
) -> Any:
    """Call ``fn`` until it returns something truthy; return it (or fail after ``timeout``)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what or fn}: last value {last!r}")


# --- clients ------------------------------------------------------------------------------


def client(url: str, *, key: str = AKID, secret: str = SECRET, validate: bool = True) -> Any:
    """A real boto3 CodePipeline client for ``url`` (no retries, short timeouts)."""
    cfg = botocore.config.Config(
        parameter_validation=validate,
        retries={"total_max_attempts": 1},
        connect_timeout=5,
        read_timeout=10,
    )
    return boto3.client(
        "codepipeline",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=cfg,
    )


def raw(
    url: str,
    method: str = "POST",
    path: str = "/",
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """One plain HTTP request; returns status, lower-cased headers and the JSON body."""
    host = url.removeprefix("http://")
    conn = http.client.HTTPConnection(host, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    return resp.status, hdrs, json.loads(data)


def target(op: str) -> dict[str, str]:
    return {"X-Amz-Target": TARGET_PREFIX + op, "Content-Type": JSON11}


def assert_aws_error(
    status: int, headers: dict[str, str], body: dict[str, Any], name: str, code: int = 400
) -> None:
    assert status == code, body
    assert body["__type"] == name
    assert isinstance(body["message"], str) and body["message"]
    assert headers["x-amzn-errortype"] == name
    assert headers["content-type"] == JSON11
    assert headers["x-amzn-requestid"]


# --- direct ASGI calls --------------------------------------------------------------------


async def asgi_call(
    app: ASGIApp,
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    chunks: Any,
) -> tuple[int, dict[str, str], bytes]:
    """Call ``app`` once; ``chunks`` is a list of body chunks or an async iterator of them."""
    sent: list[dict[str, Any]] = []
    if isinstance(chunks, list):
        items = list(chunks) or [b""]

        async def gen() -> Any:
            for i, c in enumerate(items):
                yield c, i < len(items) - 1

        source = gen()
    else:
        source = chunks

    async def receive() -> dict[str, Any]:
        try:
            chunk, more = await source.__anext__()
        except StopAsyncIteration:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunk, "more_body": more}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        "client": ("10.0.0.1", 5555),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    hdrs = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], hdrs, body


def check_response(status: int, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """No 5xx; a JSON object body; errors AWS-shaped (``__type``, ``message``, header)."""
    assert status < 500, body
    decoded = json.loads(body)
    assert isinstance(decoded, dict)
    if status >= 400:
        assert isinstance(decoded["__type"], str) and decoded["__type"]
        assert isinstance(decoded["message"], str) and decoded["message"]
        assert headers["x-amzn-errortype"] == decoded["__type"]
    assert headers["x-amzn-requestid"]
    return decoded


# --- hypothesis strategies ----------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def field_names(cls: type[msgspec.Struct]) -> list[str]:
    return [f.encode_name for f in msgspec.structs.fields(cls)]


@st.composite
def shaped_objects(
    draw: st.DrawFn, op: str, values: st.SearchStrategy[Any] = json_values
) -> dict[str, Any]:
    """Objects using the operation's real field names with random values (reaches deeper)."""
    names = field_names(OPERATIONS[op])
    keys = draw(st.lists(st.sampled_from(names) | st.text(max_size=6), max_size=len(names) + 1))
    return {k: draw(values) for k in keys}
