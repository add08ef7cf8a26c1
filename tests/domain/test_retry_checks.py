"""RetryStage: SPEC section 3 checks 2-8, one row at a time, then their order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from app.domain import commands as c
from app.domain import events as ev
from app.domain.model import StageRetryMode
from tests.domain.helpers import Harness, make_decl, of_type, types

UNKNOWN_EID = "ffffffff-ffff-4fff-8fff-ffffffffffff"


@dataclass
class Case:
    h: Harness
    eid: str
    stage: str
    mode: StageRetryMode = "FAILED_ACTIONS"


# --- scenario builders (each returns a Case whose RetryStage must fail) ----------------------


def no_pipeline() -> Case:
    return Case(Harness(), UNKNOWN_EID, "Build")


def deleted_pipeline() -> Case:
    h = Harness()
    h.create()
    eid = h.to_build()
    h.fail(eid, "b1")
    h.run(c.DeletePipeline())
    return Case(h, eid, "Build")


def unknown_stage() -> Case:
    h = Harness()
    h.create()
    eid = h.to_build()
    h.fail(eid, "b1")
    return Case(h, eid, "Deploy")


def unknown_execution() -> Case:
    h = Harness()
    h.create()
    eid = h.to_build()
    h.fail(eid, "b1")
    return Case(h, UNKNOWN_EID, "Build")


def execution_of_other_pipeline() -> Case:
    other = Harness("other", exec_prefix=0xF)
    other.create(make_decl(name="other"))
    foreign = other.to_build()
    other.fail(foreign, "b1")
    h = Harness()
    h.create()
    eid = h.to_build()
    h.fail(eid, "b1")
    return Case(h, foreign, "Build")


def not_latest(mode: str) -> Callable[[], Case]:
    def build() -> Case:
        h = Harness()
        h.create(make_decl(mode=mode))
        a = h.start()
        h.fail(a, "src")
        h.start()  # enters Source, which the failure released
        return Case(h, a, "Source")

    return build


def never_ran() -> Case:
    h = Harness()
    h.create()
    a = h.start()
    h.fail(a, "src")
    return Case(h, a, "Build")


def pending() -> Case:
    h = Harness()
    h.create()
    a = h.to_build()
    h.fail(a, "b1")
    h.retry(a, "Build", "FAILED_ACTIONS")
    return Case(h, a, "Build")


def over_limit() -> Case:
    h = Harness()
    h.create(limit=1)
    a = h.to_build()
    h.fail(a, "b1")
    h.start()  # active in Source: the limit of 1 is used up
    return Case(h, a, "Build")


ROWS = [
    pytest.param(no_pipeline, "PipelineNotFoundException", id="2-no-pipeline"),
    pytest.param(deleted_pipeline, "PipelineNotFoundException", id="2-deleted-pipeline"),
    pytest.param(unknown_stage, "StageNotFoundException", id="3-unknown-stage"),
    pytest.param(unknown_execution, "PipelineExecutionNotFoundException", id="4-unknown-exec"),
    pytest.param(
        execution_of_other_pipeline, "PipelineExecutionNotFoundException", id="4-other-pipeline"
    ),
    pytest.param(
        not_latest("SUPERSEDED"), "NotLatestPipelineExecutionException", id="5-superseded"
    ),
    pytest.param(not_latest("QUEUED"), "NotLatestPipelineExecutionException", id="5-queued"),
    pytest.param(never_ran, "StageNotRetryableException", id="6-never-ran"),
    pytest.param(pending, "ConflictException", id="7-pending"),
    pytest.param(over_limit, "ConcurrentPipelineExecutionsLimitExceededException", id="8-limit"),
]


@pytest.mark.parametrize(("build", "expected"), ROWS)
def test_check_table_row(build: Callable[[], Case], expected: str) -> None:
    case = build()
    err = case.h.retry_error(case.eid, case.stage, case.mode)
    assert err.type_name == expected
    assert err.message
    assert err.status == (409 if expected == "ConflictException" else 400)


@pytest.mark.parametrize("first", ["FAILED_ACTIONS", "ALL_ACTIONS"])
@pytest.mark.parametrize("second", ["FAILED_ACTIONS", "ALL_ACTIONS"])
def test_7_second_request_while_pending(first: StageRetryMode, second: StageRetryMode) -> None:
    h = Harness()
    h.create()
    a = h.to_build()
    h.fail(a, "b1")
    h.succeed(a, "b2")
    h.retry(a, "Build", first)
    err = h.retry_error(a, "Build", second)
    assert (err.type_name, err.status) == ("ConflictException", 409)
    assert h.run_of(a, "Build").pendingRetry == first


def test_accepted_retry_records_request_and_keeps_execution_id() -> None:
    h = Harness()
    h.create()
    a = h.to_build()
    h.fail(a, "b1")
    count = h.state.executionCount
    envs = h.retry(a, "Build", "FAILED_ACTIONS")
    assert types(envs) == ["StageRetryRequested"]
    (req,) = of_type(envs, ev.StageRetryRequested)
    assert (req.executionId, req.stageName, req.retryMode, req.trigger) == (
        a,
        "Build",
        "FAILED_ACTIONS",
        "ManualStageRetry",
    )
    assert envs[0].actor == "tester"
    assert h.state.executionCount == count
    run = h.run_of(a, "Build")
    assert (run.pendingRetry, run.pendingTrigger) == ("FAILED_ACTIONS", "ManualStageRetry")
    # nothing is scheduled before a worker applies it
    assert run.status == "Failed"
    assert h.x(a).status == "Failed"


# --- check order: two checks fail at once, the earlier one wins ------------------------------


def order_2_over_3() -> Case:
    case = deleted_pipeline()
    case.stage = "Nope"
    return case


def order_3_over_4() -> Case:
    h = Harness()
    h.create()
    return Case(h, UNKNOWN_EID, "Nope")


def order_4_over_5() -> Case:
    case = not_latest("SUPERSEDED")()
    case.eid = UNKNOWN_EID
    return case


def order_5_over_6_succeeded() -> Case:
    """A's Source succeeded (not retryable) and B entered Source since (not latest)."""
    h = Harness()
    h.create()
    a = h.to_build()
    h.start()
    return Case(h, a, "Source")


def order_5_over_6_version() -> Case:
    case = not_latest("QUEUED")()
    case.h.update()
    return case


def order_5_over_7() -> Case:
    h = Harness()
    h.create()
    a = h.start()
    h.fail(a, "src")
    h.retry(a, "Source", "FAILED_ACTIONS")
    h.start()  # a pending retry does not hold the stage: B enters Source
    return Case(h, a, "Source")


def order_5_over_8() -> Case:
    h = Harness()
    h.create(limit=1)
    a = h.start()
    h.fail(a, "src")
    h.start()
    return Case(h, a, "Source")


def order_6_over_7() -> Case:
    case = pending()
    case.h.update()
    return case


def order_6_over_7_all_actions() -> Case:
    """Pending FAILED_ACTIONS retry while b2 is still running; an ALL_ACTIONS request."""
    case = pending()
    case.mode = "ALL_ACTIONS"
    return case


def order_6_over_8() -> Case:
    case = over_limit()
    case.h.update()
    return case


def order_6_over_8_running() -> Case:
    case = over_limit()
    case.mode = "ALL_ACTIONS"  # b2 still InProgress
    return case


def order_7_over_8() -> Case:
    h = Harness()
    h.create(limit=1)
    a = h.to_build()
    h.fail(a, "b1")
    h.retry(a, "Build", "FAILED_ACTIONS")
    h.start()  # B in Source: reviving A would now exceed the limit too
    return Case(h, a, "Build")


ORDER = [
    pytest.param(order_2_over_3, "PipelineNotFoundException", id="2>3"),
    pytest.param(order_3_over_4, "StageNotFoundException", id="3>4"),
    pytest.param(order_4_over_5, "PipelineExecutionNotFoundException", id="4>5"),
    pytest.param(order_5_over_6_succeeded, "NotLatestPipelineExecutionException", id="5>6"),
    pytest.param(order_5_over_6_version, "NotLatestPipelineExecutionException", id="5>6-version"),
    pytest.param(order_5_over_7, "NotLatestPipelineExecutionException", id="5>7"),
    pytest.param(order_5_over_8, "NotLatestPipelineExecutionException", id="5>8"),
    pytest.param(order_6_over_7, "StageNotRetryableException", id="6>7"),
    pytest.param(order_6_over_7_all_actions, "StageNotRetryableException", id="6>7-running"),
    pytest.param(order_6_over_8, "StageNotRetryableException", id="6>8"),
    pytest.param(order_6_over_8_running, "StageNotRetryableException", id="6>8-running"),
    pytest.param(order_7_over_8, "ConflictException", id="7>8"),
]


@pytest.mark.parametrize(("build", "expected"), ORDER)
def test_check_order_earlier_check_wins(build: Callable[[], Case], expected: str) -> None:
    case = build()
    err = case.h.retry_error(case.eid, case.stage, case.mode)
    assert err.type_name == expected


def test_order_cases_really_fail_two_checks() -> None:
    """Sanity: in the 7>8 scenario, once the pending retry is gone, check 8 fails."""
    case = order_7_over_8()
    h = case.h
    envs = h.apply(case.eid, "Build")
    (rej,) = of_type(envs, ev.StageRetryRejected)
    assert rej.errorType == "ConcurrentPipelineExecutionsLimitExceededException"
    err = h.retry_error(case.eid, "Build", "FAILED_ACTIONS")
    assert err.type_name == "ConcurrentPipelineExecutionsLimitExceededException"


# --- check 6 variants ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["FAILED_ACTIONS", "ALL_ACTIONS"])
def test_6_stage_never_ran(mode: StageRetryMode) -> None:
    case = never_ran()
    err = case.h.retry_error(case.eid, "Build", mode)
    assert err.type_name == "StageNotRetryableException"
    assert "did not run" in err.message


@pytest.mark.parametrize("mode", ["FAILED_ACTIONS", "ALL_ACTIONS"])
@pytest.mark.parametrize("stage", ["Source", "Build"])
def test_6_all_actions_succeeded(mode: StageRetryMode, stage: str) -> None:
    h = Harness()
    h.create()
    a = h.to_build()
    h.succeed(a, "b1", "b2", "b3")
    assert h.x(a).status == "Succeeded"
    err = h.retry_error(a, stage, mode)
    assert err.type_name == "StageNotRetryableException"


@pytest.mark.parametrize("mode", ["FAILED_ACTIONS", "ALL_ACTIONS"])
@pytest.mark.parametrize("done", [(), ("b1",), ("b1", "b2")])
def test_6_still_running_without_failure(mode: StageRetryMode, done: tuple[str, ...]) -> None:
    h = Harness()
    h.create()
    a = h.to_build()
    h.succeed(a, *done)
    assert h.x(a).status == "InProgress"
    err = h.retry_error(a, "Build", mode)
    assert err.type_name == "StageNotRetryableException"


def test_6_stage_succeeded_after_an_earlier_failed_attempt() -> None:
    """Only the latest attempts count: a failure that was retried away is not retryable."""
    h = Harness()
    h.create()
    a = h.to_build()
    h.fail(a, "b1")
    h.retry_now(a, "Build", "FAILED_ACTIONS")
    h.succeed(a, "b1", "b2", "b3")
    assert h.run_of(a, "Build").status == "Succeeded"
    assert h.retry_error(a, "Build", "FAILED_ACTIONS").type_name == "StageNotRetryableException"


@pytest.mark.parametrize("mode", ["FAILED_ACTIONS", "ALL_ACTIONS"])
def test_6_declaration_updated_since_start(mode: StageRetryMode) -> None:
    h = Harness()
    h.create()
    a = h.to_build()
    h.fail(a, "b1")
    h.succeed(a, "b2")
    assert h.state.declaration is not None and h.state.declaration.version == 1
    h.update()
    assert h.state.declaration.version == 2
    assert h.x(a).pipelineVersion == 1
    err = h.retry_error(a, "Build", mode)
    assert err.type_name == "StageNotRetryableException"
    assert "updated" in err.message


def test_6_execution_started_after_update_is_retryable() -> None:
    h = Harness()
    h.create()
    h.update()
    a = h.to_build()
    assert h.x(a).pipelineVersion == 2
    h.fail(a, "b1")
    assert types(h.retry(a, "Build", "FAILED_ACTIONS")) == ["StageRetryRequested"]


def test_6_all_actions_refused_while_sibling_in_progress_failed_actions_accepted() -> None:
    h = Harness()
    h.create()
    a = h.to_build()
    h.fail(a, "b1")
    assert h.action(a, "b2").status == "InProgress"
    err = h.retry_error(a, "Build", "ALL_ACTIONS")
    assert err.type_name == "StageNotRetryableException"
    assert "in progress" in err.message
    assert types(h.retry(a, "Build", "FAILED_ACTIONS")) == ["StageRetryRequested"]


def test_6_all_actions_accepted_once_sibling_ended() -> None:
    h = Harness()
    h.create()
    a = h.to_build()
    h.fail(a, "b1")
    h.succeed(a, "b2")
    assert types(h.retry(a, "Build", "ALL_ACTIONS")) == ["StageRetryRequested"]


@pytest.mark.parametrize("mode", ["FAILED_ACTIONS", "ALL_ACTIONS"])
def test_6_rejected_approval_is_retryable(mode: StageRetryMode) -> None:
    h = Harness()
    h.create(make_decl({"Gate": [("ok", 1, "approval")]}))
    a = h.start()
    token = h.action(a, "ok").token
    assert token is not None
    h.run(c.PutApproval(stageName="Gate", actionName="ok", token=token, status="Rejected"))
    assert types(h.retry(a, "Gate", mode)) == ["StageRetryRequested"]
