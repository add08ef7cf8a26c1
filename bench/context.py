"""What every benchmark gets: the settings, the private Redis server and a client for it."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.common import ROOT, Settings


@dataclass
class Ctx:
    settings: Settings
    redis_port: int
    workdir: Path
    profile: bool = False
    shared: dict[str, Any] = field(default_factory=dict)
    external_url: str | None = None  # --redis-url: an external server or cluster node
    cluster: bool = False  # that URL is a Redis Cluster node
    _redis: Redis | None = None

    @property
    def redis_url(self) -> str:
        return self.external_url or f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            if self.cluster:
                from redis.asyncio.cluster import RedisCluster

                # replies wait up to 30 s (BLPOP with a timeout, INFO on every master)
                client: Any = RedisCluster.from_url(self.redis_url, socket_timeout=30)
                self._redis = client
            else:
                self._redis = Redis.from_url(self.redis_url)
        assert self._redis is not None
        return self._redis

    def _all(self) -> dict[str, Any]:
        """Command options reaching every master of a cluster (nothing on one server)."""
        if not self.cluster:
            return {}
        from redis.asyncio.cluster import RedisCluster

        return {"target_nodes": RedisCluster.PRIMARIES}

    async def fresh(self) -> None:
        """An empty Redis (every benchmark starts from one)."""
        r: Any = self.redis
        await r.flushall(**self._all())
        await r.config_resetstat(**self._all())
        # the benchmarks write with the engine's own layout (Keys(): 16 partitions); record
        # it, so that the processes they start (which take a store's recorded count, or 128
        # for a new store) use the same
        from app.store.eventstore import EventStore
        from app.store.keys import Keys

        await EventStore(r, Keys()).ensure_config()

    async def redis_cpu(self) -> float:
        """CPU seconds the server (every master of a cluster) has used."""
        r: Any = self.redis
        info: Any = await r.info("cpu", **self._all())
        nodes = info.values() if self.cluster and "used_cpu_user" not in info else [info]
        return sum(float(i["used_cpu_user"]) + float(i["used_cpu_sys"]) for i in nodes)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    def log(self, msg: str) -> None:
        sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")
        sys.stderr.flush()


def proc_cpu(pid: int | None) -> float | None:
    """CPU seconds (user + system) a process has used so far, from /proc."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def profile_dir() -> Path:
    d = ROOT / "bench" / "results" / "profiles"
    d.mkdir(parents=True, exist_ok=True)
    return d
