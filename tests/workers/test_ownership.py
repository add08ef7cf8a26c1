"""Partition ownership: the assignment function, the lease scripts, and the loop.

The loop tests run several ``PartitionOwnership`` instances in the test's own task group
on one Redis (fakeredis, then a real server), with short leases, and wait for conditions
with a deadline rather than sleeping fixed times.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import TaskStatus
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.crc import key_slot

from app.store.keys import Keys
from tests.redis_server import RedisServer
from workers.ownership import (
    Fence,
    OwnershipScripts,
    PartitionOwnership,
    assign,
    epoch_key,
    incarnation,
    members_key,
    owner_key,
)

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 16
TTL = 0.6
WITHIN = 15.0  # deadline for conditions that need a few lease periods (loaded 2-core box)

# What the engine's append script does with the fence: refuse unless the owner key holds
# the caller's token; the owner key and the partition's streams share one hash slot.
FENCED_APPEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('XADD', KEYS[2], '*', 'by', ARGV[1])
return 1
"""


async def until(probe: Callable[[], Any], what: str, within: float = WITHIN) -> Any:
    """Poll ``probe`` (sync or async) until it returns something truthy."""
    deadline = anyio.current_time() + within
    while True:
        got = probe()
        if hasattr(got, "__await__"):
            got = await got
        if got:
            return got
        if anyio.current_time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await anyio.sleep(0.02)


class Member:
    """One PartitionOwnership running in its own cancel scope (stoppable on its own)."""

    def __init__(self, ownership: PartitionOwnership) -> None:
        self.o = ownership
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            with self.scope:
                await self.o.run(task_status=task_status)
        finally:
            self.done.set()

    async def stop(self) -> None:
        self.scope.cancel()
        await self.done.wait()


@asynccontextmanager
async def cluster(redis: Redis, keys: Keys) -> AsyncIterator[Callable[..., Any]]:
    """Yields ``start(name, **kw) -> Member`` (awaitable); everything stops on exit."""
    async with anyio.create_task_group() as tg:

        async def start(name: str, **kw: Any) -> Member:
            kw.setdefault("lease_ttl_s", TTL)
            m = Member(PartitionOwnership(redis, keys, name, **kw))
            await tg.start(m.run)
            return m

        try:
            yield start
        finally:
            tg.cancel_scope.cancel()


def balanced_cover(members: Sequence[Member], partitions: int = PARTITIONS) -> bool:
    """Ownership is disjoint, covers every partition, and counts differ by at most one."""
    owned = [m.o.owned() for m in members]
    seen: list[int] = [p for o in owned for p in o]
    if sorted(seen) != list(range(partitions)):
        return False
    counts = [len(o) for o in owned]
    return max(counts) - min(counts) <= 1


async def owner_value(redis: Redis, keys: Keys, p: int) -> str | None:
    raw = await redis.get(owner_key(keys, p))
    return None if raw is None else raw.decode()


# --- assign (pure) -----------------------------------------------------------------------------

names = st.lists(
    st.text(alphabet="abcdefghij0123456789-.", min_size=1, max_size=12),
    min_size=1,
    max_size=9,
    unique=True,
)


@given(partitions=st.integers(0, 300), members=names)
@settings(max_examples=200, deadline=None)
def test_assign_balanced_complete_deterministic(partitions: int, members: list[str]) -> None:
    a = assign(partitions, members)
    assert set(a) == set(members)
    flat = sorted(p for ps in a.values() for p in ps)
    assert flat == list(range(partitions))  # every partition exactly once
    counts = [len(ps) for ps in a.values()]
    assert max(counts) - min(counts) <= 1
    assert all(ps == sorted(ps) for ps in a.values())
    shuffled = list(members)
    random.Random(partitions).shuffle(shuffled)
    assert assign(partitions, shuffled + shuffled[:1]) == a  # order and duplicates don't matter


def _moves(before: dict[str, list[int]], after: dict[str, list[int]]) -> int:
    b = {p: m for m, ps in before.items() for p in ps}
    a = {p: m for m, ps in after.items() for p in ps}
    return sum(1 for p in a if b.get(p) != a[p])


@given(partitions=st.integers(1, 300), members=names, newcomer=st.text("xyz", min_size=13))
@settings(max_examples=200, deadline=None)
def test_assign_join_moves_little(partitions: int, members: list[str], newcomer: str) -> None:
    before = assign(partitions, members)
    after = assign(partitions, [*members, newcomer])
    share = len(after[newcomer])
    moved = _moves(before, after)
    assert moved >= share
    # The newcomer's share must move; the capacity bound shifts a few more, never a
    # reshuffle (hash-mod placement would move about partitions * (1 - 1/n)).
    n = len(members) + 1
    assert moved - share <= len(members) + -(-partitions // n), (moved, share)


@given(partitions=st.integers(1, 300), members=names.filter(lambda m: len(m) >= 2))
@settings(max_examples=200, deadline=None)
def test_assign_leave_moves_little(partitions: int, members: list[str]) -> None:
    before = assign(partitions, members)
    leaver = members[0]
    after = assign(partitions, members[1:])
    share = len(before[leaver])
    moved = _moves(before, after)
    assert moved >= share
    n = len(members)
    assert moved - share <= n + -(-partitions // (n - 1)), (moved, share)


def test_assign_edges() -> None:
    assert assign(16, []) == {}
    assert assign(0, ["a", "b"]) == {"a": [], "b": []}
    few = assign(2, ["a", "b", "c"])
    assert sorted(len(ps) for ps in few.values()) == [0, 1, 1]
    assert assign(5, ["solo"]) == {"solo": [0, 1, 2, 3, 4]}
    with pytest.raises(ValueError):
        assign(-1, ["a"])


# --- keys and scripts --------------------------------------------------------------------------


def test_owner_and_epoch_keys_share_the_partition_slot() -> None:
    keys = Keys(namespace="sl", partitions=PARTITIONS)
    for p in range(PARTITIONS):
        assert owner_key(keys, p) == f"sl:{{sl.{p}}}:owner"
        assert epoch_key(keys, p) == f"sl:{{sl.{p}}}:epoch"
        slot = key_slot(keys.events(p).encode())
        assert key_slot(owner_key(keys, p).encode()) == slot
        assert key_slot(epoch_key(keys, p).encode()) == slot
    assert members_key(keys) == "sl:members"
    assert Fence(3, "w1.ab", 7).token == "w1.ab|7"
    a, b = incarnation("w1"), incarnation("w1")
    assert a != b and a.startswith("w1.") and "|" not in a


async def test_scripts_acquire_renew_release(redis: Redis) -> None:
    keys = Keys(partitions=4)
    s = OwnershipScripts(redis, keys)
    a = await s.acquire(2, "A", 5000)
    assert a == Fence(2, "A", 1)
    assert await s.owner(2) == "A|1"
    assert 0 < await redis.pttl(owner_key(keys, 2)) <= 5000
    assert await s.acquire(2, "B", 5000) is None  # held by A
    assert await s.acquire(2, "A", 9000) == a  # A again: adopted, same epoch, extended
    assert 5000 < await redis.pttl(owner_key(keys, 2)) <= 9000
    assert await s.renew(a, 7000)
    assert 0 < await redis.pttl(owner_key(keys, 2)) <= 7000
    assert not await s.renew(Fence(2, "B", 1), 7000)  # not B's
    assert not await s.renew(Fence(2, "A", 0), 7000)  # not this epoch
    assert not await s.release(Fence(2, "B", 1))
    assert await s.owner(2) == "A|1"
    assert await s.release(a)
    assert await s.owner(2) is None
    assert not await s.release(a)  # already gone
    assert not await s.renew(a, 7000)  # a released lease does not come back by renewing
    assert await s.owner(2) is None
    b = await s.acquire(2, "B", 5000)
    assert b == Fence(2, "B", 2)
    assert not await s.renew(a, 7000)
    assert await s.acquire(2, "A", 5000) is None
    assert await s.owner(2) == "B|2"
    assert await s.owner(1) is None  # other partitions untouched
    assert await redis.get(epoch_key(keys, 1)) is None


async def test_epoch_increases_on_every_takeover(redis: Redis) -> None:
    keys = Keys(partitions=4)
    s = OwnershipScripts(redis, keys)
    epochs: list[int] = []
    holders = ["A", "B", "A", "C", "C"]
    for i, holder in enumerate(holders):
        f = await s.acquire(0, holder, 100 if i % 2 else 60_000)
        assert f is not None
        epochs.append(f.epoch)
        if i % 2:  # let this one expire (PX) ...
            await until(lambda: _is_free(s, 0), "lease expiry", 5)
        else:  # ... and release that one
            assert await s.release(f)
    assert epochs == [1, 2, 3, 4, 5]
    assert await redis.ttl(epoch_key(keys, 0)) == -1  # the epoch never expires
    assert int(await redis.get(epoch_key(keys, 0))) == 5


async def _is_free(s: OwnershipScripts, p: int) -> bool:
    return await s.owner(p) is None


async def test_fenced_append_refuses_a_stale_token(redis: Redis) -> None:
    keys = Keys(partitions=4)
    s = OwnershipScripts(redis, keys)
    append = redis.register_script(FENCED_APPEND)
    a = await s.acquire(1, "A", 100)
    assert a is not None
    stream = keys.events(1)
    assert await append(keys=[owner_key(keys, 1), stream], args=[a.token]) == 1
    await until(lambda: _is_free(s, 1), "A's lease to expire", 5)
    assert await append(keys=[owner_key(keys, 1), stream], args=[a.token]) == 0  # lapsed
    b = await s.acquire(1, "B", 5000)
    assert b is not None and b.epoch > a.epoch
    assert await append(keys=[owner_key(keys, 1), stream], args=[a.token]) == 0  # stale
    assert await append(keys=[owner_key(keys, 1), stream], args=[b.token]) == 1
    rows = await redis.xrange(stream)
    assert [r[1][b"by"].decode() for r in rows] == [a.token, b.token]


# --- the loop ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3])
async def test_members_divide_all_partitions(redis: Redis, n: int) -> None:
    keys = Keys(partitions=PARTITIONS)
    async with cluster(redis, keys) as start:
        members = [await start(f"m{i}") for i in range(n)]
        await until(lambda: balanced_cover(members), f"{n} members to divide {PARTITIONS}")
        expected = assign(PARTITIONS, [m.o.holder for m in members])
        await until(
            lambda: all(sorted(m.o.owned()) == expected[m.o.holder] for m in members),
            "the assignment to settle",
        )
        for m in members:
            for p, fence in m.o.owned().items():
                assert fence == m.o.fence(p)
                assert fence.holder == m.o.holder and fence.partition == p
                assert await owner_value(redis, keys, p) == fence.token
        live = sorted(x.decode() for x in await redis.zrange(members_key(keys), 0, -1))
        assert live == sorted(m.o.holder for m in members)
        held_before = {p: f for m in members for p, f in m.o.owned().items()}
        # Stable: further rounds renew, they do not move or re-acquire anything.
        await anyio.sleep(TTL)
        assert {p: f for m in members for p, f in m.o.owned().items()} == held_before


async def test_stopped_member_releases_and_others_take_over(redis: Redis) -> None:
    keys = Keys(partitions=PARTITIONS)
    async with cluster(redis, keys) as start:
        members = [await start(f"m{i}") for i in range(3)]
        await until(lambda: balanced_cover(members), "3 members to divide")
        gone = members[0]
        its = gone.o.owned()
        await gone.stop()
        assert gone.o.owned() == {}
        for p in its:  # released on exit, not left to expire
            assert await owner_value(redis, keys, p) != its[p].token
        assert gone.o.holder.encode() not in await redis.zrange(members_key(keys), 0, -1)
        rest = members[1:]
        await until(lambda: balanced_cover(rest), "the others to take its partitions")
        for m in rest:
            for p, fence in m.o.owned().items():
                if p in its:
                    assert fence.epoch > its[p].epoch


async def test_crashed_member_loses_partitions_within_the_lease(redis: Redis) -> None:
    keys = Keys(partitions=PARTITIONS)
    async with cluster(redis, keys) as start:
        members = [await start(f"m{i}") for i in range(3)]
        await until(lambda: balanced_cover(members), "3 members to divide")
        dead = members[0]
        its = dead.o.owned()

        async def no_goodbye() -> None:  # a crash: no release, no leaving the member set
            pass

        dead.o._leave = no_goodbye  # type: ignore[method-assign]
        await dead.stop()
        assert all([await owner_value(redis, keys, p) == f.token for p, f in its.items()])
        crashed_at = anyio.current_time()
        rest = members[1:]
        await until(lambda: balanced_cover(rest), "the others to take the dead one's share")
        # It takes about one lease (PX expiry, member expiry) plus a round; the generous
        # bound is for a loaded machine, the point is that it does not wait forever.
        assert anyio.current_time() - crashed_at < WITHIN
        for m in rest:
            for p, fence in m.o.owned().items():
                if p in its:
                    assert fence.epoch > its[p].epoch


async def test_paused_member_is_fenced_and_comes_back(redis: Redis) -> None:
    keys = Keys(partitions=PARTITIONS)
    append = redis.register_script(FENCED_APPEND)
    async with cluster(redis, keys) as start:
        a, b = await start("a"), await start("b")
        await until(lambda: balanced_cover([a, b]), "a and b to divide")
        old = a.o.owned()
        assert old
        # Pause a: its next round blocks (no heartbeat, no renewals) until the gate opens.
        gate = anyio.Event()
        real_round = a.o.round

        async def paused_round() -> None:
            await gate.wait()
            await real_round()

        a.o.round = paused_round  # type: ignore[method-assign]
        # Locally, a stops believing it owns anything once its leases lapse, although its
        # loop is stuck and never ran a round to find out.
        await until(lambda: a.o.owned() == {}, "a's local leases to lapse")
        assert all(a.o.fence(p) is None for p in old)
        await until(lambda: len(b.o.owned()) == PARTITIONS, "b to take every partition")
        for p, fence in old.items():
            now = await owner_value(redis, keys, p)
            assert now is not None and now != fence.token
            assert now == b.o.owned()[p].token
            # what the engine's append does with a's old token: refused
            stale = await append(keys=[owner_key(keys, p), keys.events(p)], args=[fence.token])
            assert stale == 0
        assert await redis.xlen(keys.events(next(iter(old)))) == 0
        # Resumed, a rejoins and gets a fair share back, under new epochs.
        gate.set()
        await until(lambda: balanced_cover([a, b]), "a to get its share back")
        for p, fence in a.o.owned().items():
            if p in old:
                assert fence.epoch > old[p].epoch


async def test_local_clock_decides_what_is_owned(redis: Redis) -> None:
    keys = Keys(partitions=PARTITIONS)
    skew = [0.0]

    def clock() -> float:
        return time.time() + skew[0]

    async with cluster(redis, keys) as start:
        a = await start("a", clock=clock, lease_ttl_s=5.0)
        await until(lambda: len(a.o.owned()) == PARTITIONS, "a to own everything")
        held = a.o.owned()
        # A jump past lease - margin (as after a long pause): no partition is owned, at once,
        # while Redis still holds a's tokens (that is the fence's job, not this process's).
        skew[0] = 5.0 - 5.0 / 5 + 0.01
        assert a.o.owned() == {}
        assert a.o.fence(0) is None
        assert await owner_value(redis, keys, 0) == held[0].token
        skew[0] = 0.0


async def test_joining_member_gets_a_fair_share(redis: Redis) -> None:
    keys = Keys(partitions=PARTITIONS)
    async with cluster(redis, keys) as start:
        a = await start("a")
        await until(lambda: len(a.o.owned()) == PARTITIONS, "a to own everything")
        b = await start("b")
        await until(lambda: balanced_cover([a, b]), "b to get a fair share")
        assert len(b.o.owned()) == PARTITIONS // 2
        c = await start("c")
        await until(lambda: balanced_cover([a, b, c]), "c to get a fair share")
        assert sorted(len(m.o.owned()) for m in (a, b, c)) == [5, 5, 6]


async def test_rounds_hand_over_without_waiting_for_expiry(redis: Redis) -> None:
    """Step by step (no loop, long leases): a reassigned partition is released at once."""
    keys = Keys(partitions=PARTITIONS)
    a = PartitionOwnership(redis, keys, "a", lease_ttl_s=60.0)
    b = PartitionOwnership(redis, keys, "b", lease_ttl_s=60.0)
    await a.round()
    assert sorted(a.owned()) == list(range(PARTITIONS))
    await b.round()  # b joins: its share is still held by a
    assert b.members == ["a", "b"] and b.owned() == {}
    share = assign(PARTITIONS, ["a", "b"])
    await a.round()  # a sees b and lets go of b's share
    assert sorted(a.owned()) == share["a"]
    for p in share["b"]:
        assert await owner_value(redis, keys, p) is None
    await b.round()
    assert sorted(b.owned()) == share["b"]
    assert all(f.epoch == 2 for f in b.owned().values())  # second takeover of each
    await a.round()
    await b.round()  # steady state: renewals change nothing
    assert sorted(a.owned()) == share["a"] and sorted(b.owned()) == share["b"]
    assert all(f.epoch == 1 for f in a.owned().values())


async def test_cancelled_mid_acquire_still_releases(redis: Redis) -> None:
    keys = Keys(partitions=4)
    async with cluster(redis, keys) as start:
        a = await start("a", lease_ttl_s=30.0)
        assert len(a.o.owned()) == 4
        # b's acquire reaches Redis but b is cancelled before it sees the reply
        b = Member(PartitionOwnership(redis, keys, "b", lease_ttl_s=30.0))
        real_acquire = b.o.scripts.acquire
        in_flight = anyio.Event()

        async def acquire_then_hang(p: int, holder: str, ttl_ms: int) -> Fence | None:
            fence = await real_acquire(p, holder, ttl_ms)
            if fence is None:
                return None
            in_flight.set()
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

        b.o.scripts.acquire = acquire_then_hang  # type: ignore[method-assign]
        await b.o.round()  # b joins (acquires nothing yet: a holds everything)
        await a.o.round()  # a releases b's share
        async with anyio.create_task_group() as tg:
            tg.start_soon(b.run)
            with anyio.fail_after(WITHIN):
                await in_flight.wait()
            taken = [p for p in range(4) if (await owner_value(redis, keys, p) or "")[:2] == "b|"]
            assert len(taken) == 1 and b.o.owned() == {}
            await b.stop()
        assert await owner_value(redis, keys, taken[0]) is None  # released, not left to expire


async def test_changes_are_announced(redis: Redis) -> None:
    keys = Keys(partitions=4)
    async with cluster(redis, keys) as start:
        a = await start("a")
        await until(lambda: len(a.o.owned()) == 4, "a to own everything")
        known = a.o.owned()
        with anyio.fail_after(WITHIN):
            async with anyio.create_task_group() as tg:
                tg.start_soon(a.o.changed)
                b = await start("b")
                now = await a.o.wait_changed(known)
        assert len(now) < 4
        await until(lambda: balanced_cover([a, b], 4), "a and b to divide")
        # wait_changed also returns on a local lapse, which no round announces
        known = a.o.owned()
        a.o.clock = lambda: time.time() + TTL
        with anyio.fail_after(WITHIN):
            assert await a.o.wait_changed(known) == {}


async def test_redis_outage_empties_ownership_then_recovers(
    redis_factory: type[RedisServer], tmp_path: Path
) -> None:
    server = redis_factory(tmp_path / "redis")
    server.start()
    client = Redis.from_url(server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    keys = Keys(partitions=4)
    try:
        async with cluster(client, keys) as start:
            a = await start("a")
            await until(lambda: len(a.o.owned()) == 4, "a to own everything")
            server.kill()
            await until(lambda: a.o.owned() == {}, "a's leases to lapse while Redis is down")
            server.start()  # same port, empty (no persistence): the epochs start over
            await until(lambda: len(a.o.owned()) == 4, "a to own everything again")
            for p, fence in a.o.owned().items():
                assert await owner_value(client, keys, p) == fence.token
    finally:
        await client.aclose()


def test_bad_arguments() -> None:
    keys = Keys()
    redis: Any = None
    with pytest.raises(ValueError):
        PartitionOwnership(redis, keys, "a|b")
    with pytest.raises(ValueError):
        PartitionOwnership(redis, keys, "")
    with pytest.raises(ValueError):
        PartitionOwnership(redis, keys, "a", lease_ttl_s=0)


# --- a real process, really paused (SIGSTOP) ---------------------------------------------------

CHILD = """
import sys
import anyio
from redis.asyncio import Redis
from app.store.keys import Keys
from workers.ownership import PartitionOwnership, owner_key

async def main(url, holder, ttl, partitions, script):
    r = Redis.from_url(url)
    keys = Keys(partitions=partitions)
    o = PartitionOwnership(r, keys, holder, lease_ttl_s=ttl)
    append = r.register_script(script)
    known = {}  # every fence it ever had: it keeps trying the stale ones too
    async with anyio.create_task_group() as tg:
        await tg.start(o.run)
        while True:
            known.update(o.owned())
            for p, f in list(known.items()):
                ok = await append(keys=[owner_key(keys, p), keys.events(p)], args=[f.token])
                if not ok:
                    await r.incr("test:refused")
            await anyio.sleep(0.02)

anyio.run(main, sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
"""


def _spawn_child(url: str, ttl: float) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-c", CHILD, url, "child", str(ttl), str(PARTITIONS), FENCED_APPEND]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL)


async def test_sigstopped_process_is_fenced_out(real_redis: Redis, real_redis_url: str) -> None:
    """A real pause: the child keeps trying its old tokens after SIGCONT; all are refused."""
    keys = Keys(partitions=PARTITIONS)
    append = real_redis.register_script(FENCED_APPEND)
    ttl = 1.0
    child = _spawn_child(real_redis_url, ttl)
    childs: dict[int, str] = {}  # the child's tokens when it was stopped

    async def child_owns() -> int:
        values = [await owner_value(real_redis, keys, p) for p in range(PARTITIONS)]
        return sum(1 for v in values if v is not None and v.startswith("child|"))

    try:
        async with cluster(real_redis, keys) as start:
            b = await start("b", lease_ttl_s=ttl)

            async def b_appends() -> None:
                while True:
                    for p, f in b.o.owned().items():
                        await append(keys=[owner_key(keys, p), keys.events(p)], args=[f.token])
                    await anyio.sleep(0.02)

            async with anyio.create_task_group() as tg:
                tg.start_soon(b_appends)
                await until(
                    lambda: _both_halves(child_owns, b), "child and b to divide", within=30
                )
                await until(
                    lambda: _child_appended(real_redis, keys, childs), "the child's appends"
                )
                os.kill(child.pid, signal.SIGSTOP)
                try:
                    await until(lambda: len(b.o.owned()) == PARTITIONS, "b to take all")
                    # b appends into every partition, under epochs newer than the child's
                    await until(
                        lambda: _all_streams_by(real_redis, keys, "b|"), "b's appends"
                    )
                finally:
                    os.kill(child.pid, signal.SIGCONT)
                await until(
                    lambda: _refused_at_least(real_redis, 1), "the child's stale appends"
                )
                await until(lambda: _both_halves(child_owns, b), "child's share back")
                tg.cancel_scope.cancel()
    finally:
        child.kill()
        child.wait(10)
    # In every partition's stream the epochs never go back: nothing was appended under a
    # token after a newer one had taken the partition over.
    assert len(childs) == PARTITIONS // 2
    for p in range(PARTITIONS):
        rows = await real_redis.xrange(keys.events(p))
        tokens = [r[1][b"by"].decode() for r in rows]
        epochs = [int(t.rsplit("|", 1)[1]) for t in tokens]
        assert epochs == sorted(epochs), (p, tokens)
        if p in childs:  # the child appended under its token, then b under a newer one
            stopped = childs[p]
            assert stopped in tokens
            last_child = len(tokens) - 1 - tokens[::-1].index(stopped)
            after = tokens[last_child + 1 :]
            assert after and after[0].startswith("b|"), (p, tokens)


async def _both_halves(child_owns: Callable[[], Any], b: Member) -> bool:
    return await child_owns() == PARTITIONS // 2 and len(b.o.owned()) == PARTITIONS // 2


async def _child_appended(redis: Redis, keys: Keys, childs: dict[int, str]) -> bool:
    """The child owns half and appended into each of them under its current token."""
    childs.clear()
    for p in range(PARTITIONS):
        v = await owner_value(redis, keys, p)
        if v is not None and v.startswith("child|"):
            last = await redis.xrevrange(keys.events(p), count=1)
            if not last or last[0][1][b"by"].decode() != v:
                return False
            childs[p] = v
    return len(childs) == PARTITIONS // 2


async def _all_streams_by(redis: Redis, keys: Keys, prefix: str) -> bool:
    for p in range(PARTITIONS):
        last = await redis.xrevrange(keys.events(p), count=1)
        if not last or not last[0][1][b"by"].decode().startswith(prefix):
            return False
    return True


async def _refused_at_least(redis: Redis, n: int) -> bool:
    return int(await redis.get("test:refused") or 0) >= n
