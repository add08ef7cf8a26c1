"""Leases of running actions: one sorted set per partition, scored by expiry (epoch ms).

A runner takes the lease *before* it records that it started the action, renews it while
the action runs, and drops it when the result is recorded. Anything left in the set past
its expiry, and still there a grace period later, belongs to a runner that died: the reaper
fails that action as WorkerLost (``PartitionOwner.reap``).
Times come from the workers' clocks; keep them in sync (NTP) across machines.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from app.store.keys import Keys

SEP = "\x1f"

_RELEASE_EXPIRED = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""


@dataclass(frozen=True)
class Lease:
    pipeline: str
    executionId: str
    actionExecutionId: str
    worker: str

    @property
    def member(self) -> str:
        return SEP.join((self.pipeline, self.executionId, self.actionExecutionId, self.worker))

    @classmethod
    def parse(cls, member: bytes | str) -> Lease:
        s = member.decode() if isinstance(member, bytes) else member
        p, x, a, w = s.split(SEP)
        return cls(p, x, a, w)


class Leases:
    def __init__(self, redis: Redis, keys: Keys, ttl_s: float) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s

    def _key(self, lease: Lease) -> str:
        return self.keys.leases(self.keys.partition(lease.pipeline))

    def entry(self, lease: Lease) -> tuple[str, int]:
        """(member, expiry ms) of a lease taken now: for an append that takes it atomically."""
        return lease.member, int((time.time() + self.ttl_s) * 1000)

    async def take(self, lease: Lease) -> None:
        member, expiry = self.entry(lease)
        await self.redis.zadd(self._key(lease), {member: expiry})

    async def renew(self, lease: Lease) -> bool:
        """Extend the lease; False when it is gone (reaped: the action was declared lost)."""
        expiry = int((time.time() + self.ttl_s) * 1000)
        changed: Any = await self.redis.zadd(
            self._key(lease), {lease.member: expiry}, xx=True, ch=True
        )
        if changed:
            return True
        return await self.redis.zscore(self._key(lease), lease.member) is not None

    async def release(self, lease: Lease) -> None:
        await self.redis.zrem(self._key(lease), lease.member)

    async def release_expired(self, lease: Lease) -> bool:
        """Drop the lease only if it is still expired (its runner did not renew it)."""
        now = int(time.time() * 1000)
        removed: Any = await self.redis.eval(
            _RELEASE_EXPIRED, 1, self._key(lease), lease.member, now
        )
        return bool(removed)

    async def expired(self, partition: int, limit: int = 100) -> list[Lease]:
        now = int(time.time() * 1000)
        rows: Any = await self.redis.zrangebyscore(
            self.keys.leases(partition), "-inf", now, start=0, num=limit
        )
        return [Lease.parse(m) for m in rows]
