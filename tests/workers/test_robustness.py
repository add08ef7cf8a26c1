"""Runner robustness under contention and slowness (regression tests).

- a slow start (longer than claim_idle) is not "taken over" by the same worker: the action is
  not declared lost by its own runner;
- optimistic-concurrency conflicts (the repository giving up with ConflictException because
  other writers keep winning) never lose an action nor its result;
- a start slower than the lease (the reaper dropped it meanwhile) does not run the action
  without a lease: it is recorded WorkerLost, and retryable.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from app.domain import commands as c
from app.domain import events as ev
from app.domain.errors import DomainError
from app.repository import PipelineRepository
from tests.workers.helpers import (
    count,
    counted,
    latest,
    make_engine,
    pipeline,
    running,
    wait_retried,
    wait_status,
)

pytestmark = pytest.mark.timeout(60)


def _patch(repo: PipelineRepository, before: Callable[[c.Command], Any]) -> None:
    """Run ``await before(cmd)`` ahead of every command the worker's repository executes."""
    original = repo.execute

    async def execute(pipeline: str, cmd: c.Command, *args: Any, **kw: Any) -> Any:
        await before(cmd)
        return await original(pipeline, cmd, *args, **kw)

    repo.execute = execute  # type: ignore[method-assign]


async def test_a_slow_start_is_not_taken_over_by_the_same_worker(
    redis: Redis, tmp_path: Path
) -> None:
    c_ = tmp_path / "runs"
    engine = make_engine(redis)
    await engine.start()
    # the action outlasts the slow start: a takeover would run it while the first
    # handler, finding it started under its own name, declared it lost
    await engine.create_pipeline(pipeline("slowstart", {"Build": [counted("b", c_, "sleep 1.5")]}))
    async with running(redis, claim_idle_ms=200, claim_every_s=0.05) as worker:
        slowed = 0

        async def before(cmd: c.Command) -> None:
            nonlocal slowed
            if isinstance(cmd, c.StartAction) and slowed == 0:
                slowed += 1
                await anyio.sleep(1.0)  # the entry idles 5x claim_idle in this consumer

        _patch(worker.engine.repo, before)
        eid = await engine.start_execution("slowstart")
        x = await wait_status(engine, "slowstart", eid, "Succeeded", "Failed")
    assert slowed == 1
    assert x.status == "Succeeded", latest(x, "Build", "b")
    assert count(c_, "b") == 1


async def test_conflicts_never_lose_an_action_or_its_result(redis: Redis, tmp_path: Path) -> None:
    c_ = tmp_path / "runs"
    engine = make_engine(redis)
    await engine.start()
    await engine.create_pipeline(
        pipeline("conflicts", {"Build": [counted("b1", c_), counted("b2", c_)]})
    )
    refused: dict[str, int] = {}

    async def before(cmd: c.Command) -> None:
        # the repository gives up on a busy pipeline: ConflictException, 12 times per kind
        kind = type(cmd).__name__
        if isinstance(cmd, c.StartAction | c.CompleteAction) and refused.get(kind, 0) < 12:
            refused[kind] = refused.get(kind, 0) + 1
            raise DomainError(
                "ConflictException", "Pipeline is being changed concurrently", status=409
            )

    async with running(redis) as worker:
        _patch(worker.engine.repo, before)
        eid = await engine.start_execution("conflicts")
        x = await wait_status(engine, "conflicts", eid, "Succeeded", "Failed")
    assert refused == {"StartAction": 12, "CompleteAction": 12}
    assert x.status == "Succeeded"
    assert count(c_, "b1") == 1 and count(c_, "b2") == 1


async def test_a_start_slower_than_the_lease_is_handed_back_not_run(
    redis: Redis, tmp_path: Path
) -> None:
    c_ = tmp_path / "runs"
    engine = make_engine(redis)
    await engine.start()
    await engine.create_pipeline(pipeline("lease", {"Build": [counted("b", c_)]}))
    async with running(redis, lease_ttl_s=0.4, reap_every_s=0.05) as worker:
        slowed = 0

        async def before(cmd: c.Command) -> None:
            nonlocal slowed
            if isinstance(cmd, c.StartAction) and slowed == 0:
                slowed += 1
                await anyio.sleep(1.0)  # the lease expires and is reaped meanwhile

        _patch(worker.engine.repo, before)
        eid = await engine.start_execution("lease")
        x = await wait_status(engine, "lease", eid, "Failed")
        b = latest(x, "Build", "b")
        assert b.errorCode == ev.WORKER_LOST and b.worker == "w1"
        assert count(c_, "b") == 0  # never ran without a lease
        part = engine.keys.partition("lease")
        assert await redis.zcard(engine.keys.leases(part)) == 0

    async with running(redis, "w2"):  # a usual lease: a stall cannot fail the retry
        await engine.retry_stage("lease", "Build", eid, "FAILED_ACTIONS")
        await wait_retried(engine, "lease", eid, "Build")
        x = await wait_status(engine, "lease", eid, "Succeeded", "Failed")
    assert x.status == "Succeeded"
    assert count(c_, "b") == 1


async def test_a_reply_lost_after_the_start_was_recorded_does_not_lose_the_action(
    redis: Redis, tmp_path: Path
) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    c_ = tmp_path / "runs"
    engine = make_engine(redis)
    await engine.start()
    await engine.create_pipeline(pipeline("blip", {"Build": [counted("b", c_)]}))
    blips: list[str] = []
    async with running(redis) as worker:
        repo = worker.engine.repo
        original = repo.execute

        async def execute(pipeline: str, cmd: c.Command, *args: Any, **kw: Any) -> Any:
            out = await original(pipeline, cmd, *args, **kw)
            kind = type(cmd).__name__
            if isinstance(cmd, c.StartAction | c.CompleteAction) and kind not in blips:
                blips.append(kind)  # applied in Redis, but the reply never arrives
                raise RedisConnectionError("Connection closed by server.")
            return out

        repo.execute = execute  # type: ignore[method-assign]
        eid = await engine.start_execution("blip")
        x = await wait_status(engine, "blip", eid, "Succeeded", "Failed")
    assert blips == ["StartAction", "CompleteAction"]
    assert x.status == "Succeeded", latest(x, "Build", "b")
    assert count(c_, "b") == 1
    log = await engine.store.read("blip")
    assert len([e for e in log if isinstance(e.event, ev.ActionExecutionStarted)]) == 1
