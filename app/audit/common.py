"""Shared pieces of the audit tools: errors, points in time, raw stream reading.

Points in time (``--as-of``, ``--since``) are written as

- ``17`` or ``v17``: an event version (a position in a pipeline's stream; as-of only);
- an ISO 8601 time, ``2024-05-01T12:00:00Z`` (no zone = UTC);
- ``@1714564800.5``: epoch seconds;
- ``90s``, ``15m``, ``24h``, ``7d``: that long ago.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from app.store.eventstore import EventStore


class AuditError(Exception):
    """An audit operation cannot be done (unknown pipeline, refused import, bad input)."""


@dataclass(frozen=True)
class AsOf:
    """A past point of a log: after event ``version``, or at epoch time ``time``.

    As of a time, a pipeline's state is the fold of its events up to (not including) the
    first event stamped later than ``time``: what a reader saw at that moment.
    """

    version: int | None = None
    time: float | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"version {self.version}"
        return iso(self.time) if self.time is not None else "now"


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_time(text: str, *, now: float | None = None) -> float:
    """Epoch seconds from an ISO 8601 time, ``@<epoch>`` or a duration ago (``24h``)."""
    t = text.strip()
    if t.startswith("@"):
        try:
            return float(t[1:])
        except ValueError:
            raise AuditError(f"invalid time {text!r}: expected @<epoch seconds>") from None
    m = _DURATION.match(t)
    if m:
        ago = float(m.group(1)) * _UNITS[m.group(2)]
        return (time.time() if now is None else now) - ago
    try:
        d = dt.datetime.fromisoformat(t)
    except ValueError:
        raise AuditError(
            f"invalid time {text!r}: expected ISO 8601 (2024-05-01T12:00:00Z), "
            "@<epoch seconds> or a duration ago (90s, 15m, 24h, 7d)"
        ) from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)
    return d.timestamp()


def parse_as_of(text: str) -> AsOf:
    """``17`` / ``v17`` -> a version; anything else -> a time (see :func:`parse_time`)."""
    t = text.strip()
    digits = t[1:] if t[:1] in ("v", "V") else t
    if digits.isdigit():
        return AsOf(version=int(digits))
    return AsOf(time=parse_time(t))


def iso(t: float) -> str:
    """Epoch seconds as an ISO 8601 UTC time with milliseconds."""
    d = dt.datetime.fromtimestamp(t, tz=dt.UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


def text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


@dataclass(frozen=True)
class StreamEntry:
    """A stream entry exactly as stored: entry id, payload (``e``) and hash (``h``)."""

    entry_id: str
    payload: bytes | None
    hash: str | None

    @property
    def version(self) -> int:
        return int(self.entry_id.split("-", 1)[0])

    @property
    def seq(self) -> int:
        return int(self.entry_id.split("-", 1)[1])


async def iter_stream(
    redis: Redis, key: str, batch: int = 1000
) -> AsyncIterator[list[StreamEntry]]:
    """Every entry of a stream in id order, in batches, whatever its ids look like."""
    start = "-"
    while True:
        rows: Any = await redis.xrange(key, min=start, max="+", count=batch)
        if not rows:
            return
        out: list[StreamEntry] = []
        for rid, fields in rows:
            e = fields.get(b"e")
            h = fields.get(b"h")
            out.append(StreamEntry(text(rid), e, text(h) if h is not None else None))
        yield out
        if len(rows) < batch:
            return
        ms, _, seq = out[-1].entry_id.partition("-")
        start = f"{ms}-{int(seq) + 1}"


async def log_length(store: EventStore, pipeline: str) -> int:
    n: Any = await store.redis.xlen(store.keys.log(pipeline))
    return int(n)


async def select_pipelines(store: EventStore, pipeline: str | None) -> list[str]:
    """One pipeline (which must have a log) or every pipeline that has one, sorted."""
    if pipeline is None:
        return await store.pipelines()
    if await log_length(store, pipeline) == 0:
        raise AuditError(f"pipeline {pipeline!r} has no event log in this Redis")
    return [pipeline]


async def log_streams(store: EventStore) -> set[str]:
    """Pipelines that have a log stream, found by key (whatever the names sets say)."""
    ns = store.keys.namespace
    found: set[str] = set()
    async for key in store.redis.scan_iter(match=f"{ns}:{{{ns}.*}}:log:*", count=1000):
        found.add(text(key).split(":log:", 1)[1])
    return found
