"""Fixtures of the audit tests: the scenario on both Redis kinds, an empty second Redis,
and tampering helpers that rewrite a stream the way an attacker with Redis access could."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from app.store.connection import fake_client
from app.store.eventstore import EventStore
from app.store.keys import Keys
from tests.audit.scenario import PARTITIONS, Scenario, build

Fields = dict[bytes, bytes]
Rows = list[tuple[bytes, Fields]]


def other_db(url: str, db: int = 1) -> str:
    """The same server, another database (for an empty import target)."""
    m = re.match(r"^(redis://[^/]+)(?:/(\d+))?$", url)
    assert m, url
    current = int(m.group(2) or 0)
    return f"{m.group(1)}/{db if db != current else db + 1}"


@pytest.fixture
async def scenario(redis: Redis) -> Scenario:
    return await build(redis)


@pytest.fixture
async def empty_redis(request: pytest.FixtureRequest, redis: Redis) -> AsyncIterator[Redis]:
    """An empty Redis of the same kind as ``redis`` (a new fake server, or another db)."""
    client: Redis
    if request.node.callspec.params.get("redis") == "fake":
        client = await fake_client()
    else:
        client = Redis.from_url(other_db(request.getfixturevalue("real_redis_url")))
        await client.flushdb()
    try:
        yield client
    finally:
        if request.node.callspec.params.get("redis") != "fake":
            await client.flushdb()
        await client.aclose()


def store_of(redis: Redis) -> EventStore:
    return EventStore(redis, Keys(partitions=PARTITIONS))


async def rows_of(redis: Redis, key: str) -> Rows:
    rows: Any = await redis.xrange(key)
    return [(rid, dict(fields)) for rid, fields in rows]


async def rebuild(redis: Redis, key: str, change: Callable[[Rows], Rows]) -> None:
    """Rewrite a stream (XADD cannot edit in place): DEL, then XADD the changed entries
    with their ids and fields (the old hashes kept, as an attacker would)."""
    rows = change(await rows_of(redis, key))
    await redis.delete(key)
    for rid, fields in rows:
        await redis.xadd(key, fields, id=rid)  # type: ignore[arg-type]


def index_of(rows: Rows, seq: int) -> int:
    """The position of entry ``<seq>-0`` in a stream's rows."""
    return [rid for rid, _ in rows].index(f"{seq}-0".encode())
