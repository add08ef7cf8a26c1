"""End to end: the real ``stageline serve`` (uvicorn + engine + in-process workers) driven by
real boto3 clients (and aws-cli) over loopback HTTP.

Three servers, each started once for the module:

- ``live``: a private real ``redis-server`` (db 0), workers on, SigV4 auth on. Commands,
  manual-approval and custom (job worker) actions really run.
- ``paused``: the same Redis server (db 1), ``workers=False`` and at most one active execution
  per pipeline: nobody applies accepted retries or runs actions, which makes every
  RetryStageExecution error deterministic (manual approvals move the executions).
- ``embedded``: no Redis URL (the embedded fakeredis), workers on, auth off: the smoke path a
  first-time user takes, and the README's aws-cli walk-through.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from redis.asyncio import Redis

from app.api.server import ServeConfig, check_exposure, is_loopback
from app.cli import main as cli_main
from app.domain import events as ev
from app.store.eventstore import EventStore
from app.store.keys import Keys
from tests.api_helpers import (
    AKID,
    SECRET,
    Stageline,
    assert_aws_error,
    client,
    raw,
    run_stageline,
    target,
    wait_for,
)
from tests.conftest import no_redis
from tests.redis_server import RedisServer, redis_binary
from tests.workers.helpers import AS_TEST_USER
from workers.config import WorkerConfig

REPO = Path(__file__).resolve().parent.parent
ACTOR = f"arn:aws:iam::000000000000:user/{AKID}"  # the principal of an unnamed key
ROLE = "arn:aws:iam::123456789012:role/stageline-e2e"
PARTITIONS = 4
COMMANDS = {"category": "Compute", "owner": "AWS", "provider": "Commands", "version": "1"}
MANUAL = {"category": "Approval", "owner": "AWS", "provider": "Manual", "version": "1"}
CUSTOM = {"category": "Build", "owner": "Custom", "provider": "E2EBuilder", "version": "1"}

pytestmark = pytest.mark.timeout(120)


# --- declarations -------------------------------------------------------------------------


def commands(name: str, *cmds: str, run_order: int | None = None) -> dict[str, Any]:
    a: dict[str, Any] = {"name": name, "actionTypeId": COMMANDS, "commands": list(cmds)}
    if run_order is not None:
        a["runOrder"] = run_order
    return a


def approval(name: str) -> dict[str, Any]:
    return {"name": name, "actionTypeId": MANUAL}


def custom(name: str) -> dict[str, Any]:
    return {"name": name, "actionTypeId": CUSTOM, "configuration": {"Project": "e2e"}}


def stage(name: str, *actions: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "actions": list(actions), **extra}


def pipeline(name: str, *stages: dict[str, Any], mode: str | None = None) -> dict[str, Any]:
    p: dict[str, Any] = {"name": name, "roleArn": ROLE, "stages": list(stages)}
    if mode is not None:
        p["executionMode"] = mode
    return p


# --- reading state ------------------------------------------------------------------------


def stages(cp: Any, name: str) -> dict[str, dict[str, Any]]:
    """GetPipelineState as ``{stage: {latest, retry, inbound, actions: {action: latest}}}``."""
    out: dict[str, dict[str, Any]] = {}
    for s in cp.get_pipeline_state(name=name)["stageStates"]:
        out[s["stageName"]] = {
            "latest": s.get("latestExecution", {}),
            "retry": s.get("retryStageMetadata"),
            "actions": {a["actionName"]: a.get("latestExecution", {}) for a in s["actionStates"]},
            "inbound": s.get("inboundExecutions", []),
        }
    return out


def action(cp: Any, name: str, stage_name: str, action_name: str) -> dict[str, Any]:
    result: dict[str, Any] = stages(cp, name)[stage_name]["actions"][action_name]
    return result


def execution_status(cp: Any, name: str, eid: str) -> str:
    status: str = cp.get_pipeline_execution(pipelineName=name, pipelineExecutionId=eid)[
        "pipelineExecution"
    ]["status"]
    return status


def wait_status(cp: Any, name: str, eid: str, status: str, timeout: float = 20) -> None:
    wait_for(
        lambda: execution_status(cp, name, eid) == status,
        timeout=timeout,
        what=f"execution {eid} of {name} to be {status}",
    )


def wait_action(
    cp: Any, name: str, stage_name: str, action_name: str, status: str, *, not_id: str = ""
) -> dict[str, Any]:
    """Wait until the action's latest attempt has ``status`` (and is not attempt ``not_id``)."""

    def check() -> dict[str, Any] | None:
        a = action(cp, name, stage_name, action_name)
        if a.get("status") == status and a.get("actionExecutionId") != not_id:
            return a
        return None

    result: dict[str, Any] = wait_for(
        check, timeout=20, what=f"{name}/{stage_name}/{action_name} to be {status}"
    )
    return result


def action_executions(cp: Any, name: str, eid: str | None = None, page: int = 100) -> list[Any]:
    """Every ListActionExecutions item, following nextToken with ``page`` items a page."""
    args: dict[str, Any] = {"pipelineName": name, "maxResults": page}
    if eid is not None:
        args["filter"] = {"pipelineExecutionId": eid}
    items: list[Any] = []
    while True:
        resp = cp.list_action_executions(**args)
        items.extend(resp["actionExecutionDetails"])
        assert len(resp["actionExecutionDetails"]) <= page
        if "nextToken" not in resp:
            return items
        args["nextToken"] = resp["nextToken"]


def attempts(items: list[Any], action_name: str) -> list[tuple[str, str]]:
    """``(actionExecutionId, status)`` of one action's attempts, oldest first."""
    mine = [i for i in items if i["actionName"] == action_name]
    mine.sort(key=lambda i: i["startTime"])
    return [(i["actionExecutionId"], i["status"]) for i in mine]


def retry(cp: Any, name: str, stage_name: str, eid: str, mode: str = "FAILED_ACTIONS") -> Any:
    return cp.retry_stage_execution(
        pipelineName=name, stageName=stage_name, pipelineExecutionId=eid, retryMode=mode
    )


def read_events(url: str, name: str) -> list[ev.Envelope]:
    async def read() -> list[ev.Envelope]:
        redis = Redis.from_url(url)
        try:
            return await EventStore(redis, Keys(partitions=PARTITIONS)).read(name)
        finally:
            await redis.aclose()

    return asyncio.run(read())


# --- servers ------------------------------------------------------------------------------


def _worker_config(name: str) -> WorkerConfig:
    return WorkerConfig(
        name=name,
        concurrency=8,
        block_ms=200,
        shutdown_grace_s=2.0,
        reap_every_s=0.5,
        snapshot_every_s=1.0,
        actions=AS_TEST_USER,  # its actions write files under the test's private tmp dir
    )


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server for this module (db 0: ``live``, db 1: ``paused``)."""
    if redis_binary() is None:
        no_redis("the end-to-end tests need the redis-server binary")
    server = RedisServer(tmp_path_factory.mktemp("e2e-redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def live_url(redis_server: RedisServer) -> str:
    return f"redis://127.0.0.1:{redis_server.port}/0"


@pytest.fixture(scope="module")
def live(live_url: str) -> Iterator[Stageline]:
    cfg = ServeConfig(
        port=0,
        redis_url=live_url,
        credentials={AKID: SECRET},
        partitions=PARTITIONS,
        worker=_worker_config("e2e-live"),
        log_level="warning",
    )
    with run_stageline(cfg) as srv:
        yield srv


@pytest.fixture(scope="module")
def paused(redis_server: RedisServer) -> Iterator[Stageline]:
    cfg = ServeConfig(
        port=0,
        redis_url=f"redis://127.0.0.1:{redis_server.port}/1",
        workers=False,
        partitions=PARTITIONS,
        max_concurrent_executions=1,
        log_level="warning",
    )
    with run_stageline(cfg) as srv:
        yield srv


@pytest.fixture(scope="module")
def embedded() -> Iterator[Stageline]:
    cfg = ServeConfig(port=0, worker=_worker_config("e2e-embedded"), log_level="warning")
    with run_stageline(cfg) as srv:
        yield srv


@pytest.fixture
def cp(live: Stageline) -> Any:
    return client(live.url)


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    """A directory for the marker files the Commands actions wait for / test."""
    return tmp_path


def next_second() -> None:
    """Sleep into the next wall-clock second (a new X-Amz-Date, so a new signature)."""
    time.sleep(1.01 - time.time() % 1)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- live server: pipelines CRUD, health, pagination ---------------------------------------


def test_health(live: Stageline, embedded: Stageline) -> None:
    for srv in (live, embedded):
        status, headers, body = raw(srv.url, "GET", "/health")
        assert (status, body) == (200, {"status": "ok"})
        assert headers["content-type"] == "application/x-amz-json-1.1"


def test_health_follows_redis(redis_factory: Any, tmp_path: Path) -> None:
    """/health is 503 while Redis is unreachable and 200 again once it is back."""
    redis = redis_factory(tmp_path / "redis")
    redis.start()
    cfg = ServeConfig(port=0, redis_url=redis.url, workers=False, log_level="critical")
    with run_stageline(cfg) as srv:
        assert raw(srv.url, "GET", "/health")[0] == 200
        redis.kill()
        status, headers, body = raw(srv.url, "GET", "/health")
        assert (status, body) == (503, {"status": "unavailable"})
        assert headers["content-type"] == "application/x-amz-json-1.1"
        redis.start()
        wait_for(lambda: raw(srv.url, "GET", "/health")[0] == 200, what="health to recover")


def test_pipeline_crud_and_list_pagination(cp: Any) -> None:
    names = sorted(unique("crud") for _ in range(3))
    for n in names:
        out = cp.create_pipeline(
            pipeline=pipeline(n, stage("Build", commands("echo", "echo hi"))),
            tags=[{"key": "team", "value": "e2e"}],
        )
        assert out["pipeline"]["name"] == n and out["pipeline"]["version"] == 1
        assert out["tags"] == [{"key": "team", "value": "e2e"}]
    with pytest.raises(cp.exceptions.PipelineNameInUseException):
        cp.create_pipeline(pipeline=pipeline(names[0], stage("Build", commands("e", "true"))))

    got = cp.get_pipeline(name=names[0])
    assert got["pipeline"]["stages"][0]["actions"][0]["commands"] == ["echo hi"]
    assert got["metadata"]["pipelineArn"].endswith(f":{names[0]}")

    updated = pipeline(names[0], stage("Build", commands("echo", "echo updated")))
    assert cp.update_pipeline(pipeline=updated)["pipeline"]["version"] == 2
    assert cp.get_pipeline(name=names[0])["pipeline"]["version"] == 2
    old = cp.get_pipeline(name=names[0], version=1)["pipeline"]
    assert old["stages"][0]["actions"][0]["commands"] == ["echo hi"]
    with pytest.raises(cp.exceptions.PipelineVersionNotFoundException):
        cp.get_pipeline(name=names[0], version=7)
    ghost = unique("ghost")
    with pytest.raises(cp.exceptions.PipelineNotFoundException) as missing:
        cp.get_pipeline(name=ghost)
    wording = f"Account '000000000000' does not have a pipeline with name '{ghost}'"
    assert missing.value.response["Error"]["Message"] == wording
    # PipelineNotFoundException is not among UpdatePipeline's modelled errors
    with pytest.raises(cp.exceptions.ValidationException) as invalid:
        cp.update_pipeline(pipeline=pipeline(ghost, stage("B", commands("e", "true"))))
    assert invalid.value.response["Error"]["Message"] == wording

    # ListPipelines: one per page, following nextToken; ours are all there, none repeated
    seen: list[str] = []
    kwargs: dict[str, Any] = {"maxResults": 1}
    while True:
        page = cp.list_pipelines(**kwargs)
        assert len(page["pipelines"]) <= 1
        seen.extend(p["name"] for p in page["pipelines"])
        if "nextToken" not in page:
            break
        kwargs["nextToken"] = page["nextToken"]
    assert len(seen) == len(set(seen))
    assert set(names) <= set(seen)
    versions = {p["name"]: p["version"] for p in cp.list_pipelines()["pipelines"]}
    assert versions[names[0]] == 2 and versions[names[1]] == 1

    cp.delete_pipeline(name=names[1])
    with pytest.raises(cp.exceptions.PipelineNotFoundException):
        cp.get_pipeline(name=names[1])
    with pytest.raises(cp.exceptions.PipelineNotFoundException):
        cp.get_pipeline_state(name=names[1])
    assert names[1] not in {p["name"] for p in cp.list_pipelines()["pipelines"]}
    with pytest.raises(cp.exceptions.InvalidNextTokenException):
        cp.list_pipeline_executions(pipelineName=names[0], nextToken="bm90LWEtdG9rZW4")


def test_start_is_idempotent_and_executions_paginate(cp: Any) -> None:
    name = unique("par")
    cp.create_pipeline(
        pipeline=pipeline(name, stage("Build", commands("echo", "echo ok")), mode="PARALLEL")
    )
    first = cp.start_pipeline_execution(name=name, clientRequestToken="tok-1")[
        "pipelineExecutionId"
    ]
    again = cp.start_pipeline_execution(name=name, clientRequestToken="tok-1")[
        "pipelineExecutionId"
    ]
    assert again == first
    others = [cp.start_pipeline_execution(name=name)["pipelineExecutionId"] for _ in range(4)]
    ids = [first, *others]
    assert len(set(ids)) == 5
    for eid in ids:
        wait_status(cp, name, eid, "Succeeded")

    listed: list[str] = []
    kwargs: dict[str, Any] = {"pipelineName": name, "maxResults": 2}
    pages = 0
    while True:
        page = cp.list_pipeline_executions(**kwargs)
        pages += 1
        assert len(page["pipelineExecutionSummaries"]) <= 2
        listed.extend(x["pipelineExecutionId"] for x in page["pipelineExecutionSummaries"])
        if "nextToken" not in page:
            break
        kwargs["nextToken"] = page["nextToken"]
    assert pages == 3
    assert listed == list(reversed(ids))  # newest first, each once
    summary = cp.list_pipeline_executions(pipelineName=name)["pipelineExecutionSummaries"][-1]
    assert summary["trigger"]["triggerDetail"] == ACTOR
    assert summary["executionMode"] == "PARALLEL"
    filtered = cp.list_pipeline_executions(
        pipelineName=name, filter={"succeededInStage": {"stageName": "Build"}}
    )["pipelineExecutionSummaries"]
    assert len(filtered) == 5


# --- live server: the heart ----------------------------------------------------------------


def test_retry_failed_actions_while_sibling_runs_then_all_actions(cp: Any, marks: Path) -> None:
    """FAILED_ACTIONS retries the failed action while its sibling keeps running (and keeps its
    actionExecutionId); ALL_ACTIONS is refused while anything runs and reruns everything after.
    Every attempt is in ListActionExecutions."""
    name = unique("heart")
    release, fixed = marks / "release", marks / "fixed"
    cp.create_pipeline(
        pipeline=pipeline(
            name,
            stage(
                "Build",
                commands(
                    "slow",
                    f"touch {marks}/slow-started",
                    f"while [ ! -f {release} ]; do sleep 0.05; done",
                    "echo slow done",
                ),
                commands("flaky", "echo checking", f"test -f {fixed}"),
                commands("package", "echo packaging", run_order=2),
            ),
            stage("Deploy", commands("deploy", "echo deploying")),
        )
    )
    eid = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]

    failed = wait_action(cp, name, "Build", "flaky", "Failed")
    assert failed["errorDetails"]["code"]
    wait_status(cp, name, eid, "Failed")
    view = stages(cp, name)["Build"]
    slow = view["actions"]["slow"]
    assert slow["status"] == "InProgress"
    assert view["latest"] == {"pipelineExecutionId": eid, "status": "Failed"}
    assert view["retry"] is None
    assert "package" not in {k for k, v in view["actions"].items() if v}

    # refused while the sibling runs; FAILED_ACTIONS is allowed
    with pytest.raises(cp.exceptions.StageNotRetryableException) as ei:
        retry(cp, name, "Build", eid, "ALL_ACTIONS")
    assert "in progress" in ei.value.response["Error"]["Message"]
    fixed.touch()
    assert retry(cp, name, "Build", eid)["pipelineExecutionId"] == eid

    retried = wait_action(
        cp, name, "Build", "flaky", "Succeeded", not_id=failed["actionExecutionId"]
    )
    view = stages(cp, name)["Build"]
    assert view["actions"]["slow"]["actionExecutionId"] == slow["actionExecutionId"]
    assert view["actions"]["slow"]["status"] == "InProgress"
    assert view["retry"] == {
        "autoStageRetryAttempt": 0,
        "manualStageRetryAttempt": 1,
        "latestRetryTrigger": "ManualStageRetry",
    }
    assert execution_status(cp, name, eid) == "InProgress"
    # nothing failed any more: not retryable. The same call as the accepted one above, so
    # sent in a later second: within one second it has the same SigV4 signature, which the
    # API refuses as a replay (docs/security.md)
    next_second()
    with pytest.raises(cp.exceptions.StageNotRetryableException):
        retry(cp, name, "Build", eid)

    release.touch()
    wait_status(cp, name, eid, "Succeeded")
    view = stages(cp, name)
    assert view["Build"]["actions"]["slow"]["actionExecutionId"] == slow["actionExecutionId"]
    assert view["Build"]["actions"]["slow"]["status"] == "Succeeded"
    assert view["Deploy"]["latest"]["status"] == "Succeeded"

    items = action_executions(cp, name, eid, page=2)
    assert len(items) == 5
    assert len({i["actionExecutionId"] for i in items}) == 5
    assert attempts(items, "flaky") == [
        (failed["actionExecutionId"], "Failed"),
        (retried["actionExecutionId"], "Succeeded"),
    ]
    assert attempts(items, "slow") == [(slow["actionExecutionId"], "Succeeded")]
    assert {i["pipelineExecutionId"] for i in items} == {eid}
    assert items == action_executions(cp, name, eid)  # pages == one big page
    latest = cp.list_action_executions(
        pipelineName=name,
        filter={
            "latestInPipelineExecution": {"pipelineExecutionId": eid, "startTimeRange": "Latest"}
        },
    )["actionExecutionDetails"]
    assert sorted((i["actionName"], i["status"]) for i in latest) == [
        ("deploy", "Succeeded"),
        ("flaky", "Succeeded"),
        ("package", "Succeeded"),
        ("slow", "Succeeded"),
    ]

    # second execution: ALL_ACTIONS after the sibling finished reruns every action
    release.unlink()
    fixed.unlink()
    eid2 = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]
    wait_status(cp, name, eid2, "Failed")
    # the first execution is no longer the latest in Build
    with pytest.raises(cp.exceptions.NotLatestPipelineExecutionException):
        retry(cp, name, "Build", eid)
    with pytest.raises(cp.exceptions.StageNotRetryableException):
        retry(cp, name, "Build", eid2, "ALL_ACTIONS")
    release.touch()
    wait_action(cp, name, "Build", "slow", "Succeeded")
    before = stages(cp, name)["Build"]["actions"]
    fixed.touch()
    assert retry(cp, name, "Build", eid2, "ALL_ACTIONS")["pipelineExecutionId"] == eid2
    wait_status(cp, name, eid2, "Succeeded")
    after = stages(cp, name)["Build"]["actions"]
    for a in ("slow", "flaky"):
        assert after[a]["actionExecutionId"] != before[a]["actionExecutionId"]
        assert after[a]["status"] == "Succeeded"
    items2 = action_executions(cp, name, eid2, page=1)
    assert [len(attempts(items2, a)) for a in ("slow", "flaky", "package", "deploy")] == [
        2,
        2,
        1,
        1,
    ]
    assert [s for _, s in attempts(items2, "slow")] == ["Succeeded", "Succeeded"]
    assert [s for _, s in attempts(items2, "flaky")] == ["Failed", "Succeeded"]
    everything = action_executions(cp, name, page=3)
    assert len(everything) == len(items) + len(items2)
    assert stages(cp, name)["Build"]["retry"]["manualStageRetryAttempt"] == 1


def test_automatic_stage_retry(cp: Any, marks: Path) -> None:
    name = unique("auto")
    first_time = f"test -f {marks}/seen || (touch {marks}/seen; exit 1)"
    cp.create_pipeline(
        pipeline=pipeline(
            name,
            stage(
                "Build",
                commands("once-flaky", first_time),
                onFailure={
                    "result": "RETRY",
                    "retryConfiguration": {"retryMode": "FAILED_ACTIONS"},
                },
            ),
        )
    )
    eid = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]
    wait_status(cp, name, eid, "Succeeded")
    assert stages(cp, name)["Build"]["retry"] == {
        "autoStageRetryAttempt": 1,
        "manualStageRetryAttempt": 0,
        "latestRetryTrigger": "AutomatedStageRetry",
    }
    assert [s for _, s in attempts(action_executions(cp, name, eid), "once-flaky")] == [
        "Failed",
        "Succeeded",
    ]


def test_custom_action_job_worker(cp: Any) -> None:
    """A job worker written with boto3 fails the first job and completes the retried one."""
    name = unique("jobs")
    decl = pipeline(name, stage("Build", custom("external")), stage("Done", commands("d", "true")))
    # as in AWS, a Custom action needs its type created first
    with pytest.raises(cp.exceptions.InvalidActionDeclarationException) as refused:
        cp.create_pipeline(pipeline=decl)
    assert "ActionType (Category: 'Build', Provider: 'E2EBuilder', Owner: 'Custom', Version: " \
        "'1') in action 'external' is not available" in refused.value.response["Error"]["Message"]
    details = {"minimumCount": 0, "maximumCount": 1}
    cp.create_custom_action_type(
        category="Build",
        provider="E2EBuilder",
        version="1",
        inputArtifactDetails=details,
        outputArtifactDetails=details,
    )
    cp.create_pipeline(pipeline=decl)
    eid = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]
    worker = client(cp.meta.endpoint_url)

    def take_job() -> dict[str, Any]:
        def poll() -> Any:
            jobs = worker.poll_for_jobs(actionTypeId=CUSTOM, maxBatchSize=5)["jobs"]
            mine = [j for j in jobs if j["data"]["pipelineContext"]["pipelineName"] == name]
            return mine[0] if mine else None

        job: dict[str, Any] = wait_for(poll, timeout=20, what="a job to poll")
        assert job["data"]["pipelineContext"]["pipelineExecutionId"] == eid
        assert job["data"]["actionConfiguration"]["configuration"] == {"Project": "e2e"}
        assert worker.acknowledge_job(jobId=job["id"], nonce=job["nonce"])["status"] == "InProgress"
        details = worker.get_job_details(jobId=job["id"])["jobDetails"]
        assert details["id"] == job["id"]
        return job

    job = take_job()
    with pytest.raises(worker.exceptions.InvalidNonceException):
        worker.acknowledge_job(jobId=job["id"], nonce="wrong-nonce")
    worker.put_job_failure_result(
        jobId=job["id"],
        failureDetails={
            "type": "JobFailed",
            "message": "compiler exploded",
            "externalExecutionId": "ext-1",
        },
    )
    wait_status(cp, name, eid, "Failed")
    failed = action(cp, name, "Build", "external")
    assert failed["status"] == "Failed"
    assert failed["errorDetails"] == {"code": "JobFailed", "message": "compiler exploded"}
    with pytest.raises(worker.exceptions.InvalidJobStateException):
        worker.put_job_success_result(jobId=job["id"])

    retry(cp, name, "Build", eid)
    job2 = take_job()
    assert job2["id"] != job["id"]
    worker.put_job_success_result(
        jobId=job2["id"],
        executionDetails={
            "summary": "built",
            "externalExecutionId": "ext-2",
            "percentComplete": 100,
        },
        outputVariables={"artifact": "app-1.0.tgz"},
    )
    wait_status(cp, name, eid, "Succeeded")
    items = action_executions(cp, name, eid)
    ext = [i for i in items if i["actionName"] == "external"]
    ext.sort(key=lambda i: i["startTime"])
    assert [i["status"] for i in ext] == ["Failed", "Succeeded"]
    assert ext[1]["output"]["outputVariables"] == {"artifact": "app-1.0.tgz"}
    assert ext[1]["output"]["executionResult"]["externalExecutionId"] == "ext-2"
    assert ext[0]["output"]["executionResult"]["errorDetails"]["message"] == "compiler exploded"
    with pytest.raises(worker.exceptions.JobNotFoundException):
        worker.get_job_details(jobId=str(uuid.uuid4()))


def test_manual_approval(cp: Any) -> None:
    name = unique("approve")
    cp.create_pipeline(
        pipeline=pipeline(
            name,
            stage("Build", commands("build", "echo built")),
            stage("Approve", approval("ship-it")),
            stage("Deploy", commands("deploy", "echo deployed")),
        )
    )
    eid = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]
    pending = wait_action(cp, name, "Approve", "ship-it", "InProgress")
    token = pending["token"]
    with pytest.raises(cp.exceptions.InvalidApprovalTokenException):
        cp.put_approval_result(
            pipelineName=name,
            stageName="Approve",
            actionName="ship-it",
            result={"summary": "lgtm", "status": "Approved"},
            token=str(uuid.uuid4()),
        )
    out = cp.put_approval_result(
        pipelineName=name,
        stageName="Approve",
        actionName="ship-it",
        result={"summary": "lgtm", "status": "Approved"},
        token=token,
    )
    assert out["approvedAt"].year >= 2024
    wait_status(cp, name, eid, "Succeeded")
    done = action(cp, name, "Approve", "ship-it")
    assert (done["status"], done["summary"]) == ("Succeeded", "lgtm")
    # the approver is the signing key's principal
    [approve_stage] = [
        st for st in cp.get_pipeline_state(name=name)["stageStates"] if st["stageName"] == "Approve"
    ]
    assert approve_stage["actionStates"][0]["latestExecution"]["lastUpdatedBy"] == ACTOR
    [approved] = [
        d
        for d in cp.list_action_executions(pipelineName=name)["actionExecutionDetails"]
        if d["actionName"] == "ship-it"
    ]
    assert approved["updatedBy"] == ACTOR
    with pytest.raises(cp.exceptions.ApprovalAlreadyCompletedException):
        cp.put_approval_result(
            pipelineName=name,
            stageName="Approve",
            actionName="ship-it",
            result={"summary": "again", "status": "Rejected"},
            token=token,
        )


def test_stop_with_and_without_abandon(cp: Any, marks: Path) -> None:
    name = unique("stop")
    cp.create_pipeline(
        pipeline=pipeline(
            name,
            stage(
                "Build",
                commands(
                    "wait",
                    f"touch {marks}/started-$CODEPIPELINE_PIPELINE_EXECUTION_ID",
                    f"while [ ! -f {marks}/go ]; do sleep 0.05; done",
                ),
            ),
            mode="PARALLEL",
        )
    )
    gentle = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]
    hard = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]
    for eid in (gentle, hard):
        wait_for((marks / f"started-{eid}").exists, what=f"{eid} to run")

    cp.stop_pipeline_execution(pipelineName=name, pipelineExecutionId=gentle, reason="enough")
    assert execution_status(cp, name, gentle) == "Stopping"
    with pytest.raises(cp.exceptions.DuplicatedStopRequestException):
        cp.stop_pipeline_execution(pipelineName=name, pipelineExecutionId=gentle)

    out = cp.stop_pipeline_execution(
        pipelineName=name, pipelineExecutionId=hard, abandon=True, reason="now"
    )
    assert out["pipelineExecutionId"] == hard
    assert execution_status(cp, name, hard) == "Stopped"
    abandoned = [a for a in action_executions(cp, name, hard) if a["actionName"] == "wait"]
    assert [a["status"] for a in abandoned] == ["Abandoned"]
    with pytest.raises(cp.exceptions.PipelineExecutionNotStoppableException):
        cp.stop_pipeline_execution(pipelineName=name, pipelineExecutionId=hard)

    (marks / "go").touch()  # the gentle stop waits for its running action to end
    wait_status(cp, name, gentle, "Stopped")
    kept = [a for a in action_executions(cp, name, gentle) if a["actionName"] == "wait"]
    assert [a["status"] for a in kept] == ["Succeeded"]
    summaries = cp.list_pipeline_executions(pipelineName=name)["pipelineExecutionSummaries"]
    reasons = {s["pipelineExecutionId"]: s.get("stopTrigger", {}).get("reason") for s in summaries}
    assert reasons == {gentle: "enough", hard: "now"}
    with pytest.raises(cp.exceptions.PipelineExecutionNotFoundException):
        cp.stop_pipeline_execution(pipelineName=name, pipelineExecutionId=str(uuid.uuid4()))


# --- live server: authentication and the event log -----------------------------------------


def test_auth_and_actor_in_event_log(live: Stageline, live_url: str, cp: Any) -> None:
    name = unique("auth")
    cp.create_pipeline(pipeline=pipeline(name, stage("Build", commands("fail", "exit 3"))))
    eid = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]
    wait_status(cp, name, eid, "Failed")
    resp = retry(cp, name, "Build", eid)
    request_id = resp["ResponseMetadata"]["RequestId"]
    wait_for(lambda: action_executions(cp, name, eid).__len__() == 2, what="the retry to run")

    # wrong secret, unknown key, unsigned: refused, and nothing is recorded
    with pytest.raises(ClientError) as ei:
        retry(client(live.url, secret="wrong"), name, "Build", eid)
    assert ei.value.response["Error"]["Code"] == "InvalidSignatureException"
    with pytest.raises(ClientError) as ei:
        client(live.url, key="AKIDNOBODY").get_pipeline_state(name=name)
    assert ei.value.response["Error"]["Code"] == "UnrecognizedClientException"
    body = (
        f'{{"pipelineName":"{name}","stageName":"Build","pipelineExecutionId":"{eid}",'
        '"retryMode":"FAILED_ACTIONS"}'
    ).encode()
    status, headers, out = raw(live.url, body=body, headers=target("RetryStageExecution"))
    assert_aws_error(status, headers, out, "UnrecognizedClientException", 403)
    status, _, out = raw(live.url, "GET", "/health")
    assert status == 200

    events = read_events(live_url, name)
    by_type: dict[str, list[ev.Envelope]] = {}
    for e in events:
        by_type.setdefault(type(e.event).__name__, []).append(e)
    assert [e.actor for e in by_type["PipelineCreated"]] == [ACTOR]
    assert [e.actor for e in by_type["ExecutionStarted"]] == [ACTOR]
    requested = by_type["StageRetryRequested"]
    assert len(requested) == 1  # the refused requests left no trace
    assert requested[0].actor == ACTOR
    assert requested[0].requestId == request_id
    assert requested[0].source is not None and requested[0].source.startswith("127.0.0.1:")
    assert requested[0].event.executionId == eid  # type: ignore[union-attr]
    # applying it is a worker's doing, on behalf of the same request
    started = by_type["StageRetryStarted"]
    assert started and started[0].actor.startswith("worker:")
    assert started[0].correlationId == requested[0].correlationId


def test_check_exposure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert is_loopback(host)
        check_exposure(ServeConfig(host=host))
    for host in ("0.0.0.0", "::", "10.1.2.3", "example.com", ""):
        assert not is_loopback(host)
        with pytest.raises(SystemExit, match="refusing to listen"):
            check_exposure(ServeConfig(host=host))
        check_exposure(ServeConfig(host=host, credentials={AKID: SECRET}))
        check_exposure(ServeConfig(host=host, insecure=True))
    # serve() refuses before it binds or connects anywhere; so does the CLI
    with (
        pytest.raises(RuntimeError, match="failed to start"),
        run_stageline(ServeConfig(host="0.0.0.0", port=0)),
    ):
        pass
    monkeypatch.delenv("STAGELINE_ACCESS_KEYS", raising=False)
    assert cli_main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2  # usage (docs/cli.md)
    assert "refusing to listen on 0.0.0.0 without credentials" in capsys.readouterr().err


def test_cli_serve_flags_reach_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ServeConfig] = []

    async def fake_serve(cfg: ServeConfig, **_: Any) -> None:
        seen.append(cfg)

    monkeypatch.setattr("app.api.server.serve", fake_serve)
    monkeypatch.setenv("STAGELINE_ACCESS_KEYS", "K1:s1,K2:s2")
    argv = ["serve", "--host", "0.0.0.0", "--port", "9999", "--no-workers"]
    assert cli_main([*argv, "--max-concurrent-executions", "3", "--redis-url", "redis://r/0"]) == 0
    [cfg] = seen
    assert (cfg.host, cfg.port, cfg.workers, cfg.redis_url) == (
        "0.0.0.0",
        9999,
        False,
        "redis://r/0",
    )
    assert cfg.credentials == {"K1": "s1", "K2": "s2"}
    assert cfg.max_concurrent_executions == 3
    assert cfg.aws_strict is False  # off by default
    assert cli_main([*argv, "--aws-strict"]) == 0
    assert seen[1].aws_strict is True


# --- paused server: every RetryStageExecution error, deterministically ---------------------


def approve(
    cp: Any, name: str, stage_name: str, action_name: str, status: str = "Approved"
) -> None:
    token = wait_action(cp, name, stage_name, action_name, "InProgress")["token"]
    cp.put_approval_result(
        pipelineName=name,
        stageName=stage_name,
        actionName=action_name,
        result={"summary": status.lower(), "status": status},
        token=token,
    )


def test_every_retry_error(paused: Stageline) -> None:
    cp = client(paused.url)
    loose = client(paused.url, validate=False)  # lets malformed requests reach the server

    name = unique("gates")
    cp.create_pipeline(
        pipeline=pipeline(
            name,
            stage("One", approval("a1"), approval("a2")),
            stage("Two", approval("b1")),
        )
    )
    e1 = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]
    wait_action(cp, name, "One", "a1", "InProgress")

    # 1: ValidationException, naming the field
    good = {
        "pipelineName": name,
        "stageName": "One",
        "pipelineExecutionId": e1,
        "retryMode": "FAILED_ACTIONS",
    }
    for field, value in [
        ("stageName", "no spaces allowed"),
        ("stageName", "x" * 101),
        ("pipelineName", ""),
        ("pipelineExecutionId", e1.upper()),
        ("retryMode", "SOME_ACTIONS"),
    ]:
        with pytest.raises(loose.exceptions.ValidationException) as ei:
            loose.retry_stage_execution(**{**good, field: value})
        assert f"'{field}'" in ei.value.response["Error"]["Message"]
    missing = dict(good)
    del missing["retryMode"]
    with pytest.raises(loose.exceptions.ValidationException) as ei:
        loose.retry_stage_execution(**missing)
    assert "'retryMode'" in ei.value.response["Error"]["Message"]

    # 2-4: not found
    with pytest.raises(cp.exceptions.PipelineNotFoundException):
        retry(cp, unique("nope"), "One", e1)
    with pytest.raises(cp.exceptions.StageNotFoundException):
        retry(cp, name, "Three", e1)
    with pytest.raises(cp.exceptions.PipelineExecutionNotFoundException) as ei:
        retry(cp, name, "One", str(uuid.uuid4()))
    assert ei.value.response["Error"]["Code"] == "PipelineExecutionNotFoundException"

    # 6: never ran here / running without a failure
    with pytest.raises(cp.exceptions.StageNotRetryableException) as ei:
        retry(cp, name, "Two", e1)
    assert "did not run" in ei.value.response["Error"]["Message"]
    with pytest.raises(cp.exceptions.StageNotRetryableException) as ei:
        retry(cp, name, "One", e1)
    assert "no failed" in ei.value.response["Error"]["Message"]

    approve(cp, name, "One", "a1", "Rejected")
    wait_status(cp, name, e1, "Failed")
    # ALL_ACTIONS while a2 is still InProgress
    with pytest.raises(cp.exceptions.StageNotRetryableException) as ei:
        retry(cp, name, "One", e1, "ALL_ACTIONS")
    assert "in progress" in ei.value.response["Error"]["Message"]

    # 7: accepted (nobody applies it here), then a second request conflicts (HTTP 409)
    assert retry(cp, name, "One", e1)["pipelineExecutionId"] == e1
    with pytest.raises(cp.exceptions.ConflictException) as ei:
        retry(cp, name, "One", e1)
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409
    assert "pending" in ei.value.response["Error"]["Message"]
    # ALL_ACTIONS: check 6 (a2 still InProgress) comes before check 7 ...
    with pytest.raises(cp.exceptions.StageNotRetryableException):
        retry(cp, name, "One", e1, "ALL_ACTIONS")
    # ... and once a2 is done, the pending retry makes it a conflict too
    approve(cp, name, "One", "a2")
    with pytest.raises(cp.exceptions.ConflictException):
        retry(cp, name, "One", e1, "ALL_ACTIONS")

    # 6: all succeeded
    single = unique("single")
    cp.create_pipeline(pipeline=pipeline(single, stage("Only", approval("ok"))))
    e = cp.start_pipeline_execution(name=single)["pipelineExecutionId"]
    approve(cp, single, "Only", "ok")
    wait_status(cp, single, e, "Succeeded")
    with pytest.raises(cp.exceptions.StageNotRetryableException) as ei:
        retry(cp, single, "Only", e)
    assert "no failed" in ei.value.response["Error"]["Message"]


def test_not_latest_concurrency_limit_and_updated_pipeline(paused: Stageline) -> None:
    cp = client(paused.url)
    # 5: SUPERSEDED — a newer execution entered the stage
    name = unique("superseded")
    cp.create_pipeline(pipeline=pipeline(name, stage("One", approval("gate"))))
    e1 = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]
    approve(cp, name, "One", "gate", "Rejected")
    wait_status(cp, name, e1, "Failed")
    e2 = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]
    wait_for(lambda: stages(cp, name)["One"]["latest"].get("pipelineExecutionId") == e2)
    with pytest.raises(cp.exceptions.NotLatestPipelineExecutionException) as ei:
        retry(cp, name, "One", e1)
    assert e2 in ei.value.response["Error"]["Message"]

    # 8: the failed execution is in stage Two; a newer one is active in stage One (limit 1)
    name = unique("limited")
    cp.create_pipeline(
        pipeline=pipeline(name, stage("One", approval("g1")), stage("Two", approval("g2")))
    )
    e1 = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]
    approve(cp, name, "One", "g1")
    approve(cp, name, "Two", "g2", "Rejected")
    wait_status(cp, name, e1, "Failed")
    e2 = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]
    with pytest.raises(cp.exceptions.ConcurrentPipelineExecutionsLimitExceededException):
        cp.start_pipeline_execution(name=name)
    with pytest.raises(cp.exceptions.ConcurrentPipelineExecutionsLimitExceededException) as ei:
        retry(cp, name, "Two", e1)
    assert "limit 1" in ei.value.response["Error"]["Message"]

    # 6: the declaration changed since the execution started
    cp.stop_pipeline_execution(pipelineName=name, pipelineExecutionId=e2, abandon=True)
    assert execution_status(cp, name, e2) == "Stopped"
    declaration = cp.get_pipeline(name=name)["pipeline"]
    cp.update_pipeline(pipeline=declaration)
    with pytest.raises(cp.exceptions.StageNotRetryableException) as ei:
        retry(cp, name, "Two", e1)
    assert "updated" in ei.value.response["Error"]["Message"]


# --- embedded fakeredis: the smoke path and the README's aws-cli example --------------------


def test_embedded_smoke(embedded: Stageline, marks: Path) -> None:
    cp = client(embedded.url, key="anyone", secret="anything")  # auth off: any key works
    name = unique("smoke")
    cp.create_pipeline(
        pipeline=pipeline(
            name,
            stage(
                "Build",
                commands("compile", "echo compiling"),
                commands("check", f"test -f {marks}/ok"),
            ),
            stage("Ship", commands("ship", "echo shipped")),
        )
    )
    eid = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]
    wait_status(cp, name, eid, "Failed")
    (marks / "ok").touch()
    assert retry(cp, name, "Build", eid)["pipelineExecutionId"] == eid
    wait_status(cp, name, eid, "Succeeded")
    items = action_executions(cp, name, eid)
    assert [s for _, s in attempts(items, "check")] == ["Failed", "Succeeded"]
    assert [s for _, s in attempts(items, "compile")] == ["Succeeded"]
    with pytest.raises(cp.exceptions.StageNotRetryableException):
        retry(cp, name, "Build", eid)
    # a hostile body over real HTTP: AWS-shaped 400, the server carries on
    deep = b'{"name": "x", "junk": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    status, headers, body = raw(embedded.url, body=deep, headers=target("GetPipelineState"))
    assert_aws_error(status, headers, body, "ValidationException")
    assert cp.get_pipeline_state(name=name)["pipelineName"] == name


def readme_block(lang: str, containing: str) -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Use it with the AWS tools", 1)[1].split("\n## ", 1)[0]
    for m in re.finditer(rf"```{lang}\n(.*?)```", section, re.S):
        if containing in m.group(1):
            return m.group(1)
    raise AssertionError(f"the README's aws-cli section has no {lang} block with {containing!r}")


def readme_aws_cli_block() -> str:
    return readme_block("sh", "create-pipeline")


@pytest.mark.skipif(shutil.which("aws") is None, reason="aws-cli not installed")
def test_readme_aws_cli_example(embedded: Stageline, tmp_path: Path) -> None:
    """Paste the README's aws-cli walk-through (only the port changes) and check it worked."""
    script = readme_aws_cli_block()
    assert "http://127.0.0.1:8080" in script and "examples/pipeline.json" in script
    script = script.replace("http://127.0.0.1:8080", embedded.url)
    marker = Path(f"/tmp/stageline-demo-{os.getuid()}/fixed")  # the example's "fix" (per user)
    env = {
        **os.environ,
        "AWS_CONFIG_FILE": str(tmp_path / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"),
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_PAGER": "",
    }
    marker.unlink(missing_ok=True)
    try:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=90, check=False,
        )  # fmt: skip
    finally:
        marker.unlink(missing_ok=True)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert '"pipelineExecutionId"' in done.stdout
    assert "actionExecutionDetails" in done.stdout
    assert '"stageName": "Build"' in done.stdout
    assert '"status": "Succeeded"' in done.stdout  # get-pipeline-execution, at the end

    cp = client(embedded.url, key="demo", secret="demo")
    [summary] = cp.list_pipeline_executions(pipelineName="demo")["pipelineExecutionSummaries"]
    eid = summary["pipelineExecutionId"]
    # the retried flaky action passed, the approval went through, Deploy ran
    wait_status(cp, "demo", eid, "Succeeded")
    approved = action(cp, "demo", "Approve", "ship-it")
    assert (approved["status"], approved["summary"]) == ("Succeeded", "ship")
    items = action_executions(cp, "demo", eid)
    assert [s for _, s in attempts(items, "flaky")] == ["Failed", "Succeeded"]
    assert [s for _, s in attempts(items, "compile")] == ["Succeeded"]
    assert [s for _, s in attempts(items, "package")] == ["Succeeded"]
    assert stages(cp, "demo")["Build"]["retry"]["manualStageRetryAttempt"] == 1

    # the README's Python snippet, as written (only the port changes)
    snippet = readme_block("python", "boto3").replace("http://127.0.0.1:8080", embedded.url)
    marker.parent.mkdir(mode=0o700, exist_ok=True)
    marker.touch()  # as the walk-through left it
    try:
        ran = subprocess.run(
            [sys.executable, "-c", snippet], env=env, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
    finally:
        marker.unlink(missing_ok=True)
    assert ran.returncode == 0, ran.stderr
    new_eid, status = ran.stdout.split()
    assert new_eid != eid and status == "Succeeded"
