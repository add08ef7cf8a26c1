"""Keeping a partition's storage bounded: the partition owner calls ``housekeep`` from its
periodic tasks (every ``trim_every_s``). Each step is idempotent and safe to interrupt.

- **Dispatch streams** are trimmed up to what every consumer has processed, never past an
  unprocessed entry: ``P:events`` up to the owner's checkpoint (the owner is its only
  consumer that must see every entry; the console's live tail reads from the end), ``P:run``
  up to the runners group's oldest pending entry, or its last-delivered entry when nothing
  is pending (``XTRIM MINID``: entries with a smaller id go; approximate trimming only ever
  keeps more). A run stream without the group is not trimmed.
- **Idempotency records** (``P:cmd:<pipeline>``, SDK invocation id -> the append it made)
  expire after ``window_s``: the first time a pass sees a command id it notes the time in
  ``P:cmdt:<pipeline>`` (zset id -> ms); a pass after ``window_s`` drops both. A pass scans
  every record, so passes run every ``expiry_every(window_s)`` (1 % of the window, between
  10 s and 15 min): a record lives at least ``window_s`` and at most that much longer. The
  append script is unchanged.
"""

from __future__ import annotations

import time
from typing import Any

from redis.exceptions import ResponseError

from app.store.keys import Keys

RUNNER_GROUP = "runners"
SCAN_COUNT = 500


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _id(text: str) -> tuple[int, int]:
    ms, _, n = text.partition("-")
    return int(ms or 0), int(n or 0)


async def run_stream_floor(redis: Any, key: str, group: str = RUNNER_GROUP) -> str | None:
    """The smallest id the group may still need: its oldest pending entry, else its last
    delivered one; None when the group does not exist (nothing known: keep everything)."""
    try:
        groups: Any = await redis.xinfo_groups(key)
    except ResponseError:  # no such key
        return None
    last = next((_s(g["last-delivered-id"]) for g in groups if _s(g["name"]) == group), None)
    if last is None:
        return None
    pending: Any = await redis.xpending(key, group)
    if pending and int(pending.get("pending") or 0) > 0 and pending.get("min") is not None:
        low = _s(pending["min"])
        return low if _id(low) < _id(last) else last
    return last


async def trim_dispatch(
    redis: Any, keys: Keys, partition: int, checkpoint: str, *, approximate: bool = True
) -> int:
    """Trim the partition's events stream to the checkpoint and its run stream to the
    runners' floor. Returns the entries removed. ``approximate`` (``~``, the default) lets
    Redis remove whole internal nodes only: cheaper, and it only ever keeps more."""
    removed = 0
    if checkpoint and checkpoint != "0":
        removed += int(
            await redis.xtrim(keys.events(partition), minid=checkpoint, approximate=approximate)
        )
    run = keys.run(partition)
    floor = await run_stream_floor(redis, run)
    if floor is not None and floor != "0-0":
        removed += int(await redis.xtrim(run, minid=floor, approximate=approximate))
    return removed


def expiry_every(window_s: float) -> float:
    """Seconds between idempotency-record expiry passes for a window."""
    return min(max(window_s / 100, 10.0), 900.0)


async def expire_commands(
    redis: Any, keys: Keys, partition: int, window_s: float, now_ms: int | None = None
) -> int:
    """Drop the idempotency records first seen more than ``window_s`` ago (see module doc).
    Returns the records dropped."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    cutoff = now_ms - int(window_s * 1000)
    dropped = 0
    names: Any = await redis.smembers(keys.names(partition))
    for raw in names:
        name = _s(raw)
        cmd, seen = keys.commands(name), keys.command_times(name)
        cursor: Any = 0
        while True:
            cursor, fields = await redis.hscan(cmd, cursor, count=SCAN_COUNT)
            if fields:
                await redis.zadd(seen, {_s(f): now_ms for f in fields}, nx=True)
            if int(cursor) == 0:
                break
        old: Any = await redis.zrangebyscore(seen, "-inf", cutoff)
        for i in range(0, len(old), SCAN_COUNT):
            chunk = old[i : i + SCAN_COUNT]
            await redis.hdel(cmd, *chunk)
            await redis.zrem(seen, *chunk)
            dropped += len(chunk)
    return dropped
