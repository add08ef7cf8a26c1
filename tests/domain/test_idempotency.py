"""Repeated and late commands: at-least-once delivery must not apply anything twice."""

from __future__ import annotations

import pytest

from app.domain import commands as c
from app.domain import events as ev
from tests.domain.helpers import Harness, make_decl, of_type, types

TWO = {"Source": ["src"], "Build": [("b1", 1), ("b2", 1)]}
UNKNOWN = "ffffffff-ffff-4fff-8fff-ffffffffffff"


def in_build() -> tuple[Harness, str]:
    h = Harness()
    h.create(make_decl(TWO))
    return h, h.to_build()


@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize("second", [True, False])
def test_complete_ended_action_again_is_noop(first: bool, second: bool) -> None:
    h, a = in_build()
    b1 = h.aid(a, "b1")
    assert h.run(c.CompleteAction(executionId=a, actionExecutionId=b1, succeeded=first))
    before = len(h.log)
    assert h.run(c.CompleteAction(executionId=a, actionExecutionId=b1, succeeded=second)) == []
    assert len(h.log) == before
    assert h.x(a).actions[b1].status == ("Succeeded" if first else "Failed")


def test_complete_unknown_action_or_execution() -> None:
    h, a = in_build()
    err = h.error(c.CompleteAction(executionId=a, actionExecutionId=UNKNOWN, succeeded=True))
    assert err.type_name == "ActionExecutionNotFoundException"
    err = h.error(
        c.CompleteAction(executionId=UNKNOWN, actionExecutionId=h.aid(a, "b1"), succeeded=True)
    )
    assert err.type_name == "PipelineExecutionNotFoundException"


def test_start_execution_with_repeated_client_request_token() -> None:
    h = Harness()
    h.create(make_decl(TWO, mode="PARALLEL"))
    a = h.start(token="tok-1")
    assert h.state.tokens == {"tok-1": a}
    assert h.run(c.StartExecution(executionId=UNKNOWN, clientRequestToken="tok-1")) == []
    assert h.state.executionCount == 1
    assert UNKNOWN not in h.state.executions
    h.succeed(a, "src", "b1", "b2")
    assert h.x(a).status == "Succeeded"
    assert h.run(c.StartExecution(executionId=UNKNOWN, clientRequestToken="tok-1")) == []
    b = h.start(token="tok-2")
    assert b != a and h.state.executionCount == 2
    (started,) = of_type(h.log[-3:], ev.ExecutionStarted)
    assert started.clientRequestToken == "tok-2"


def test_repeated_token_wins_over_limit() -> None:
    """A repeat of an accepted start is not refused even when the pipeline is now full."""
    h = Harness()
    h.create(make_decl(TWO), limit=1)
    h.start(token="tok")
    assert h.run(c.StartExecution(executionId=UNKNOWN, clientRequestToken="tok")) == []


def test_start_action_by_second_worker_refused_same_worker_noop() -> None:
    h, a = in_build()
    b1 = h.aid(a, "b1")
    envs = h.run(c.StartAction(executionId=a, actionExecutionId=b1, worker="w1"))
    assert types(envs) == ["ActionExecutionStarted"]
    assert h.x(a).actions[b1].worker == "w1"
    assert h.run(c.StartAction(executionId=a, actionExecutionId=b1, worker="w1")) == []
    err = h.error(c.StartAction(executionId=a, actionExecutionId=b1, worker="w2"))
    assert err.type_name == "ActionNotRunnableException"
    assert h.x(a).actions[b1].worker == "w1"


def test_start_ended_action_refused() -> None:
    h, a = in_build()
    b1 = h.aid(a, "b1")
    h.succeed(a, "b1")
    err = h.error(c.StartAction(executionId=a, actionExecutionId=b1, worker="w1"))
    assert err.type_name == "ActionNotRunnableException"
    err = h.error(c.StartAction(executionId=a, actionExecutionId=UNKNOWN, worker="w1"))
    assert err.type_name == "ActionExecutionNotFoundException"


def test_start_action_of_abandoned_execution_refused() -> None:
    h, a = in_build()
    b1 = h.aid(a, "b1")
    h.stop(a, abandon=True)
    err = h.error(c.StartAction(executionId=a, actionExecutionId=b1, worker="w1"))
    assert err.type_name == "ActionNotRunnableException"


def test_result_from_a_worker_that_does_not_hold_the_action_is_ignored() -> None:
    h, a = in_build()
    b1 = h.aid(a, "b1")
    h.run(c.StartAction(executionId=a, actionExecutionId=b1, worker="w1"))
    assert (
        h.run(c.CompleteAction(executionId=a, actionExecutionId=b1, succeeded=True, worker="w2"))
        == []
    )
    assert h.x(a).actions[b1].status == "InProgress"
    envs = h.run(c.CompleteAction(executionId=a, actionExecutionId=b1, succeeded=True, worker="w1"))
    assert types(envs) == ["ActionExecutionSucceeded"]


def test_lose_action_fails_as_worker_lost_and_is_retryable() -> None:
    h, a = in_build()
    b1 = h.aid(a, "b1")
    h.run(c.StartAction(executionId=a, actionExecutionId=b1, worker="w1"))
    envs = h.run(c.LoseAction(executionId=a, actionExecutionId=b1, worker="w1"))
    assert types(envs) == ["ActionExecutionFailed", "StageFailed", "ExecutionFailed"]
    lost = h.x(a).actions[b1]
    assert (lost.status, lost.errorCode) == ("Failed", "WorkerLost")
    assert lost.errorMessage
    assert h.x(a).status == "Failed"

    # repeated lease expiry: nothing new
    assert h.run(c.LoseAction(executionId=a, actionExecutionId=b1, worker="w1")) == []
    # the late result of the lost worker changes nothing
    for ok in (True, False):
        late = c.CompleteAction(executionId=a, actionExecutionId=b1, succeeded=ok, worker="w1")
        assert h.run(late) == []
    assert h.x(a).actions[b1].status == "Failed"

    envs = h.retry_now(a, "Build", "FAILED_ACTIONS")
    ((new_b1,),) = [[e.actionExecutionId for e in of_type(envs, ev.ActionExecutionScheduled)]]
    assert new_b1 != b1
    # a late result on the old attempt still changes nothing after the retry
    late = c.CompleteAction(executionId=a, actionExecutionId=b1, succeeded=True, worker="w1")
    assert h.run(late) == []
    assert h.x(a).actions[new_b1].status == "InProgress"
    h.succeed(a, "b1", "b2")
    assert h.x(a).status == "Succeeded"


def test_lose_action_from_a_stale_lease_is_ignored() -> None:
    h, a = in_build()
    b1 = h.aid(a, "b1")
    h.run(c.StartAction(executionId=a, actionExecutionId=b1, worker="w1"))
    assert h.run(c.LoseAction(executionId=a, actionExecutionId=b1, worker="w0")) == []
    assert h.x(a).actions[b1].status == "InProgress"


def test_lose_action_without_worker_and_unknown_targets() -> None:
    h, a = in_build()
    envs = h.run(c.LoseAction(executionId=a, actionExecutionId=h.aid(a, "b2")))
    assert types(envs)[0] == "ActionExecutionFailed"
    assert h.run(c.LoseAction(executionId=a, actionExecutionId=UNKNOWN)) == []
    assert h.run(c.LoseAction(executionId=UNKNOWN, actionExecutionId=UNKNOWN)) == []


def test_lose_action_of_sibling_in_failed_execution_makes_it_retryable() -> None:
    h, a = in_build()
    h.fail(a, "b1")
    envs = h.run(c.LoseAction(executionId=a, actionExecutionId=h.aid(a, "b2")))
    assert types(envs) == ["ActionExecutionFailed"]
    envs = h.retry_now(a, "Build", "ALL_ACTIONS")
    assert sorted(e.actionName for e in of_type(envs, ev.ActionExecutionScheduled)) == [
        "b1",
        "b2",
    ]


def test_delete_pipeline_twice_is_noop_and_create_twice_refused() -> None:
    h = Harness()
    h.create()
    assert h.error(c.CreatePipeline(declaration=make_decl())).type_name == (
        "PipelineNameInUseException"
    )
    assert types(h.run(c.DeletePipeline())) == ["PipelineDeleted"]
    assert h.run(c.DeletePipeline()) == []
    assert not h.state.exists
    h.create()
    assert h.state.exists and h.state.executions == {}
