"""Shared fixtures.

Real-Redis tests use a private ``redis-server`` started on a free port (isolated, killable).
Without a redis-server binary they fall back to an external server named by
``STAGELINE_TEST_REDIS_URL`` or on 127.0.0.1:6379 (database 15, flushed per test). When none
can be found they skip with the reason, except under ``CI=true``, where they fail.

Cluster tests use a private 3-master Redis Cluster (tests/redis_cluster.py) started once per
session (``real_cluster_url``; ``cluster_redis`` gives a flushed
``redis.asyncio.cluster.RedisCluster`` client). Without redis-server and redis-cli they use
the cluster named by ``STAGELINE_TEST_CLUSTER_URL`` (flushed per test), else skip (fail
under ``CI=true``). ``any_redis`` runs a test on fakeredis, a real server and the cluster.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from app.store.connection import fake_client
from app.store.eventstore import EventStore
from app.store.keys import Keys
from tests.redis_cluster import RedisClusterServer, cluster_binaries
from tests.redis_server import RedisServer, port_open, redis_binary

IN_CI = os.environ.get("CI", "").lower() == "true"


def no_redis(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true and no real Redis: {reason}", pytrace=False)
    pytest.skip(f"no real Redis: {reason}")


@pytest.fixture(scope="session")
def real_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real Redis server for this test session."""
    if redis_binary() is not None:
        server = RedisServer(tmp_path_factory.mktemp("redis"))
        server.start()
        try:
            yield server.url
        finally:
            server.stop()
        return
    url = os.environ.get("STAGELINE_TEST_REDIS_URL")
    if url:
        yield url
        return
    if port_open("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/15"
        return
    no_redis("no redis-server binary, no STAGELINE_TEST_REDIS_URL, nothing on 127.0.0.1:6379")


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[type[RedisServer]]:
    """For fault tests: start private servers (killed at the end of the test)."""
    if redis_binary() is None:
        no_redis("fault tests need the redis-server binary")
    started: list[RedisServer] = []

    class Tracked(RedisServer):
        def start(self) -> None:
            super().start()
            if self not in started:
                started.append(self)

    yield Tracked
    for s in started:
        s.kill()


@pytest.fixture(params=["fake", "real"])
async def redis(request: pytest.FixtureRequest) -> AsyncIterator[Redis]:
    """A flushed Redis client: fakeredis, then a real server."""
    client: Redis
    if request.param == "fake":
        client = await fake_client()
    else:
        url = request.getfixturevalue("real_redis_url")
        client = Redis.from_url(url)
        await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def real_redis(real_redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(real_redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def real_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A startup node's URL of a real 3-master Redis Cluster for this test session."""
    if cluster_binaries() is not None:
        cluster = RedisClusterServer(tmp_path_factory.mktemp("cluster"))
        cluster.start()
        try:
            yield cluster.url
        finally:
            cluster.stop()
        return
    url = os.environ.get("STAGELINE_TEST_CLUSTER_URL")
    if url:
        yield url
        return
    no_redis(
        "a Redis Cluster needs the redis-server and redis-cli binaries "
        "(or STAGELINE_TEST_CLUSTER_URL)"
    )


async def flushed_cluster(url: str) -> RedisCluster:
    client = RedisCluster.from_url(url)
    await client.flushall(target_nodes=RedisCluster.PRIMARIES)
    return client


@pytest.fixture
async def cluster_redis(real_cluster_url: str) -> AsyncIterator[RedisCluster]:
    """A cluster client, every master flushed."""
    client = await flushed_cluster(real_cluster_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(params=["fake", "real", "cluster"])
async def any_redis(request: pytest.FixtureRequest) -> AsyncIterator[Redis | RedisCluster]:
    """A flushed client: fakeredis, a real server, a real 3-master Redis Cluster."""
    client: Redis | RedisCluster
    if request.param == "cluster":
        client = await flushed_cluster(request.getfixturevalue("real_cluster_url"))
    elif request.param == "real":
        client = Redis.from_url(request.getfixturevalue("real_redis_url"))
        await client.flushdb()
    else:
        client = await fake_client()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def store(redis: Redis) -> EventStore:
    return EventStore(redis, Keys(partitions=8))
