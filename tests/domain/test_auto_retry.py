"""Automatic stage retry: ``onFailure: {result: RETRY, retryConfiguration: {retryMode}}``."""

from __future__ import annotations

import pytest

from app.domain import commands as c
from app.domain import events as ev
from app.domain.model import FailureConditions, PipelineDeclaration, StageDeclaration
from tests.domain.helpers import Harness, make_decl, of_type, types

BUILD = {"Source": ["src"], "Build": [("b1", 1), ("b2", 1), ("b3", 2)], "Deploy": ["d"]}


def auto(mode: str, exec_mode: str | None = None) -> tuple[Harness, str]:
    h = Harness()
    h.create(make_decl(BUILD, auto_retry={"Build": mode}, mode=exec_mode))
    return h, h.to_build()


def scheduled_names(envs: list[ev.Envelope]) -> list[str]:
    return sorted(e.actionName for e in of_type(envs, ev.ActionExecutionScheduled))


def test_failed_actions_auto_retry_once_then_fail() -> None:
    h, a = auto("FAILED_ACTIONS")
    b1_old, b2 = h.aid(a, "b1"), h.aid(a, "b2")
    envs = h.fail(a, "b1")
    assert types(envs) == [
        "ActionExecutionFailed",
        "StageFailed",
        "StageRetryStarted",
        "ActionExecutionScheduled",
    ]
    (started,) = of_type(envs, ev.StageRetryStarted)
    assert (started.retryMode, started.trigger) == ("FAILED_ACTIONS", "AutomatedStageRetry")
    assert scheduled_names(envs) == ["b1"]
    assert h.aid(a, "b1") != b1_old
    assert h.aid(a, "b2") == b2 and h.action(a, "b2").status == "InProgress"
    run = h.run_of(a, "Build")
    assert (run.status, run.autoRetries, run.manualRetries, run.latestTrigger) == (
        "InProgress",
        1,
        0,
        "AutomatedStageRetry",
    )
    assert h.x(a).status == "InProgress"
    assert a in h.state.active

    envs = h.fail(a, "b1")
    assert types(envs) == ["ActionExecutionFailed", "StageFailed", "ExecutionFailed"]
    assert h.x(a).status == "Failed"
    assert h.run_of(a, "Build").autoRetries == 1
    assert len(h.attempts(a, "b1")) == 2


def test_failed_actions_auto_retry_then_success_completes_execution() -> None:
    h, a = auto("FAILED_ACTIONS")
    h.fail(a, "b1")
    h.succeed(a, "b2", "b1", "b3", "d")
    assert h.x(a).status == "Succeeded"
    assert h.run_of(a, "Build").status == "Succeeded"


def test_auto_retry_in_second_run_order() -> None:
    h, a = auto("FAILED_ACTIONS")
    h.succeed(a, "b1", "b2")
    envs = h.fail(a, "b3")
    assert scheduled_names(envs) == ["b3"]
    assert h.run_of(a, "Build").autoRetries == 1
    h.succeed(a, "b3")
    assert h.x(a).currentStage == "Deploy"


def test_retry_without_configuration_defaults_to_failed_actions() -> None:
    h = Harness()
    decl = make_decl(BUILD)
    build = decl.stages[1]
    stages = list(decl.stages)
    stages[1] = StageDeclaration(
        name=build.name, actions=build.actions, onFailure=FailureConditions(result="RETRY")
    )
    h.create(PipelineDeclaration(name="p", roleArn=decl.roleArn, stages=stages))
    a = h.to_build()
    envs = h.fail(a, "b1")
    (started,) = of_type(envs, ev.StageRetryStarted)
    assert started.retryMode == "FAILED_ACTIONS"


@pytest.mark.parametrize("result", ["FAIL", "ROLLBACK", None])
def test_no_auto_retry_without_retry_result(result: str | None) -> None:
    h = Harness()
    decl = make_decl(BUILD)
    stages = list(decl.stages)
    stages[1] = StageDeclaration(
        name="Build",
        actions=decl.stages[1].actions,
        onFailure=FailureConditions(result=result) if result else None,  # type: ignore[arg-type]
    )
    h.create(PipelineDeclaration(name="p", roleArn=decl.roleArn, stages=stages))
    a = h.to_build()
    assert types(h.fail(a, "b1")) == ["ActionExecutionFailed", "StageFailed", "ExecutionFailed"]


def test_all_actions_auto_retry_waits_for_running_siblings() -> None:
    h, a = auto("ALL_ACTIONS")
    old = {n: h.aid(a, n) for n in ("b1", "b2")}
    envs = h.fail(a, "b1")
    assert types(envs) == ["ActionExecutionFailed", "StageFailed"]
    assert h.x(a).status == "InProgress"
    assert h.run_of(a, "Build").status == "Failed"
    assert h.run_of(a, "Build").autoRetries == 0
    assert a in h.state.active

    envs = h.succeed(a, "b2")
    assert types(envs) == [
        "ActionExecutionSucceeded",
        "StageRetryStarted",
        "ActionExecutionScheduled",
        "ActionExecutionScheduled",
    ]
    (started,) = of_type(envs, ev.StageRetryStarted)
    assert (started.retryMode, started.trigger) == ("ALL_ACTIONS", "AutomatedStageRetry")
    assert scheduled_names(envs) == ["b1", "b2"]
    assert all(h.aid(a, n) != old[n] for n in old)
    run = h.run_of(a, "Build")
    assert (run.status, run.autoRetries, run.latestTrigger) == (
        "InProgress",
        1,
        "AutomatedStageRetry",
    )
    h.succeed(a, "b1", "b2", "b3", "d")
    assert h.x(a).status == "Succeeded"


def test_all_actions_auto_retry_after_sibling_also_fails() -> None:
    h, a = auto("ALL_ACTIONS")
    h.fail(a, "b1")
    envs = h.fail(a, "b2")
    assert types(envs)[0] == "ActionExecutionFailed"
    assert "StageRetryStarted" in types(envs)
    assert scheduled_names(envs) == ["b1", "b2"]
    # the second failure fails the execution
    envs = h.fail(a, "b2")
    assert types(envs) == ["ActionExecutionFailed", "StageFailed", "ExecutionFailed"]


def test_all_actions_auto_retry_immediate_when_nothing_runs() -> None:
    h, a = auto("ALL_ACTIONS")
    h.succeed(a, "b1", "b2")
    envs = h.fail(a, "b3")
    assert types(envs)[:3] == ["ActionExecutionFailed", "StageFailed", "StageRetryStarted"]
    assert scheduled_names(envs) == ["b1", "b2"]


def test_lost_worker_triggers_auto_retry() -> None:
    h, a = auto("FAILED_ACTIONS")
    envs = h.run(c.LoseAction(executionId=a, actionExecutionId=h.aid(a, "b1")))
    assert "StageRetryStarted" in types(envs)
    assert h.attempts(a, "b1")[0].errorCode == "WorkerLost"


def test_stop_while_all_actions_auto_retry_waits() -> None:
    h, a = auto("ALL_ACTIONS")
    h.fail(a, "b1")
    assert types(h.stop(a)) == ["ExecutionStopping"]
    envs = h.succeed(a, "b2")
    assert types(envs) == ["ActionExecutionSucceeded", "ExecutionStopped"]
    assert h.x(a).status == "Stopped"
    assert h.run_of(a, "Build").autoRetries == 0
    # still retryable by hand
    envs = h.retry_now(a, "Build", "ALL_ACTIONS")
    assert scheduled_names(envs) == ["b1", "b2"]


@pytest.mark.parametrize("exec_mode", ["SUPERSEDED", "QUEUED"])
def test_stage_stays_held_while_all_actions_auto_retry_waits(exec_mode: str) -> None:
    """One execution per stage: a later execution may not enter while the retry is pending."""
    h, a = auto("ALL_ACTIONS", exec_mode)
    h.fail(a, "b1")
    b = h.start()
    envs = h.succeed(b, "src")
    assert types(envs)[-1] == "ExecutionWaiting"
    assert h.x(b).waitingFor == "Build"
    assert h.state.occupant["Build"] == a
    h.succeed(a, "b2")  # A's automatic retry starts
    assert h.x(a).status == "InProgress"
    assert h.x(b).waitingFor == "Build"
    h.succeed(a, "b1", "b2", "b3")
    assert h.x(b).currentStage == "Build"
    assert h.state.occupant["Build"] == b


def test_auto_retry_keeps_stage_held_for_failed_actions() -> None:
    h, a = auto("FAILED_ACTIONS")
    h.fail(a, "b1")
    assert h.state.occupant["Build"] == a
    b = h.start()
    h.succeed(b, "src")
    assert h.x(b).waitingFor == "Build"


def test_auto_retry_in_parallel_mode() -> None:
    h, a = auto("ALL_ACTIONS", "PARALLEL")
    b = h.start()
    h.succeed(b, "src")
    h.fail(a, "b1")
    h.fail(b, "b2")
    h.succeed(a, "b2")
    h.succeed(b, "b1")
    assert h.run_of(a, "Build").autoRetries == 1
    assert h.run_of(b, "Build").autoRetries == 1
    assert h.state.occupant == {}
