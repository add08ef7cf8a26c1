"""The read side (``app.queries``): output documents match the botocore service model.

States are built by running the real ``decide`` + ``evolve`` through scenarios. Every document
is (1) walked against the botocore output shape of its operation (every member exists in the
model, types, enums, lengths, ranges, patterns, required members) and (2) fed through
botocore's own JSON response parser, whose result must give back the same values (timestamps
as datetimes).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import botocore.parsers
import botocore.session
import msgspec
import pytest

from app import queries as q
from app.domain import commands as c
from app.domain.decide import Ctx, decide
from app.domain.errors import DomainError
from app.domain.events import Envelope
from app.domain.model import PipelineDeclaration
from app.domain.state import PipelineState, copy_state, evolve, new_state
from tests.shape_walk import conforms

MODEL = botocore.session.get_session().get_service_model("codepipeline")
T0 = 1_700_000_000.0
ROLE = "arn:aws:iam::123456789012:role/pipeline"
ALICE = "arn:aws:iam::123456789012:user/alice"


# --- validation against the service model ---------------------------------------------------


def _epochs(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, dict):
        return {k: _epochs(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_epochs(v) for v in value]
    return value


def _has_datetime(value: Any) -> bool:
    if isinstance(value, dt.datetime):
        return True
    if isinstance(value, dict):
        return any(_has_datetime(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_datetime(v) for v in value)
    return False


# --- building states with the real domain ---------------------------------------------------


def _type(category: str, owner: str, provider: str) -> dict[str, str]:
    return {"category": category, "owner": owner, "provider": provider, "version": "1"}


def declaration(
    name: str = "demo", build_extra: dict[str, Any] | None = None, **extra: Any
) -> PipelineDeclaration:
    doc: dict[str, Any] = {
        "name": name,
        "roleArn": ROLE,
        "artifactStore": {"type": "S3", "location": "my-artifacts"},
        "stages": [
            {
                "name": "Build",
                "actions": [
                    {
                        "name": "Compile",
                        "actionTypeId": _type("Compute", "AWS", "Commands"),
                        "commands": ["make"],
                        "namespace": "BuildVars",
                    },
                    {
                        "name": "Lint",
                        "actionTypeId": _type("Test", "Custom", "MyLinter"),
                        "configuration": {"Mode": "strict"},
                    },
                ],
            },
            {
                "name": "Release",
                "actions": [
                    {"name": "Approve", "actionTypeId": _type("Approval", "AWS", "Manual")},
                    {
                        "name": "Deploy",
                        "actionTypeId": _type("Deploy", "Custom", "MyDeployer"),
                        "configuration": {"Target": "prod"},
                        "runOrder": 2,
                    },
                ],
            },
        ],
    }
    doc.update(extra)
    doc["stages"][0].update(build_extra or {})
    return msgspec.convert(doc, PipelineDeclaration)


class Sim:
    """A pipeline driven through ``decide`` + ``evolve`` with a controllable clock."""

    _ids = 0

    def __init__(self, name: str = "demo") -> None:
        self.s: PipelineState = new_state(name)
        self.now = T0

    @classmethod
    def new_id(cls) -> str:
        cls._ids += 1
        return str(uuid.UUID(int=(0xABC << 100) + cls._ids))

    def run(self, cmd: c.Command, *, actor: str = "system", dt: float = 0.25) -> list[Envelope]:
        self.now += dt
        ctx = Ctx(now=self.now, new_id=self.new_id, actor=actor)
        envs = decide(self.s, cmd, ctx)
        for env in envs:
            evolve(self.s, env)
        return envs

    def create(self, decl: PipelineDeclaration, limit: int = 50) -> None:
        self.run(c.CreatePipeline(declaration=decl, concurrencyLimit=limit))

    def start(self, *, dt: float = 0.25) -> str:
        eid = self.new_id()
        self.run(c.StartExecution(executionId=eid), dt=dt)
        return eid

    def attempt(self, eid: str, action: str) -> str:
        """The latest attempt id of ``action`` in execution ``eid``."""
        x = self.s.executions[eid]
        for run in x.stages.values():
            if action in run.latest:
                return run.latest[action]
        raise KeyError(action)

    def finish(self, eid: str, action: str, ok: bool, **kw: Any) -> str:
        aid = self.attempt(eid, action)
        a = self.s.executions[eid].actions[aid]
        if a.kind == "custom":
            assert a.jobId is not None and a.jobNonce is not None
            self.run(
                c.AcknowledgeJob(
                    executionId=eid, actionExecutionId=aid, jobId=a.jobId, nonce=a.jobNonce
                ),
                actor="worker:jobs",
            )
            kw["jobId"] = a.jobId
            actor = "AKIAJOBWORKER"
        else:
            worker = f"runner-{aid[-4:]}"
            self.run(c.StartAction(executionId=eid, actionExecutionId=aid, worker=worker))
            kw["worker"] = worker
            actor = f"worker:{worker}"
        self.run(
            c.CompleteAction(executionId=eid, actionExecutionId=aid, succeeded=ok, **kw),
            actor=actor,
        )
        return aid


class Story:
    """The main scenario, with a snapshot of the state after each step."""

    def __init__(self) -> None:
        sim = Sim()
        self.sim = sim
        sim.create(declaration())
        self.created = copy_state(sim.s)
        self.a = sim.start()
        self.c1 = sim.finish(
            self.a,
            "Compile",
            False,
            errorCode="ExitCode2",
            message="make: *** [all] Error 2",
            summary="cc: error: missing file",
        )
        self.failed = copy_state(sim.s)  # Compile failed, Lint still running
        sim.run(
            c.RetryStage(executionId=self.a, stageName="Build", retryMode="FAILED_ACTIONS"),
            actor="AKIAEXAMPLE",
        )
        self.requested = copy_state(sim.s)
        sim.run(c.ApplyStageRetry(executionId=self.a, stageName="Build"))
        self.b = sim.start()  # waits for Build, occupied by A
        self.retrying = copy_state(sim.s)
        self.c2 = sim.finish(self.a, "Compile", True, summary="built")
        self.l1 = sim.finish(
            self.a,
            "Lint",
            True,
            summary="clean",
            externalExecutionId="lint-42",
            outputVariables={"issues": "0"},
        )
        self.approving = copy_state(sim.s)  # A waits for approval, B runs Build
        x = sim.s.executions[self.a]
        token = x.actions[sim.attempt(self.a, "Approve")].token
        assert token is not None
        sim.run(
            c.PutApproval(
                stageName="Release",
                actionName="Approve",
                token=token,
                status="Approved",
                summary="ship it",
            ),
            actor=ALICE,
        )
        self.deploying = copy_state(sim.s)  # Deploy is a job for a custom worker
        self.d1 = sim.attempt(self.a, "Deploy")
        sim.finish(self.a, "Deploy", True, externalExecutionId="deploy-7")
        self.done = copy_state(sim.s)


@pytest.fixture(scope="module")
def story() -> Story:
    return Story()


def _stage(doc: dict[str, Any], name: str) -> dict[str, Any]:
    for st in doc["stageStates"]:
        if st["stageName"] == name:
            return dict(st)
    raise KeyError(name)


def _action(stage: dict[str, Any], name: str) -> dict[str, Any]:
    for a in stage["actionStates"]:
        if a["actionName"] == name:
            return dict(a)
    raise KeyError(name)


def _errtype(exc: pytest.ExceptionInfo[DomainError]) -> str:
    return exc.value.type_name


# --- GetPipeline / ListPipelines -------------------------------------------------------------


def test_get_pipeline(story: Story) -> None:
    s = story.done
    doc = q.get_pipeline(s, region="eu-west-1", account="123456789012")
    parsed = conforms("GetPipeline", doc)
    assert doc["metadata"]["pipelineArn"] == "arn:aws:codepipeline:eu-west-1:123456789012:demo"
    assert isinstance(parsed["metadata"]["created"], dt.datetime)
    assert parsed["metadata"]["created"].timestamp() == s.created
    pipe = doc["pipeline"]
    assert pipe["version"] == 1 and pipe["executionMode"] == "SUPERSEDED"
    assert pipe["stages"][0]["actions"][0]["commands"] == ["make"]
    compile_ = pipe["stages"][0]["actions"][0]
    # AWS's defaults filled in for what the declaration left out
    assert compile_["runOrder"] == 1
    assert compile_["inputArtifacts"] == [] and compile_["outputArtifacts"] == []
    assert "configuration" not in compile_  # only approvals and custom actions get {}
    assert "roleArn" not in compile_  # None / unset left out
    default = q.get_pipeline(s)["metadata"]["pipelineArn"]
    assert default == "arn:aws:codepipeline:us-east-1:000000000000:demo"
    assert q.get_pipeline(s, version=1)["pipeline"] == pipe
    with pytest.raises(DomainError) as exc:
        q.get_pipeline(s, version=2)
    assert _errtype(exc) == "PipelineVersionNotFoundException"
    with pytest.raises(DomainError) as exc:
        q.get_pipeline(new_state("nope"))
    assert _errtype(exc) == "PipelineNotFoundException"


def test_get_pipeline_after_update_keeps_old_versions() -> None:
    sim = Sim("upd")
    sim.create(declaration("upd"))
    sim.run(c.UpdatePipeline(declaration=declaration("upd", executionMode="QUEUED")))
    doc = q.get_pipeline(sim.s)
    conforms("GetPipeline", doc)
    assert doc["pipeline"]["version"] == 2 and doc["pipeline"]["executionMode"] == "QUEUED"
    assert doc["metadata"]["updated"] > doc["metadata"]["created"]
    old = q.get_pipeline(sim.s, version=1)
    conforms("GetPipeline", old)
    assert old["pipeline"]["version"] == 1 and old["pipeline"]["executionMode"] == "SUPERSEDED"
    summary = q.pipeline_summary(sim.s)
    assert summary["version"] == 2 and summary["executionMode"] == "QUEUED"


def test_pipeline_summary(story: Story) -> None:
    summary = q.pipeline_summary(story.done)
    parsed = conforms("ListPipelines", {"pipelines": [summary]})
    assert summary == {
        "name": "demo",
        "version": 1,
        "pipelineType": "V2",
        "executionMode": "SUPERSEDED",
        "created": story.done.created,
        "updated": story.done.updated,
    }
    assert isinstance(parsed["pipelines"][0]["updated"], dt.datetime)


# --- GetPipelineState ------------------------------------------------------------------------


def test_state_before_any_execution(story: Story) -> None:
    doc = q.get_pipeline_state(story.created)
    conforms("GetPipelineState", doc)
    assert doc["pipelineName"] == "demo" and doc["pipelineVersion"] == 1
    assert [st["stageName"] for st in doc["stageStates"]] == ["Build", "Release"]
    for i, st in enumerate(doc["stageStates"]):
        assert "latestExecution" not in st and "inboundExecution" not in st
        if i == 0:  # AWS has no transition into the first stage
            assert "inboundTransitionState" not in st
        else:
            assert st["inboundTransitionState"] == {"enabled": True}
        assert all(set(a) == {"actionName"} for a in st["actionStates"])


def test_state_after_failure(story: Story) -> None:
    doc = q.get_pipeline_state(story.failed)
    conforms("GetPipelineState", doc)
    build = _stage(doc, "Build")
    assert build["latestExecution"] == {"pipelineExecutionId": story.a, "status": "Failed"}
    assert "retryStageMetadata" not in build
    compile_ = _action(build, "Compile")["latestExecution"]
    assert compile_["actionExecutionId"] == story.c1
    assert compile_["status"] == "Failed"
    assert compile_["summary"] == "cc: error: missing file"
    assert compile_["errorDetails"] == {"code": "ExitCode2", "message": "make: *** [all] Error 2"}
    lint = _action(build, "Lint")["latestExecution"]
    assert lint["status"] == "InProgress" and "errorDetails" not in lint
    assert "token" not in lint  # tokens are for approvals only
    assert set(_stage(doc, "Release")) == {"stageName", "inboundTransitionState", "actionStates"}


def test_state_pending_retry_shows_no_retry_yet(story: Story) -> None:
    doc = q.get_pipeline_state(story.requested)
    conforms("GetPipelineState", doc)
    build = _stage(doc, "Build")
    assert build["latestExecution"]["status"] == "Failed"
    assert "retryStageMetadata" not in build


def test_state_during_retry(story: Story) -> None:
    doc = q.get_pipeline_state(story.retrying)
    parsed = conforms("GetPipelineState", doc)
    build = _stage(doc, "Build")
    assert build["latestExecution"] == {"pipelineExecutionId": story.a, "status": "InProgress"}
    assert build["retryStageMetadata"] == {
        "autoStageRetryAttempt": 0,
        "manualStageRetryAttempt": 1,
        "latestRetryTrigger": "ManualStageRetry",
    }
    assert build["inboundExecution"] == {"pipelineExecutionId": story.b, "status": "InProgress"}
    assert build["inboundExecutions"] == [build["inboundExecution"]]
    compile_ = _action(build, "Compile")["latestExecution"]
    assert compile_["actionExecutionId"] != story.c1  # the new attempt
    assert compile_["status"] == "InProgress" and "errorDetails" not in compile_
    stamp = _action(_stage(parsed, "Build"), "Compile")["latestExecution"]["lastStatusChange"]
    assert isinstance(stamp, dt.datetime)


def test_state_waiting_for_approval(story: Story) -> None:
    s = story.approving
    doc = q.get_pipeline_state(s)
    conforms("GetPipelineState", doc)
    build, release = _stage(doc, "Build"), _stage(doc, "Release")
    assert build["latestExecution"] == {"pipelineExecutionId": story.b, "status": "InProgress"}
    assert "inboundExecution" not in build
    assert "retryStageMetadata" not in build  # B's run of Build was never retried
    approve = _action(release, "Approve")["latestExecution"]
    token = s.executions[story.a].actions[approve["actionExecutionId"]].token
    assert approve["token"] == token and approve["status"] == "InProgress"
    assert "latestExecution" not in _action(release, "Deploy")  # runOrder 2 not reached


def test_state_done(story: Story) -> None:
    doc = q.get_pipeline_state(story.done)
    conforms("GetPipelineState", doc)
    release = _stage(doc, "Release")
    assert release["latestExecution"] == {"pipelineExecutionId": story.a, "status": "Succeeded"}
    approve = _action(release, "Approve")["latestExecution"]
    assert approve["status"] == "Succeeded"
    assert approve["summary"] == "ship it"
    assert approve["lastUpdatedBy"] == ALICE
    deploy = _action(release, "Deploy")["latestExecution"]
    assert deploy["externalExecutionId"] == "deploy-7"


def test_state_needs_the_latest_executions(story: Story) -> None:
    partial = copy_state(story.retrying)
    partial.partial = True
    del partial.executions[story.a]
    with pytest.raises(KeyError):
        q.get_pipeline_state(partial)
    # a waiting execution need not be held
    partial = copy_state(story.retrying)
    partial.partial = True
    del partial.executions[story.b]
    doc = q.get_pipeline_state(partial)
    conforms("GetPipelineState", doc)
    assert _stage(doc, "Build")["inboundExecution"]["pipelineExecutionId"] == story.b


def test_automatic_retry_metadata() -> None:
    sim = Sim("auto")
    on_failure = {"result": "RETRY", "retryConfiguration": {"retryMode": "FAILED_ACTIONS"}}
    sim.create(declaration("auto", build_extra={"onFailure": on_failure}))
    eid = sim.start()
    first = sim.finish(eid, "Compile", False, errorCode="ExitCode1", message="boom")
    doc = q.get_pipeline_state(sim.s)
    conforms("GetPipelineState", doc)
    st = _stage(doc, "Build")
    assert st["retryStageMetadata"] == {
        "autoStageRetryAttempt": 1,
        "manualStageRetryAttempt": 0,
        "latestRetryTrigger": "AutomatedStageRetry",
    }
    assert st["latestExecution"]["status"] == "InProgress"
    assert _action(st, "Compile")["latestExecution"]["actionExecutionId"] != first
    # then a manual one on top
    sim.finish(eid, "Compile", False, errorCode="ExitCode1", message="boom again")
    sim.run(c.RetryStage(executionId=eid, stageName="Build", retryMode="FAILED_ACTIONS"))
    sim.run(c.ApplyStageRetry(executionId=eid, stageName="Build"))
    doc = q.get_pipeline_state(sim.s)
    conforms("GetPipelineState", doc)
    assert _stage(doc, "Build")["retryStageMetadata"] == {
        "autoStageRetryAttempt": 1,
        "manualStageRetryAttempt": 1,
        "latestRetryTrigger": "ManualStageRetry",
    }
    details = q.list_action_executions(sim.s, execution_id=eid)["actionExecutionDetails"]
    compiles = [d for d in details if d["actionName"] == "Compile"]
    assert [d["status"] for d in compiles] == ["InProgress", "Failed", "Failed"]


# --- GetPipelineExecution --------------------------------------------------------------------


def test_get_pipeline_execution(story: Story) -> None:
    doc = q.get_pipeline_execution(story.done, story.a)
    parsed = conforms("GetPipelineExecution", doc)
    pe = doc["pipelineExecution"]
    assert pe == {
        "pipelineName": "demo",
        "pipelineVersion": 1,
        "pipelineExecutionId": story.a,
        "status": "Succeeded",
        "artifactRevisions": [],
        "trigger": {"triggerType": "StartPipelineExecution"},
        "executionMode": "SUPERSEDED",
        "executionType": "STANDARD",
    }
    assert parsed["pipelineExecution"]["status"] == "Succeeded"
    failed = q.get_pipeline_execution(story.failed, story.a)["pipelineExecution"]
    assert failed["status"] == "Failed"
    assert "ExitCode2" in failed["statusSummary"]
    with pytest.raises(DomainError) as exc:
        q.get_pipeline_execution(story.done, str(uuid.uuid4()))
    assert _errtype(exc) == "PipelineExecutionNotFoundException"


def test_stopped_execution_has_stop_trigger() -> None:
    sim = Sim("stop")
    sim.create(declaration("stop"))
    eid = sim.start()
    sim.run(c.StopExecution(executionId=eid, abandon=True, reason="no longer needed"))
    doc = q.list_pipeline_executions(sim.s)
    conforms("ListPipelineExecutions", doc)
    (summary,) = doc["pipelineExecutionSummaries"]
    assert summary["status"] == "Stopped"
    assert summary["stopTrigger"] == {"reason": "no longer needed"}
    details = q.list_action_executions(sim.s)
    conforms("ListActionExecutions", details)
    assert {d["status"] for d in details["actionExecutionDetails"]} == {"Abandoned"}


# --- ListActionExecutions --------------------------------------------------------------------


def test_list_action_executions_keeps_every_attempt(story: Story) -> None:
    s = story.done
    doc = q.list_action_executions(s)
    parsed = conforms("ListActionExecutions", doc)
    assert "nextToken" not in doc
    details = doc["actionExecutionDetails"]
    by_id = {d["actionExecutionId"]: d for d in details}
    # A: Compile c1 (failed) and c2 (its retry), Lint, Approve, Deploy; B: Compile, Lint
    assert len(by_id) == len(details) == 7
    starts = [d["startTime"] for d in details]
    assert starts == sorted(starts, reverse=True)
    assert details[0]["actionName"] == "Deploy"
    # c1 and Lint were scheduled together (same start time): the later-scheduled comes first
    assert [d["actionExecutionId"] for d in details[-2:]] == [story.l1, story.c1]

    failed, retry = by_id[story.c1], by_id[story.c2]
    assert failed["status"] == "Failed" and retry["status"] == "Succeeded"
    assert failed["stageName"] == retry["stageName"] == "Build"
    assert failed["pipelineExecutionId"] == retry["pipelineExecutionId"] == story.a
    # a Commands action ran on the engine: its output is a log stream of the logs API
    arn = f"arn:aws:logs:us-east-1:000000000000:log-group:/aws/codepipeline/{s.name}:log-stream:"
    assert failed["output"]["executionResult"] == {
        "externalExecutionSummary": "cc: error: missing file",
        "errorDetails": {"code": "ExitCode2", "message": "make: *** [all] Error 2"},
        "logStreamARN": f"{arn}{story.a}/{story.c1}",
    }
    assert failed["input"] == {
        "actionTypeId": _type("Compute", "AWS", "Commands"),
        "configuration": {},
        "resolvedConfiguration": {},
        "region": "us-east-1",
        "inputArtifacts": [],
        "namespace": "BuildVars",
    }
    assert retry["startTime"] > failed["startTime"]
    assert retry["output"]["executionResult"] == {
        "externalExecutionSummary": "built",
        "logStreamARN": f"{arn}{story.a}/{story.c2}",
    }

    lint = by_id[story.l1]
    assert lint["input"]["configuration"] == {"Mode": "strict"}
    assert lint["input"]["resolvedConfiguration"] == {"Mode": "strict"}
    assert lint["output"] == {
        "outputArtifacts": [],
        "executionResult": {"externalExecutionId": "lint-42", "externalExecutionSummary": "clean"},
        "outputVariables": {"issues": "0"},
    }
    assert "updatedBy" not in lint  # an access key id, not an ARN: AWS sends ARNs or nothing
    approve = next(d for d in details if d["actionName"] == "Approve")
    assert approve["updatedBy"] == ALICE
    parsed_first = parsed["actionExecutionDetails"][0]
    assert isinstance(parsed_first["startTime"], dt.datetime)
    assert isinstance(parsed_first["lastUpdateTime"], dt.datetime)


def test_list_action_executions_filters(story: Story) -> None:
    s = story.done
    # B ran only Build (Compile + Lint), both still running
    only_b = q.list_action_executions(s, execution_id=story.b)
    conforms("ListActionExecutions", only_b)
    assert {d["pipelineExecutionId"] for d in only_b["actionExecutionDetails"]} == {story.b}
    assert {d["status"] for d in only_b["actionExecutionDetails"]} == {"InProgress"}
    assert only_b["actionExecutionDetails"][0]["output"]["executionResult"] == {}

    every = q.list_action_executions(
        s, latest_in_execution={"pipelineExecutionId": story.a, "startTimeRange": "All"}
    )
    latest = q.list_action_executions(
        s, latest_in_execution={"pipelineExecutionId": story.a, "startTimeRange": "Latest"}
    )
    conforms("ListActionExecutions", every)
    conforms("ListActionExecutions", latest)
    every_ids = [d["actionExecutionId"] for d in every["actionExecutionDetails"]]
    latest_ids = [d["actionExecutionId"] for d in latest["actionExecutionDetails"]]
    assert story.c1 in every_ids and story.c2 in every_ids
    assert story.c1 not in latest_ids and story.c2 in latest_ids
    assert [i for i in every_ids if i != story.c1] == latest_ids
    same = q.list_action_executions(
        s,
        execution_id=story.a,
        latest_in_execution={"pipelineExecutionId": story.a, "startTimeRange": "All"},
    )
    assert same == every

    with pytest.raises(DomainError) as exc:
        q.list_action_executions(s, execution_id=str(uuid.uuid4()))
    assert _errtype(exc) == "PipelineExecutionNotFoundException"
    with pytest.raises(DomainError) as exc:
        q.list_action_executions(
            s,
            latest_in_execution={"pipelineExecutionId": str(uuid.uuid4()), "startTimeRange": "All"},
        )
    assert _errtype(exc) == "PipelineExecutionNotFoundException"
    with pytest.raises(DomainError) as exc:
        q.list_action_executions(
            s,
            execution_id=story.b,
            latest_in_execution={"pipelineExecutionId": story.a, "startTimeRange": "All"},
        )
    assert _errtype(exc) == "ValidationException"
    with pytest.raises(DomainError) as exc:
        q.list_action_executions(
            s, latest_in_execution={"pipelineExecutionId": story.a, "startTimeRange": "Newest"}
        )
    assert _errtype(exc) == "ValidationException"


# --- jobs ------------------------------------------------------------------------------------


def test_job_documents(story: Story) -> None:
    s = story.deploying
    a = s.executions[story.a].actions[story.d1]
    assert a.jobId is not None
    job = q.job_document(s, story.a, story.d1, account="123456789012")
    conforms("PollForJobs", {"jobs": [job]})
    assert job["id"] == a.jobId and job["nonce"] == a.jobNonce
    assert job["accountId"] == "123456789012"
    assert job["data"] == {
        "actionTypeId": _type("Deploy", "Custom", "MyDeployer"),
        "actionConfiguration": {"configuration": {"Target": "prod"}},
        "pipelineContext": {
            "pipelineName": "demo",
            "stage": {"name": "Release"},
            "action": {"name": "Deploy", "actionExecutionId": story.d1},
            "pipelineArn": "arn:aws:codepipeline:us-east-1:123456789012:demo",
            "pipelineExecutionId": story.a,
        },
        "inputArtifacts": [],
        "outputArtifacts": [],
    }
    details = q.get_job_details(s, story.a, story.d1, account="123456789012")
    conforms("GetJobDetails", details)
    assert details == {
        "jobDetails": {"id": a.jobId, "data": job["data"], "accountId": "123456789012"}
    }
    assert q.find_job(s, a.jobId) == (story.a, story.d1)
    assert q.find_job(s, str(uuid.uuid4())) is None
    with pytest.raises(DomainError) as exc:
        q.get_job_details(s, story.a, story.c1)  # a Commands action: no job
    assert _errtype(exc) == "JobNotFoundException"
    with pytest.raises(DomainError) as exc:
        q.job_document(s, str(uuid.uuid4()), story.d1)
    assert _errtype(exc) == "JobNotFoundException"


# --- pagination ------------------------------------------------------------------------------


def _one_action(name: str) -> PipelineDeclaration:
    return msgspec.convert(
        {
            "name": name,
            "roleArn": ROLE,
            "executionMode": "PARALLEL",
            "stages": [
                {
                    "name": "Only",
                    "actions": [
                        {
                            "name": "Run",
                            "actionTypeId": _type("Compute", "AWS", "Commands"),
                            "commands": ["true"],
                        }
                    ],
                }
            ],
        },
        PipelineDeclaration,
    )


@pytest.fixture(scope="module")
def many() -> Sim:
    """250 executions; every three share a start time (ties broken by insertion order)."""
    sim = Sim("many")
    sim.create(_one_action("many"), limit=1000)
    for i in range(250):
        sim.start(dt=1.0 if i % 3 == 0 else 0.0)
    return sim


def _walk(list_page: Any, key: str, max_results: int) -> Iterator[list[dict[str, Any]]]:
    token = None
    while True:
        doc = list_page(max_results=max_results, next_token=token)
        page = doc[key]
        assert len(page) <= max_results
        yield page
        token = doc.get("nextToken")
        if token is None:
            return
        assert page, "a page with a nextToken must not be empty"


@pytest.mark.parametrize("max_results", [1, 7, 50, 100])
def test_list_pipeline_executions_pages(many: Sim, max_results: int) -> None:
    s = many.s
    expected = [
        x.executionId
        for _, _, x in sorted(
            ((x.startTime, i, x) for i, x in enumerate(s.executions.values())),
            key=lambda e: (e[0], e[1]),
            reverse=True,
        )
    ]
    assert len(expected) == 250
    seen: list[str] = []
    pages = 0
    for page in _walk(
        lambda **kw: q.list_pipeline_executions(s, **kw), "pipelineExecutionSummaries", max_results
    ):
        pages += 1
        if pages <= 3:
            doc = {"pipelineExecutionSummaries": page}
            conforms("ListPipelineExecutions", doc)
        seen.extend(p["pipelineExecutionId"] for p in page)
    assert seen == expected  # newest first, no duplicates, no gaps
    assert pages == -(-250 // max_results)


def test_list_pipeline_executions_page_documents(many: Sim) -> None:
    doc = q.list_pipeline_executions(many.s, max_results=10)
    parsed = conforms("ListPipelineExecutions", doc)
    assert len(doc["nextToken"]) <= 2048
    assert re.fullmatch(r"[A-Za-z0-9_-]+", doc["nextToken"])
    first = doc["pipelineExecutionSummaries"][0]
    assert first["status"] == "InProgress" and first["executionMode"] == "PARALLEL"
    assert first["trigger"] == {"triggerType": "StartPipelineExecution"}
    assert isinstance(parsed["pipelineExecutionSummaries"][0]["startTime"], dt.datetime)
    assert q.list_pipeline_executions(many.s) == q.list_pipeline_executions(
        many.s, max_results=None
    )
    assert len(q.list_pipeline_executions(many.s)["pipelineExecutionSummaries"]) == 100


def test_list_action_executions_pages(many: Sim) -> None:
    s = many.s
    expected = [
        a.actionExecutionId
        for _, _, a in sorted(
            (
                (a.startTime, i, a)
                for i, a in enumerate(a for x in s.executions.values() for a in x.actions.values())
            ),
            key=lambda e: (e[0], e[1]),
            reverse=True,
        )
    ]
    assert len(expected) == 250
    seen: list[str] = []
    for page in _walk(lambda **kw: q.list_action_executions(s, **kw), "actionExecutionDetails", 13):
        seen.extend(d["actionExecutionId"] for d in page)
    assert seen == expected
    last = q.list_action_executions(s, max_results=50, next_token=None)
    conforms("ListActionExecutions", last)


def test_pagination_is_stable_while_executions_start() -> None:
    sim = Sim("busy")
    sim.create(_one_action("busy"), limit=1000)
    before = [sim.start() for _ in range(30)]
    seen: list[str] = []
    token = None
    while True:
        doc = q.list_pipeline_executions(sim.s, max_results=8, next_token=token)
        seen.extend(p["pipelineExecutionId"] for p in doc["pipelineExecutionSummaries"])
        sim.start()  # a newer execution appears between pages: it goes to the front
        token = doc.get("nextToken")
        if token is None:
            break
    assert seen == list(reversed(before))


def test_pagination_resumes_when_the_last_item_vanished() -> None:
    sim = Sim("vanish")
    sim.create(_one_action("vanish"), limit=1000)
    eids = [sim.start() for _ in range(5)]
    for eid in eids:
        sim.finish(eid, "Run", False, errorCode="ExitCode1", message="no")
    doc = q.list_action_executions(sim.s, max_results=2)
    first = [d["actionExecutionId"] for d in doc["actionExecutionDetails"]]
    # drop the execution of the last returned item (as a state without it would)
    gone = doc["actionExecutionDetails"][-1]["pipelineExecutionId"]
    state = copy_state(sim.s)
    del state.executions[gone]
    rest = q.list_action_executions(state, max_results=100, next_token=doc["nextToken"])
    ids = [d["actionExecutionId"] for d in rest["actionExecutionDetails"]]
    assert not set(ids) & set(first)
    assert len(ids) == 3


def test_max_results_range(many: Sim) -> None:
    for bad in (0, -1, 101, 1000):
        with pytest.raises(DomainError) as exc:
            q.list_pipeline_executions(many.s, max_results=bad)
        assert _errtype(exc) == "ValidationException"
        with pytest.raises(DomainError) as exc:
            q.list_action_executions(many.s, max_results=bad)
        assert _errtype(exc) == "ValidationException"
    assert len(q.list_pipeline_executions(many.s, max_results=1)["pipelineExecutionSummaries"]) == 1
    assert len(q.list_action_executions(many.s, max_results=100)["actionExecutionDetails"]) == 100


def _flip(token: str, i: int) -> str:
    ch = token[i]
    return token[:i] + ("A" if ch != "A" else "B") + token[i + 1 :]


def test_invalid_next_tokens(many: Sim, story: Story) -> None:
    s = many.s
    token = q.list_pipeline_executions(s, max_results=5)["nextToken"]
    assert q.list_pipeline_executions(s, max_results=5, next_token=token)[
        "pipelineExecutionSummaries"
    ]
    bad: list[str] = [
        _flip(token, 0),
        _flip(token, len(token) // 2),
        _flip(token, len(token) - 1),
        token[:-3],
        token + "AAAA",
        token[:10] + "!" + token[10:],
        token.replace("-", "+").replace("_", "/") + "+/",
        "",
        "garbage",
        "A" * 3000,
    ]
    for t in bad:
        with pytest.raises(DomainError) as exc:
            q.list_pipeline_executions(s, max_results=5, next_token=t)
        assert _errtype(exc) == "InvalidNextTokenException", t

    # foreign tokens: another pipeline, another operation, another filter
    other = q.list_action_executions(story.done, max_results=1)["nextToken"]
    with pytest.raises(DomainError) as exc:
        q.list_action_executions(s, next_token=other)
    assert _errtype(exc) == "InvalidNextTokenException"
    with pytest.raises(DomainError) as exc:
        q.list_action_executions(s, next_token=token)
    assert _errtype(exc) == "InvalidNextTokenException"
    filtered = q.list_action_executions(story.done, execution_id=story.a, max_results=1)
    with pytest.raises(DomainError) as exc:
        q.list_action_executions(story.done, next_token=filtered["nextToken"])
    assert _errtype(exc) == "InvalidNextTokenException"
    with pytest.raises(DomainError) as exc:
        q.list_pipeline_executions(s, next_token=token, succeeded_in_stage="Only")
    assert _errtype(exc) == "InvalidNextTokenException"


def test_token_of_a_recreated_pipeline_is_foreign() -> None:
    sim = Sim("again")
    sim.create(_one_action("again"), limit=1000)
    for _ in range(3):
        sim.start()
    token = q.list_pipeline_executions(sim.s, max_results=1)["nextToken"]
    sim.run(c.DeletePipeline())
    sim.create(_one_action("again"), limit=1000)
    for _ in range(3):
        sim.start()
    with pytest.raises(DomainError) as exc:
        q.list_pipeline_executions(sim.s, max_results=1, next_token=token)
    assert _errtype(exc) == "InvalidNextTokenException"


def test_succeeded_in_stage_filter() -> None:
    sim = Sim("filt")
    sim.create(_one_action("filt"), limit=1000)
    ok = [sim.start() for _ in range(4)]
    bad = sim.start()
    for eid in ok:
        sim.finish(eid, "Run", True)
    sim.finish(bad, "Run", False, errorCode="ExitCode1", message="no")
    doc = q.list_pipeline_executions(sim.s, succeeded_in_stage="Only", max_results=3)
    conforms("ListPipelineExecutions", doc)
    rest = q.list_pipeline_executions(
        sim.s, succeeded_in_stage="Only", max_results=3, next_token=doc["nextToken"]
    )
    got = [
        p["pipelineExecutionId"]
        for p in doc["pipelineExecutionSummaries"] + rest["pipelineExecutionSummaries"]
    ]
    assert got == list(reversed(ok))
    assert "nextToken" not in rest


def test_missing_pipeline_errors() -> None:
    s = new_state("ghost")
    calls: list[Callable[[], object]] = [
        lambda: q.pipeline_summary(s),
        lambda: q.get_pipeline_state(s),
        lambda: q.get_pipeline_execution(s, str(uuid.uuid4())),
        lambda: q.list_pipeline_executions(s),
        lambda: q.list_action_executions(s),
    ]
    for call in calls:
        with pytest.raises(DomainError) as exc:
            call()
        assert _errtype(exc) == "PipelineNotFoundException"


def test_long_texts_are_cut_to_the_model_maxima() -> None:
    sim = Sim("long")
    sim.create(_one_action("long"))
    eid = sim.start()
    sim.finish(eid, "Run", False, errorCode="ExitCode1", message="m" * 6000, summary="s" * 3000)
    doc = q.get_pipeline_state(sim.s)
    conforms("GetPipelineState", doc)
    ex = _action(_stage(doc, "Only"), "Run")["latestExecution"]
    assert len(ex["summary"]) == 2048 and len(ex["errorDetails"]["message"]) == 5000
    conforms("ListActionExecutions", q.list_action_executions(sim.s))
