"""Graceful shutdown of an in-process Worker.

``stop()`` stops reading work and lets running actions finish within ``shutdown_grace_s``;
past the grace, or with ``stop(now=True)``, running actions are cancelled (their process
groups killed) and handed back: recorded Failed/WorkerLost, retryable like any failure.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from app.domain import events as ev
from tests.workers.helpers import (
    count,
    counted,
    execution,
    fast_config,
    latest,
    make_engine,
    pipeline,
    q,
    running,
    wait_file,
    wait_for,
    wait_retried,
    wait_status,
)
from workers.service import Worker

pytestmark = pytest.mark.timeout(60)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


async def _pending(redis: Redis, stream: str, group: str) -> int:
    info: Any = await redis.xpending(stream, group)
    return int(info["pending"])


async def test_stop_lets_a_running_action_finish_within_the_grace(
    redis: Redis, tmp_path: Path
) -> None:
    c = tmp_path / "runs"
    pid = tmp_path / "pid"
    engine = make_engine(redis)
    await engine.start()
    await engine.create_pipeline(
        pipeline(
            "grace",
            {
                "Build": [counted("b", c, f"echo $$ > {q(pid)}; sleep 0.8")],
                "Deploy": [counted("dep", c)],
            },
        )
    )
    worker = Worker(make_engine(redis), fast_config(redis, "w1", shutdown_grace_s=10.0))
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        eid = await engine.start_execution("grace")
        await wait_file(pid)
        t0 = anyio.current_time()
        worker.stop()
    took = anyio.current_time() - t0
    assert took < 5.0, f"stop took {took:.1f}s"

    x = await execution(engine, "grace", eid)
    b = latest(x, "Build", "b")
    assert b.status == "Succeeded", b  # finished and recorded after stop()
    assert count(c, "b") == 1
    # the worker took no new work after stop(): Deploy is scheduled, not run
    assert x.status == "InProgress" and latest(x, "Deploy", "dep").worker is None
    assert count(c, "dep") == 0

    # another worker carries on with what was left
    async with running(redis, "w2"):
        x = await wait_status(engine, "grace", eid, "Succeeded", "Failed")
    assert x.status == "Succeeded"
    assert latest(x, "Deploy", "dep").worker == "w2"
    assert count(c, "b") == 1 and count(c, "dep") == 1


@pytest.mark.parametrize("how", ["now", "grace_exceeded"])
async def test_stop_hands_back_a_running_action_as_worker_lost_and_it_is_retryable(
    redis: Redis, tmp_path: Path, how: str
) -> None:
    c = tmp_path / "runs"
    pid = tmp_path / "pid"
    go = tmp_path / "go"
    engine = make_engine(redis)
    await engine.start()
    # runs forever on the first attempt; once `go` exists it succeeds at once
    long = f"[ -f {q(go)} ] && exit 0; echo $$ > {q(pid)}; exec sleep 30"
    await engine.create_pipeline(
        pipeline("handback", {"Build": [counted("long", c, long)], "Deploy": [counted("dep", c)]})
    )
    grace = 0.5 if how == "grace_exceeded" else 30.0
    worker = Worker(make_engine(redis), fast_config(redis, "w1", shutdown_grace_s=grace))
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        eid = await engine.start_execution("handback")
        await wait_file(pid)
        action_pid = int(pid.read_text())
        t0 = anyio.current_time()
        worker.stop(now=how == "now")
    took = anyio.current_time() - t0
    assert took < 5.0, f"stop took {took:.1f}s"
    if how == "grace_exceeded":
        assert took >= grace

    x = await execution(engine, "handback", eid)
    a = latest(x, "Build", "long")
    assert a.status == "Failed" and a.errorCode == ev.WORKER_LOST
    assert "shut down" in (a.errorMessage or "")
    assert x.status == "Failed" and x.stages["Build"].status == "Failed"

    async def gone() -> bool:
        return not _alive(action_pid)

    await wait_for(gone, "the action's process to be killed", within=5)
    keys = engine.keys
    part = keys.partition("handback")
    assert await _pending(redis, keys.run(part), "runners") == 0  # handed back, not pending
    assert await redis.zcard(keys.leases(part)) == 0  # lease released

    go.touch()
    async with running(redis, "w2"):
        await engine.retry_stage("handback", "Build", eid, "FAILED_ACTIONS")
        await wait_retried(engine, "handback", eid, "Build")
        x = await wait_status(engine, "handback", eid, "Succeeded", "Failed")
    assert x.status == "Succeeded"
    long_attempts = [y for y in x.actions.values() if y.actionName == "long"]
    assert sorted(y.status for y in long_attempts) == ["Failed", "Succeeded"]
    assert count(c, "long") == 2 and count(c, "dep") == 1
