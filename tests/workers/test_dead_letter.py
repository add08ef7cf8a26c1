"""Poison entries: parked in the partition's dead-letter stream after max_deliveries, with a
log line, without blocking the partition."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

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


def _fields(raw: dict[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }


async def test_poison_entries_are_parked_and_the_partition_moves_on(
    redis: Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="stageline.consumer")
    c = tmp_path / "runs"
    engine = make_engine(redis)
    await engine.start()
    keys = engine.keys
    name = "dl"
    part = keys.partition(name)
    await engine.create_pipeline(
        pipeline(name, {"Build": [counted("b", c)], "Deploy": [counted("dep", c)]})
    )
    async with running(redis, max_deliveries=3) as worker:
        # an orchestrator entry whose payload cannot be decoded, one without any of the
        # expected fields, and a run-queue entry that is not an event at all
        bad_event = await redis.xadd(
            keys.events(part), {"p": name, "v": "7", "t": "StageRetryRequested", "e": b"{no"}
        )
        no_fields = await redis.xadd(keys.events(part), {"junk": "1"})
        bad_run = await redis.xadd(keys.run(part), {"p": name, "v": "x", "e": b"[]"})
        # entries after the poison ones are still handled
        eid = await engine.start_execution(name)
        x = await wait_status(engine, name, eid, "Succeeded", "Failed")
        assert x.status == "Succeeded"
        assert count(c, "b") == 1 and count(c, "dep") == 1

        async def parked() -> list[Any] | None:
            rows: Any = await redis.xrange(keys.dead(part))
            return rows if len(rows) >= 3 else None

        rows = await wait_for(parked, "three parked entries", within=20)

        # the run-queue entry is acknowledged: nothing of it stays pending
        async def drained() -> bool:
            pending: Any = await redis.xpending(keys.run(part), "runners")
            return int(pending["pending"]) == 0

        await wait_for(drained, "runners to acknowledge all of the run queue", within=10)

        # the partition's owner went past the poison entries of the events stream
        async def passed() -> bool:
            ckpt: Any = await redis.get(keys.checkpoint(part))
            return ckpt is not None and _id(ckpt) > _id(no_fields)

        await wait_for(passed, "the owner's checkpoint past the poison entries", within=10)
        assert worker.config.max_deliveries == 3

    dead = [_fields(f) for _, f in rows]
    # entry ids are per stream (two streams may hand out the same id)
    by_id = {(d["_stream"], d["_id"]): d for d in dead}
    events, run = keys.events(part), keys.run(part)
    assert set(by_id) == {(events, _s(bad_event)), (events, _s(no_fields)), (run, _s(bad_run))}
    # an events entry that cannot be read is parked at once (reading it again cannot help);
    # a run-queue entry after max_deliveries
    assert by_id[(events, _s(bad_event))]["_reason"].startswith("unreadable")
    assert by_id[(events, _s(no_fields))]["_reason"].startswith("unreadable")
    assert by_id[(run, _s(bad_run))]["_reason"].startswith("delivered 3 times")
    assert by_id[(events, _s(bad_event))]["_group"] == "owner"
    assert by_id[(events, _s(bad_event))]["e"] == "{no"  # the original fields are kept
    assert by_id[(run, _s(bad_run))]["_group"] == "runners"
    lines = [r.getMessage() for r in caplog.records if "parked poison entry" in r.getMessage()]
    assert len(lines) == 3
    assert any(_s(bad_event) in line and keys.dead(part) in line for line in lines)


def _id(v: Any) -> tuple[int, int]:
    ms, _, n = _s(v).partition("-")
    return int(ms), int(n or 0)


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
