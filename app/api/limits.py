"""Connection limits for the HTTP server: timeouts, a connection cap, quiet descriptor errors.

uvicorn (with httptools) is the server: the fastest of those measured here (see
``docs/security.md``) and one that runs inside ``stageline serve``'s own event loop, next to
the in-process workers. It has an idle keep-alive timeout but no header or body timeout and
no cap that keeps ``/health`` reachable, so :func:`protocol_class` adds them to its
protocol:

- **header timeout**: from the connection's first moment (or, on a kept-alive connection,
  the first byte of the next request) to the end of the request headers;
- **body timeout**: from the end of the headers to the end of the body;
- **idle keep-alive**: uvicorn's own ``timeout_keep_alive`` between requests;
- **connection cap**: at most ``max_connections`` open connections (never more than the
  descriptor limit minus a reserve for Redis, files and action processes). A connection
  over the cap evicts the oldest connection that is not in the middle of a request (idle,
  or still sending its headers: a slowloris client is always that), so a real client gets
  in; when every connection is busy with a request, the newcomer gets a
  ``503 ThrottlingException`` and is closed. Never a stalled accept loop.

In-flight requests are capped by the ASGI app (:func:`app.api.wire.build_app`'s
``max_in_flight``). :func:`quiet_accept_errors` rate-limits asyncio's "socket.accept() out
of system resource" reports, which otherwise repeat every second with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["ConnectionLimits", "effective_max_connections", "protocol_class", "quiet_accept_errors"]

log = logging.getLogger("stageline.serve")

_THROTTLED_BODY = b'{"__type":"ThrottlingException","message":"too many connections; retry"}'
THROTTLED = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: application/x-amz-json-1.1\r\n"
    b"x-amzn-errortype: ThrottlingException\r\n"
    b"connection: close\r\n"
    b"content-length: " + str(len(_THROTTLED_BODY)).encode() + b"\r\n\r\n" + _THROTTLED_BODY
)


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: float = 5.0
    max_connections: int = 1000
    max_in_flight: int = 256
    # descriptors kept free for Redis connections, files and action processes
    fd_reserve: int = 256
    # listen backlog; asyncio also accepts up to this many sockets per loop iteration
    backlog: int = 256


def effective_max_connections(limits: ConnectionLimits) -> int:
    """``max_connections``, lowered to fit under the process's descriptor limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return limits.max_connections
    return max(1, min(limits.max_connections, soft - limits.fd_reserve))


_IDLE, _HEADERS, _BODY, _BUSY = "idle", "headers", "body", "busy"


def protocol_class(limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with the timeouts and the cap of ``limits``."""
    cap = effective_max_connections(limits)

    class LimitedProtocol(HttpToolsProtocol):
        max_connections = cap
        phase = _HEADERS
        since = 0.0
        _timer: asyncio.TimerHandle | None = None

        def _arm(self, phase: str, seconds: float | None) -> None:
            self.phase = phase
            self.since = time.monotonic()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if seconds is not None:
                self._timer = self.loop.call_later(seconds, self._expired)

        def _expired(self) -> None:
            self._timer = None
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm(_HEADERS, limits.header_timeout_s)
            if len(self.connections) > cap and not self._evict_one():
                transport.write(THROTTLED)
                transport.close()

        def _evict_one(self) -> bool:
            """Close the oldest connection not busy with a request; False if there is none."""
            victim: Any = None
            other: Any
            for other in self.connections:
                if other is self or getattr(other, "phase", _BUSY) not in (_IDLE, _HEADERS):
                    continue
                if victim is None or other.since < victim.since:
                    victim = other
            if victim is None:
                return False
            victim.phase = _BUSY  # evicted once
            victim.transport.close()
            return True

        def data_received(self, data: bytes) -> None:
            if self.phase == _IDLE:  # the next request on a kept-alive connection
                self._arm(_HEADERS, limits.header_timeout_s)
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._arm(_BODY, limits.body_timeout_s)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._arm(_BUSY, None)
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.phase == _BUSY and not self.pipeline:
                self._arm(_IDLE, None)  # uvicorn's keep-alive timer runs now

        def connection_lost(self, exc: Exception | None) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            super().connection_lost(exc)

    return LimitedProtocol


# After a failed accept (descriptors exhausted) asyncio stops accepting for this long; its
# default, 1 s, is a 1 s stall for every client. The cap frees descriptors within a few
# loop iterations, so accepting resumes almost at once.
ACCEPT_RETRY_DELAY_S = 0.05


def quiet_accept_errors(loop: asyncio.AbstractEventLoop, every_s: float = 30.0) -> None:
    """Report descriptor exhaustion on accept at most once per ``every_s``, one line each,
    and retry accepting after :data:`ACCEPT_RETRY_DELAY_S` instead of a second."""
    import asyncio.constants

    asyncio.constants.ACCEPT_RETRY_DELAY = ACCEPT_RETRY_DELAY_S  # type: ignore[assignment,misc]
    previous = loop.get_exception_handler()
    state = {"last": -every_s, "suppressed": 0}

    def handler(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if "socket.accept() out of system resource" not in message:
            if previous is not None:
                previous(lp, context)
            else:
                lp.default_exception_handler(context)
            return
        now = time.monotonic()
        if now - state["last"] < every_s:
            state["suppressed"] += 1
            return
        exc = context.get("exception")
        log.error(
            "stageline: cannot accept connections: %s (%d more like this since the last "
            "report); lower --max-connections or raise the descriptor limit",
            exc,
            state["suppressed"],
        )
        state["last"] = now
        state["suppressed"] = 0

    loop.set_exception_handler(handler)
