"""A poison entry that brings its owner down (a crash, or an error the owner takes for
Redis going away) is counted across owner restarts in ``P:tries`` and parked once
``max_deliveries`` owners stopped on it; the partition then moves on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

import workers.partition as partition_mod
from app.domain import events as ev
from tests.workers.helpers import (
    count,
    counted,
    make_engine,
    pipeline,
    running,
    wait_for,
    wait_status,
)

pytestmark = pytest.mark.timeout(60)


async def test_an_entry_that_stops_its_owner_is_parked_after_restarts(
    redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(redis)
    await engine.start()
    keys = engine.keys
    poison = "poison"
    part = keys.partition(poison)
    sibling = next(n for n in (f"sib{i}" for i in range(1000)) if keys.partition(n) == part)
    real = partition_mod.reactions
    starts: list[int] = []

    def reactions(env: ev.Envelope) -> Any:
        if env.pipeline == poison:
            starts.append(1)
            raise RedisConnectionError("this entry takes its owner down")
        return real(env)

    monkeypatch.setattr(partition_mod, "reactions", reactions)
    c = tmp_path / "runs"
    await engine.create_pipeline(pipeline(sibling, {"Build": [counted("b", c)]}))
    async with running(redis, max_deliveries=3):
        await engine.create_pipeline(pipeline(poison, {"Build": [counted("p", c)]}))
        eid = await engine.start_execution(sibling)  # behind the poison entry

        async def parked() -> list[Any] | None:
            rows: Any = await redis.xrange(keys.dead(part))
            return rows or None

        rows = await wait_for(parked, "the poison entry parked", within=30)
        x = await wait_status(engine, sibling, eid, "Succeeded", "Failed")
    assert x.status == "Succeeded" and count(c, "b") == 1
    assert len(starts) == 3  # three owners stopped on it, the fourth parked it
    [(_, fields)] = rows
    reason = fields[b"_reason"].decode()
    assert "owners stopped 3 times" in reason
    assert fields[b"p"].decode() == poison
    assert await redis.hlen(keys.tries(part)) == 0  # nothing left counted
