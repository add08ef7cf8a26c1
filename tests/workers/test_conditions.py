"""Workers evaluate stage conditions: Commands rules run by runners (their lease, a lost
runner), onFailure conditions deciding an automatic retry, deferred deployment windows woken
by the partition's owner at the repository's (injected) clock. On fakeredis and a real Redis.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from redis.asyncio import Redis

from app.domain.model import FailureConditions, PipelineDeclaration, RetryConfiguration
from app.engine import Engine
from app.repository import PipelineRepository
from app.store.eventstore import EventStore
from app.store.keys import Keys
from tests.workers.helpers import (
    PARTITIONS,
    count,
    counted,
    execution,
    fast_config,
    pipeline,
    wait_for,
    wait_status,
)
from workers.service import Worker

pytestmark = pytest.mark.timeout(60)

SATURDAY = datetime(2026, 12, 5, 12, 0, tzinfo=UTC).timestamp()
MONDAY = datetime(2026, 12, 7, 9, 0, tzinfo=UTC).timestamp()


def rule(name: str, provider: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "ruleTypeId": {"category": "Rule", "owner": "AWS", "provider": provider, "version": "1"},
        **extra,
    }


def with_conditions(d: PipelineDeclaration, stage: str, **conds: Any) -> PipelineDeclaration:
    return msgspec.structs.replace(
        d,
        stages=[msgspec.structs.replace(s, **conds) if s.name == stage else s for s in d.stages],
    )


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def engine_with(redis: Redis, clock: Clock | None = None) -> Engine:
    keys = Keys(partitions=PARTITIONS)
    repo = PipelineRepository(EventStore(redis, keys), **({"clock": clock} if clock else {}))
    return Engine(redis, keys, repository=repo)


async def test_commands_rule_runs_on_a_runner(redis: Redis, tmp_path: Path) -> None:
    c = tmp_path / "runs"
    engine = engine_with(redis)
    await engine.start()
    d = pipeline("gated", {"Source": [counted("src", c)], "Deploy": [counted("dep", c)]})
    gate = tmp_path / "gate.ran"
    d = with_conditions(
        d,
        "Deploy",
        beforeEntry={
            "conditions": [
                {
                    "result": "FAIL",
                    "rules": [
                        rule("gate", "Commands", commands=[f"touch {gate}", "test -f " + str(gate)])
                    ],
                }
            ]
        },
        onSuccess={
            "conditions": [
                {"result": "FAIL", "rules": [rule("after", "Commands", commands=["exit 4"])]}
            ]
        },
    )
    await engine.create_pipeline(d)
    worker = Worker(engine_with(redis), fast_config(redis))
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        try:
            eid = await engine.start_execution("gated")
            x = await wait_status(engine, "gated", eid, "Failed", within=30)
        finally:
            worker.stop()
    assert gate.exists() and count(c, "dep") == 1
    kinds = {k.conditionType: k for k in x.conditions.values()}
    assert kinds["BEFORE_ENTRY"].status == "Succeeded"
    assert kinds["ON_SUCCESS"].status == "Failed"
    (after,) = [x.rules[r] for r in kinds["ON_SUCCESS"].rules]
    assert after.status == "Failed" and after.worker == "w1"
    assert after.errorCode and "4" in (after.errorMessage or "")
    assert "onSuccess condition was not met" in (x.statusSummary or "")
    assert not await redis.zcard(engine.keys.leases(engine.keys.partition("gated")))


async def test_on_failure_condition_decides_the_automatic_retry(
    redis: Redis, tmp_path: Path
) -> None:
    c = tmp_path / "runs"
    engine = engine_with(redis)
    await engine.start()
    flaky = tmp_path / "flaky"
    base = pipeline(
        "auto",
        {"Build": [counted("b", c, f"test -f {flaky} || {{ touch {flaky}; exit 1; }}")]},
    )
    on_failure = FailureConditions(
        result="RETRY",
        retryConfiguration=RetryConfiguration(retryMode="FAILED_ACTIONS"),
        conditions=[{"rules": [rule("allowed", "Commands", commands=["true"])]}],
    )
    await engine.create_pipeline(with_conditions(base, "Build", onFailure=on_failure))
    worker = Worker(engine_with(redis), fast_config(redis))
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        try:
            eid = await engine.start_execution("auto")
            x = await wait_status(engine, "auto", eid, "Succeeded", within=30)
        finally:
            worker.stop()
    assert count(c, "b") == 2 and x.stages["Build"].autoRetries == 1
    (k,) = x.conditions.values()
    assert (k.conditionType, k.status) == ("ON_FAILURE", "Succeeded")


async def test_deferred_window_woken_by_the_owner_at_the_injected_clock(
    redis: Redis, tmp_path: Path
) -> None:
    c = tmp_path / "runs"
    clock = Clock(SATURDAY)
    engine = engine_with(redis, clock)
    await engine.start()
    d = pipeline("win", {"Source": [counted("src", c)], "Deploy": [counted("dep", c)]})
    hours = rule("hours", "DeploymentWindow", configuration={"Cron": "* * 9-17 ? * MON-FRI"})
    d = with_conditions(
        d, "Deploy", beforeEntry={"conditions": [{"result": "FAIL", "rules": [hours]}]}
    )
    await engine.create_pipeline(d)
    worker = Worker(engine_with(redis, clock), fast_config(redis))
    part = engine.keys.partition("win")
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        try:
            eid = await engine.start_execution("win")

            async def deferred() -> bool:
                return bool(await redis.zcard(engine.keys.due(part)))

            await wait_for(deferred, "the owner recorded the deferred rule")
            await anyio.sleep(0.8)  # owner rounds at a clock before the window: still closed
            x = await execution(engine, "win", eid)
            assert x.status == "InProgress" and count(c, "dep") == 0
            (r,) = x.rules.values()
            assert r.status == "InProgress" and r.until == MONDAY
            clock.now = MONDAY + 5
            x = await wait_status(engine, "win", eid, "Succeeded", within=30)
        finally:
            worker.stop()
    assert count(c, "dep") == 1
    (r,) = x.rules.values()
    assert r.status == "Succeeded"
    assert not await redis.zcard(engine.keys.due(part))


async def test_reconcile_settles_ended_rules_and_records_deferred_ones(redis: Redis) -> None:
    """A partition taken over without a checkpoint decides from the projections."""
    from app.domain import commands as cmds
    from workers import due

    clock = Clock(SATURDAY)
    engine = engine_with(redis, clock)
    await engine.start()
    base = pipeline("rec", {"Source": [counted("src", Path("/dev/null"))]})
    hours = rule("hours", "DeploymentWindow", configuration={"Cron": "* * 9-17 ? * MON-FRI"})
    gate = rule("gate", "Commands", commands=["true"])
    await engine.create_pipeline(
        with_conditions(
            base, "Source", beforeEntry={"conditions": [{"result": "FAIL", "rules": [hours, gate]}]}
        )
    )
    eid = await engine.start_execution("rec")
    part = engine.keys.partition("rec")
    x = await execution(engine, "rec", eid)
    assert await due.reconcile(engine, part, "rec", x) == []
    rows = await redis.zrange(engine.keys.due(part), 0, -1, withscores=True)
    assert [(m.decode() if isinstance(m, bytes) else m).split("\x1f")[0] for m, _ in rows] == [
        "rec"
    ]
    assert rows[0][1] == MONDAY * 1000
    gate_id = next(r.ruleExecutionId for r in x.rules.values() if r.ruleName == "gate")
    await engine.repo.execute(
        "rec",
        cmds.CompleteRule(
            executionId=eid, ruleExecutionId=gate_id, succeeded=False, consequences=False
        ),
    )
    x = await execution(engine, "rec", eid)
    assert await due.reconcile(engine, part, "rec", x) == [
        cmds.SettleCondition(executionId=eid, ruleExecutionId=gate_id)
    ]
