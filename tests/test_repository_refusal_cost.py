"""A command refused on a cached state costs a bounded number of Redis round trips, however
many executions the cache folded.

A worker's partition owner folds every event of its partition into the repository's cache
and bounds that cache only after it commits a reaction. Catching up with a long stretch of
history that needs no reaction (a store written without workers, the ``growth``
benchmark) left thousands of executions in the cache; a refused command (a runner's start
of an action that had already ended: a stale run entry) then checked each cached execution
against the store with one round trip each (``PipelineRepository._drop_if_ahead``): at
10,000 past executions a worker handled a few stale runs per second. The check is now
bounded (the cache is trimmed as after every append) and pipelined, and still finds a cached
execution that is ahead of the store.
"""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from app.domain import commands as c
from app.domain.errors import DomainError
from app.domain.model import ActionDeclaration, ActionTypeId, PipelineDeclaration, StageDeclaration
from app.engine import Engine
from app.repository import KEEP_RECENT
from app.store.keys import Keys

COMMANDS = ActionTypeId(category="Compute", owner="AWS", provider="Commands", version="1")
PAST = 150  # more than KEEP_RECENT + the in-play ones: the old check cost > PAST round trips


def _declaration(name: str) -> PipelineDeclaration:
    return PipelineDeclaration(
        name=name,
        roleArn="arn:aws:iam::123456789012:role/x",
        executionMode="PARALLEL",
        stages=[
            StageDeclaration(
                name="Build",
                actions=[ActionDeclaration(name="a0", actionTypeId=COMMANDS, commands=["true"])],
            )
        ],
    )


def _count_round_trips(client: Any) -> list[int]:
    """Count what ``client`` sends: each command, and each pipeline once (one round trip)."""
    sent = [0]
    plain = client.execute_command
    make_pipeline = client.pipeline

    async def execute_command(*args: Any, **kwargs: Any) -> Any:
        sent[0] += 1
        return await plain(*args, **kwargs)

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = make_pipeline(*args, **kwargs)
        run = pipe.execute

        async def execute(*a: Any, **k: Any) -> Any:
            sent[0] += 1
            return await run(*a, **k)

        pipe.execute = execute
        return pipe

    client.execute_command = execute_command
    client.pipeline = pipeline
    return sent


async def _action_of(engine: Engine, name: str, eid: str) -> str:
    _, x = await engine.execution(name, eid)
    return next(iter(x.actions))


async def test_a_refusal_on_a_big_cache_is_checked_in_bounded_round_trips(
    any_redis: Redis,
) -> None:
    name = "refused"
    api = Engine(any_redis, Keys(partitions=4), concurrency_limit=1000)
    await api.start()
    await api.create_pipeline(_declaration(name))
    ended: list[tuple[str, str]] = []
    for _ in range(PAST):  # past executions, their action completed: nothing in play
        eid = await api.start_execution(name, trigger_detail="past")
        aid = await _action_of(api, name, eid)
        await api.repo.execute(
            name, c.CompleteAction(executionId=eid, actionExecutionId=aid, succeeded=True)
        )
        ended.append((eid, aid))
    running = await api.start_execution(name, trigger_detail="running")  # in play

    # a second process (a worker) whose cache folded all of it
    worker = Engine(any_redis, Keys(partitions=4))
    everything = [eid for eid, _ in ended] + [running]
    s = await worker.repo.load(name, everything)
    assert len(s.executions) == PAST + 1
    # ... and is ahead of the store for the running execution (lost writes)
    s.executions[running].version += 1000

    sent = _count_round_trips(any_redis)
    healed = worker.repo.healed
    eid, aid = ended[0]  # a stale run entry: its action ended long ago
    with pytest.raises(DomainError):
        await worker.repo.execute(
            name, c.StartAction(executionId=eid, actionExecutionId=aid, worker="w")
        )
    assert sent[0] <= 12, f"{sent[0]} round trips for one refused command"
    # the execution ahead of the store was found and dropped (it is in play: kept by trim)
    assert worker.repo.healed == healed + 1
    cached = worker.repo.cached(name)
    assert cached is not None
    assert running not in cached.executions or cached.executions[running].version < 1000
    assert len(cached.executions) <= len(cached.active) + KEEP_RECENT + 1
