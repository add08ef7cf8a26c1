"""Connection limits: slowloris, descriptor exhaustion, the caps, and timeouts (issue 12).

The real ``stageline serve`` (embedded Redis, no workers) in a thread, or as a subprocess
under ``prlimit --nofile`` for descriptor exhaustion; clients are plain sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.api.limits import ConnectionLimits, effective_max_connections, quiet_accept_errors
from app.api.server import ServeConfig
from app.api.wire import build_app
from tests.api_helpers import Stageline, asgi_call, run_stageline, target, wait_for
from tests.redis_server import free_port

pytestmark = pytest.mark.timeout(120)


def health_seconds(port: int, timeout: float = 5.0) -> float:
    """Wall time of one ``GET /health`` on a new connection (must be a 200)."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    return time.monotonic() - t0


def closed_by_server(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        s.setblocking(True)


@contextlib.contextmanager
def server(limits: ConnectionLimits) -> Iterator[Stageline]:
    cfg = ServeConfig(port=0, workers=False, log_level="critical", limits=limits)
    with run_stageline(cfg) as srv:
        yield srv


def slow_clients(port: int, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        out.append(s)
    return out


def test_slowloris_connections_are_cut_and_health_stays_fast() -> None:
    """Issue 12: 300 slowloris connections stayed open past 40 s."""
    limits = ConnectionLimits(header_timeout_s=2.0)
    with server(limits) as srv:
        socks = slow_clients(srv.port, 300)
        try:
            worst = 0.0
            deadline = time.monotonic() + 2.5
            while time.monotonic() < deadline:
                for s in socks[::30]:  # keep trickling header lines
                    with contextlib.suppress(OSError):
                        s.sendall(b"X-Slow: 1\r\n")
                worst = max(worst, health_seconds(srv.port))
                time.sleep(0.1)
            assert worst < 1.0, f"/health took {worst:.2f} s"
            # the header timeout closed every one of them, trickling or not
            wait_for(
                lambda: all(closed_by_server(s) for s in socks),
                timeout=10,
                what="slowloris connections to be closed",
            )
        finally:
            for s in socks:
                s.close()
        assert health_seconds(srv.port) < 1.0


def test_over_the_cap_the_oldest_idle_connection_makes_room() -> None:
    limits = ConnectionLimits(max_connections=40, header_timeout_s=60)
    with server(limits) as srv:
        socks = slow_clients(srv.port, 100)
        try:
            for _ in range(5):
                assert health_seconds(srv.port) < 1.0
            wait_for(
                lambda: sum(closed_by_server(s) for s in socks) >= 60,
                timeout=10,
                what="evictions",
            )
            oldest = sum(closed_by_server(s) for s in socks[:60])
            newest = sum(closed_by_server(s) for s in socks[-20:])
            assert oldest >= 55 and newest <= 5, (oldest, newest)
        finally:
            for s in socks:
                s.close()


def test_when_every_connection_is_busy_a_newcomer_gets_throttling() -> None:
    limits = ConnectionLimits(max_connections=5, header_timeout_s=60, body_timeout_s=60)
    with server(limits) as srv:
        busy = []
        for _ in range(5):  # headers done, body pending: mid-request, not evictable
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.sendall(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                b"X-Amz-Target: CodePipeline_20150709.ListPipelines\r\n\r\n{"
            )
            busy.append(s)
        time.sleep(0.3)
        try:
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            head, body = data.split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 503")
            assert b"x-amzn-errortype: ThrottlingException" in head
            assert json.loads(body)["__type"] == "ThrottlingException"
        finally:
            for s in busy:
                s.close()
        wait_for(lambda: health_seconds(srv.port) < 1.0, what="/health after the burst")


def test_body_and_keep_alive_timeouts() -> None:
    limits = ConnectionLimits(body_timeout_s=1.0, keep_alive_s=1.0)
    with server(limits) as srv:
        half = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        half.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        kept = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert kept.recv(4096).startswith(b"HTTP/1.1 200")
        time.sleep(0.3)
        assert not closed_by_server(half) and not closed_by_server(kept)
        wait_for(lambda: closed_by_server(half), timeout=5, what="body timeout")
        wait_for(lambda: closed_by_server(kept), timeout=5, what="keep-alive timeout")
        half.close()
        kept.close()


async def test_in_flight_cap_answers_throttling_and_spares_health() -> None:
    gate = asyncio.Event()

    async def slow(req: Any, ctx: Any) -> dict[str, Any]:
        await gate.wait()
        return {"pipelines": []}

    app = build_app({"ListPipelines": slow}, max_in_flight=2)
    headers = list(target("ListPipelines").items())
    first = [asyncio.create_task(asgi_call(app, "POST", "/", headers, [b"{}"])) for _ in range(2)]
    await asyncio.sleep(0.05)
    status, hdrs, body = await asgi_call(app, "POST", "/", headers, [b"{}"])
    assert (status, hdrs["x-amzn-errortype"]) == (503, "ThrottlingException")
    assert json.loads(body)["__type"] == "ThrottlingException"
    assert (await asgi_call(app, "GET", "/health", [], [b""]))[0] == 200
    gate.set()
    assert [r[0] for r in await asyncio.gather(*first)] == [200, 200]
    assert (await asgi_call(app, "POST", "/", headers, [b"{}"]))[0] == 200


def test_the_cap_stays_under_the_descriptor_limit() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limits = ConnectionLimits(max_connections=10**9)
    assert effective_max_connections(limits) <= soft - limits.fd_reserve
    assert effective_max_connections(ConnectionLimits(max_connections=7)) == min(
        7, soft - 128
    )


def test_accept_errors_are_reported_at_a_bounded_rate(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    try:
        quiet_accept_errors(loop, every_s=3600)
        with caplog.at_level(logging.ERROR):
            for _ in range(1000):
                loop.call_exception_handler(
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": OSError(24, "Too many open files"),
                    }
                )
        lines = [r for r in caplog.records if "cannot accept" in r.getMessage()]
        assert len(lines) == 1
        assert "\n" not in lines[0].getMessage() and lines[0].exc_info is None
        caplog.clear()
        with caplog.at_level(logging.ERROR):  # anything else still reaches the old handler
            loop.call_exception_handler({"message": "something else"})
        assert any("something else" in r.getMessage() for r in caplog.records)
    finally:
        loop.close()


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) missing")
def test_descriptor_exhaustion_keeps_health_fast_and_logs_quiet(tmp_path: Path) -> None:
    """Issue 12: 1,100 idle connections at a 1,024 descriptor limit stalled /health for 60 s
    and wrote 228 MB of "Too many open files"."""
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "STAGELINE_ACCESS_KEYS": "", "STAGELINE_ACCESS_KEYS_FILE": ""}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["prlimit", "--nofile=1024:1024", sys.executable, "-m", "app.cli", "serve",
             "--port", str(port), "--no-workers", "--header-timeout", "30"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    socks: list[socket.socket] = []
    try:
        wait_for(lambda: _up(port), timeout=30, what="stageline serve to start")
        for _ in range(1100):
            with contextlib.suppress(OSError):
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        assert len(socks) == 1100
        worst = max(health_seconds(port) for _ in range(20))
        assert worst < 1.0, f"/health took {worst:.2f} s"
        time.sleep(2)
        assert proc.poll() is None
        assert health_seconds(port) < 1.0
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        proc.wait(20)
    size = log.stat().st_size
    assert size < 20_000, log.read_text(errors="replace")[-2000:]
    assert "Traceback" not in log.read_text(errors="replace")


def _up(port: int) -> bool:
    try:
        return health_seconds(port, timeout=1) < 5
    except (OSError, AssertionError):
        return False
