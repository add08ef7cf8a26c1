"""Partition ownership: one writer per partition, leased, fenced.

Orchestrator processes divide the partitions among themselves. The model is Temporal's
history shards: membership says who is alive, a deterministic function of the live members
says who *should* own which partition, and each partition has a leased owner record with a
monotonically increasing epoch (Temporal's shard ``range_id``) that every write carries and
the store checks, so a stale owner (paused, partitioned away) cannot write after it lost
the partition.

Keys (owner and epoch carry the partition's hash tag, so the engine's append script, which
touches the same slot, can check the fence with ``redis.call('GET', owner_key) == token``):

| key | type | what |
|---|---|---|
| ``<ns>:{<ns>.<n>}:owner`` | string | ``<holder>|<epoch>``, PX = lease TTL; absent = free |
| ``<ns>:{<ns>.<n>}:epoch`` | integer | INCR on every takeover; never expires |
| ``<ns>:members`` | zset | holder -> heartbeat expiry (ms, Redis server time) |

How a round goes (every ``lease_ttl_s / 3``): heartbeat into the members set and drop the
members whose heartbeat expired (server time, so process clocks do not matter), compute
:func:`assign` over the live members, renew the owned partitions that are still assigned
here, release the owned ones assigned elsewhere (so a newcomer gets its share within a
round), and try to acquire the assigned ones that are free (a dead owner's partition is
free once its ``PX`` expires). A process that dies loses its partitions after one TTL; a
process that stops gracefully releases them at once.

Local validity: :meth:`PartitionOwnership.owned` reports a partition only while the lease
is valid by the *local* clock: from the time read just *before* the acquire/renew call was
sent, plus the TTL, minus a safety margin (TTL/5, for clock-rate drift and the time the
call took to reach Redis). A process paused past its lease therefore stops believing it
owns anything the moment it resumes, before any Redis round trip; whatever it still tries
to append is refused by the fence, because the owner key then holds another token (or none).

Holder names must be unique per process *incarnation* (see :func:`incarnation`): acquiring
adopts an owner record that already carries this holder's current token (an acquire whose
reply was lost), so two live processes with one holder name would share a fence.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskStatus
from redis.asyncio import Redis
from redis.exceptions import ClusterDownError, OutOfMemoryError, ReadOnlyError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.store.keys import Keys

log = logging.getLogger("stageline.ownership")

#: Errors that mean "Redis cannot take this right now" (unreachable, loading, failing over,
#: out of memory): the loop keeps going with a backoff while the local leases lapse.
REDIS_DOWN: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ReadOnlyError,
    ClusterDownError,
    TryAgainError,
    OutOfMemoryError,
)

#: How long the shielded release on exit may take before it gives up (the leases then
#: simply expire after their TTL).
RELEASE_TIMEOUT_S = 2.0


# --- keys --------------------------------------------------------------------------------------


def owner_key(keys: Keys, partition: int) -> str:
    return f"{keys.namespace}:{keys.tag(partition)}:owner"


def epoch_key(keys: Keys, partition: int) -> str:
    return f"{keys.namespace}:{keys.tag(partition)}:epoch"


def members_key(keys: Keys) -> str:
    return f"{keys.namespace}:members"


def incarnation(name: str | None = None) -> str:
    """A holder name unique to this process: ``<name or host-pid>.<8 random hex>``."""
    base = name or f"{socket.gethostname()}-{os.getpid()}"
    return f"{base}.{secrets.token_hex(4)}"


# --- fence -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fence:
    """Proof of ownership of one partition; ``token`` is what the owner key must hold."""

    partition: int
    holder: str
    epoch: int

    @property
    def token(self) -> str:
        return f"{self.holder}|{self.epoch}"


# --- scripts -----------------------------------------------------------------------------------

# KEYS[1] owner, KEYS[2] epoch; ARGV[1] holder, ARGV[2] ttl ms.
# Free: INCR epoch, SET owner holder|epoch PX ttl, return epoch. Already this holder's
# current token: PEXPIRE, return epoch. Held by someone else: 0.
ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if not cur then
  local epoch = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[1] .. '|' .. epoch, 'PX', ARGV[2])
  return epoch
end
local epoch = redis.call('GET', KEYS[2])
if epoch and cur == ARGV[1] .. '|' .. epoch then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(epoch)
end
return 0
"""

# KEYS[1] owner; ARGV[1] token, ARGV[2] ttl ms. 1 when renewed, 0 when not ours any more.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS[1] owner; ARGV[1] token. 1 when released, 0 when it was not ours.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

# KEYS[1] members; ARGV[1] holder, ARGV[2] ttl ms. Heartbeat with the server's clock, drop
# expired members, return the live ones.
HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


class OwnershipScripts:
    """The ownership scripts registered on one client; also usable on their own."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._acquire = redis.register_script(ACQUIRE)
        self._renew = redis.register_script(RENEW)
        self._release = redis.register_script(RELEASE)
        self._heartbeat = redis.register_script(HEARTBEAT)

    async def acquire(self, partition: int, holder: str, ttl_ms: int) -> Fence | None:
        epoch: Any = await self._acquire(
            keys=[owner_key(self.keys, partition), epoch_key(self.keys, partition)],
            args=[holder, ttl_ms],
        )
        return Fence(partition, holder, int(epoch)) if int(epoch) > 0 else None

    async def renew(self, fence: Fence, ttl_ms: int) -> bool:
        ok: Any = await self._renew(
            keys=[owner_key(self.keys, fence.partition)], args=[fence.token, ttl_ms]
        )
        return bool(int(ok))

    async def release(self, fence: Fence) -> bool:
        ok: Any = await self._release(
            keys=[owner_key(self.keys, fence.partition)], args=[fence.token]
        )
        return bool(int(ok))

    async def heartbeat(self, holder: str, ttl_ms: int) -> list[str]:
        rows: Any = await self._heartbeat(keys=[members_key(self.keys)], args=[holder, ttl_ms])
        return [r.decode() if isinstance(r, bytes) else str(r) for r in rows]

    async def owner(self, partition: int) -> str | None:
        """The owner key's value (``holder|epoch``), None when the partition is free."""
        raw: Any = await self.redis.get(owner_key(self.keys, partition))
        if raw is None:
            return None
        return raw.decode() if isinstance(raw, bytes) else str(raw)


# --- assignment (pure) -------------------------------------------------------------------------


def _weight(member: str, partition: int) -> int:
    digest = hashlib.blake2b(f"{partition}\x00{member}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign(partitions: int, members: Sequence[str]) -> dict[str, list[int]]:
    """Which member should own which partition: balanced, deterministic, stable.

    Bounded-load rendezvous (highest-random-weight) hashing: every (member, partition) pair
    gets a weight from a keyed hash (blake2b, the same in every process); the pairs are
    visited from the highest weight down and a partition goes to the first member that still
    has room. Room is ``partitions // n`` for every member plus one extra for the first
    ``partitions % n`` members that ask for it, so counts differ by at most one and every
    partition is assigned. A partition mostly stays with its highest-weight member, so when
    a member joins or leaves only about the partitions that must move do (the leaver's, or
    the newcomer's share), plus a few that the capacity bound shifts.

    Every member appears in the result (with ``[]`` when there are fewer partitions than
    members); duplicate names count once; the lists are sorted.
    """
    if partitions < 0:
        raise ValueError(f"partitions must be >= 0, got {partitions}")
    unique = sorted(set(members))
    if not unique:
        return {}
    base, extra = divmod(partitions, len(unique))
    pairs = sorted(((_weight(m, p), m, p) for m in unique for p in range(partitions)), reverse=True)
    counts = dict.fromkeys(unique, 0)
    owner: dict[int, str] = {}
    for _, m, p in pairs:
        if p in owner:
            continue
        c = counts[m]
        if c < base:
            pass
        elif c == base and extra > 0:
            extra -= 1
        else:
            continue
        owner[p] = m
        counts[m] = c + 1
        if len(owner) == partitions:
            break
    result: dict[str, list[int]] = {m: [] for m in unique}
    for p in sorted(owner):
        result[owner[p]].append(p)
    return result


# --- the ownership loop ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Held:
    fence: Fence
    valid_until: float  # local clock


class PartitionOwnership:
    """This process's share of the partitions, kept by :meth:`run`.

    ``owned()`` and ``fence(p)`` answer from local state (no I/O). Wait for changes with
    ``changed()`` (the next time the owned set changes) or, race-free,
    ``wait_changed(known)`` (returns as soon as ``owned()`` differs from ``known``).
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        holder: str,
        *,
        lease_ttl_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not holder or "|" in holder:
            raise ValueError(f"holder must be a non-empty name without '|', got {holder!r}")
        if lease_ttl_s <= 0:
            raise ValueError(f"lease_ttl_s must be > 0, got {lease_ttl_s}")
        self.redis = redis
        self.keys = keys
        self.holder = holder
        self.lease_ttl_s = lease_ttl_s
        self.clock = clock
        self.scripts = OwnershipScripts(redis, keys)
        self.interval_s = lease_ttl_s / 3
        self.margin_s = lease_ttl_s / 5
        self.members: list[str] = []
        self._held: dict[int, _Held] = {}
        self._acquiring: int | None = None  # an acquire in flight (its reply may be lost)
        self._event: anyio.Event | None = None  # created in the event loop, on first use
        self._last: dict[int, Fence] = {}

    @property
    def ttl_ms(self) -> int:
        return max(1, int(self.lease_ttl_s * 1000))

    # -- local state (no I/O) --

    def owned(self) -> dict[int, Fence]:
        """Partitions whose lease is still valid by the local clock."""
        now = self.clock()
        return {p: h.fence for p, h in sorted(self._held.items()) if now < h.valid_until}

    def drop(self, partition: int) -> None:
        """Forget a partition the store says this process no longer owns (its fence was
        refused: Redis lost or rewrote the owner key); the next round acquires it again
        if it is still assigned here, with a new epoch."""
        if self._held.pop(partition, None) is not None:
            self._notify()

    def fence(self, partition: int) -> Fence | None:
        h = self._held.get(partition)
        if h is None or self.clock() >= h.valid_until:
            return None
        return h.fence

    async def changed(self) -> None:
        """Return the next time the owned set changes (as noticed by :meth:`run`)."""
        await self._current_event().wait()

    async def wait_changed(self, known: Mapping[int, Fence]) -> dict[int, Fence]:
        """Return ``owned()`` as soon as it differs from ``known`` (also on local lapses)."""
        while True:
            current = self.owned()
            if current != dict(known):
                return current
            event = self._current_event()
            with anyio.move_on_after(self._until_next_lapse()):
                await event.wait()

    def _current_event(self) -> anyio.Event:
        if self._event is None:
            self._event = anyio.Event()
        return self._event

    def _until_next_lapse(self) -> float:
        now = self.clock()
        ahead = [h.valid_until - now for h in self._held.values() if h.valid_until > now]
        return max(0.0, min(ahead)) + 0.001 if ahead else self.interval_s

    def _notify(self) -> None:
        current = self.owned()
        for p in [p for p in self._held if p not in current]:
            del self._held[p]  # lapsed locally: forget it, renewing would be too late
        if current != self._last:
            self._last = current
            event, self._event = self._event, None
            if event is not None:
                event.set()

    # -- one round --

    async def round(self) -> None:
        """Heartbeat, compute the assignment, renew/release/acquire. Raises Redis errors."""
        ttl_ms = self.ttl_ms
        self.members = await self.scripts.heartbeat(self.holder, ttl_ms)
        mine = set(assign(self.keys.partitions, self.members).get(self.holder, []))
        for p, held in sorted(self._held.items()):
            if p in mine:
                sent = self.clock()
                if await self.scripts.renew(held.fence, ttl_ms):
                    self._held[p] = _Held(held.fence, sent + self.lease_ttl_s - self.margin_s)
                else:
                    log.warning("partition %d lost (owner key changed)", p)
                    del self._held[p]
            else:
                del self._held[p]
                await self.scripts.release(held.fence)
                log.info("partition %d released (assigned to another member)", p)
        for p in sorted(mine - set(self._held)):
            sent = self.clock()
            self._acquiring = p
            fence = await self.scripts.acquire(p, self.holder, ttl_ms)
            self._acquiring = None
            if fence is not None:
                self._held[p] = _Held(fence, sent + self.lease_ttl_s - self.margin_s)
                log.info("partition %d acquired (epoch %d)", p, fence.epoch)
        self._notify()

    # -- the loop --

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep this process's share until cancelled; then release it and leave."""
        started = False
        backoff = min(0.05, self.interval_s)
        try:
            while True:
                try:
                    await self.round()
                    delay = self.interval_s
                    backoff = min(0.05, self.interval_s)
                except REDIS_DOWN as exc:
                    log.warning("Redis unavailable for partition ownership (%s), retrying", exc)
                    delay = backoff
                    backoff = min(backoff * 2, self.interval_s)
                self._notify()
                if not started:
                    started = True
                    task_status.started()
                await self._sleep(delay)
        finally:
            with anyio.move_on_after(RELEASE_TIMEOUT_S, shield=True):
                await self._leave()
            self._held.clear()
            self._notify()

    async def _sleep(self, delay: float) -> None:
        """Sleep ``delay``, waking up early to notice local lapses promptly."""
        deadline = anyio.current_time() + delay
        while (left := deadline - anyio.current_time()) > 0:
            await anyio.sleep(min(left, self._until_next_lapse()))
            self._notify()

    async def _leave(self) -> None:
        fences = [h.fence for _, h in sorted(self._held.items())]
        try:
            if self._acquiring is not None:  # cancelled mid-acquire: it may have succeeded
                value = await self.scripts.owner(self._acquiring)
                holder, _, epoch = (value or "").rpartition("|")
                if holder == self.holder and epoch.isdigit():
                    fences.append(Fence(self._acquiring, holder, int(epoch)))
            for fence in fences:
                await self.scripts.release(fence)
        except REDIS_DOWN:
            return
        try:
            await self.redis.zrem(members_key(self.keys), self.holder)
        except REDIS_DOWN:
            return


__all__ = [
    "ACQUIRE",
    "HEARTBEAT",
    "RELEASE",
    "RENEW",
    "Fence",
    "OwnershipScripts",
    "PartitionOwnership",
    "assign",
    "epoch_key",
    "incarnation",
    "members_key",
    "owner_key",
]
