"""Bounded storage: dispatch streams trimmed up to what every consumer processed (never past
an unprocessed entry), idempotency records expiring after the window, a finished job's
record expiring, dead-letter streams capped. On fakeredis, a real Redis and the cluster."""

from __future__ import annotations

from typing import Any

from app.jobs import JobIndex, JobRef
from app.store.eventstore import EventStore
from app.store.keys import Keys
from tests.test_eventstore_contract import batch, created
from workers.consumer import Entry, GroupConsumer
from workers.retention import RUNNER_GROUP, expire_commands, run_stream_floor, trim_dispatch

KEYS = Keys(partitions=4)


def _ids(rows: Any) -> list[str]:
    return [r[0].decode() if isinstance(r[0], bytes) else str(r[0]) for r in rows]


async def test_trimming_never_passes_an_unacknowledged_entry(any_redis: Any) -> None:
    run, events = KEYS.run(0), KEYS.events(0)
    ids = [await any_redis.xadd(run, {"n": str(i)}) for i in range(10)]
    ev_ids = [await any_redis.xadd(events, {"n": str(i)}) for i in range(10)]
    # no runners group yet: nothing is known about the run stream, nothing goes
    assert await run_stream_floor(any_redis, run) is None
    await any_redis.xgroup_create(run, RUNNER_GROUP, id="0")
    a = await any_redis.xreadgroup(RUNNER_GROUP, "a", {run: ">"}, count=3)
    b = await any_redis.xreadgroup(RUNNER_GROUP, "b", {run: ">"}, count=3)
    assert len(a[0][1]) == len(b[0][1]) == 3
    await any_redis.xack(run, RUNNER_GROUP, ids[0], ids[1], ids[3], ids[4], ids[5])
    # ids[2] (consumer a) is still pending: the floor, whatever b acknowledged later
    checkpoint = ev_ids[6].decode()
    # exact trimming (the default ~ removes whole nodes only: it would keep all of these)
    assert await trim_dispatch(any_redis, KEYS, 0, checkpoint, approximate=False) == 2 + 6
    # ids[2] pending and everything after it kept; the events up to the checkpoint gone
    assert _ids(await any_redis.xrange(run)) == [i.decode() for i in ids[2:]]
    assert _ids(await any_redis.xrange(events)) == [i.decode() for i in ev_ids[6:]]
    # everything delivered acknowledged: trimmed up to the last delivered entry, no further
    await any_redis.xack(run, RUNNER_GROUP, ids[2])
    await trim_dispatch(any_redis, KEYS, 0, checkpoint, approximate=False)
    assert _ids(await any_redis.xrange(run)) == [i.decode() for i in ids[5:]]


async def test_trimming_removes_processed_entries(real_redis: Any) -> None:
    """With exact ids known, the processed part really goes (on a real Redis: approximate
    trimming removes whole nodes, so many entries)."""
    run, events = KEYS.run(1), KEYS.events(1)
    await real_redis.xgroup_create(run, RUNNER_GROUP, id="0", mkstream=True)
    for i in range(1000):
        await real_redis.xadd(run, {"n": str(i)})
        await real_redis.xadd(events, {"n": str(i)})
    rows = await real_redis.xreadgroup(RUNNER_GROUP, "a", {run: ">"}, count=900)
    await real_redis.xack(run, RUNNER_GROUP, *_ids(rows[0][1]))
    checkpoint = _ids(await real_redis.xrange(events))[899]
    removed = await trim_dispatch(real_redis, KEYS, 1, checkpoint)
    assert removed >= 1000  # most of the 2 x 900 processed entries
    assert await real_redis.xlen(run) >= 100 and await real_redis.xlen(events) >= 100


async def test_idempotency_records_expire_after_the_window(any_redis: Any) -> None:
    store = EventStore(any_redis, KEYS)
    await store.ensure_config()
    await store.append(batch("p", created("p"), command_id="sdk-1"))
    part = KEYS.partition("p")
    t0 = 1_800_000_000_000
    assert await expire_commands(any_redis, KEYS, part, 60, now_ms=t0) == 0
    await store.append(batch("q", created("q"), command_id="sdk-2"))
    assert await store.command_versions("p", "sdk-1") is not None
    # within the window (since first seen): kept
    assert await expire_commands(any_redis, KEYS, part, 60, now_ms=t0 + 59_000) == 0
    assert await store.command_versions("p", "sdk-1") is not None
    # past it: the record and its time go; another pipeline's younger record stays
    assert await expire_commands(any_redis, KEYS, part, 60, now_ms=t0 + 61_000) == 1
    assert await store.command_versions("p", "sdk-1") is None
    assert await any_redis.zcard(KEYS.command_times("p")) == 0
    if KEYS.partition("q") == part:
        assert await store.command_versions("q", "sdk-2") is not None


async def test_a_finished_jobs_record_expires(any_redis: Any) -> None:
    jobs = JobIndex(any_redis, KEYS, retention_s=120)
    ref = JobRef("job-1", "Custom/Build/X/1", "p", "x1", "a1")
    await jobs.publish(ref, 1.0)
    assert [j.jobId for j in await jobs.open_jobs(ref.actionType, 10)] == ["job-1"]
    await jobs.close(ref)  # acknowledged: off the open list, still locatable, no expiry
    assert await jobs.open_jobs(ref.actionType, 10) == []
    assert await jobs.locate("job-1") == ref
    assert await any_redis.ttl(KEYS.job("job-1")) == -1
    await jobs.close(ref, finished=True)
    assert 0 < await any_redis.ttl(KEYS.job("job-1")) <= 120


async def test_dead_letter_streams_are_capped(any_redis: Any) -> None:
    run = KEYS.run(2)
    consumer = GroupConsumer(
        any_redis,
        [run],
        RUNNER_GROUP,
        "c",
        dead_letter=lambda s: KEYS.dead(2),
        dead_letter_maxlen=5,
    )
    await consumer.ensure_groups()
    for i in range(12):
        rid = await any_redis.xadd(run, {"n": str(i)})
        await consumer.park(Entry(run, rid.decode(), {"n": str(i).encode()}), "test")
    rows = await any_redis.xrange(KEYS.dead(2))
    assert len(rows) == 5
    assert [r[1][b"n"] for r in rows] == [str(i).encode() for i in range(7, 12)]
