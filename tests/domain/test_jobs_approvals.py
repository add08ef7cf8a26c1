"""Custom actions (jobs: acknowledge + result) and manual approvals."""

from __future__ import annotations

import pytest

from app.domain import commands as c
from app.domain import events as ev
from app.domain.model import StageRetryMode
from tests.domain.helpers import Harness, make_decl, of_type, types

JOB = {"Source": ["src"], "Build": [("job", 1, "custom"), ("side", 1)]}
GATE = {"Source": ["src"], "Gate": [("ok", 1, "approval")], "Deploy": ["d"]}


def job_pipeline() -> tuple[Harness, str]:
    h = Harness()
    h.create(make_decl(JOB))
    return h, h.to_build()


def test_custom_action_is_scheduled_as_a_job() -> None:
    h, a = job_pipeline()
    job = h.action(a, "job")
    assert job.kind == "custom"
    assert job.jobId and job.jobNonce and job.jobId != job.jobNonce
    assert not job.acknowledged
    assert h.action(a, "side").kind == "commands"
    assert h.action(a, "side").jobId is None


def test_acknowledge_with_wrong_nonce() -> None:
    h, a = job_pipeline()
    job = h.action(a, "job")
    assert job.jobId is not None
    err = h.error(
        c.AcknowledgeJob(
            executionId=a, actionExecutionId=job.actionExecutionId, jobId=job.jobId, nonce="x"
        )
    )
    assert err.type_name == "InvalidNonceException"


def test_acknowledge_unknown_job() -> None:
    h, a = job_pipeline()
    job = h.action(a, "job")
    assert job.jobNonce is not None
    for eid, aid, jid in [
        (a, job.actionExecutionId, "nope"),
        (a, h.aid(a, "src"), job.jobId),
        ("ffffffff-ffff-4fff-8fff-ffffffffffff", job.actionExecutionId, job.jobId),
    ]:
        err = h.error(
            c.AcknowledgeJob(executionId=eid, actionExecutionId=aid, jobId=jid or "", nonce="n")
        )
        assert err.type_name == "JobNotFoundException"


def _ack(h: Harness, a: str) -> list[ev.Envelope]:
    job = h.action(a, "job")
    assert job.jobId is not None and job.jobNonce is not None
    return h.run(
        c.AcknowledgeJob(
            executionId=a,
            actionExecutionId=job.actionExecutionId,
            jobId=job.jobId,
            nonce=job.jobNonce,
        )
    )


def _job_result(h: Harness, a: str, ok: bool, job_id: str | None = None) -> c.CompleteAction:
    job = h.action(a, "job")
    return c.CompleteAction(
        executionId=a,
        actionExecutionId=job.actionExecutionId,
        succeeded=ok,
        jobId=job_id or job.jobId,
    )


@pytest.mark.parametrize("ok", [True, False])
def test_job_result_before_acknowledge(ok: bool) -> None:
    h, a = job_pipeline()
    err = h.error(_job_result(h, a, ok))
    assert err.type_name == "InvalidJobStateException"
    assert h.action(a, "job").status == "InProgress"


def test_job_result_with_wrong_job_id() -> None:
    h, a = job_pipeline()
    _ack(h, a)
    err = h.error(_job_result(h, a, True, job_id="other"))
    assert err.type_name == "JobNotFoundException"


def test_job_acknowledge_then_success() -> None:
    h, a = job_pipeline()
    assert types(_ack(h, a)) == ["JobAcknowledged"]
    assert h.action(a, "job").acknowledged
    assert _ack(h, a) == []  # repeated acknowledge
    envs = h.run(_job_result(h, a, True))
    assert types(envs) == ["ActionExecutionSucceeded"]
    assert h.action(a, "job").status == "Succeeded"
    # a repeated result for an ended job is refused as the job's state is wrong
    err = h.error(_job_result(h, a, True))
    assert err.type_name == "InvalidJobStateException"
    err = h.error(
        c.AcknowledgeJob(
            executionId=a,
            actionExecutionId=h.aid(a, "job"),
            jobId=h.action(a, "job").jobId or "",
            nonce=h.action(a, "job").jobNonce or "",
        )
    )
    assert err.type_name == "InvalidJobStateException"


def test_job_failure_is_retryable_with_a_new_job() -> None:
    h, a = job_pipeline()
    _ack(h, a)
    old = h.action(a, "job")
    envs = h.run(_job_result(h, a, False))
    assert types(envs)[:2] == ["ActionExecutionFailed", "StageFailed"]
    h.retry_now(a, "Build", "FAILED_ACTIONS")
    new = h.action(a, "job")
    assert new.actionExecutionId != old.actionExecutionId
    assert new.jobId != old.jobId and new.jobNonce != old.jobNonce
    assert not new.acknowledged


# --- approvals -------------------------------------------------------------------------------


def gate() -> tuple[Harness, str, str]:
    h = Harness()
    h.create(make_decl(GATE))
    a = h.start()
    h.succeed(a, "src")
    token = h.action(a, "ok").token
    assert token is not None
    return h, a, token


def approve(token: str, status: str = "Approved", action: str = "ok") -> c.PutApproval:
    return c.PutApproval(
        stageName="Gate",
        actionName=action,
        token=token,
        status=status,  # type: ignore[arg-type]
        summary="looks good",
    )


def test_approval_approved() -> None:
    h, a, token = gate()
    h.actor = "AKIDAPPROVER"
    envs = h.run(approve(token))
    assert types(envs)[:3] == ["ApprovalRecorded", "ActionExecutionSucceeded", "StageSucceeded"]
    ok = h.action(a, "ok")
    assert ok.status == "Succeeded"
    assert ok.summary == "looks good"
    assert ok.updatedBy == "AKIDAPPROVER"
    assert h.x(a).currentStage == "Deploy"


def test_approval_rejected_is_retryable() -> None:
    h, a, token = gate()
    envs = h.run(approve(token, "Rejected"))
    assert types(envs) == [
        "ApprovalRecorded",
        "ActionExecutionFailed",
        "StageFailed",
        "ExecutionFailed",
    ]
    (failed,) = of_type(envs, ev.ActionExecutionFailed)
    assert failed.errorCode == "Rejected"
    assert h.action(a, "ok").status == "Failed"
    assert h.x(a).status == "Failed"
    envs = h.retry_now(a, "Gate", "FAILED_ACTIONS")
    new_token = h.action(a, "ok").token
    assert new_token is not None and new_token != token
    # the old token belongs to a completed approval
    assert h.error(approve(token)).type_name == "ApprovalAlreadyCompletedException"
    h.run(approve(new_token))
    assert h.x(a).currentStage == "Deploy"


def test_approval_wrong_token() -> None:
    h, a, _ = gate()
    err = h.error(approve("not-the-token"))
    assert err.type_name == "InvalidApprovalTokenException"
    assert h.action(a, "ok").status == "InProgress"


@pytest.mark.parametrize("first", ["Approved", "Rejected"])
@pytest.mark.parametrize("second", ["Approved", "Rejected"])
def test_approval_twice(first: str, second: str) -> None:
    h, _, token = gate()
    h.run(approve(token, first))
    err = h.error(approve(token, second))
    assert err.type_name == "ApprovalAlreadyCompletedException"


def test_approval_unknown_stage_or_action() -> None:
    h, _, token = gate()
    err = h.error(c.PutApproval(stageName="Nope", actionName="ok", token=token, status="Approved"))
    assert err.type_name == "StageNotFoundException"
    err = h.error(approve(token, action="nope"))
    assert err.type_name == "ActionNotFoundException"
    err = h.error(
        c.PutApproval(stageName="Source", actionName="src", token=token, status="Approved")
    )
    assert err.type_name == "ActionNotFoundException"  # not a manual approval action


def test_approval_token_of_one_execution_only_approves_that_execution() -> None:
    h = Harness()
    h.create(make_decl(GATE, mode="PARALLEL"))
    a = h.start()
    b = h.start()
    h.succeed(a, "src")
    h.succeed(b, "src")
    tb = h.action(b, "ok").token
    assert tb is not None and tb != h.action(a, "ok").token
    h.run(approve(tb))
    assert h.action(b, "ok").status == "Succeeded"
    assert h.action(a, "ok").status == "InProgress"


@pytest.mark.parametrize("mode", ["FAILED_ACTIONS", "ALL_ACTIONS"])
def test_approval_stopped_with_abandon_then_retried(mode: StageRetryMode) -> None:
    h, a, token = gate()
    h.stop(a, abandon=True)
    assert h.error(approve(token)).type_name == "ApprovalAlreadyCompletedException"
    h.retry_now(a, "Gate", mode)
    new_token = h.action(a, "ok").token
    assert new_token is not None
    h.run(approve(new_token))
    h.succeed(a, "d")
    assert h.x(a).status == "Succeeded"
