"""Execution modes: SUPERSEDED, QUEUED, PARALLEL, and check 5 (NotLatest) in each."""

from __future__ import annotations

import pytest

from app.domain import commands as cm
from app.domain import events as ev
from app.domain.model import StageRetryMode
from tests.domain.helpers import Harness, make_decl, of_type, types

THREE = {"Source": ["src"], "Build": [("b1", 1), ("b2", 1)], "Deploy": ["d"]}


def pipeline(mode: str | None) -> Harness:
    h = Harness()
    h.create(make_decl(THREE, mode=mode))
    return h


def test_default_mode_is_superseded() -> None:
    h = pipeline(None)
    assert h.state.declaration is not None
    assert h.state.declaration.executionMode == "SUPERSEDED"
    assert h.state.declaration.version == 1
    assert h.state.declaration.pipelineType == "V2"


# --- check 5 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["SUPERSEDED", "QUEUED"])
@pytest.mark.parametrize("retry_mode", ["FAILED_ACTIONS", "ALL_ACTIONS"])
def test_not_latest_when_later_execution_entered_stage(
    mode: str, retry_mode: StageRetryMode
) -> None:
    h = pipeline(mode)
    a = h.start()
    h.succeed(a, "src")
    h.fail(a, "b1")
    h.succeed(a, "b2")
    b = h.start()
    h.succeed(b, "src")
    assert h.x(b).currentStage == "Build"  # the failure released Build
    assert h.state.stageLatest["Build"] == b
    err = h.retry_error(a, "Build", retry_mode)
    assert err.type_name == "NotLatestPipelineExecutionException"
    assert b in err.message
    # and when B later fails there, B is the one that may be retried
    h.fail(b, "b1")
    h.succeed(b, "b2")
    assert types(h.retry(b, "Build", retry_mode)) == ["StageRetryRequested"]


@pytest.mark.parametrize("retry_mode", ["FAILED_ACTIONS", "ALL_ACTIONS"])
def test_parallel_same_scenario_accepted(retry_mode: StageRetryMode) -> None:
    h = pipeline("PARALLEL")
    a = h.start()
    h.succeed(a, "src")
    h.fail(a, "b1")
    h.succeed(a, "b2")
    b = h.start()
    h.succeed(b, "src")
    assert h.state.stageLatest["Build"] == b
    envs = h.retry_now(a, "Build", retry_mode)
    assert "StageRetryStarted" in types(envs)
    assert h.x(a).status == "InProgress"
    assert h.x(b).status == "InProgress"
    h.succeed(a, "b1")
    if retry_mode == "ALL_ACTIONS":
        assert h.x(a).currentStage == "Build"
        h.succeed(a, "b2")
    assert h.x(a).currentStage == "Deploy"
    assert h.x(b).currentStage == "Build"


@pytest.mark.parametrize("mode", ["SUPERSEDED", "QUEUED"])
def test_stage_not_yet_reached_by_later_execution_is_retryable(mode: str) -> None:
    h = pipeline(mode)
    a = h.start()
    h.succeed(a, "src")
    h.fail(a, "b1")
    b = h.start()  # in Source: Build's latest is still A
    assert h.x(b).currentStage == "Source"
    h.retry_now(a, "Build", "FAILED_ACTIONS")
    assert h.state.occupant["Build"] == a
    envs = h.succeed(b, "src")
    assert types(envs)[-1] == "ExecutionWaiting"
    assert h.x(b).waitingFor == "Build"
    h.succeed(a, "b1", "b2")
    assert h.x(b).currentStage == "Build"
    assert h.x(b).waitingFor is None


# --- SUPERSEDED ------------------------------------------------------------------------------


def test_superseded_newer_waiter_supersedes_older_waiter() -> None:
    h = pipeline("SUPERSEDED")
    a = h.start()
    b = h.start()
    assert h.x(b).waitingFor == "Source"
    assert h.state.waiting == {"Source": [b]}
    mark = len(h.log)
    c = h.start()
    envs = h.log[mark:]
    assert types(envs) == ["ExecutionStarted", "ExecutionSuperseded", "ExecutionWaiting"]
    (sup,) = of_type(envs, ev.ExecutionSuperseded)
    assert (sup.executionId, sup.byExecutionId) == (b, c)
    assert h.x(b).status == "Superseded"
    assert h.x(b).waitingFor is None
    assert b not in h.state.active
    assert h.state.waiting == {"Source": [c]}

    envs = h.succeed(a, "src")
    assert types(envs) == [
        "ActionExecutionSucceeded",
        "StageSucceeded",
        "StageEntered",  # C enters Source
        "ActionExecutionScheduled",
        "StageEntered",  # A enters Build
        "ActionExecutionScheduled",
        "ActionExecutionScheduled",
    ]
    assert [e.executionId for e in of_type(envs, ev.StageEntered)] == [c, a]
    assert h.x(c).currentStage == "Source"
    assert h.x(b).stages == {}
    # a superseded execution cannot be stopped or retried
    assert h.error(_stop(b)).type_name == "PipelineExecutionNotStoppableException"
    assert h.retry_error(b, "Source", "FAILED_ACTIONS").type_name == (
        "NotLatestPipelineExecutionException"
    )


def test_superseded_between_stages() -> None:
    h = pipeline("SUPERSEDED")
    a = h.start()
    h.succeed(a, "src")  # A in Build
    b = h.start()
    h.succeed(b, "src")  # B waits for Build
    assert h.x(b).waitingFor == "Build"
    c = h.start()  # Source was released by B
    assert h.x(c).currentStage == "Source"
    envs = h.succeed(c, "src")
    assert types(envs)[-2:] == ["ExecutionSuperseded", "ExecutionWaiting"]
    assert h.x(b).status == "Superseded"
    assert h.state.waiting == {"Build": [c]}
    h.succeed(a, "b1", "b2")
    assert h.x(c).currentStage == "Build"
    assert h.x(a).currentStage == "Deploy"


def test_superseded_failure_releases_stage_to_waiter() -> None:
    h = pipeline("SUPERSEDED")
    a = h.start()
    b = h.start()
    envs = h.fail(a, "src")
    assert types(envs) == [
        "ActionExecutionFailed",
        "StageFailed",
        "ExecutionFailed",
        "StageEntered",
        "ActionExecutionScheduled",
    ]
    assert h.x(b).currentStage == "Source"
    assert h.state.occupant == {"Source": b}


# --- QUEUED ----------------------------------------------------------------------------------


def test_queued_waiters_enter_in_order_none_superseded() -> None:
    h = pipeline("QUEUED")
    a = h.start()
    b = h.start()
    c = h.start()
    assert h.state.waiting == {"Source": [b, c]}
    assert not [e for e in h.log if isinstance(e.event, ev.ExecutionSuperseded)]

    h.succeed(a, "src")  # A → Build, B → Source
    assert h.x(b).currentStage == "Source"
    assert h.state.waiting == {"Source": [c]}
    h.succeed(b, "src")  # Build is A's: B waits for it, C enters Source
    assert h.x(b).waitingFor == "Build"
    assert h.x(c).currentStage == "Source"
    h.succeed(c, "src")
    assert h.state.waiting == {"Build": [b, c]}
    h.succeed(a, "b1", "b2")
    assert h.x(b).currentStage == "Build"
    assert h.state.waiting == {"Build": [c]}
    h.succeed(a, "d")
    h.succeed(b, "b1", "b2", "d")
    h.succeed(c, "b1", "b2", "d")
    assert [h.x(e).status for e in (a, b, c)] == ["Succeeded"] * 3
    assert not [e for e in h.log if isinstance(e.event, ev.ExecutionSuperseded)]
    entered = [(e.executionId, e.stageName) for e in of_type(h.log, ev.StageEntered)]
    assert entered == [
        (a, "Source"),
        (b, "Source"),
        (a, "Build"),
        (c, "Source"),
        (b, "Build"),
        (a, "Deploy"),
        (c, "Build"),
        (b, "Deploy"),
        (c, "Deploy"),
    ]
    assert h.state.occupant == {} and h.state.waiting == {} and h.state.active == []


def test_queued_failure_releases_stage_to_waiter() -> None:
    h = pipeline("QUEUED")
    a = h.start()
    h.succeed(a, "src")
    b = h.start()
    h.succeed(b, "src")
    assert h.x(b).waitingFor == "Build"
    h.fail(a, "b1")
    assert h.x(b).currentStage == "Build"
    assert h.state.occupant["Build"] == b


# --- PARALLEL --------------------------------------------------------------------------------


def test_parallel_executions_never_wait() -> None:
    h = pipeline("PARALLEL")
    ids = [h.start() for _ in range(3)]
    assert all(h.x(e).currentStage == "Source" for e in ids)
    assert h.state.occupant == {} and h.state.waiting == {}
    for e in ids:
        h.succeed(e, "src")
    assert all(h.x(e).currentStage == "Build" for e in ids)
    assert h.state.stageLatest["Build"] == ids[-1]


def _stop(eid: str) -> cm.StopExecution:
    return cm.StopExecution(executionId=eid)
