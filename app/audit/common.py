"""Shared pieces of the audit tools: errors, points in time, reading a pipeline's streams.

A pipeline's events are numbered by one sequence (``seq:<pipeline>``) but stored in bounded
streams: the pipeline's own stream and one per execution (``app/store/eventstore.py``).
:func:`merged_events` and :func:`merged_raw` read them back in sequence order without
holding them: each stream is read in chunks, an execution's stream is opened only when the
merge reaches its start, and dropped once read to its end, so memory holds a chunk of the
streams that overlap the current position (the executions running at that point), not the
log.

Points in time (``--as-of``, ``--since``) are written as

- ``17`` or ``v17``: an event version (the pipeline's sequence number; as-of only);
- an ISO 8601 time, ``2024-05-01T12:00:00Z`` (no zone = UTC);
- ``@1714564800.5``: epoch seconds;
- ``90s``, ``15m``, ``24h``, ``7d``: that long ago.
"""

from __future__ import annotations

import datetime as dt
import heapq
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from redis.asyncio import Redis

from app.domain import events as ev
from app.store.eventstore import HEAD, EventStore


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
    """A stream entry exactly as stored: entry id, payload (``e``), head reference (``r``)
    and hash (``h``)."""

    entry_id: str
    payload: bytes | None
    hash: str | None
    ref: bytes | None = None
    tag: str = ""  # the audit tag (field ``m``), '' when written without a key
    version: int = field(init=False)  # the part before '-' (the pipeline's seq)
    seq: int = field(init=False)  # the part after it (always 0 when the store wrote it)

    def __post_init__(self) -> None:
        ms, _, sq = self.entry_id.partition("-")
        object.__setattr__(self, "version", int(ms))
        object.__setattr__(self, "seq", int(sq or 0))

    @property
    def body(self) -> bytes | None:
        """What the hash covers: the payload, or the reference's bytes."""
        return self.payload if self.payload is not None else self.ref


def entries_of(rows: Any) -> list[StreamEntry]:
    out: list[StreamEntry] = []
    for rid, fields in rows:
        h = fields.get(b"h")
        m = fields.get(b"m")
        out.append(
            StreamEntry(
                text(rid),
                fields.get(b"e"),
                text(h) if h is not None else None,
                fields.get(b"r"),
                text(m) if m is not None else "",
            )
        )
    return out


async def read_entries(
    redis: Redis, key: str, after: str = "", count: int = 1000, until: int | None = None
) -> list[StreamEntry]:
    """Up to ``count`` entries of a stream after entry id ``after`` ('' = from the start)
    and up to seq ``until`` (every id ``<until>-*``), as stored, whatever their ids."""
    if after:
        ms, _, sq = after.partition("-")
        start = f"{ms}-{int(sq or 0) + 1}"
    else:
        start = "-"
    rows: Any = await redis.xrange(
        key, min=start, max=str(until) if until is not None else "+", count=count
    )
    return entries_of(rows)


async def iter_stream(
    redis: Redis, key: str, batch: int = 1000, until: int | None = None
) -> AsyncIterator[list[StreamEntry]]:
    """Every entry of a stream in id order, in batches, whatever its ids look like."""
    after = ""
    while True:
        out = await read_entries(redis, key, after, batch, until)
        if not out:
            return
        yield out
        if len(out) < batch:
            return
        after = out[-1].entry_id


# --- reading a pipeline's streams merged in sequence order -----------------------------------

T = TypeVar("T")


class OutOfOrder(AuditError):
    """A stream holds an entry below what the merge already gave (the executions index
    does not say where the stream starts): the store is inconsistent, run verify."""


@dataclass
class Source(Generic[T]):
    """One stream to merge: ``start`` (no entry of it is below this seq), ``order`` (ties
    between streams go to the lower order: the pipeline's stream is 0) and ``fetch(pos)``
    giving the next chunk after position ``pos`` (None: from the start) as (items, the
    position read to, whether that was the end of the stream). ``first``: the first chunk,
    when it was read ahead (see :func:`prefetched`)."""

    name: str
    start: int
    order: int
    fetch: Callable[[Any], Awaitable[tuple[list[T], Any, bool]]]
    first: tuple[list[T], Any, bool] | None = None


@dataclass
class _Cursor(Generic[T]):
    source: Source[T]
    buf: list[T]
    i: int
    read_to: Any
    end: bool


async def merge_sources(
    head: Source[T] | None,
    executions: AsyncIterator[Source[T]],
    seq_of: Callable[[T], int],
    batch: int = 1000,
) -> AsyncIterator[list[tuple[str, T]]]:
    """Items of every source in seq order (ties by ``order``), in chunks of ``batch``, as
    ``(source name, item)``. ``executions`` must come in ``start`` order; each is opened
    only when the merge reaches its start and dropped at its end (see the module doc)."""
    heap: list[tuple[int, int, _Cursor[T]]] = []
    pending = await anext(executions, None)
    last = 0

    async def open_(src: Source[T]) -> None:
        if src.first is not None:
            (items, read_to, end), src.first = src.first, None
        else:
            items, read_to, end = await src.fetch(None)
        cur = _Cursor(src, items, 0, read_to, end)
        await advance(cur)

    async def advance(cur: _Cursor[T]) -> None:
        while cur.i >= len(cur.buf):
            if cur.end:
                return
            cur.buf, cur.read_to, cur.end = await cur.source.fetch(cur.read_to)
            cur.i = 0
        heapq.heappush(heap, (seq_of(cur.buf[cur.i]), cur.source.order, cur))

    if head is not None:
        await open_(head)
    out: list[tuple[str, T]] = []
    while True:
        while pending is not None and (not heap or pending.start <= heap[0][0]):
            await open_(pending)
            pending = await anext(executions, None)
        if not heap:
            break
        seq, _, cur = heapq.heappop(heap)
        if seq < last:
            raise OutOfOrder(
                f"stream {cur.source.name} holds seq {seq} after the merge reached {last}: "
                "the executions index does not match the streams (run `stageline audit verify`)"
            )
        last = seq
        out.append((cur.source.name, cur.buf[cur.i]))
        cur.i += 1
        await advance(cur)
        if len(out) >= batch:
            yield out
            out = []
    if out:
        yield out


async def execution_starts(
    store: EventStore, pipeline: str, until: int | None = None, page: int = 1000
) -> AsyncIterator[tuple[str, int]]:
    """(execution id, seq of its start) from the executions index, in start order, read a
    page at a time."""
    key = store.keys.executions(pipeline)
    hi: Any = until if until is not None else "+inf"
    offset = 0
    while True:
        rows: Any = await store.redis.zrangebyscore(
            key, 0, hi, start=offset, num=page, withscores=True
        )
        for member, score in rows:
            yield text(member), int(score)
        if len(rows) < page:
            return
        offset += page


def event_sources(
    store: EventStore,
    pipeline: str,
    *,
    until: int | None = None,
    chunk: int = 1000,
    execution: str | None = None,
) -> tuple[Source[ev.Envelope] | None, AsyncIterator[Source[ev.Envelope]]]:
    """The sources of :func:`merged_events` (the store's own readers, decoded events)."""

    def head_fetch(pos: int | None) -> Awaitable[tuple[list[ev.Envelope], int, bool]]:
        after = pos or 0

        async def go() -> tuple[list[ev.Envelope], int, bool]:
            items = await store.read_head(pipeline, after=after, until=until, count=chunk)
            last = after
            for it in items:
                last = it.version if isinstance(it, ev.Envelope) else it[0]
            envs = [it for it in items if isinstance(it, ev.Envelope)]
            return envs, last, len(items) < chunk

        return go()

    def exec_fetch(
        eid: str,
    ) -> Callable[[int | None], Awaitable[tuple[list[ev.Envelope], int, bool]]]:
        async def fetch(pos: int | None) -> tuple[list[ev.Envelope], int, bool]:
            after = pos or 0
            envs = await store.read_execution(pipeline, eid, after=after, until=until, count=chunk)
            return envs, envs[-1].version if envs else after, len(envs) < chunk

        return fetch

    async def executions() -> AsyncIterator[Source[ev.Envelope]]:
        if execution is not None:
            yield Source(execution, 0, 1, exec_fetch(execution))
            return
        n = 0
        group: list[Source[ev.Envelope]] = []

        def first(rows: Any) -> tuple[list[ev.Envelope], int, bool]:
            envs = [
                ev.decode_payload(pipeline, int(text(rid).split("-")[0]), f[b"e"])
                for rid, f in rows
            ]
            return envs, envs[-1].version if envs else 0, len(rows) < ahead

        async for eid, start in execution_starts(store, pipeline, until):
            n += 1
            group.append(Source(eid, start, n, exec_fetch(eid)))
            if len(group) == PREFETCH:
                for src in await prefetched(store.redis, group, keys_of, until, ahead, first):
                    yield src
                group = []
        for src in await prefetched(store.redis, group, keys_of, until, ahead, first):
            yield src

    def keys_of(eid: str) -> str:
        return store.keys.execution_log(pipeline, eid)

    ahead = min(chunk, PREFETCH_ENTRIES)
    head = None if execution is not None else Source(HEAD, 0, 0, head_fetch)
    return head, executions()


PREFETCH = 32  # execution streams whose first chunk is read in one round trip
PREFETCH_ENTRIES = 200  # entries read ahead of each


async def prefetched(
    redis: Redis,
    sources: list[Source[T]],
    key_of: Callable[[str], str],
    until: int | None,
    count: int,
    first: Callable[[Any], tuple[list[T], Any, bool]],
) -> list[Source[T]]:
    """``sources`` with their first chunk (up to ``count`` entries) read in one pipelined
    round trip: most execution streams are short, so this saves a round trip per
    execution; memory holds at most PREFETCH * count entries read ahead."""
    if not sources:
        return sources
    pipe = redis.pipeline(transaction=False)
    for src in sources:
        pipe.xrange(
            key_of(src.name), min="-", max=str(until) if until is not None else "+", count=count
        )
    rows: list[Any] = await pipe.execute()
    for src, r in zip(sources, rows, strict=True):
        src.first = first(r)
    return sources


def raw_source(
    redis: Redis, name: str, key: str, start: int, order: int, until: int, chunk: int
) -> Source[StreamEntry]:
    """A source of :func:`merge_sources` over one stream's entries as stored (up to
    ``until``); its position is the last entry id read."""

    async def fetch(pos: str | None) -> tuple[list[StreamEntry], str, bool]:
        got = await read_entries(redis, key, pos or "", chunk, until)
        return got, got[-1].entry_id if got else (pos or ""), len(got) < chunk

    return Source(name, start, order, fetch)


async def merged_events(
    store: EventStore,
    pipeline: str,
    *,
    until: int | None = None,
    batch: int = 1000,
    execution: str | None = None,
) -> AsyncIterator[list[ev.Envelope]]:
    """Every event of ``pipeline`` (or of one ``execution``: its stream alone) up to seq
    ``until``, in seq order, in chunks: the pipeline's stream and each execution's merged
    (bounded in memory, unlike ``EventStore.read``)."""
    head, execs = event_sources(store, pipeline, until=until, chunk=batch, execution=execution)
    async for chunk in merge_sources(head, execs, _version, batch):
        yield [env for _, env in chunk]


def _version(env: ev.Envelope) -> int:
    return env.version


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


def _glob_escape(s: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)


async def execution_streams(store: EventStore, pipeline: str) -> set[str]:
    """Executions of ``pipeline`` that have a stream, found by key (whatever the index says)."""
    prefix = store.keys.execution_log(pipeline, "")
    found: set[str] = set()
    async for key in store.redis.scan_iter(match=_glob_escape(prefix) + "*", count=1000):
        found.add(text(key)[len(prefix) :])
    return found


async def unindexed_execution_streams(store: EventStore) -> dict[str, set[str]]:
    """Pipeline -> execution streams that its executions index does not list, for every
    pipeline, in one scan of the keys (only those are kept: normally none, so memory does
    not grow with the number of executions)."""
    ns = store.keys.namespace
    found: dict[str, set[str]] = {}
    page: list[tuple[str, str]] = []

    async def check() -> None:
        pipe = store.redis.pipeline(transaction=False)
        for pipeline, eid in page:
            pipe.zscore(store.keys.executions(pipeline), eid)
        for (pipeline, eid), score in zip(page, await pipe.execute(), strict=True):
            if score is None:
                found.setdefault(pipeline, set()).add(eid)
        page.clear()

    async for key in store.redis.scan_iter(match=f"{ns}:{{{ns}.*}}:x:*", count=1000):
        rest = text(key).split("}:x:", 1)[1]
        pipeline, _, eid = rest.partition(":")
        page.append((pipeline, eid))
        if len(page) >= 1000:
            await check()
    if page:
        await check()
    return found
