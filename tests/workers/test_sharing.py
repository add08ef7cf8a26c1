"""Two worker processes on one Redis share the partitions, and every action runs once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from app.domain import events as ev
from tests.redis_server import RedisServer
from tests.workers.conftest import StartWorker
from tests.workers.helpers import (
    PARTITIONS,
    flaky_per_execution_sh,
    make_engine,
    pipeline,
    started_ids,
    tracked,
    wait_all,
    wait_for,
    wait_retried,
)

pytestmark = [pytest.mark.redis_real, pytest.mark.timeout(120)]


async def test_two_worker_processes_share_the_partitions_and_run_each_action_once(
    redis_factory: type[RedisServer], procs: StartWorker, tmp_path: Path
) -> None:
    server = redis_factory(tmp_path / "redis")
    server.start()
    client = Redis.from_url(server.url)
    starts = tmp_path / "starts"
    markers = tmp_path / "markers"
    try:
        engine = make_engine(client)
        await engine.start()
        keys = engine.keys
        names = [f"share{i}" for i in range(6)]
        assert len({keys.partition(n) for n in names}) > 1
        for name in names:
            await engine.create_pipeline(
                pipeline(
                    name,
                    {
                        "Build": [
                            tracked("a", starts, "sleep 0.1"),
                            tracked("b", starts, flaky_per_execution_sh(markers)),
                        ],
                        "Test": [tracked("t1", starts), tracked("t2", starts, run_order=2)],
                    },
                    mode="PARALLEL",
                )
            )
        procs(server.url, "w1", concurrency=4)
        procs(server.url, "w2", concurrency=4)

        async def divided() -> bool:  # a joiner gets its share within a few ownership rounds
            holders = Counter()
            for p in range(PARTITIONS):
                owner: Any = await client.get(keys.owner(p))
                if owner is not None:
                    holders[_s(owner).rpartition("|")[0].split(".")[0]] += 1
            return sum(holders.values()) == PARTITIONS and set(holders) == {"w1", "w2"}

        await wait_for(divided, "the partitions divided between w1 and w2", within=40)
        eids = []
        for i in range(30):
            name = names[i % len(names)]
            eids.append((name, await engine.start_execution(name)))
        # every Build fails once (b); retry each: the orchestrators apply the retries
        xs = await wait_all(engine, eids, ("Failed",), within=60)
        for name, eid in eids:  # one at a time: whichever orchestrator is free applies it
            await _settled(engine, name, eid)
            await engine.retry_stage(name, "Build", eid, "FAILED_ACTIONS")
            await wait_retried(engine, name, eid, "Build", within=60)
        xs = await wait_all(engine, eids, ("Succeeded",), within=60)

        # every attempt ran exactly once (side effects), and every attempt is in the log
        started = Counter(started_ids(starts))
        attempts = [a for x in xs.values() for a in x.actions.values()]
        assert len(attempts) == 30 * 5  # a, b, b (retry), t1, t2
        assert {a.actionExecutionId for a in attempts} == set(started)
        assert set(started.values()) == {1}, [k for k, v in started.items() if v > 1]

        # both processes ran actions and both orchestrated
        runners = Counter(a.worker for a in attempts)
        assert set(runners) == {"w1", "w2"}, runners
        appliers: Counter[str] = Counter()
        for name in names:
            for env in await engine.store.read(name):
                if isinstance(env.event, ev.StageRetryStarted):
                    appliers[env.actor] += 1
        assert sum(appliers.values()) == 30
        assert set(appliers) == {"worker:w1", "worker:w2"}, appliers
        # the partitions are divided between the two (one owner each, both own some), every
        # owner read its partition's events to the end, and both consume every run queue
        owners: Counter[str] = Counter()
        for p in range(PARTITIONS):
            owner: Any = await client.get(keys.owner(p))
            holder = _s(owner).rpartition("|")[0]
            owners[holder.split(".")[0]] += 1

            async def caught_up(p: int = p) -> bool:
                last: Any = await client.xrevrange(keys.events(p), count=1)
                ckpt: Any = await client.get(keys.checkpoint(p))
                return not last or (ckpt is not None and _s(ckpt) == _s(last[0][0]))

            await wait_for(caught_up, f"the owner of partition {p} to read it all", within=20)
            consumers: Any = await client.xinfo_consumers(keys.run(p), "runners")
            assert {_s(c["name"]) for c in consumers} == {"w1", "w2"}

            async def drained(stream: str = keys.run(p)) -> bool:
                pending: Any = await client.xpending(stream, "runners")
                return int(pending["pending"]) == 0

            await wait_for(drained, f"runners to acknowledge all of {keys.run(p)}", within=20)
        assert set(owners) == {"w1", "w2"}, owners
        assert abs(owners["w1"] - owners["w2"]) <= 1, owners
    finally:
        await client.aclose()


async def _settled(engine: Any, name: str, eid: str) -> None:
    """Wait until nothing of Build runs any more (the retry is then certainly accepted)."""
    for _ in range(500):
        x = (await engine.full_state(name)).executions[eid]
        if not any(a.status == "InProgress" for a in x.latest_actions("Build")):
            return
        await anyio.sleep(0.02)
    raise AssertionError(f"{eid}: Build still running")


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
