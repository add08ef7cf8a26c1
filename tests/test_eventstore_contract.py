"""One contract suite for the event store, run against fakeredis and a real Redis server."""

from __future__ import annotations

import itertools

import anyio
import pytest
from redis.crc import key_slot

from app.domain import events as ev
from app.store.eventstore import ConcurrencyError, EventStore, chain_hash
from app.store.keys import Keys

_ids = itertools.count()


def envs(pipeline: str, after: int, *bodies: ev.Event) -> list[ev.Envelope]:
    return [
        ev.Envelope(
            id=f"e{next(_ids)}",
            pipeline=pipeline,
            version=after + i + 1,
            time=1000.0 + i,
            actor="tester",
            event=b,
        )
        for i, b in enumerate(bodies)
    ]


def started(eid: str) -> ev.ExecutionStarted:
    return ev.ExecutionStarted(executionId=eid, pipelineVersion=1)


async def test_append_and_read_in_order(store: EventStore) -> None:
    r = await store.append("p1", 0, envs("p1", 0, started("a"), started("b")))
    assert (r.first, r.last, r.duplicate) == (1, 2, False)
    r = await store.append("p1", 2, envs("p1", 2, started("c")))
    assert (r.first, r.last) == (3, 3)
    got = await store.read("p1")
    assert [e.version for e in got] == [1, 2, 3]
    assert [e.event.executionId for e in got] == ["a", "b", "c"]  # type: ignore[union-attr]
    assert got[0].actor == "tester" and got[0].pipeline == "p1"
    assert await store.version("p1") == 3
    assert await store.version("nothing") == 0


async def test_read_from_a_version_and_until(store: EventStore) -> None:
    await store.append("p", 0, envs("p", 0, *[started(str(i)) for i in range(10)]))
    assert [e.version for e in await store.read("p", after=7)] == [8, 9, 10]
    assert [e.version for e in await store.read("p", after=2, count=3)] == [3, 4, 5]
    assert [e.version for e in await store.read("p", after=2, until=4)] == [3, 4]
    assert await store.read("p", after=10) == []
    batches = [[e.version for e in b] async for b in store.iter_events("p", after=1, batch=4)]
    assert batches == [[2, 3, 4, 5], [6, 7, 8, 9], [10]]


async def test_wrong_expected_version_is_refused_and_appends_nothing(store: EventStore) -> None:
    await store.append("p", 0, envs("p", 0, started("a")))
    with pytest.raises(ConcurrencyError) as err:
        await store.append("p", 0, envs("p", 0, started("b")))
    assert err.value.actual == 1
    with pytest.raises(ConcurrencyError):
        await store.append("p", 5, envs("p", 5, started("b")))
    assert [e.event.executionId for e in await store.read("p")] == ["a"]  # type: ignore[union-attr]


async def test_concurrent_appenders_exactly_one_wins(store: EventStore) -> None:
    await store.append("p", 0, envs("p", 0, started("seed")))
    outcomes: list[str] = []

    async def appender(name: str) -> None:
        try:
            await store.append("p", 1, envs("p", 1, started(name), started(name + "2")))
            outcomes.append("won:" + name)
        except ConcurrencyError:
            outcomes.append("lost")

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(appender, f"w{i}")
    assert len([o for o in outcomes if o.startswith("won")]) == 1
    assert outcomes.count("lost") == 7
    stored = await store.read("p")
    assert [e.version for e in stored] == [1, 2, 3]
    winner = outcomes[[o.startswith("won") for o in outcomes].index(True)][4:]
    assert [e.event.executionId for e in stored[1:]] == [winner, winner + "2"]  # type: ignore[union-attr]


async def test_repeated_command_id_appends_nothing_and_returns_first_result(
    store: EventStore,
) -> None:
    r1 = await store.append("p", 0, envs("p", 0, started("a"), started("b")), command_id="cmd-1")
    r2 = await store.append("p", 2, envs("p", 2, started("a")), command_id="cmd-1")
    assert r2.duplicate and (r2.first, r2.last) == (r1.first, r1.last) == (1, 2)
    # even at a stale expected version the repeat is recognised, not a conflict
    r3 = await store.append("p", 0, envs("p", 0, started("a")), command_id="cmd-1")
    assert r3.duplicate
    assert await store.version("p") == 2
    r4 = await store.append("p", 2, envs("p", 2, started("c")), command_id="cmd-2")
    assert not r4.duplicate and r4.last == 3


async def test_envelope_versions_must_match_expected(store: EventStore) -> None:
    with pytest.raises(ValueError):
        await store.append("p", 0, envs("p", 3, started("a")))


async def test_hash_chain_is_computed_inside_the_append(store: EventStore) -> None:
    await store.append("p", 0, envs("p", 0, started("a"), started("b")))
    await store.append("p", 2, envs("p", 2, started("c")))
    raw = await store.read_raw("p")
    prev = ""
    for r in raw:
        assert r.hash == chain_hash(prev, r.version, r.payload)
        prev = r.hash


async def test_dispatch_streams_and_names(store: EventStore) -> None:
    sched = ev.ActionExecutionScheduled(
        executionId="x", stageName="S", actionName="A", actionExecutionId="ae1", kind="commands"
    )
    other = ev.ActionExecutionScheduled(
        executionId="x", stageName="S", actionName="B", actionExecutionId="ae2", kind="custom"
    )
    await store.append("p", 0, envs("p", 0, started("x"), sched, other))
    k = store.keys
    part = k.partition("p")
    events = await store.redis.xrange(k.events(part))
    assert [f[b"t"] for _, f in events] == [
        b"ExecutionStarted",
        b"ActionExecutionScheduled",
        b"ActionExecutionScheduled",
    ]
    assert [f[b"v"] for _, f in events] == [b"1", b"2", b"3"]
    run = await store.redis.xrange(k.run(part))
    assert len(run) == 1 and run[0][1][b"v"] == b"2" and run[0][1][b"p"] == b"p"
    await store.append("q", 0, envs("q", 0, started("y")))
    assert await store.pipelines() == ["p", "q"]


async def test_every_key_of_a_pipeline_is_in_one_cluster_slot(store: EventStore) -> None:
    keys = Keys(partitions=16)
    partitions_used = set()
    for name in ["a", "MyFirstPipeline", "x.y@z-1_2", "p" * 100]:
        slots = {key_slot(k.encode()) for k in keys.pipeline_keys(name)}
        assert len(slots) == 1, name
        partitions_used.add(keys.partition(name))
    # the append script touches only keys of that slot (Redis Cluster would refuse otherwise)
    assert len({keys.partition(f"pipe{i}") for i in range(200)}) == 16
    # and different partitions are different slots
    assert len({key_slot(keys.events(p).encode()) for p in range(16)}) == 16


async def test_snapshot_newer_wins(store: EventStore) -> None:
    from app.domain.state import PipelineState

    assert await store.load_snapshot("p") is None
    assert await store.save_snapshot(PipelineState(name="p", version=5))
    assert not await store.save_snapshot(PipelineState(name="p", version=4))
    snap = await store.load_snapshot("p")
    assert snap is not None and snap.version == 5
    await store.drop_snapshot("p")
    assert await store.load_snapshot("p") is None


async def test_partition_count_is_fixed_once_recorded(store: EventStore) -> None:
    await store.ensure_config()
    await store.ensure_config()
    other = EventStore(store.redis, Keys(partitions=store.keys.partitions + 1))
    with pytest.raises(RuntimeError, match="partitions"):
        await other.ensure_config()


async def test_payload_is_readable_json(store: EventStore) -> None:
    await store.append("p", 0, envs("p", 0, started("a")))
    raw = await store.read_raw("p")
    assert raw[0].payload.startswith(b"{") and b'"type":"ExecutionStarted"' in raw[0].payload
