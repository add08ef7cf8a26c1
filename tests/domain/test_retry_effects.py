"""What an accepted retry does: new attempts, kept siblings, counters, two-phase apply."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from app.domain import commands as c
from app.domain import events as ev
from app.domain.model import StageRetryMode
from tests.domain.helpers import Harness, make_decl, of_type, types

THREE = {"Source": ["src"], "Build": [("b1", 1), ("b2", 1), ("b3", 2)], "Deploy": ["d"]}


def three_stage(mode: str | None = None) -> tuple[Harness, str]:
    h = Harness()
    h.create(make_decl(THREE, mode=mode))
    return h, h.to_build()


def scheduled(envs: list[ev.Envelope]) -> list[tuple[str, str]]:
    return [(e.actionName, e.actionExecutionId) for e in of_type(envs, ev.ActionExecutionScheduled)]


def test_failed_actions_with_sibling_in_progress_full_flow() -> None:
    h, a = three_stage()
    b1_old, b2 = h.aid(a, "b1"), h.aid(a, "b2")

    envs = h.fail(a, "b1")
    assert types(envs) == ["ActionExecutionFailed", "StageFailed", "ExecutionFailed"]
    assert h.x(a).status == "Failed"
    assert h.run_of(a, "Build").status == "Failed"
    assert h.action(a, "b2").status == "InProgress"
    assert a not in h.state.active
    assert "Build" not in h.state.occupant

    assert types(h.retry(a, "Build", "FAILED_ACTIONS")) == ["StageRetryRequested"]
    envs = h.apply(a, "Build")
    assert types(envs) == ["StageRetryStarted", "ActionExecutionScheduled"]
    ((name, b1_new),) = scheduled(envs)
    assert name == "b1"
    assert b1_new != b1_old
    (started,) = of_type(envs, ev.StageRetryStarted)
    assert (started.retryMode, started.trigger) == ("FAILED_ACTIONS", "ManualStageRetry")

    # the sibling kept its id, is still running and was not rescheduled
    assert h.aid(a, "b2") == b2
    assert h.action(a, "b2").status == "InProgress"
    assert h.action(a, "b1").status == "InProgress"
    x = h.x(a)
    assert x.status == "InProgress"
    assert x.statusSummary is None
    assert h.run_of(a, "Build").status == "InProgress"
    assert h.run_of(a, "Build").pendingRetry is None
    assert a in h.state.active
    assert h.state.occupant["Build"] == a
    assert h.state.stageLatest["Build"] == a

    # the sibling's later success counts, but the group waits for the new b1
    envs = h.succeed(a, "b2")
    assert types(envs) == ["ActionExecutionSucceeded"]
    assert h.aid(a, "b2") == b2

    envs = h.succeed(a, "b1")
    assert types(envs) == ["ActionExecutionSucceeded", "ActionExecutionScheduled"]
    assert [n for n, _ in scheduled(envs)] == ["b3"]
    assert h.run_of(a, "Build").group == 2

    envs = h.succeed(a, "b3")
    assert types(envs) == [
        "ActionExecutionSucceeded",
        "StageSucceeded",
        "StageEntered",
        "ActionExecutionScheduled",
    ]
    assert h.x(a).currentStage == "Deploy"
    envs = h.succeed(a, "d")
    assert types(envs)[-1] == "ExecutionSucceeded"
    assert h.x(a).status == "Succeeded"

    # every attempt stays in the execution
    assert [(t.actionExecutionId, t.status) for t in h.attempts(a, "b1")] == [
        (b1_old, "Failed"),
        (b1_new, "Succeeded"),
    ]
    assert [t.status for t in h.attempts(a, "b2")] == ["Succeeded"]
    assert h.x(a).actions[b1_old].errorCode == "ExitCode1"


def test_sibling_success_while_execution_failed_is_kept_by_failed_actions() -> None:
    h, a = three_stage()
    h.fail(a, "b1")
    b2 = h.aid(a, "b2")
    envs = h.succeed(a, "b2")
    assert types(envs) == ["ActionExecutionSucceeded"]  # the failed execution does not move on
    assert h.x(a).status == "Failed"
    envs = h.retry_now(a, "Build", "FAILED_ACTIONS")
    assert [n for n, _ in scheduled(envs)] == ["b1"]
    assert h.aid(a, "b2") == b2
    assert h.action(a, "b2").status == "Succeeded"
    envs = h.succeed(a, "b1")
    assert [n for n, _ in scheduled(envs)] == ["b3"]


def test_sibling_failure_while_execution_failed_is_retried_too() -> None:
    h, a = three_stage()
    h.fail(a, "b1")
    envs = h.fail(a, "b2")
    assert types(envs) == ["ActionExecutionFailed"]
    envs = h.retry_now(a, "Build", "FAILED_ACTIONS")
    assert sorted(n for n, _ in scheduled(envs)) == ["b1", "b2"]


def test_failed_actions_in_second_run_order_reruns_only_that_action() -> None:
    h, a = three_stage()
    h.succeed(a, "b1", "b2")
    b1, b2 = h.aid(a, "b1"), h.aid(a, "b2")
    h.fail(a, "b3")
    envs = h.retry_now(a, "Build", "FAILED_ACTIONS")
    assert [n for n, _ in scheduled(envs)] == ["b3"]
    assert (h.aid(a, "b1"), h.aid(a, "b2")) == (b1, b2)
    assert h.run_of(a, "Build").group == 2
    envs = h.succeed(a, "b3")
    assert "StageSucceeded" in types(envs)
    assert h.x(a).currentStage == "Deploy"


def test_all_actions_reruns_every_action_from_first_run_order() -> None:
    h, a = three_stage()
    h.succeed(a, "b1", "b2")
    old = {n: h.aid(a, n) for n in ("b1", "b2")}
    b3_old = h.aid(a, "b3")
    h.fail(a, "b3")
    envs = h.retry_now(a, "Build", "ALL_ACTIONS")
    assert types(envs) == [
        "StageRetryRequested",
        "StageRetryStarted",
        "ActionExecutionScheduled",
        "ActionExecutionScheduled",
    ]
    new = dict(scheduled(envs))
    assert sorted(new) == ["b1", "b2"]
    assert all(new[n] != old[n] for n in new)
    run = h.run_of(a, "Build")
    assert run.group == 1
    assert set(run.latest) == {"b1", "b2"}  # b3 comes back when its turn comes
    assert h.x(a).status == "InProgress"
    assert run.status == "InProgress"

    assert scheduled(h.succeed(a, "b1")) == []
    envs = h.succeed(a, "b2")
    ((name, b3_new),) = scheduled(envs)
    assert name == "b3" and b3_new != b3_old
    h.succeed(a, "b3")
    h.succeed(a, "d")
    assert h.x(a).status == "Succeeded"
    for n in ("b1", "b2", "b3"):
        assert len(h.attempts(a, n)) == 2
    assert [t.status for t in h.attempts(a, "b3")] == ["Failed", "Succeeded"]
    assert [t.status for t in h.attempts(a, "b1")] == ["Succeeded", "Succeeded"]


def test_all_actions_after_group_one_failure_reruns_succeeded_sibling() -> None:
    h, a = three_stage()
    h.fail(a, "b1")
    b2 = h.aid(a, "b2")
    h.succeed(a, "b2")
    envs = h.retry_now(a, "Build", "ALL_ACTIONS")
    new = dict(scheduled(envs))
    assert sorted(new) == ["b1", "b2"]
    assert new["b2"] != b2
    assert h.x(a).actions[b2].status == "Succeeded"  # the old attempt is kept as it was


@pytest.mark.parametrize("mode", ["FAILED_ACTIONS", "ALL_ACTIONS"])
def test_retry_of_first_stage_continues_with_following_stages(mode: StageRetryMode) -> None:
    h = Harness()
    h.create(make_decl(THREE))
    a = h.start()
    h.fail(a, "src")
    envs = h.retry_now(a, "Source", mode)
    assert [n for n, _ in scheduled(envs)] == ["src"]
    h.succeed(a, "src")
    assert h.x(a).currentStage == "Build"
    h.succeed(a, "b1", "b2", "b3", "d")
    assert h.x(a).status == "Succeeded"


def test_retry_metadata_after_several_manual_retries() -> None:
    h, a = three_stage()
    run = h.run_of(a, "Build")
    assert (run.manualRetries, run.autoRetries, run.latestTrigger) == (0, 0, None)
    h.fail(a, "b1")
    h.retry_now(a, "Build", "FAILED_ACTIONS")
    h.fail(a, "b1")
    h.succeed(a, "b2")
    h.retry_now(a, "Build", "ALL_ACTIONS")
    h.fail(a, "b2")
    h.succeed(a, "b1")
    h.retry_now(a, "Build", "FAILED_ACTIONS")
    run = h.run_of(a, "Build")
    assert (run.manualRetries, run.autoRetries, run.latestTrigger) == (3, 0, "ManualStageRetry")
    assert [t.status for t in h.attempts(a, "b1")] == ["Failed", "Failed", "Succeeded"]
    assert [t.status for t in h.attempts(a, "b2")] == ["Succeeded", "Failed", "InProgress"]
    assert len({t.actionExecutionId for t in h.x(a).actions.values()}) == len(h.x(a).actions)
    # other stages' metadata is untouched
    src = h.run_of(a, "Source")
    assert (src.manualRetries, src.autoRetries, src.latestTrigger) == (0, 0, None)


def test_retry_metadata_mixes_automatic_and_manual() -> None:
    h = Harness()
    h.create(make_decl(THREE, auto_retry={"Build": "FAILED_ACTIONS"}))
    a = h.to_build()
    h.fail(a, "b1")  # automatic retry
    run = h.run_of(a, "Build")
    assert (run.manualRetries, run.autoRetries, run.latestTrigger) == (
        0,
        1,
        "AutomatedStageRetry",
    )
    h.fail(a, "b1")  # no second automatic attempt
    assert h.x(a).status == "Failed"
    h.retry_now(a, "Build", "FAILED_ACTIONS")
    run = h.run_of(a, "Build")
    assert (run.manualRetries, run.autoRetries, run.latestTrigger) == (1, 1, "ManualStageRetry")
    h.fail(a, "b1")
    assert h.x(a).status == "Failed"  # still no automatic attempt after a manual one
    h.retry_now(a, "Build", "FAILED_ACTIONS")
    run = h.run_of(a, "Build")
    assert (run.manualRetries, run.autoRetries) == (2, 1)
    assert len(h.attempts(a, "b1")) == 4


# --- two-phase apply -------------------------------------------------------------------------


def test_apply_twice_second_is_noop() -> None:
    h, a = three_stage()
    h.fail(a, "b1")
    h.retry(a, "Build", "FAILED_ACTIONS")
    assert types(h.apply(a, "Build"))[0] == "StageRetryStarted"
    assert h.apply(a, "Build") == []
    assert len(h.attempts(a, "b1")) == 2


@pytest.mark.parametrize(
    "cmd",
    [
        c.ApplyStageRetry(executionId="0000000e-0000-4000-8000-000000000001", stageName="Build"),
        c.ApplyStageRetry(executionId="0000000e-0000-4000-8000-000000000001", stageName="Deploy"),
        c.ApplyStageRetry(executionId="0000000e-0000-4000-8000-000000000001", stageName="Nope"),
        c.ApplyStageRetry(executionId="ffffffff-ffff-4fff-8fff-ffffffffffff", stageName="Build"),
    ],
    ids=["nothing-pending", "stage-not-run", "unknown-stage", "unknown-execution"],
)
def test_apply_without_pending_retry_is_noop(cmd: c.ApplyStageRetry) -> None:
    h, a = three_stage()
    assert a == "0000000e-0000-4000-8000-000000000001"  # the id the commands above name
    h.fail(a, "b1")
    assert h.run(cmd) == []


def _update(h: Harness, a: str) -> None:
    h.update()


def _later_execution_enters(h: Harness, a: str) -> None:
    b = h.start()
    h.succeed(b, "src")
    assert h.state.stageLatest["Build"] == b


def _limit(h: Harness, a: str) -> None:
    h.start()


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (_update, "StageNotRetryableException"),
        (_later_execution_enters, "NotLatestPipelineExecutionException"),
        (_limit, "ConcurrentPipelineExecutionsLimitExceededException"),
    ],
    ids=["updated", "not-latest", "limit"],
)
def test_apply_after_state_changed_is_rejected(
    change: Callable[[Harness, str], None], error: str
) -> None:
    h = Harness()
    h.create(make_decl(THREE), limit=1)
    a = h.to_build()
    h.fail(a, "b1")
    h.retry(a, "Build", "FAILED_ACTIONS")
    change(h, a)
    envs = h.apply(a, "Build")
    assert types(envs) == ["StageRetryRejected"]
    (rej,) = of_type(envs, ev.StageRetryRejected)
    assert rej.errorType == error
    assert rej.reason
    run = h.run_of(a, "Build")
    assert run.pendingRetry is None and run.pendingTrigger is None
    assert run.status == "Failed"
    assert run.manualRetries == 0
    assert h.x(a).status == "Failed"
    assert len(h.attempts(a, "b1")) == 1
    assert h.apply(a, "Build") == []
    # the pending flag is gone: a new request meets the real problem, not a conflict
    assert h.retry_error(a, "Build", "FAILED_ACTIONS").type_name == error


def test_apply_all_actions_pending_waits_for_nothing() -> None:
    h, a = three_stage()
    h.fail(a, "b1")
    h.succeed(a, "b2")
    h.retry(a, "Build", "ALL_ACTIONS")
    envs = h.apply(a, "Build")
    assert sorted(n for n, _ in scheduled(envs)) == ["b1", "b2"]


def test_failed_actions_apply_while_sibling_still_running() -> None:
    """The sibling is still InProgress at apply time (not just at request time)."""
    h, a = three_stage()
    h.fail(a, "b1")
    h.retry(a, "Build", "FAILED_ACTIONS")
    assert h.action(a, "b2").status == "InProgress"
    envs = h.apply(a, "Build")
    assert [n for n, _ in scheduled(envs)] == ["b1"]


def test_unstarted_sibling_of_failed_action_can_still_be_started_and_counts() -> None:
    """b2 was scheduled but no worker had taken it when b1 failed: it must not get stuck."""
    h, a = three_stage()
    h.fail(a, "b1")
    b2 = h.aid(a, "b2")
    envs = h.run(c.StartAction(executionId=a, actionExecutionId=b2, worker="w1"))
    assert types(envs) == ["ActionExecutionStarted"]
    h.retry_now(a, "Build", "FAILED_ACTIONS")
    h.run(c.CompleteAction(executionId=a, actionExecutionId=b2, succeeded=True, worker="w1"))
    envs = h.succeed(a, "b1")
    assert [n for n, _ in scheduled(envs)] == ["b3"]


def test_parallel_retry_does_not_take_an_occupant() -> None:
    h, a = three_stage("PARALLEL")
    h.fail(a, "b1")
    h.retry_now(a, "Build", "FAILED_ACTIONS")
    assert h.state.occupant == {}
    assert h.state.stageLatest["Build"] == a
