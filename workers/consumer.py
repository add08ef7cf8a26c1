"""A consumer-group reader over the partitions' dispatch streams. I/O only, no policy.

It reads new entries (XREADGROUP), first re-reads its own pending ones after a restart,
takes over entries that another consumer left pending too long (XPENDING + XCLAIM), parks
an entry that keeps failing in the partition's dead-letter stream after ``max_deliveries``,
and survives Redis going away (reconnects with backoff; recreates a missing group).
Each entry is given to ``handle``; it is acknowledged when ``handle`` returns normally.

On a Redis Cluster the streams live in different slots, so one XREADGROUP cannot name
them all (CROSSSLOT): each stream is read on its own, without blocking, a few at a time in
a rotating order (one pipelined round trip per node for each few, ``COUNT 1`` each so no
more than asked is taken), and an idle consumer waits a little longer each empty round
(up to ``IDLE_MAX_S``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.store.connection import node_of, refresh_slots

log = logging.getLogger("stageline.consumer")

# Redis cannot take this now, but may in a moment: unreachable, loading, failing over, or
# out of memory (maxmemory reached: writes refused until memory is freed). Workers keep
# running what they run, back off and write again; they never drop a result for it.
REDIS_DOWN: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    OutOfMemoryError,
    BusyLoadingError,
    ReadOnlyError,
    ClusterDownError,
    TryAgainError,
)
IDLE_MAX_S = 0.25  # a cluster reader's longest wait between empty rounds


@dataclass(frozen=True)
class Entry:
    stream: str
    id: str
    fields: dict[str, bytes]
    deliveries: int = 1

    def text(self, name: str) -> str:
        return self.fields[name].decode()


Handler = Callable[[Entry], Awaitable[None]]


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _entry(stream: str, rid: Any, fields: Any, deliveries: int = 1) -> Entry:
    return Entry(stream, _s(rid), {_s(k): v for k, v in (fields or {}).items()}, deliveries)


class GroupConsumer:
    def __init__(
        self,
        redis: Redis,
        streams: Sequence[str],
        group: str,
        consumer: str,
        *,
        dead_letter: Callable[[str], str],
        block_ms: int | None = 1000,
        poll_interval_s: float = 0.01,
        claim_idle_ms: int = 30_000,
        max_deliveries: int = 5,
        dead_letter_maxlen: int = 10_000,
    ) -> None:
        self.redis = redis
        self.streams = list(streams)
        self.group = group
        self.consumer = consumer
        self.dead_letter = dead_letter
        self.block_ms = block_ms
        self.poll_interval_s = poll_interval_s
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.dead_letter_maxlen = dead_letter_maxlen
        self._groups_ready = False
        self.per_stream = hasattr(redis, "nodes_manager")  # a cluster client
        self._next = 0  # the stream a per-stream round starts at
        self._idle_s = poll_interval_s
        # entries this consumer is handling right now: never "taken over" from itself
        self.inflight: set[tuple[str, str]] = set()

    async def ensure_groups(self) -> None:
        for s in self.streams:
            try:
                await self.redis.xgroup_create(s, self.group, id="0", mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise
        self._groups_ready = True

    async def read(self, count: int, *, pending: bool = False) -> list[Entry]:
        """Up to ``count`` entries: new ones, or (pending=True) this consumer's own pending."""
        if not self._groups_ready:
            await self.ensure_groups()
        if self.per_stream:
            return await self._read_each(count, pending=pending)
        block = None if pending else self.block_ms
        ids: dict[Any, Any] = {s: ("0" if pending else ">") for s in self.streams}
        try:
            resp: Any = await self.redis.xreadgroup(
                self.group, self.consumer, ids, count=count, block=block
            )
        except ResponseError as e:
            if "NOGROUP" in str(e):
                self._groups_ready = False
                return []
            raise
        out: list[Entry] = []
        for stream, rows in resp or []:
            for rid, fields in rows:
                if fields:  # a pending entry trimmed away comes back with no fields
                    out.append(_entry(_s(stream), rid, fields))
                else:
                    await self.redis.xack(_s(stream), self.group, rid)
        if not out and block is None and not pending:
            await anyio.sleep(self.poll_interval_s)
        return out

    async def _read_each(self, count: int, *, pending: bool) -> list[Entry]:
        """``read`` over streams that may not be named in one command (a cluster)."""
        n = len(self.streams)
        order = [self.streams[(self._next + i) % n] for i in range(n)]
        self._next = (self._next + 1) % max(n, 1)
        out: list[Entry] = []
        i = 0
        while i < n and len(out) < count:
            chunk = order[i : i + count - len(out)]
            i += len(chunk)
            pipe: Any = self.redis.pipeline(transaction=False)
            for s in chunk:
                pipe.execute_command(
                    "XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", 1,
                    "STREAMS", s, "0" if pending else ">", target_nodes=node_of(self.redis, s),
                )  # fmt: skip
            try:
                results: Any = await pipe.execute(raise_on_error=False)
            except REDIS_DOWN:
                await refresh_slots(self.redis)  # a node failed over: its slots moved
                raise
            for s, resp in zip(chunk, results, strict=True):
                if isinstance(resp, ResponseError):
                    if "NOGROUP" in str(resp):
                        self._groups_ready = False
                        continue
                    raise resp
                if isinstance(resp, BaseException):
                    if isinstance(resp, REDIS_DOWN):
                        await refresh_slots(self.redis)
                    raise resp
                for _stream, rows in resp or []:
                    for rid, fields in rows:
                        if fields:
                            out.append(_entry(s, rid, fields))
                        else:
                            await self.redis.xack(s, self.group, rid)
        if out or pending:
            self._idle_s = self.poll_interval_s
        else:
            await anyio.sleep(self._idle_s)
            self._idle_s = min(self._idle_s * 2, IDLE_MAX_S)
        return out

    async def claim_stale(self, count: int = 100) -> list[Entry]:
        """Entries other consumers left pending longer than ``claim_idle_ms``.

        Entries delivered ``max_deliveries`` times already are parked in the dead-letter
        stream instead, with a log line, and acknowledged so the partition moves on.
        """
        if not self._groups_ready:
            await self.ensure_groups()
        out: list[Entry] = []
        for s in self.streams:
            try:
                pend: Any = await self.redis.xpending_range(
                    s, self.group, min="-", max="+", count=count, idle=self.claim_idle_ms
                )
            except ResponseError as err:
                if "NOGROUP" in str(err):
                    self._groups_ready = False
                    return []
                raise
            for p in pend:
                rid = _s(p["message_id"])
                deliveries = int(p["times_delivered"])
                if (s, rid) in self.inflight and _s(p["consumer"]) == self.consumer:
                    continue  # still being handled here (a slow handler), not abandoned
                claimed: Any = await self.redis.xclaim(
                    s, self.group, self.consumer, self.claim_idle_ms, [rid]
                )
                if not claimed:
                    continue  # someone else claimed it first
                crid, fields = claimed[0]
                if not fields:
                    await self.redis.xack(s, self.group, crid)
                    continue
                e = _entry(s, crid, fields, deliveries + 1)
                if deliveries >= self.max_deliveries:
                    await self.park(e, f"delivered {deliveries} times without success")
                    continue
                out.append(e)
        return out

    async def park(self, e: Entry, reason: str) -> None:
        dead = self.dead_letter(e.stream)
        fields: dict[Any, Any] = dict(e.fields)
        fields.update({"_stream": e.stream, "_id": e.id, "_group": self.group, "_reason": reason})
        await self.redis.xadd(dead, fields, maxlen=self.dead_letter_maxlen, approximate=False)
        await self.redis.xack(e.stream, self.group, e.id)
        log.error(
            "parked poison entry %s of %s (group %s) in %s: %s",
            e.id,
            e.stream,
            self.group,
            dead,
            reason,
        )

    async def ack(self, e: Entry) -> None:
        await self.redis.xack(e.stream, self.group, e.id)

    async def _run(self, e: Entry, handle: Handler) -> bool:
        """Run ``handle`` on ``e`` (marked in flight meanwhile); False when it failed, which
        leaves the entry pending for redelivery. Redis going away propagates."""
        key = (e.stream, e.id)
        self.inflight.add(key)
        try:
            await handle(e)
        except REDIS_DOWN:
            raise
        except Exception:
            log.exception("handling %s %s failed (delivery %d)", e.stream, e.id, e.deliveries)
            return False
        finally:
            self.inflight.discard(key)
        return True

    async def handle_many(self, entries: Sequence[Entry], handle: Handler) -> int:
        """``handle_one`` for each entry in turn, but acknowledged together at the end, one
        XACK per stream (a round trip per entry saved). Should this stop half way (Redis
        gone, cancelled), the handled entries are redelivered: handlers are idempotent."""
        done: dict[str, list[str]] = {}
        for e in entries:
            if await self._run(e, handle):
                done.setdefault(e.stream, []).append(e.id)
        for stream, ids in done.items():
            await self.redis.xack(stream, self.group, *ids)
        return sum(len(ids) for ids in done.values())

    async def handle_one(
        self, e: Entry, handle: Handler, *, acked: Callable[[Entry], bool] | None = None
    ) -> bool:
        """Run ``handle``; ack on success (unless ``acked`` says the handler did already).
        A failure leaves the entry pending (redelivered)."""
        if not await self._run(e, handle):
            return False
        if acked is None or not acked(e):
            await self.ack(e)
        return True
