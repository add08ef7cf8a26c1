"""What the event store relies on in a real Redis Cluster (``cluster_redis``: 3 masters).

The contract suite (tests/test_eventstore_contract.py) runs every store behaviour on the
cluster too; these check the cluster itself and what only a cluster does: slots owned by
one node each, cross-slot scripts refused by the server, scripts missing on a node.
"""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ResponseError

from app.store.eventstore import Batch, EventStore
from app.store.keys import Keys
from tests.test_eventstore_contract import created, env, one_per_partition, started

pytestmark = pytest.mark.redis_real
KEYS = Keys(partitions=8)


async def test_three_masters_cover_every_slot(cluster_redis: RedisCluster) -> None:
    primaries = cluster_redis.get_primaries()
    assert len(primaries) == 3
    for node in primaries:
        info: Any = await cluster_redis.execute_command("CLUSTER INFO", target_nodes=node)
        assert info["cluster_state"] == "ok" and info["cluster_slots_ok"] == "16384"
        assert info["cluster_known_nodes"] == "3"


async def test_the_server_refuses_a_script_across_partitions(cluster_redis: RedisCluster) -> None:
    """Why one append covers one partition (EventStore.append_many checks it first)."""
    node = cluster_redis.get_primaries()[0]
    plain = Redis(host=node.host, port=int(node.port))
    try:
        with pytest.raises(ResponseError, match="same slot"):
            await plain.eval("return 1", 2, KEYS.events(0), KEYS.events(1))
    finally:
        await plain.aclose()


async def test_a_pipelines_data_lives_on_the_node_of_its_partition(
    cluster_redis: RedisCluster,
) -> None:
    store = EventStore(cluster_redis, KEYS)  # type: ignore[arg-type]
    names = one_per_partition()
    for p in names:
        await store.append(Batch(p, [env(p, created(p)), env(p, started("x"))]))
    for p in names:
        slot = key_slot(KEYS.log(p).encode())
        owner = cluster_redis.get_node_from_key(KEYS.log(p))
        assert owner is not None
        counts: dict[str, int] = {}
        for node in cluster_redis.get_primaries():
            n: Any = await cluster_redis.execute_command(
                "CLUSTER COUNTKEYSINSLOT", slot, target_nodes=node
            )
            counts[node.name] = int(n)
        # log, x, seq, xs, events, names: on the owner, nowhere else
        assert counts == {name: 6 if name == owner.name else 0 for name in counts}, p


async def test_appends_go_on_when_a_node_lost_its_scripts(cluster_redis: RedisCluster) -> None:
    """A restarted or failed-over master has no script cache: the store loads it again."""
    store = EventStore(cluster_redis, KEYS)  # type: ignore[arg-type]
    names = one_per_partition()
    for p in names:
        await store.append(Batch(p, [env(p, created(p))]))
    await cluster_redis.execute_command("SCRIPT FLUSH", target_nodes=RedisCluster.PRIMARIES)
    for p in names:
        r = await store.append(Batch(p, [env(p, started("x"))], head_expected=1))
        assert (r.first, r.last) == (2, 2)
    assert await store.pipelines() == sorted(names)


async def test_connections_torn_down_while_sending_are_connection_errors(
    real_cluster_url: str,
) -> None:
    """A cluster client refreshing its slots disconnects every connection of a replaced node,
    one that is sending too: that is a connection error the callers retry, not the
    AttributeError redis-py's own connection raised (which killed a worker under load)."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from app.store.connection import GuardedConnection, connect

    client: Any = await connect(real_cluster_url)
    try:
        for node in client.get_nodes():  # present nodes, and the class for discovered ones
            assert node.connection_class is GuardedConnection
        assert client.nodes_manager.connection_kwargs["connection_class"] is GuardedConnection
        assert await client.ping()
        node = client.get_primaries()[0]
        conn = node.acquire_connection()
        await conn.connect()
        await conn.disconnect()  # what a slot refresh does to a node's connections
        with pytest.raises(RedisConnectionError, match="closed while sending"):
            await conn._send_packed_command([b"PING\r\n"])
        node.release(conn)
    finally:
        await client.aclose()
