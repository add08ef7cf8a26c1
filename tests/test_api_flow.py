"""End to end: stage transitions and stage rollback through boto3 against the real
``stageline serve`` (uvicorn + engine + in-process workers) on a real redis-server, SigV4
auth on.

- a disabled transition holds executions (SUPERSEDED: the newest one only; QUEUED: all, in
  order) and EnableStageTransition releases them;
- ``onFailure: {result: ROLLBACK}`` starts an AutomatedRollback execution to the last
  execution that succeeded in the stage;
- RollbackStage to the last good execution runs that stage alone, with ManualRollback;
- the modelled errors.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.api.server import ServeConfig
from tests.api_helpers import AKID, SECRET, Stageline, client, run_stageline, wait_for
from tests.workers.helpers import AS_TEST_USER
from workers.config import WorkerConfig

ACTOR = f"arn:aws:iam::000000000000:user/{AKID}"
ROLE = "arn:aws:iam::123456789012:role/stageline-flow"
COMMANDS = {"category": "Compute", "owner": "AWS", "provider": "Commands", "version": "1"}

pytestmark = pytest.mark.timeout(120)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def commands(name: str, *cmds: str) -> dict[str, Any]:
    return {"name": name, "actionTypeId": COMMANDS, "commands": list(cmds or ["true"])}


def stage(name: str, *actions: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "actions": list(actions), **extra}


def pipeline(name: str, *stages: dict[str, Any], mode: str | None = None) -> dict[str, Any]:
    p: dict[str, Any] = {"name": name, "roleArn": ROLE, "stages": list(stages)}
    if mode is not None:
        p["executionMode"] = mode
    return p


@pytest.fixture(scope="module")
def server(real_redis_url: str) -> Iterator[Stageline]:
    cfg = ServeConfig(
        port=0,
        redis_url=real_redis_url,
        credentials={AKID: SECRET},
        worker=WorkerConfig(
            name=unique("flow"),
            concurrency=8,
            block_ms=200,
            shutdown_grace_s=2.0,
            reap_every_s=0.5,
            actions=AS_TEST_USER,
        ),
        log_level="warning",
    )
    with run_stageline(cfg) as srv:
        yield srv


@pytest.fixture
def cp(server: Stageline) -> Any:
    return client(server.url)


def execution(cp: Any, name: str, eid: str) -> dict[str, Any]:
    doc: dict[str, Any] = cp.get_pipeline_execution(pipelineName=name, pipelineExecutionId=eid)[
        "pipelineExecution"
    ]
    return doc


def wait_status(cp: Any, name: str, eid: str, status: str) -> dict[str, Any]:
    result: dict[str, Any] = wait_for(
        lambda: (x := execution(cp, name, eid))["status"] == status and x,
        timeout=30,
        what=f"execution {eid} of {name} to be {status}",
    )
    return result


def stage_state(cp: Any, name: str, stage_name: str) -> dict[str, Any]:
    for s in cp.get_pipeline_state(name=name)["stageStates"]:
        if s["stageName"] == stage_name:
            doc: dict[str, Any] = s
            return doc
    raise AssertionError(stage_name)


def inbound_ids(cp: Any, name: str, stage_name: str) -> list[str]:
    return [
        e["pipelineExecutionId"]
        for e in stage_state(cp, name, stage_name).get("inboundExecutions", [])
    ]


def wait_held(cp: Any, name: str, stage_name: str, ids: list[str]) -> None:
    wait_for(
        lambda: inbound_ids(cp, name, stage_name) == ids,
        timeout=30,
        what=f"{ids} to wait before {stage_name}",
    )


def summaries(cp: Any, name: str) -> dict[str, dict[str, Any]]:
    out = cp.list_pipeline_executions(pipelineName=name)["pipelineExecutionSummaries"]
    return {s["pipelineExecutionId"]: s for s in out}


def action_stages(cp: Any, name: str, eid: str) -> set[str]:
    items = cp.list_action_executions(pipelineName=name, filter={"pipelineExecutionId": eid})
    return {i["stageName"] for i in items["actionExecutionDetails"]}


# --- transitions -----------------------------------------------------------------------------


def test_disabled_transition_in_superseded_mode_holds_the_newest(cp: Any) -> None:
    name = unique("hold-sup")
    cp.create_pipeline(
        pipeline=pipeline(name, stage("Build", commands("b")), stage("Deploy", commands("d")))
    )
    cp.disable_stage_transition(
        pipelineName=name, stageName="Deploy", transitionType="Inbound", reason="Release freeze"
    )
    state = stage_state(cp, name, "Deploy")["inboundTransitionState"]
    assert state["enabled"] is False
    assert state["disabledReason"] == "Release freeze"
    assert state["lastChangedBy"] == ACTOR
    assert "lastChangedAt" in state
    first = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]
    wait_held(cp, name, "Deploy", [first])
    assert execution(cp, name, first)["status"] == "InProgress"
    assert "latestExecution" not in stage_state(cp, name, "Deploy")  # not entered
    second = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]
    wait_status(cp, name, first, "Superseded")
    wait_held(cp, name, "Deploy", [second])
    cp.enable_stage_transition(pipelineName=name, stageName="Deploy", transitionType="Inbound")
    wait_status(cp, name, second, "Succeeded")
    assert execution(cp, name, first)["status"] == "Superseded"
    assert action_stages(cp, name, first) == {"Build"}
    state = stage_state(cp, name, "Deploy")["inboundTransitionState"]
    assert state["enabled"] is True and "disabledReason" not in state
    assert state["lastChangedBy"] == ACTOR


def test_disabled_outbound_transition_in_queued_mode_holds_all_in_order(cp: Any) -> None:
    name = unique("hold-q")
    cp.create_pipeline(
        pipeline=pipeline(
            name, stage("Build", commands("b")), stage("Deploy", commands("d")), mode="QUEUED"
        )
    )
    cp.disable_stage_transition(
        pipelineName=name, stageName="Build", transitionType="Outbound", reason="hold"
    )
    assert stage_state(cp, name, "Deploy")["inboundTransitionState"]["enabled"] is False
    first = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]
    wait_held(cp, name, "Deploy", [first])
    second = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]
    wait_held(cp, name, "Deploy", [first, second])
    assert execution(cp, name, first)["status"] == "InProgress"
    assert execution(cp, name, second)["status"] == "InProgress"
    cp.enable_stage_transition(pipelineName=name, stageName="Build", transitionType="Outbound")
    wait_status(cp, name, first, "Succeeded")
    wait_status(cp, name, second, "Succeeded")
    deploys = cp.list_action_executions(pipelineName=name)["actionExecutionDetails"]
    order = sorted(
        (d["startTime"], d["pipelineExecutionId"]) for d in deploys if d["stageName"] == "Deploy"
    )
    assert [eid for _, eid in order] == [first, second]


def test_transition_errors(cp: Any) -> None:
    name = unique("tr-err")
    cp.create_pipeline(
        pipeline=pipeline(name, stage("Build", commands("b")), stage("Deploy", commands("d")))
    )
    with pytest.raises(cp.exceptions.StageNotFoundException):
        cp.disable_stage_transition(
            pipelineName=name, stageName="Nope", transitionType="Inbound", reason="x"
        )
    with pytest.raises(cp.exceptions.PipelineNotFoundException):
        cp.enable_stage_transition(
            pipelineName=unique("ghost"), stageName="Build", transitionType="Inbound"
        )
    with pytest.raises(cp.exceptions.ValidationException):
        cp.disable_stage_transition(
            pipelineName=name, stageName="Build", transitionType="Inbound", reason="first"
        )


# --- rollback --------------------------------------------------------------------------------


def test_on_failure_rollback_runs_an_automated_rollback(cp: Any, tmp_path: Path) -> None:
    name = unique("auto-rb")
    broken = tmp_path / "broken"
    deploy = commands("d", f"if [ -f {broken} ]; then rm {broken}; exit 1; fi")
    cp.create_pipeline(
        pipeline=pipeline(
            name,
            stage("Build", commands("b")),
            stage("Deploy", deploy, onFailure={"result": "ROLLBACK"}),
        )
    )
    good = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]
    wait_status(cp, name, good, "Succeeded")
    broken.touch()
    bad = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]
    wait_status(cp, name, bad, "Failed")

    def rollback_id() -> str | None:
        for eid, s in summaries(cp, name).items():
            if s.get("executionType") == "ROLLBACK":
                return eid
        return None

    rid = wait_for(rollback_id, timeout=30, what="the rollback execution")
    doc = wait_status(cp, name, rid, "Succeeded")
    assert doc["executionType"] == "ROLLBACK"
    assert doc["rollbackMetadata"] == {"rollbackTargetPipelineExecutionId": good}
    assert doc["trigger"]["triggerType"] == "AutomatedRollback"
    s = summaries(cp, name)
    assert s[rid]["rollbackMetadata"] == {"rollbackTargetPipelineExecutionId": good}
    assert s[good]["executionType"] == s[bad]["executionType"] == "STANDARD"
    assert action_stages(cp, name, rid) == {"Deploy"}
    assert stage_state(cp, name, "Deploy")["latestExecution"] == {
        "pipelineExecutionId": rid,
        "status": "Succeeded",
        "type": "ROLLBACK",
    }
    assert stage_state(cp, name, "Build")["latestExecution"]["pipelineExecutionId"] == bad


def test_rollback_stage_to_the_last_good_execution(cp: Any) -> None:
    name = unique("manual-rb")
    cp.create_pipeline(
        pipeline=pipeline(
            name,
            stage("Build", commands("b")),
            stage("Deploy", commands("d")),
            stage("Test", commands("t")),
        )
    )
    first = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]
    wait_status(cp, name, first, "Succeeded")
    second = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]
    wait_status(cp, name, second, "Succeeded")
    rid = cp.rollback_stage(pipelineName=name, stageName="Deploy", targetPipelineExecutionId=first)[
        "pipelineExecutionId"
    ]
    doc = wait_status(cp, name, rid, "Succeeded")
    assert doc["executionType"] == "ROLLBACK"
    assert doc["rollbackMetadata"] == {"rollbackTargetPipelineExecutionId": first}
    assert doc["trigger"] == {"triggerType": "ManualRollback", "triggerDetail": ACTOR}
    assert action_stages(cp, name, rid) == {"Deploy"}  # Build and Test do not run again
    assert stage_state(cp, name, "Test")["latestExecution"]["pipelineExecutionId"] == second
    # the errors of the model
    with pytest.raises(cp.exceptions.UnableToRollbackStageException):
        cp.rollback_stage(pipelineName=name, stageName="Deploy", targetPipelineExecutionId=rid)
    with pytest.raises(cp.exceptions.PipelineExecutionNotFoundException):
        cp.rollback_stage(
            pipelineName=name, stageName="Deploy", targetPipelineExecutionId=str(uuid.uuid4())
        )
    with pytest.raises(cp.exceptions.StageNotFoundException):
        cp.rollback_stage(pipelineName=name, stageName="Nope", targetPipelineExecutionId=first)
    with pytest.raises(cp.exceptions.PipelineNotFoundException):
        cp.rollback_stage(
            pipelineName=unique("ghost"), stageName="Deploy", targetPipelineExecutionId=first
        )
    cp.update_pipeline(
        pipeline=pipeline(name, stage("Build", commands("b")), stage("Deploy", commands("d2")))
    )
    with pytest.raises(cp.exceptions.PipelineExecutionOutdatedException):
        cp.rollback_stage(pipelineName=name, stageName="Deploy", targetPipelineExecutionId=second)
