"""Connecting to Redis: a URL (redis://, rediss://, unix://, with user/password), or an
embedded in-memory Redis (fakeredis, with Lua) when none is given, so a first run needs
nothing installed. The embedded server lives in this process only and keeps nothing.

A URL naming any node of a Redis Cluster is detected (``INFO cluster`` answers
``cluster_enabled:1``) and gets redis-py's cluster client
(:class:`redis.asyncio.cluster.RedisCluster`), which finds the other nodes, routes each
command to the node holding its key's slot and follows MOVED/ASK while slots move. Every
key stageline writes together carries its partition's hash tag (one slot), so the same
code runs on both; the few places that differ test :func:`is_cluster`."""

from __future__ import annotations

import os
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.store.keys import Keys

ENV_URL = "STAGELINE_REDIS_URL"
DEFAULT_PARTITIONS = 128  # a new store's partition count (spreads over up to 128 shards)
EMBEDDED_PARTITIONS = 16  # the embedded in-memory Redis: one process, nothing kept
POOL_SIZE = 256  # connections per process at most (blocking reads hold one each)
POOL_WAIT_S = 30.0  # a command waits this long for a free connection
# A reply slower than this is a Redis that is away (paused, partitioned): the call fails with
# a timeout (503 "event store unreachable" in the API; workers back off and retry) instead of
# hanging. Above every blocking read's BLOCK (workers 1 s, the console feed 5 s). A
# ``socket_timeout`` in the URL wins.
SOCKET_TIMEOUT_S = 10.0


_embedded_server: Any = None


def default_url() -> str | None:
    return os.environ.get(ENV_URL) or None


async def connect(url: str | None) -> Redis:
    """A client for ``url``, or for the process-wide embedded server when ``url`` is None.

    A cluster node's URL gives a cluster client (typed as ``Redis``: it answers the same
    commands, see :func:`is_cluster`). When the server cannot be reached yet, a plain
    client is returned and callers retry as they always have; a cluster is then detected
    on the next start.
    """
    if url:
        # A pool that makes a burst wait for a connection instead of failing it (a worker
        # starting its owner loops for 128 partitions at once: "Too many connections").
        pool = BlockingConnectionPool.from_url(
            url, max_connections=POOL_SIZE, timeout=POOL_WAIT_S, socket_timeout=SOCKET_TIMEOUT_S
        )
        client = Redis(connection_pool=pool)
        try:
            info: Any = await client.info("cluster")
        except (RedisConnectionError, RedisTimeoutError, OSError):
            return client
        except ResponseError:  # INFO refused (an ACL without it): not detectable
            return client
        if int(info.get("cluster_enabled", 0) or 0) != 1:
            return client
        await client.aclose()
        cluster: Any = RedisCluster.from_url(url, socket_timeout=SOCKET_TIMEOUT_S)
        await cluster.initialize()
        result: Redis = cluster
        return result
    global _embedded_server
    if _embedded_server is None:
        import fakeredis

        _embedded_server = fakeredis.FakeServer(version=(7, 2))
    return await fake_client(_embedded_server)


async def store_keys(
    redis: Any, partitions: int | None = None, *, embedded: bool = False, namespace: str = "sl"
) -> Keys:
    """The key layout of the store behind ``redis``: ``partitions`` when given (checked
    against the recorded count by ``EventStore.ensure_config``), else the count recorded in
    ``<ns>:config``, else (a new store) :data:`DEFAULT_PARTITIONS` (16 for the embedded
    Redis). When Redis cannot be reached yet, a new store's default is taken; a store
    recorded with another count is then refused at start, naming the count to pass."""
    if partitions is None:
        stored: Any = None
        try:
            stored = await redis.hget(Keys(namespace=namespace).config(), "partitions")
        except (RedisConnectionError, RedisTimeoutError, OSError):
            stored = None
        if stored is not None:
            partitions = int(stored)
        else:
            partitions = EMBEDDED_PARTITIONS if embedded else DEFAULT_PARTITIONS
    return Keys(namespace=namespace, partitions=partitions)


def is_cluster(redis: Any) -> bool:
    """Whether ``redis`` is a cluster client (keys of several slots need several calls)."""
    return isinstance(redis, RedisCluster) or hasattr(redis, "nodes_manager")


class NotReplicated(RedisConnectionError):
    """An append was written on the master but fewer than ``min_replica_acks`` replicas
    confirmed it within the timeout: it is not acknowledged (a failover now could lose it).
    A ConnectionError, so every caller treats it as "Redis unavailable, retry" (the API: a
    503 ServiceUnavailableException; a worker: backs off and handles the entry again)."""


def _online(info: Any) -> int:
    """Replicas of an ``INFO replication`` reply that are in sync (``state=online``)."""
    n = int(info.get("connected_slaves", 0) or 0)
    return sum(
        1 for i in range(n) if str((info.get(f"slave{i}") or {}).get("state", "")) == "online"
    )


async def replicas_of(redis: Any) -> int:
    """In-sync replicas of the master (on a cluster: the fewest of any master)."""
    if is_cluster(redis):
        infos: Any = await redis.info("replication", target_nodes=RedisCluster.PRIMARIES)
        if isinstance(infos, dict) and "connected_slaves" in infos:
            infos = {"one": infos}
        counts = [_online(i) for i in infos.values()]
        return min(counts) if counts else 0
    return _online(await redis.info("replication"))


async def default_replica_acks(redis: Any, wanted: int | None) -> int:
    """``wanted``, or (None) 1 when the server or every cluster master has a replica."""
    if wanted is not None:
        return wanted
    try:
        return 1 if await replicas_of(redis) > 0 else 0
    except (RedisConnectionError, RedisTimeoutError, OSError, ResponseError):
        return 0


async def eval_acknowledged(
    redis: Any, script: Any, keys: list[str], args: list[Any], replicas: int, timeout_ms: int
) -> Any:
    """Run ``script`` and then ``WAIT replicas timeout_ms`` on the same connection (one
    pipelined round trip; on a cluster on the node holding ``keys[0]``'s slot), so the WAIT
    counts exactly this write. Raises :class:`NotReplicated` when too few replicas saw it."""
    from redis.exceptions import NoScriptError

    for _ in range(3):
        pipe: Any = redis.pipeline(transaction=False)
        # execute_command: a cluster pipeline refuses its evalsha() method (not the command)
        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        if is_cluster(redis):
            pipe.execute_command("WAIT", replicas, timeout_ms, target_nodes=node_of(redis, keys[0]))
        else:
            pipe.execute_command("WAIT", replicas, timeout_ms)
        try:
            raw, acks = await pipe.execute(raise_on_error=False)
        except (RedisConnectionError, RedisTimeoutError, OSError):
            await refresh_slots(redis)
            raise
        if isinstance(acks, RedisConnectionError | RedisTimeoutError | OSError):
            await refresh_slots(redis)
        if isinstance(raw, NoScriptError):  # not run: load it (every node) and run it
            await redis.script_load(script.script)
            continue
        if isinstance(raw, BaseException):
            raise raw
        if isinstance(acks, BaseException):
            raise NotReplicated(f"replica acknowledgement failed: {acks}")
        if int(acks) < replicas:
            raise NotReplicated(
                f"the write reached {int(acks)} of {replicas} required replica(s) within "
                f"{timeout_ms} ms (a master failing over, or a replica down); it may have "
                "been applied: retrying the same request is safe"
            )
        return raw
    raise NotReplicated("the append script could not be loaded on the node")


async def refresh_slots(redis: Any) -> None:
    """After a connection error on a command sent to an explicit node (``node_of``): read
    the slot map again (a failed master's replica took over), as redis-py does itself for
    the commands it routes. Best effort: when no node answers, the caller's retry will."""
    if not is_cluster(redis):
        return
    try:
        await redis.nodes_manager.initialize()
    except Exception:  # every node still down: try again on the next error
        return


def node_of(redis: Any, key: str) -> Any:
    """The cluster node that holds ``key``'s slot now (per the client's slot map).

    Passed as ``target_nodes`` for XREAD/XREADGROUP, whose keys redis-py would otherwise
    look up with a COMMAND GETKEYS round trip per call (they are "movable keys"); a MOVED
    or ASK reply is still followed (the command is sent again, routed by its key)."""
    return redis.nodes_manager.get_node_from_slot(redis.keyslot(key))


async def fake_client(server: Any = None) -> Redis:
    """A fakeredis client (new server when None) whose Lua has ``redis.sha1hex``.

    fakeredis implements ``redis.sha1hex`` for FUNCTION libraries but not for EVAL scripts,
    which the append script needs for the hash chain; it is added here, with the same
    semantics as Redis (hex SHA-1 of the argument's bytes).
    """
    import hashlib

    import fakeredis

    if server is None:
        server = fakeredis.FakeServer(version=(7, 2))
    client: Redis = fakeredis.FakeAsyncRedis(server=server)
    await client.eval("return 1", 0)  # creates the server's Lua runtime
    redis_table = server._lua_runtime.globals()[b"redis"]
    if redis_table[b"sha1hex"] is None:

        def sha1hex(value: bytes | str | int | float) -> bytes:
            raw = value if isinstance(value, bytes) else str(value).encode()
            return hashlib.sha1(raw).hexdigest().encode()

        redis_table[b"sha1hex"] = sha1hex
    return client


def describe(url: str | None) -> str:
    """The URL with any password masked, for log lines."""
    if not url:
        return "embedded in-memory Redis (fakeredis; nothing is kept after exit)"
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)
