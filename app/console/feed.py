"""One reader of the partition dispatch streams (``Keys.events(p)``) per process, fanned out.

The console's live updates (SSE) and the event-derived metrics both need "what just
happened". Instead of each browser tab or scrape reading Redis, one :class:`EventFeed` task
reads every partition's events stream with plain ``XREAD`` (no consumer group: it only
watches, it never acknowledges or takes work), starting at the entries that arrive after it
started. On a real Redis it blocks (``BLOCK``); on the embedded fakeredis, which cannot
block, it polls every :data:`EMBEDDED_POLL_S`.

Subscribers get :class:`FeedItem` batches on a bounded memory stream; one too slow to keep up
loses items (the console then refetches everything on the next item it gets).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from redis.asyncio import Redis

from app.domain import events as ev
from app.store.keys import Keys

log = logging.getLogger("stageline.feed")

BLOCK_MS = 5000
EMBEDDED_POLL_S = 0.5
BATCH = 500


@dataclass(frozen=True)
class FeedItem:
    pipeline: str
    version: int
    type: str
    envelope: ev.Envelope | None  # None when the payload did not decode (newer event type)


def is_embedded(redis: Redis) -> bool:
    return type(redis).__module__.startswith("fakeredis")


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def decode_entry(fields: dict[Any, Any]) -> FeedItem | None:
    get = {_s(k): v for k, v in fields.items()}
    if "p" not in get or "v" not in get:
        return None
    pipeline, version = _s(get["p"]), int(_s(get["v"]))
    env: ev.Envelope | None
    try:
        env = ev.decode_payload(pipeline, version, get["e"])
    except Exception:
        env = None
    return FeedItem(pipeline, version, _s(get.get("t", b"?")), env)


class EventFeed:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._subscribers: list[MemoryObjectSendStream[list[FeedItem]]] = []
        self._callbacks: list[Callable[[list[FeedItem]], None]] = []
        self.running = False

    def on_items(self, callback: Callable[[list[FeedItem]], None]) -> None:
        """Call ``callback`` (synchronously, in the feed's task) with every batch."""
        self._callbacks.append(callback)

    def subscribe(self, size: int = 64) -> MemoryObjectReceiveStream[list[FeedItem]]:
        send, receive = anyio.create_memory_object_stream[list[FeedItem]](size)
        self._subscribers.append(send)
        return receive

    def _publish(self, items: list[FeedItem]) -> None:
        for cb in self._callbacks:
            try:
                cb(items)
            except Exception:
                log.exception("feed callback failed")
        alive = []
        for s in self._subscribers:
            try:
                s.send_nowait(items)
                alive.append(s)
            except anyio.WouldBlock:
                alive.append(s)  # slow reader: this batch is lost for it
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                s.close()
        self._subscribers = alive

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        streams = [self.keys.events(p) for p in range(self.keys.partitions)]
        embedded = is_embedded(self.redis)
        ids: dict[Any, Any] = {}
        # Start after what is there now: the last id of each stream (one round trip).
        async def lasts() -> list[Any]:
            pipe = self.redis.pipeline(transaction=False)
            for s in streams:
                pipe.xrevrange(s, count=1)
            return list(await pipe.execute())

        for s, last in zip(streams, await self._retry(lasts), strict=True):
            ids[s] = _s(last[0][0]) if last else "0-0"
        self.running = True
        task_status.started()
        while True:
            try:
                resp: Any = await self.redis.xread(
                    ids, count=BATCH, block=None if embedded else BLOCK_MS
                )
            except Exception as err:  # Redis down: keep trying, quietly
                log.debug("feed: %s", err)
                await anyio.sleep(1)
                continue
            items: list[FeedItem] = []
            for stream, rows in resp or []:
                for rid, fields in rows:
                    ids[_s(stream)] = _s(rid)
                    item = decode_entry(fields)
                    if item is not None:
                        items.append(item)
            if items:
                self._publish(items)
            elif embedded:
                await anyio.sleep(EMBEDDED_POLL_S)

    async def _retry(self, fn: Callable[[], Any]) -> Any:
        delay = 0.2
        while True:
            try:
                return await fn()
            except Exception as err:
                log.debug("feed start: %s", err)
                await anyio.sleep(delay)
                delay = min(delay * 2, 5)


__all__ = ["BLOCK_MS", "EventFeed", "FeedItem", "decode_entry", "is_embedded"]
