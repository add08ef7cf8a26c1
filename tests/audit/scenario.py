"""A real-engine scenario for the audit tests: failures, manual retries of both modes, an
automatic retry, an approval and a stop, with GetPipelineState captured along the way.

No workers run: the test plays the runner (StartAction / CompleteAction) and the
orchestrator (ApplyStageRetry) through the repository, with the same commands they send.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from app import queries
from app.domain import commands as c
from app.domain.model import (
    ActionDeclaration,
    ActionTypeId,
    FailureConditions,
    PipelineDeclaration,
    RetryConfiguration,
    StageDeclaration,
)
from app.domain.state import copy_state
from app.engine import Engine
from app.repository import Origin
from app.store.keys import Keys

ROLE = "arn:aws:iam::123456789012:role/stageline"
COMMANDS = ActionTypeId(category="Compute", owner="AWS", provider="Commands", version="1")
APPROVAL = ActionTypeId(category="Approval", owner="AWS", provider="Manual", version="1")
T0 = 1_700_000_000.0
PARTITIONS = 8

ALICE = Origin(actor="AKIAALICE", requestId="req-create", source="10.0.0.1")
BOB = Origin(actor="AKIABOB", requestId="req-retry-failed", source="10.0.0.2")
CAROL = Origin(actor="cli:carol", requestId="req-retry-all", source="10.0.0.3")
DAVE = Origin(actor="AKIADAVE", requestId="req-approve")
ERIN = Origin(actor="AKIAERIN", requestId="req-stop")
RUNNER = Origin(actor="worker:w1")
ORCH = Origin(actor="worker:orch1")


def _cmd(name: str, run_order: int = 1) -> ActionDeclaration:
    return ActionDeclaration(
        name=name, actionTypeId=COMMANDS, runOrder=run_order, commands=["echo hi"]
    )


def declaration(name: str) -> PipelineDeclaration:
    return PipelineDeclaration(
        name=name,
        roleArn=ROLE,
        stages=[
            StageDeclaration(name="Source", actions=[_cmd("src")]),
            StageDeclaration(name="Build", actions=[_cmd("b1"), _cmd("b2"), _cmd("b3", 2)]),
            StageDeclaration(
                name="Approve",
                actions=[ActionDeclaration(name="gate", actionTypeId=APPROVAL, runOrder=1)],
            ),
            StageDeclaration(
                name="Deploy",
                actions=[_cmd("d1")],
                onFailure=FailureConditions(
                    result="RETRY",
                    retryConfiguration=RetryConfiguration(retryMode="FAILED_ACTIONS"),
                ),
            ),
        ],
    )


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@dataclass
class Capture:
    """What GetPipelineState returned at one moment, and where the log was then.

    ``version``: the pipeline's sequence counter then; ``live``: the state the engine
    served (its head and the latest executions); ``state``: every execution, folded from
    every stream then (``Engine.full_state``)."""

    version: int
    time: float
    document: dict[str, Any]
    live: Any
    state: Any


@dataclass
class Scenario:
    engine: Engine
    name: str
    exec1: str = ""
    exec2: str = ""
    captures: list[Capture] = field(default_factory=list)

    async def capture(self) -> Capture:
        s = await self.engine.pipeline(self.name)
        cap = Capture(
            await self.engine.store.version(self.name),
            self.engine.repo.clock(),
            queries.get_pipeline_state(s),
            copy_state(s),
            await self.engine.full_state(self.name),
        )
        self.captures.append(cap)
        return cap

    async def attempt(self, eid: str, action: str) -> str:
        s = await self.engine.repo.load(self.name)
        x = s.executions[eid]
        for run in x.stages.values():
            if action in run.latest:
                return run.latest[action]
        raise AssertionError(f"no attempt of {action}")

    async def run(self, eid: str, action: str, ok: bool = True, error: str = "") -> None:
        """Play the runner: take the latest attempt of ``action`` and record its result
        (with command ids, so the command-id table has something to restore)."""
        aid = await self.attempt(eid, action)
        repo = self.engine.repo
        await repo.execute(
            self.name,
            c.StartAction(executionId=eid, actionExecutionId=aid, worker="w1"),
            RUNNER,
            command_id=f"start-{aid}",
        )
        await repo.execute(
            self.name,
            c.CompleteAction(
                executionId=eid,
                actionExecutionId=aid,
                succeeded=ok,
                errorCode=None if ok else "JobFailed",
                message=error or None,
                summary="done" if ok else None,
                worker="w1",
            ),
            RUNNER,
            command_id=f"complete-{aid}",
        )

    async def apply_retry(self, eid: str, stage: str) -> None:
        """Play the orchestrator: apply the pending retry."""
        await self.engine.repo.execute(
            self.name, c.ApplyStageRetry(executionId=eid, stageName=stage), ORCH
        )


async def build(redis: Redis, name: str = "audited", audit_key: bytes | None = None) -> Scenario:
    engine = Engine(redis, Keys(partitions=PARTITIONS), audit_key=audit_key)
    engine.repo.clock = Clock()
    await engine.start()
    sc = Scenario(engine, name)
    await engine.create_pipeline(declaration(name), ALICE)
    eid = sc.exec1 = await engine.start_execution(name, ALICE)
    await sc.run(eid, "src")
    await sc.run(eid, "b2")
    await sc.run(eid, "b1", ok=False, error="tests failed")  # Build fails, execution fails
    await sc.capture()  # 0: execution Failed in Build

    await engine.retry_stage(name, "Build", eid, "FAILED_ACTIONS", BOB)
    await sc.capture()  # 1: retry requested, not applied yet
    await sc.apply_retry(eid, "Build")  # b1 attempt 2
    await sc.run(eid, "b1", ok=False, error="tests failed again")

    await engine.retry_stage(name, "Build", eid, "ALL_ACTIONS", CAROL)
    await sc.apply_retry(eid, "Build")  # b1 attempt 3, b2 attempt 2
    await sc.run(eid, "b1")
    await sc.run(eid, "b2")
    await sc.run(eid, "b3")  # Build succeeds, Approve entered
    cap = await sc.capture()  # 2: waiting for approval
    await engine.store.save_snapshot(cap.live)  # a live projection to compare with

    s = await engine.repo.load(name)
    gate = s.executions[eid].actions[await sc.attempt(eid, "gate")]
    assert gate.token is not None
    await engine.put_approval(name, "Approve", "gate", gate.token, "Approved", "lgtm", DAVE)
    await sc.run(eid, "d1", ok=False, error="deploy flaked")  # automatic retry
    await sc.run(eid, "d1")  # execution Succeeded
    await sc.capture()  # 3

    eid2 = sc.exec2 = await engine.start_execution(name, ALICE)
    await engine.stop_execution(name, eid2, reason="not today", origin=ERIN)  # stop and wait
    await sc.run(eid2, "src")  # the running action ends: Stopped
    await sc.capture()  # 4
    return sc
