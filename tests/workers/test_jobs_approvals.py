"""Actions the engine does not run itself: custom-action jobs and manual approvals."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis

from app.domain.errors import DomainError
from app.engine import OpenJob
from tests.workers.helpers import (
    CUSTOM,
    approval,
    attempts,
    count,
    counted,
    custom,
    latest,
    make_engine,
    pipeline,
    running,
    wait_action,
    wait_for,
    wait_status,
)

pytestmark = pytest.mark.timeout(60)


async def test_custom_action_job_is_published_and_completed_by_a_job_worker(
    redis: Redis, tmp_path: Path
) -> None:
    c = tmp_path / "runs"
    engine = make_engine(redis)
    await engine.start()
    await engine.create_pipeline(
        pipeline("jobs", {"Build": [custom("ext")], "Deploy": [counted("dep", c)]})
    )
    async with running(redis):
        eid = await engine.start_execution("jobs")

        async def poll() -> OpenJob | None:
            found = await engine.poll_for_jobs(CUSTOM, 1, {"Target": "ext"})
            return found[0] if found else None

        job = await wait_for(poll, "the job to be published")
        assert job.ref.pipeline == "jobs" and job.ref.executionId == eid
        assert job.action.actionName == "ext" and job.action.status == "InProgress"
        # another action type or a non-matching query sees nothing
        assert await engine.poll_for_jobs(CUSTOM, 1, {"Target": "other"}) == []
        nonce = job.action.jobNonce
        assert job.ref.jobId and nonce
        with pytest.raises(DomainError) as err:
            await engine.put_job_result(job.ref.jobId, succeeded=True)
        assert err.value.type_name == "InvalidJobStateException"  # not acknowledged yet
        with pytest.raises(DomainError) as err:
            await engine.acknowledge_job(job.ref.jobId, "wrong-nonce")
        assert err.value.type_name == "InvalidNonceException"

        assert await engine.acknowledge_job(job.ref.jobId, nonce) == "InProgress"
        assert await engine.poll_for_jobs(CUSTOM, 5) == []  # acknowledged jobs are taken
        await engine.put_job_result(
            job.ref.jobId, succeeded=True, summary="built", external_execution_id="ext-1"
        )
        with pytest.raises(DomainError) as err:  # a repeat is refused and changes nothing
            await engine.put_job_result(job.ref.jobId, succeeded=False)
        assert err.value.type_name == "InvalidJobStateException"
        x = await wait_status(engine, "jobs", eid, "Succeeded", "Failed")

    assert x.status == "Succeeded"
    ext = latest(x, "Build", "ext")
    assert ext.status == "Succeeded" and ext.summary == "built"
    assert ext.externalExecutionId == "ext-1"
    assert count(c, "dep") == 1


async def test_custom_job_failure_fails_the_stage_and_is_retryable(redis: Redis) -> None:
    engine = make_engine(redis)
    await engine.start()
    await engine.create_pipeline(pipeline("jobfail", {"Build": [custom("ext")]}))

    async def take() -> OpenJob:
        async def poll() -> OpenJob | None:
            found = await engine.poll_for_jobs(CUSTOM, 1)
            return found[0] if found else None

        job = await wait_for(poll, "a job")
        assert job.action.jobNonce is not None
        await engine.acknowledge_job(job.ref.jobId, job.action.jobNonce)
        return job

    async with running(redis):
        eid = await engine.start_execution("jobfail")
        first = await take()
        await engine.put_job_result(
            first.ref.jobId, succeeded=False, error_code="JobFailed", message="compiler said no"
        )
        x = await wait_status(engine, "jobfail", eid, "Failed")
        assert latest(x, "Build", "ext").errorMessage == "compiler said no"
        await engine.retry_stage("jobfail", "Build", eid, "FAILED_ACTIONS")
        second = await take()  # the retry publishes a new job
        assert second.ref.jobId != first.ref.jobId
        assert second.ref.actionExecutionId != first.ref.actionExecutionId
        await engine.put_job_result(second.ref.jobId, succeeded=True)
        x = await wait_status(engine, "jobfail", eid, "Succeeded")
    assert [a.status for a in attempts(x, "ext")] == ["Failed", "Succeeded"]


async def test_manual_approval_waits_for_put_approval(redis: Redis, tmp_path: Path) -> None:
    c = tmp_path / "runs"
    engine = make_engine(redis)
    await engine.start()
    await engine.create_pipeline(
        pipeline(
            "appr",
            {"Build": [counted("b", c)], "Gate": [approval("ok")], "Deploy": [counted("dep", c)]},
        )
    )
    async with running(redis):
        approved = await engine.start_execution("appr")
        gate = await wait_action(
            engine, "appr", approved, "ok", lambda a: a.status == "InProgress", "waiting"
        )
        assert gate.token is not None
        assert count(c, "dep") == 0
        with pytest.raises(DomainError) as err:
            await engine.put_approval("appr", "Gate", "ok", "not-the-token", "Approved")
        assert err.value.type_name == "InvalidApprovalTokenException"
        await engine.put_approval("appr", "Gate", "ok", gate.token, "Approved", "lgtm")
        x = await wait_status(engine, "appr", approved, "Succeeded", "Failed")
        assert x.status == "Succeeded" and count(c, "dep") == 1
        assert latest(x, "Gate", "ok").summary == "lgtm"
        with pytest.raises(DomainError) as err:
            await engine.put_approval("appr", "Gate", "ok", gate.token, "Approved")
        assert err.value.type_name == "ApprovalAlreadyCompletedException"

        rejected = await engine.start_execution("appr")
        gate = await wait_action(
            engine, "appr", rejected, "ok", lambda a: a.status == "InProgress", "waiting"
        )
        assert gate.token is not None
        await engine.put_approval("appr", "Gate", "ok", gate.token, "Rejected", "nope")
        x = await wait_status(engine, "appr", rejected, "Failed")
    assert latest(x, "Gate", "ok").status == "Failed"
    assert latest(x, "Gate", "ok").errorCode == "Rejected"
    assert count(c, "dep") == 1


@pytest.mark.parametrize("acknowledged", [False, True])
async def test_a_job_whose_action_ended_without_a_result_expires(
    redis: Redis, acknowledged: bool
) -> None:
    """Issue 10: a custom action ended by a stop (abandon) — never polled, or acknowledged
    and never answered — leaves no job record behind forever: the partition's owner takes
    the job off the open list and gives its record the finished jobs' expiry."""
    engine = make_engine(redis)
    await engine.start()
    await engine.create_pipeline(pipeline("gone", {"Build": [custom("ext")]}))
    async with running(redis):
        eid = await engine.start_execution("gone")
        a = await wait_action(
            engine, "gone", eid, "ext", lambda a: a.status == "InProgress", "scheduled"
        )
        job_id = a.jobId
        assert job_id is not None
        key = engine.keys.job(job_id)
        async def published() -> bool:
            return int(await redis.exists(key)) == 1

        await wait_for(published, "the job to be published")
        if acknowledged:
            job = (await engine.poll_for_jobs(CUSTOM, 1))[0]
            assert job.action.jobNonce is not None
            await engine.acknowledge_job(job_id, job.action.jobNonce)
        assert await redis.ttl(key) == -1  # open or acknowledged: kept
        await engine.stop_execution("gone", eid, abandon=True)
        await wait_status(engine, "gone", eid, "Stopped")

        async def expiring() -> bool:
            return int(await redis.ttl(key)) > 0

        await wait_for(expiring, "the job record to get its expiry")
    assert await redis.zrange(engine.keys.jobs(CUSTOM.key), 0, -1) == []
