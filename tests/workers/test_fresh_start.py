"""A first worker on a store that already has history does not replay the retained events
stream: a partition without a checkpoint whose stream is long is reconciled from the
projections (pending retries applied, ended attempts advanced past) and read from its end."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.workers.helpers import (
    count,
    counted,
    execution,
    make_engine,
    pipeline,
    running,
    wait_for,
    wait_status,
)
from workers.partition import FRESH_START_ENTRIES

pytestmark = pytest.mark.timeout(60)


async def test_a_fresh_owner_reconciles_instead_of_replaying(
    redis: Redis, tmp_path: Path
) -> None:
    engine = make_engine(redis)
    await engine.start()
    keys = engine.keys
    c = tmp_path / "runs"
    name = "old"
    part = keys.partition(name)
    await engine.create_pipeline(
        pipeline(name, {"Build": [counted("b", c)], "Deploy": [counted("d", c)]})
    )
    eid = await engine.start_execution(name)
    # history without any orchestrator: a runner runs Build and records its result, but
    # nobody decides what follows (the execution waits in Build)
    async with running(redis, "r1", roles=("runner",)):

        async def built() -> bool:
            x = await execution(engine, name, eid)
            return bool(x.actions) and all(a.status == "Succeeded" for a in x.actions.values())

        await wait_for(built, "Build's result recorded")
    assert (await execution(engine, name, eid)).stages["Build"].status == "InProgress"
    # a long retained stream; an owner reading it would park each of these (unreadable)
    for i in range(FRESH_START_ENTRIES + 200):
        await redis.xadd(keys.events(part), {"junk": str(i)})
    end = (await redis.xrevrange(keys.events(part), count=1))[0][0].decode()
    assert await redis.get(keys.checkpoint(part)) is None

    t0 = time.monotonic()
    async with running(redis, "w2"):  # orchestrator and runner
        x = await wait_status(engine, name, eid, "Succeeded", "Failed", within=20)
        took = time.monotonic() - t0
    assert x.status == "Succeeded"  # reconciled: advanced past Build, then Deploy ran
    assert count(c, "b") == 1 and count(c, "d") == 1
    # the reconciled partition started at the stream's end: nothing old was read
    assert await redis.xlen(keys.dead(part)) == 0
    ckpt = (await redis.get(keys.checkpoint(part))).decode()
    assert ckpt >= end
    print(f"fresh owner: execution finished {took:.2f}s after the worker started")
