"""StopExecution: stop and wait, stop and abandon, and what a stopped stage allows."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from app.domain import commands as c
from app.domain import events as ev
from app.domain.model import StageRetryMode
from tests.domain.helpers import Harness, make_decl, of_type, types

THREE = {"Source": ["src"], "Build": [("b1", 1), ("b2", 1), ("b3", 2)], "Deploy": ["d"]}


def in_build(mode: str | None = None) -> tuple[Harness, str]:
    h = Harness()
    h.create(make_decl(THREE, mode=mode))
    return h, h.to_build()


def test_stop_without_abandon_waits_for_running_actions() -> None:
    h, a = in_build()
    b = h.start()
    h.succeed(b, "src")  # B waits for Build
    envs = h.stop(a, reason="enough")
    assert types(envs) == ["ExecutionStopping"]
    x = h.x(a)
    assert (x.status, x.stopAbandon, x.statusSummary) == ("Stopping", False, "enough")
    assert h.run_of(a, "Build").status == "Stopping"
    assert a in h.state.active
    assert h.state.occupant["Build"] == a

    envs = h.succeed(a, "b1")
    assert types(envs) == ["ActionExecutionSucceeded"]
    envs = h.fail(a, "b2")  # the last running action ends: stopped; runOrder 2 never runs
    assert types(envs) == [
        "ActionExecutionFailed",
        "ExecutionStopped",
        "StageEntered",
        "ActionExecutionScheduled",
        "ActionExecutionScheduled",
    ]
    assert h.x(a).status == "Stopped"
    assert h.x(a).statusSummary == "enough"
    assert h.run_of(a, "Build").status == "Stopped"
    assert "b3" not in h.run_of(a, "Build").latest
    assert a not in h.state.active
    assert h.x(b).currentStage == "Build"  # the stage was released to the waiter


def test_stop_without_abandon_all_succeeded_is_not_retryable() -> None:
    h, a = in_build()
    h.stop(a)
    envs = h.succeed(a, "b1", "b2")
    assert types(envs)[-1] == "ExecutionStopped"
    assert h.x(a).status == "Stopped"
    err = h.retry_error(a, "Build", "FAILED_ACTIONS")
    assert err.type_name == "StageNotRetryableException"


def test_stop_without_abandon_then_failed_action_is_retryable() -> None:
    h, a = in_build()
    h.stop(a)
    h.succeed(a, "b1")
    h.fail(a, "b2")
    envs = h.retry_now(a, "Build", "FAILED_ACTIONS")
    assert [e.actionName for e in of_type(envs, ev.ActionExecutionScheduled)] == ["b2"]
    assert h.x(a).status == "InProgress"
    assert h.x(a).stopAbandon is None
    assert h.x(a).statusSummary is None
    assert h.run_of(a, "Build").status == "InProgress"
    assert a in h.state.active


def test_stop_with_abandon() -> None:
    h, a = in_build()
    ids = {h.aid(a, "b1"), h.aid(a, "b2")}
    envs = h.stop(a, abandon=True, reason="now")
    assert types(envs) == [
        "ActionExecutionAbandoned",
        "ActionExecutionAbandoned",
        "ExecutionStopped",
    ]
    assert {e.actionExecutionId for e in of_type(envs, ev.ActionExecutionAbandoned)} == ids
    assert h.action(a, "b1").status == "Abandoned"
    assert h.action(a, "b2").status == "Abandoned"
    assert h.x(a).status == "Stopped"
    assert h.run_of(a, "Build").status == "Stopped"
    assert a not in h.state.active
    assert "Build" not in h.state.occupant
    # a late result of an abandoned action changes nothing
    assert h.complete(a, "b1", True) == []


@pytest.mark.parametrize("mode", ["FAILED_ACTIONS", "ALL_ACTIONS"])
def test_abandoned_actions_are_retryable(mode: StageRetryMode) -> None:
    h, a = in_build()
    old = {n: h.aid(a, n) for n in ("b1", "b2")}
    h.stop(a, abandon=True)
    envs = h.retry_now(a, "Build", mode)
    new = {e.actionName: e.actionExecutionId for e in of_type(envs, ev.ActionExecutionScheduled)}
    assert sorted(new) == ["b1", "b2"]
    assert all(new[n] != old[n] for n in new)
    assert h.x(a).status == "InProgress"
    h.succeed(a, "b1", "b2", "b3", "d")
    assert h.x(a).status == "Succeeded"


def test_abandon_after_succeeded_sibling_failed_actions_keeps_it() -> None:
    h, a = in_build()
    h.succeed(a, "b1")
    b1 = h.aid(a, "b1")
    h.stop(a, abandon=True)
    envs = h.retry_now(a, "Build", "FAILED_ACTIONS")
    assert [e.actionName for e in of_type(envs, ev.ActionExecutionScheduled)] == ["b2"]
    assert h.aid(a, "b1") == b1


def test_stopping_then_abandon_escalates() -> None:
    h, a = in_build()
    h.stop(a)
    h.succeed(a, "b1")
    envs = h.stop(a, abandon=True)
    assert types(envs) == ["ActionExecutionAbandoned", "ExecutionStopped"]
    assert h.action(a, "b2").status == "Abandoned"


def test_duplicated_stop_request() -> None:
    h, a = in_build()
    h.stop(a)
    err = h.error(c.StopExecution(executionId=a))
    assert err.type_name == "DuplicatedStopRequestException"


def _succeeded(h: Harness, a: str) -> None:
    h.succeed(a, "b1", "b2", "b3", "d")


def _failed(h: Harness, a: str) -> None:
    h.fail(a, "b1")


def _stopped(h: Harness, a: str) -> None:
    h.stop(a, abandon=True)


@pytest.mark.parametrize(
    ("end", "abandon"),
    [
        (_succeeded, False),
        (_succeeded, True),
        (_failed, False),  # a Failed execution is stopped only by abandoning what still runs
        (_stopped, False),
        (_stopped, True),
    ],
    ids=["succeeded", "succeeded-abandon", "failed", "stopped", "stopped-abandon"],
)
def test_not_stoppable(end: Callable[[Harness, str], None], abandon: bool) -> None:
    h, a = in_build()
    end(h, a)
    err = h.error(c.StopExecution(executionId=a, abandon=abandon))
    assert err.type_name == "PipelineExecutionNotStoppableException"


def test_abandon_reaches_the_running_sibling_of_a_failed_action() -> None:
    """Issue 11: b1 failed (the execution is Failed) while b2 still runs: stop with abandon
    abandons b2; the execution stays Failed and the stage can be retried."""
    h, a = in_build()
    h.fail(a, "b1")
    assert h.x(a).status == "Failed" and h.action(a, "b2").status == "InProgress"
    envs = h.stop(a, abandon=True, reason="hung")
    assert types(envs) == ["ActionExecutionAbandoned"]
    assert h.action(a, "b2").status == "Abandoned"
    assert h.action(a, "b2").errorMessage == "hung"
    assert h.x(a).status == "Failed"
    # nothing runs any more: a second abandon is refused, saying why
    err = h.error(c.StopExecution(executionId=a, abandon=True))
    assert err.type_name == "PipelineExecutionNotStoppableException"
    assert "nothing of it is running" in err.message
    # and the stage is retryable with both actions (failed + abandoned)
    h.retry_now(a, "Build", "FAILED_ACTIONS")
    assert h.action(a, "b1").status == h.action(a, "b2").status == "InProgress"


def test_superseded_is_not_stoppable() -> None:
    h = Harness()
    h.create(make_decl(THREE))
    h.start()
    b = h.start()
    h.start()
    assert h.x(b).status == "Superseded"
    assert h.error(c.StopExecution(executionId=b)).type_name == (
        "PipelineExecutionNotStoppableException"
    )


def test_stop_unknown_execution_or_pipeline() -> None:
    h = Harness()
    eid = "ffffffff-ffff-4fff-8fff-ffffffffffff"
    assert h.error(c.StopExecution(executionId=eid)).type_name == "PipelineNotFoundException"
    h.create()
    assert h.error(c.StopExecution(executionId=eid)).type_name == (
        "PipelineExecutionNotFoundException"
    )


@pytest.mark.parametrize("abandon", [False, True])
def test_stop_waiting_execution_stops_at_once(abandon: bool) -> None:
    h = Harness()
    h.create(make_decl(THREE, mode="QUEUED"))
    a = h.start()
    b = h.start()
    z = h.start()
    assert h.state.waiting == {"Source": [b, z]}
    envs = h.stop(b, abandon=abandon)
    assert types(envs) == ["ExecutionStopped"]
    assert h.x(b).status == "Stopped"
    assert h.x(b).waitingFor is None
    assert h.state.waiting == {"Source": [z]}
    assert h.state.occupant == {"Source": a}
    h.succeed(a, "src")
    assert h.x(z).currentStage == "Source"


def test_stop_between_stages_after_earlier_stage_succeeded() -> None:
    h = Harness()
    h.create(make_decl(THREE))
    a = h.to_build()
    b = h.to_build()
    assert h.x(b).waitingFor == "Build"
    h.stop(b)
    assert h.x(b).status == "Stopped"
    assert h.run_of(b, "Source").status == "Succeeded"
    assert h.state.occupant == {"Build": a}
    assert h.retry_error(b, "Source", "FAILED_ACTIONS").type_name == "StageNotRetryableException"


def test_stop_with_abandon_releases_stage_to_waiter() -> None:
    h, a = in_build()
    b = h.to_build()
    envs = h.stop(a, abandon=True)
    assert types(envs)[-3:] == [
        "StageEntered",
        "ActionExecutionScheduled",
        "ActionExecutionScheduled",
    ]
    assert h.x(b).currentStage == "Build"
    assert h.retry_error(a, "Build", "FAILED_ACTIONS").type_name == (
        "NotLatestPipelineExecutionException"
    )
