"""Refuse a SigV4 signature that comes again: the replay cache.

A SigV4 signature is valid for the whole clock-skew window, so a request captured on the
wire could be sent again (with any unsigned header changed, e.g. ``amz-sdk-invocation-id``)
for minutes. The API remembers every signature it accepted for a mutating operation until
it can no longer pass the date check, and refuses a second use. A request the API refused
(a 4xx answer: nothing was recorded) is forgotten again, so a client repeating a refused
call does not trip over its own signature.

One exception keeps SDK retries working: botocore re-signs every attempt, but two attempts
within the same second carry the same ``X-Amz-Date`` and so the same signature. Such a
retry carries the same ``amz-sdk-invocation-id`` as the first attempt, and the handlers make
that id the command id, so a repeat has no second effect. A repeat with the *same*
invocation id is therefore accepted (it is deduplicated downstream); one with another or
no invocation id is refused.

Two implementations: :class:`RedisReplayCache` (shared by every API process on one Redis:
``SET sl:sigv4:<signature> <invocation> NX PX <ttl>``) and :class:`MemoryReplayCache` (one
process; for tests and ``build_app`` without Redis).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from typing import Literal, Protocol

from redis.asyncio import Redis

__all__ = ["KEY_PREFIX", "MemoryReplayCache", "RedisReplayCache", "ReplayCache", "Use"]

KEY_PREFIX = "sl:sigv4:"
# "new": first use (now recorded); "repeat": the same SDK call again (same invocation id);
# "replay": used before by another or no invocation id.
Use = Literal["new", "repeat", "replay"]


class ReplayCache(Protocol):
    async def use(self, signature: str, invocation_id: str | None, ttl_s: float) -> Use:
        """Record ``signature`` (for ``ttl_s``) and say whether it was used before."""
        ...

    async def release(self, signature: str, invocation_id: str | None) -> None:
        """Forget ``signature`` (its request was refused: nothing was accepted)."""
        ...


def _value(invocation_id: str | None) -> str:
    return invocation_id or ""


class RedisReplayCache:
    """Signatures in Redis keys that expire when the signature would anyway."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def use(self, signature: str, invocation_id: str | None, ttl_s: float) -> Use:
        key = KEY_PREFIX + signature
        value = _value(invocation_id)
        ttl_ms = max(1000, int(ttl_s * 1000))
        if await self.redis.set(key, value, nx=True, px=ttl_ms):
            return "new"
        first = await self.redis.get(key)
        if first is None:  # expired in between: a first use again
            return "new" if await self.redis.set(key, value, nx=True, px=ttl_ms) else "replay"
        text = first.decode() if isinstance(first, bytes) else str(first)
        return "repeat" if value and text == value else "replay"

    async def release(self, signature: str, invocation_id: str | None) -> None:
        key = KEY_PREFIX + signature
        first = await self.redis.get(key)
        if first is not None:
            text = first.decode() if isinstance(first, bytes) else str(first)
            if text == _value(invocation_id):
                await self.redis.delete(key)


class MemoryReplayCache:
    """The same in one process's memory (bounded by the skew window's traffic)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._seen: dict[str, tuple[float, str]] = {}
        self._expiry: list[tuple[float, str]] = []

    def _expire(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _, sig = heapq.heappop(self._expiry)
            entry = self._seen.get(sig)
            if entry is not None and entry[0] <= now:
                del self._seen[sig]

    async def use(self, signature: str, invocation_id: str | None, ttl_s: float) -> Use:
        now = self.clock()
        self._expire(now)
        value = _value(invocation_id)
        entry = self._seen.get(signature)
        if entry is None:
            expires = now + max(1.0, ttl_s)
            self._seen[signature] = (expires, value)
            heapq.heappush(self._expiry, (expires, signature))
            return "new"
        return "repeat" if value and entry[1] == value else "replay"

    async def release(self, signature: str, invocation_id: str | None) -> None:
        entry = self._seen.get(signature)
        if entry is not None and entry[1] == _value(invocation_id):
            del self._seen[signature]

    def __len__(self) -> int:
        return len(self._seen)
