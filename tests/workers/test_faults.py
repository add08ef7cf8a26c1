"""Fault tests with real processes: ``stageline worker`` processes (subprocess.Popen) on a
private ``redis-server``, killed with SIGKILL at awkward moments.

Side-effect files record every action start by its actionExecutionId, so "nothing ran
twice" is checked against what really happened, not only against the event log.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from redis.asyncio import Redis

from app.domain import events as ev
from app.domain.state import ExecutionState, encode_head, fold
from app.repository import PipelineRepository
from app.store.eventstore import EventStore
from tests.redis_server import RedisServer
from tests.workers.conftest import StartWorker
from tests.workers.helpers import (
    PARTITIONS,
    flaky_per_execution_sh,
    latest,
    make_engine,
    pipeline,
    started_ids,
    tracked,
    wait_all,
    wait_for,
    wait_retried,
)

pytestmark = [pytest.mark.redis_real, pytest.mark.timeout(120)]


def _names_in_distinct_partitions(n: int, prefix: str) -> list[str]:
    from app.store.keys import Keys

    keys = Keys(partitions=PARTITIONS)
    names: list[str] = []
    used: set[int] = set()
    i = 0
    while len(names) < n:
        name = f"{prefix}{i}"
        i += 1
        if keys.partition(name) not in used or len(used) == PARTITIONS:
            used.add(keys.partition(name))
            names.append(name)
    return names


def _check_ran_at_most_once(xs: dict[str, ExecutionState], starts: Path) -> Counter[str]:
    """Every attempt started at most once; every Succeeded attempt started exactly once;
    an attempt that did not succeed ended Failed (WorkerLost when its runner died)."""
    started = Counter(started_ids(starts))
    twice = {a: n for a, n in started.items() if n > 1}
    assert not twice, f"actions ran more than once: {twice}"
    for x in xs.values():
        for a in x.actions.values():
            assert a.status in ("Succeeded", "Failed"), (x.executionId, a)
            if a.status == "Succeeded":
                assert started[a.actionExecutionId] == 1, a
    return started


async def test_kill9_worker_while_actions_run(
    redis_factory: type[RedisServer], procs: StartWorker, tmp_path: Path
) -> None:
    server = redis_factory(tmp_path / "redis")
    server.start()
    client = Redis.from_url(server.url)
    starts = tmp_path / "starts"
    try:
        engine = make_engine(client)
        await engine.start()
        await engine.create_pipeline(
            pipeline(
                "k9",
                {
                    "Build": [tracked("a", starts, "sleep 1.5"), tracked("b", starts, "sleep 1.5")],
                    "Deploy": [tracked("dep", starts)],
                },
                mode="PARALLEL",
            )
        )
        w1 = procs(server.url, "w1", concurrency=4)
        eids = [("k9", await engine.start_execution("k9")) for _ in range(5)]

        async def running() -> bool:
            return len(started_ids(starts)) >= 4

        await wait_for(running, "w1 to run 4 actions", within=20)
        w1.kill9()  # 4 actions running, 6 scheduled (some delivered to w1, some not)
        killed_at = started_ids(starts)
        procs(server.url, "w2", concurrency=8)
        xs = await wait_all(engine, eids, within=40)

        started = _check_ran_at_most_once(xs, starts)
        lost = [a for x in xs.values() for a in x.actions.values() if a.status == "Failed"]
        assert lost, "the actions running in the killed worker must end WorkerLost"
        for a in lost:
            assert a.errorCode == ev.WORKER_LOST, a
            assert a.worker == "w1", a
        for x in xs.values():
            for a in x.actions.values():
                if a.status == "Succeeded" and a.worker == "w1":
                    assert a.actionExecutionId in killed_at  # it had finished before the kill
                elif a.status == "Succeeded":
                    assert a.worker == "w2", a  # w2 carried on with everything else
            if not any(a.status == "Failed" for a in x.actions.values()):
                assert x.status == "Succeeded", x

        # the lost actions are retryable like any failure
        failed = [(n, e) for n, e in eids if xs[e].status == "Failed"]
        assert failed
        for n, e in failed:
            stage = xs[e].currentStage
            assert stage is not None
            await engine.retry_stage(n, stage, e, "FAILED_ACTIONS")
        # and the surviving worker runs new executions too
        more = [("k9", await engine.start_execution("k9")) for _ in range(2)]
        xs = await wait_all(engine, eids + more, ("Succeeded",), within=40)
        _check_ran_at_most_once(xs, starts)
        attempt_ids = {a for x in xs.values() for a in x.actions}
        assert set(started_ids(starts)) <= attempt_ids  # nothing ran that is not recorded
        assert set(started) <= attempt_ids
    finally:
        await client.aclose()


async def test_kill9_orchestrator_mid_batch_projections_equal_a_fresh_fold(
    redis_factory: type[RedisServer], procs: StartWorker, tmp_path: Path
) -> None:
    server = redis_factory(tmp_path / "redis")
    server.start()
    client = Redis.from_url(server.url)
    starts = tmp_path / "starts"
    markers = tmp_path / "markers"
    names = _names_in_distinct_partitions(3, "orc")
    try:
        engine = make_engine(client)
        await engine.start()
        for name in names:
            await engine.create_pipeline(
                pipeline(
                    name,
                    {
                        "Build": [
                            tracked("flaky", starts, flaky_per_execution_sh(markers)),
                            tracked("ok", starts),
                        ],
                        "Deploy": [tracked("dep", starts)],
                    },
                    mode="PARALLEL",
                )
            )
        orch = procs(server.url, "o1", extra=["--role", "orchestrator"])
        procs(server.url, "r1", concurrency=8, extra=["--role", "runner"])
        eids: list[tuple[str, str]] = []
        retried: set[str] = set()

        async def retry_failed() -> int:
            """Play the user: retry every execution whose Build failed (once)."""
            n = 0
            for name in names:
                s = await engine.full_state(name)
                for eid, x in list(s.executions.items()):
                    if eid in retried or x.status != "Failed":
                        continue
                    if any(a.status == "InProgress" for a in x.latest_actions("Build")):
                        continue
                    await engine.retry_stage(name, "Build", eid, "FAILED_ACTIONS")
                    retried.add(eid)
                    n += 1
            return n

        async with anyio.create_task_group() as tg:

            async def user() -> None:
                while True:
                    await retry_failed()
                    await anyio.sleep(0.05)

            tg.start_soon(user)
            for i in range(30):
                name = names[i % len(names)]
                eids.append((name, await engine.start_execution(name)))
                await anyio.sleep(0.01)

            async def busy() -> bool:
                return len(retried) >= 8

            await wait_for(busy, "retries flowing", within=30)
            orch.kill9()  # mid-batch: retries requested, events flowing
            store = EventStore(client, engine.keys)
            for name in names:  # whatever the snapshot, load() catches up exactly
                await _assert_projection_equals_fold(store, name)
            await anyio.sleep(1.0)  # requests keep coming in while no orchestrator runs
            procs(server.url, "o1", extra=["--role", "orchestrator"])  # restart, same name
            await wait_for(lambda: _all_retried(retried, eids), "every execution retried", 40)
            for name, eid in eids:  # requested retries (some while o1 was down) get applied
                await wait_retried(engine, name, eid, "Build", within=40)
            xs = await wait_all(engine, eids, within=40)
            tg.cancel_scope.cancel()

        _check_ran_at_most_once(xs, starts)
        for x in xs.values():
            # every requested retry was applied, including those requested while no
            # orchestrator ran; the retried action then succeeded (or, on a box so loaded
            # that a runner missed its lease renewals, was declared lost, never run twice)
            assert x.stages["Build"].manualRetries == 1
            assert x.stages["Build"].pendingRetry is None
            retry = latest(x, "Build", "flaky")
            assert retry.status == "Succeeded" or retry.errorCode == ev.WORKER_LOST, retry
            if x.status != "Succeeded":
                assert any(a.errorCode == ev.WORKER_LOST for a in x.actions.values()), x
        assert Counter(x.status for x in xs.values())["Succeeded"] >= len(xs) // 2
        store = EventStore(client, engine.keys)

        async def snapshots_caught_up() -> bool:
            for name in names:
                snap = await store.load_snapshot(name)
                if snap is None or snap.headVersion != await store.head_version(name):
                    return False
            return True

        await wait_for(snapshots_caught_up, "snapshots of the final versions", within=10)
        for name in names:
            await _assert_projection_equals_fold(store, name)
            # dropped snapshots are rebuilt from the log with the identical result
            await store.drop_snapshot(name)
            await _assert_projection_equals_fold(store, name)
    finally:
        await client.aclose()


async def _all_retried(retried: set[str], eids: list[tuple[str, str]]) -> bool:
    return len(retried) == len(eids)


async def _assert_projection_equals_fold(store: EventStore, name: str) -> None:
    # events may still be flowing: compare at the version the load reached
    loaded = await PipelineRepository(store, cache=False).load(name)
    fresh = fold(name, await store.read(name, until=loaded.headVersion))
    assert loaded.headVersion == fresh.headVersion
    assert encode_head(loaded) == encode_head(fresh), name
    # and every execution read from its own stream is the one the fold of the whole log
    # gives up to that execution's last event (events may still be flowing meanwhile)
    repo = PipelineRepository(store, cache=False)
    for eid in await store.execution_ids(name, newest_first=False):
        s = await repo.load(name, [eid])
        x = s.executions[eid]
        upto = fold(name, await store.read(name, until=x.version)).executions[eid]
        assert msgspec.json.encode(x) == msgspec.json.encode(upto), (name, eid)
    snap = await store.load_snapshot(name)
    if snap is not None:  # the snapshot itself is the fold up to its version
        upto = fold(name, await store.read(name, until=snap.headVersion))
        assert encode_head(snap) == encode_head(upto), name


async def test_redis_with_aof_killed_and_restarted_under_running_workers(
    redis_factory: type[RedisServer], procs: StartWorker, tmp_path: Path
) -> None:
    server = redis_factory(tmp_path / "redis", appendonly=True)
    server.start()
    client = Redis.from_url(server.url)
    starts = tmp_path / "starts"
    names = _names_in_distinct_partitions(2, "aof")
    try:
        engine = make_engine(client)
        await engine.start()
        for name in names:
            await engine.create_pipeline(
                pipeline(
                    name,
                    {
                        "Build": [tracked("a", starts, "sleep 0.3"), tracked("b", starts)],
                        "Deploy": [tracked("dep", starts, "sleep 0.2")],
                    },
                    mode="PARALLEL",
                )
            )
        procs(server.url, "w1")
        procs(server.url, "w2")
        before = []
        for i in range(12):
            name = names[i % 2]
            before.append((name, await engine.start_execution(name)))

        async def some_running() -> bool:
            return len(started_ids(starts)) >= 6

        await wait_for(some_running, "actions running", within=20)
        server.kill()  # kill -9: whatever was acknowledged is in the AOF (fsync always)
        await anyio.sleep(1.5)
        server.start()  # same port, same directory: replays the AOF
        after = []
        for i in range(4):
            name = names[i % 2]
            after.append((name, await _retrying(lambda n=name: engine.start_execution(n))))
        xs = await wait_all(engine, before + after, within=60, tolerate_redis_down=True)

        _check_ran_at_most_once(xs, starts)
        for eid, x in xs.items():
            bad = [
                a
                for a in x.actions.values()
                if a.status == "Failed" and a.errorCode != ev.WORKER_LOST
            ]
            assert not bad, (eid, bad)
        assert all(x.status == "Succeeded" for _, e in after for x in [xs[e]])
        statuses = Counter(x.status for x in xs.values())
        assert statuses["Succeeded"] >= len(after), statuses
        # the log is intact: every seq once, each stream's hash chain verifies
        store = EventStore(client, engine.keys)
        from app.store.eventstore import chain_hash

        for name in names:
            raw = await store.read_raw(name)
            full = sorted(r.version for r in raw if not r.ref)
            assert full == list(range(1, len(full) + 1))
            prev: dict[str, str] = {}
            for r in raw:
                assert r.hash == chain_hash(prev.get(r.stream, ""), r.version, r.payload)
                prev[r.stream] = r.hash
    finally:
        await client.aclose()


async def _retrying(fn: Any, attempts: int = 50) -> Any:
    from redis.exceptions import ConnectionError as RedisConnectionError

    for _ in range(attempts):
        try:
            return await fn()
        except (RedisConnectionError, OSError):
            await anyio.sleep(0.1)
    return await fn()
