"""Appends acknowledged only once replicas have them (``--min-replica-acks``): a real master
and a real replica (``redis-server --replicaof``).

An append is followed, on the same connection, by ``WAIT N timeout``: with the replica up it
is acknowledged; with the replica stopped it raises ``NotReplicated`` (the write is on the
master, unacknowledged) and the API answers 503 ServiceUnavailableException naming the
cause, which SDKs retry. The default is 1 when the server has a replica, else 0.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

from app.api.wire import store_error
from app.store.connection import NotReplicated, default_replica_acks, replicas_of
from app.store.eventstore import EventStore
from app.store.keys import Keys
from tests.conftest import no_redis
from tests.redis_server import RedisServer, redis_binary
from tests.test_eventstore_contract import batch, created

pytestmark = pytest.mark.timeout(60)


async def _wait_replica(master: Redis, n: int) -> None:
    deadline = time.monotonic() + 15
    while await replicas_of(master) < n:
        assert time.monotonic() < deadline, "the replica did not connect"
        await anyio.sleep(0.05)


async def test_append_waits_for_the_replica(tmp_path: Path) -> None:
    if redis_binary() is None:
        no_redis("replication tests need the redis-server binary")
    master = RedisServer(tmp_path / "master")
    master.start()
    replica = RedisServer(tmp_path / "replica", replica_of=master.port)
    client = Redis.from_url(master.url)
    try:
        assert await default_replica_acks(client, None) == 0  # no replica yet
        replica.start()
        await _wait_replica(client, 1)
        assert await default_replica_acks(client, None) == 1
        assert await default_replica_acks(client, 0) == 0  # explicit wins

        store = EventStore(client, Keys(partitions=4))
        store.min_replica_acks = 1
        store.replica_ack_timeout_ms = 5000  # a loaded CI box: a live replica acks in time
        await store.ensure_config()
        await client.script_flush()  # the first append loads the script itself
        res = await store.append(batch("p", created("p")))
        assert res.last == 1
        copy = Redis(port=replica.port)
        try:
            assert await copy.exists(store.keys.log("p"))  # on the replica when acknowledged
        finally:
            await copy.aclose()

        assert replica.proc is not None
        os.kill(replica.proc.pid, signal.SIGSTOP)  # a replica that no longer acknowledges
        store.replica_ack_timeout_ms = 300
        try:
            with pytest.raises(NotReplicated, match="0 of 1 required replica") as raised:
                await store.append(batch("q", created("q")))
        finally:
            os.kill(replica.proc.pid, signal.SIGCONT)
        err = store_error(raised.value)
        assert err is not None and err.status == 503
        assert err.type_name == "ServiceUnavailableException"
        assert "not acknowledged by its replicas" in err.message
        # without WAIT the same append is acknowledged at once
        store.min_replica_acks = 0
        assert (await store.append(batch("r", created("r")))).last == 1
    finally:
        await client.aclose()
        replica.stop()
        master.stop()
