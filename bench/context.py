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
    _redis: Redis | None = None

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            self._redis = Redis.from_url(self.redis_url)
        return self._redis

    async def fresh(self) -> None:
        """An empty Redis (every benchmark starts from one)."""
        await self.redis.flushall()
        await self.redis.config_resetstat()

    async def redis_cpu(self) -> float:
        info: Any = await self.redis.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

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
