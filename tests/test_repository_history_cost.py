"""What a worker pays for a pipeline's history: bounded, however long it is.

1. Tasks of one process that need the same uncached pipeline at once (a worker's 16 runner
   tasks right after it starts, a pipeline without a snapshot yet) load it once: each of
   them used to fold the whole head stream on its own (16 folds of 66,000 entries at 10,000
   past executions: seconds of CPU before the first action ran).
2. A command refused on a cached state costs a bounded number of Redis round trips, however
   many executions the cache folded.

For 2: a worker's partition owner folds every event of its partition into the repository's cache
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

import anyio
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


async def test_concurrent_loads_of_an_uncached_pipeline_fold_its_head_once(
    any_redis: Redis,
) -> None:
    name = "herd"
    api = Engine(any_redis, Keys(partitions=4), concurrency_limit=1000)
    await api.start()
    await api.create_pipeline(_declaration(name))
    for _ in range(60):  # a head stream of a few hundred entries, no snapshot
        eid = await api.start_execution(name, trigger_detail="past")
        aid = await _action_of(api, name, eid)
        await api.repo.execute(
            name, c.CompleteAction(executionId=eid, actionExecutionId=aid, succeeded=True)
        )
    assert await api.store.load_snapshot(name) is None
    head = await api.store.head_version(name)

    worker = Engine(any_redis, Keys(partitions=4))  # a new process: nothing cached
    read = worker.store.read_head
    folded = [0]

    async def read_head(*args: Any, **kwargs: Any) -> Any:
        items = await read(*args, **kwargs)
        folded[0] += len(items)
        return items

    worker.store.read_head = read_head  # type: ignore[method-assign]
    states: list[Any] = []

    async def load() -> None:
        states.append(await worker.repo.load(name))

    async with anyio.create_task_group() as tg:
        for _ in range(16):
            tg.start_soon(load)
    assert len(states) == 16
    assert all(st is states[0] for st in states)  # one cached state, caught up
    assert states[0].headVersion == head
    entries = int(await any_redis.xlen(worker.keys.log(name)))
    assert entries > 100
    assert folded[0] == entries, f"{folded[0]} head entries read by 16 loads of {entries}"
    assert worker.repo._loading == {}
