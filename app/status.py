"""The cluster's health read from Redis at call time: workers, lag, pending, dead letters.

Read by ``GET /status`` (``stageline status``), the console and ``/metrics``. The runners
come from the run streams' consumer group (``XINFO GROUPS``/``XINFO CONSUMERS``); the
orchestrators from the partition owners (``P:owner``, the members' heartbeats in
``<ns>:members``) and their lag from the entries of ``P:events`` after the owner's
checkpoint ``P:ckpt`` (counted up to 10,000); dead letters from ``XLEN``. Nothing is kept.

A worker is *alive* when its consumer touched a partition stream within
:data:`ALIVE_WITHIN_MS` (workers block at most ``--block-ms`` per read, 1 s by default).
That needs Redis 7.2 or later, where a consumer's idle time restarts with every
``XREADGROUP`` it attempts; before 7.2 it restarts only when the read returns entries, so
an idle worker looks idle too (``livenessExact`` is then false, and the CLI says so).
"""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis

from app.store.keys import Keys

ALIVE_WITHIN_MS = 15_000
GROUPS = (("run", "runners"),)
OWNER_GROUP = "orchestrators"
LAG_COUNT_CAP = 10_000

JSON = dict[str, Any]


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _int(v: Any) -> int | None:
    if v is None:
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


async def redis_round_trip(redis: Redis) -> float:
    """Seconds for one PING."""
    t0 = time.perf_counter()
    await redis.ping()
    return time.perf_counter() - t0


def _embedded(redis: Redis) -> bool:
    return type(redis).__module__.startswith("fakeredis")


async def _redis_version(redis: Redis) -> tuple[int, ...] | None:
    try:
        info: Any = await redis.info("server")
        return tuple(int(x) for x in str(info.get("redis_version", "")).split(".")[:3])
    except Exception:
        return None


async def collect_status(redis: Redis, keys: Keys) -> JSON:
    rtt = await redis_round_trip(redis)
    version = await _redis_version(redis)
    pre = redis.pipeline(transaction=False)
    for p in range(keys.partitions):
        pre.get(keys.checkpoint(p))
        pre.get(keys.owner(p))
    pre.zrange(keys.members(), 0, -1, withscores=True)
    pre.time()
    first: list[Any] = await pre.execute(raise_on_error=False)
    ckpts = [_s(first[2 * p]) if first[2 * p] else "0" for p in range(keys.partitions)]
    owners = [_s(first[2 * p + 1]) if first[2 * p + 1] else None for p in range(keys.partitions)]
    members, now = first[-2], first[-1]
    now_ms = int(now[0]) * 1000 + int(now[1]) // 1000 if isinstance(now, (list, tuple)) else 0
    pipe = redis.pipeline(transaction=False)
    plan: list[tuple[int, str, str]] = []
    for p in range(keys.partitions):
        for kind, group in GROUPS:
            stream = keys.events(p) if kind == "events" else keys.run(p)
            pipe.xinfo_groups(stream)
            pipe.xinfo_consumers(stream, group)
            plan.append((p, kind, group))
        pipe.xrange(keys.events(p), min=f"({ckpts[p]}" if ckpts[p] != "0" else "-",
                    count=LAG_COUNT_CAP)  # fmt: skip
        pipe.xlen(keys.dead(p))
    replies: list[Any] = await pipe.execute(raise_on_error=False)

    parts: list[JSON] = []
    workers: dict[tuple[str, str], JSON] = {}
    totals = {"lag": 0, "pending": 0, "deadLetters": 0}
    i = 0
    for p in range(keys.partitions):
        groups: list[JSON] = []
        for kind, group in GROUPS:
            info, consumers = replies[i], replies[i + 1]
            i += 2
            entry: JSON = {"group": group, "stream": kind, "lag": None, "pending": 0}
            if isinstance(info, list):
                for g in info:
                    if _s(g.get("name")) == group:
                        entry["lag"] = _int(g.get("lag"))
                        entry["pending"] = _int(g.get("pending")) or 0
                        entry["consumers"] = _int(g.get("consumers")) or 0
            if isinstance(consumers, list):
                for c in consumers:
                    name = _s(c.get("name"))
                    w = workers.setdefault(
                        (name, group),
                        {"name": name, "group": group, "idleMs": None, "pending": 0},
                    )
                    idle = _int(c.get("idle")) or 0
                    w["idleMs"] = idle if w["idleMs"] is None else min(w["idleMs"], idle)
                    w["pending"] += _int(c.get("pending")) or 0
            totals["lag"] += entry["lag"] or 0
            totals["pending"] += entry["pending"]
            groups.append(entry)
        behind = replies[i]
        i += 1
        lag = len(behind) if isinstance(behind, list) else None
        owner = owners[p]
        holder = owner.rpartition("|")[0] if owner else None
        groups.insert(
            0,
            {"group": OWNER_GROUP, "stream": "events", "lag": lag, "pending": 0, "owner": holder},
        )
        totals["lag"] += lag or 0
        dead = replies[i]
        i += 1
        dead_n = dead if isinstance(dead, int) else 0
        totals["deadLetters"] += dead_n
        parts.append({"partition": p, "groups": groups, "deadLetters": dead_n})
    if isinstance(members, list):  # orchestrators: their heartbeats (server time)
        for member, expiry in members:
            holder = _s(member)
            name = holder.rsplit(".", 1)[0]  # the incarnation suffix: see workers.ownership
            w = workers.setdefault(
                (name, OWNER_GROUP), {"name": name, "group": OWNER_GROUP, "pending": 0}
            )
            w["idleMs"] = 0 if float(expiry) > now_ms else ALIVE_WITHIN_MS
    out_workers = []
    for w in sorted(workers.values(), key=lambda w: (w["group"], w["name"])):
        w["idleMs"] = w["idleMs"] or 0
        w["alive"] = w["idleMs"] < ALIVE_WITHIN_MS
        out_workers.append(w)
    return {
        "time": time.time(),
        "redisVersion": ".".join(map(str, version)) if version else None,
        # the embedded fakeredis (no INFO) restarts idle times on every read, like 7.2
        "livenessExact": (version >= (7, 2)) if version else _embedded(redis),
        "redisRoundTripMs": rtt * 1000,
        "partitions": keys.partitions,
        "workers": out_workers,
        "workersAlive": len({w["name"] for w in out_workers if w["alive"]}),
        "partitions_detail": parts,
        "totals": totals,
    }
