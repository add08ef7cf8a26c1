"""``decide`` is pure: it never mutates the state passed in and is deterministic."""

from __future__ import annotations

import msgspec
import pytest

from app.domain import commands as c
from app.domain.decide import decide
from app.domain.errors import DomainError
from app.domain.state import copy_state, fold
from tests.domain.helpers import Harness, IdGen, make_ctx, make_decl

DECL = {
    "Source": ["src"],
    "Build": [("b1", 1), ("b2", 1), ("job", 1, "custom"), ("b3", 2)],
    "Gate": [("ok", 1, "approval")],
}
UNKNOWN = "ffffffff-ffff-4fff-8fff-ffffffffffff"


def scenario() -> tuple[Harness, dict[str, str]]:
    h = Harness()
    h.create(make_decl(DECL, mode="PARALLEL", auto_retry={"Gate": "ALL_ACTIONS"}), limit=8)
    ids: dict[str, str] = {}
    ids["failed"] = h.to_build()
    h.fail(ids["failed"], "b1")
    ids["pending"] = h.to_build()
    h.fail(ids["pending"], "b2")
    h.retry(ids["pending"], "Build", "FAILED_ACTIONS")
    ids["stopping"] = h.to_build()
    h.stop(ids["stopping"])
    ids["running"] = h.to_build()
    job = h.action(ids["running"], "job")
    h.run(
        c.StartAction(
            executionId=ids["running"], actionExecutionId=h.aid(ids["running"], "b1"), worker="w"
        )
    )
    assert job.jobId and job.jobNonce
    ids["gate"] = h.to_build()
    h.succeed(ids["gate"], "b1", "b2", "job", "b3")
    assert h.x(ids["gate"]).currentStage == "Gate"
    return h, ids


def _cmds(h: Harness, ids: dict[str, str]) -> list[c.Command]:
    r, f, p, s, g = ids["running"], ids["failed"], ids["pending"], ids["stopping"], ids["gate"]
    job = h.action(r, "job")
    return [
        c.CompleteAction(executionId=r, actionExecutionId=h.aid(r, "b1"), succeeded=True),
        c.CompleteAction(executionId=r, actionExecutionId=h.aid(r, "b1"), succeeded=False),
        c.CompleteAction(executionId=f, actionExecutionId=h.aid(f, "b2"), succeeded=True),
        c.CompleteAction(executionId=s, actionExecutionId=h.aid(s, "b2"), succeeded=False),
        c.CompleteAction(
            executionId=r, actionExecutionId=job.actionExecutionId, succeeded=True, jobId="j"
        ),
        c.AcknowledgeJob(
            executionId=r,
            actionExecutionId=job.actionExecutionId,
            jobId=job.jobId or "",
            nonce=job.jobNonce or "",
        ),
        c.AcknowledgeJob(
            executionId=r, actionExecutionId=job.actionExecutionId, jobId=job.jobId or "", nonce=""
        ),
        c.StartAction(executionId=r, actionExecutionId=h.aid(r, "b2"), worker="w2"),
        c.StartAction(executionId=r, actionExecutionId=h.aid(r, "b1"), worker="w2"),
        c.LoseAction(executionId=r, actionExecutionId=h.aid(r, "b1")),
        c.LoseAction(executionId=f, actionExecutionId=h.aid(f, "b2")),
        c.LoseAction(executionId=r, actionExecutionId=h.aid(r, "b1"), consequences=False),
        c.CompleteAction(
            executionId=r, actionExecutionId=h.aid(r, "b2"), succeeded=False, consequences=False
        ),
        c.Advance(executionId=f, actionExecutionId=h.aid(f, "b1")),
        c.Advance(executionId=r, actionExecutionId=h.aid(r, "b1")),
        c.RetryStage(executionId=f, stageName="Build", retryMode="FAILED_ACTIONS"),
        c.RetryStage(executionId=f, stageName="Build", retryMode="ALL_ACTIONS"),
        c.RetryStage(executionId=p, stageName="Build", retryMode="FAILED_ACTIONS"),
        c.RetryStage(executionId=r, stageName="Build", retryMode="FAILED_ACTIONS"),
        c.RetryStage(executionId=UNKNOWN, stageName="Build", retryMode="FAILED_ACTIONS"),
        c.ApplyStageRetry(executionId=p, stageName="Build"),
        c.ApplyStageRetry(executionId=f, stageName="Build"),
        c.StopExecution(executionId=r),
        c.StopExecution(executionId=r, abandon=True),
        c.StopExecution(executionId=s),
        c.StopExecution(executionId=s, abandon=True),
        c.StopExecution(executionId=f),
        c.StartExecution(executionId=UNKNOWN),
        c.StartExecution(executionId=UNKNOWN, clientRequestToken="t"),
        c.PutApproval(stageName="Gate", actionName="ok", token="bad", status="Approved"),
        c.UpdatePipeline(declaration=make_decl(DECL)),
        c.UpdatePipeline(declaration=make_decl(DECL, name="wrong")),
        c.CreatePipeline(declaration=make_decl(DECL)),
        c.DeletePipeline(),
        # stage conditions (their own scenarios: tests/domain/test_conditions.py)
        c.StartRule(executionId=r, ruleExecutionId=UNKNOWN, worker="w"),
        c.CompleteRule(executionId=r, ruleExecutionId=UNKNOWN, succeeded=True),
        c.SettleCondition(executionId=r, ruleExecutionId=UNKNOWN),
        c.EvaluateRule(executionId=r, ruleExecutionId=UNKNOWN),
        c.OverrideCondition(executionId=r, stageName="Build", conditionType="BEFORE_ENTRY"),
        c.PutApproval(
            stageName="Gate",
            actionName="ok",
            token=h.action(g, "ok").token or "",
            status="Approved",
        ),
        c.PutApproval(
            stageName="Gate",
            actionName="ok",
            token=h.action(g, "ok").token or "",
            status="Rejected",
        ),
        c.DisableStageTransition(stageName="Gate", transitionType="Inbound", reason="hold"),
        c.DisableStageTransition(stageName="Build", transitionType="Outbound", reason="hold"),
        c.EnableStageTransition(stageName="Gate", transitionType="Inbound"),
        c.RollbackStage(rollbackExecutionId=UNKNOWN, stageName="Build", targetExecutionId=g),
    ]


def _all_cases() -> list[tuple[str, int]]:
    h, ids = scenario()
    return [(type(cmd).__name__, i) for i, cmd in enumerate(_cmds(h, ids))]


@pytest.mark.parametrize(("name", "index"), _all_cases(), ids=lambda v: str(v))
def test_decide_never_mutates_state(name: str, index: int) -> None:
    h, ids = scenario()
    cmd = _cmds(h, ids)[index]
    state = h.state
    before = msgspec.json.encode(state)
    snapshot = copy_state(state)
    try:
        envs = decide(state, cmd, make_ctx(IdGen(prefix=0xA)))
    except DomainError:
        envs = []
    assert msgspec.json.encode(state) == before
    assert state == snapshot
    # the events, folded onto a copy, give the state decide worked towards; again no mutation
    after = fold(state.name, envs, copy_state(state))
    assert msgspec.json.encode(state) == before
    if envs:
        assert after.version == state.version + len(envs)


@pytest.mark.parametrize("index", range(len(_all_cases())))
def test_decide_is_deterministic(index: int) -> None:
    h, ids = scenario()
    cmd = _cmds(h, ids)[index]

    def once() -> bytes | str:
        try:
            envs = decide(h.state, cmd, make_ctx(IdGen(prefix=0xB)))
        except DomainError as e:
            return f"{e.type_name}: {e.message}"
        return msgspec.json.encode(envs)

    assert once() == once()


def test_every_command_type_is_exercised() -> None:
    h, ids = scenario()
    kinds = {type(cmd) for cmd in _cmds(h, ids)}
    expected = set(c.Command.__subclasses__())
    assert expected - kinds == set()
