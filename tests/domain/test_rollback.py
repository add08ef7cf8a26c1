"""Stage rollback: RollbackStage and onFailure ROLLBACK (target selection, the rollback
execution, retries, errors)."""

from __future__ import annotations

import msgspec
import pytest

from app import queries as q
from app.domain import commands as c
from app.domain import events as ev
from app.domain import rollback as rb
from app.domain.artifacts import ArtifactLocation
from app.domain.decide import Decision
from app.domain.model import (
    ActionDeclaration,
    ActionTypeId,
    FailureConditions,
    PipelineDeclaration,
    StageDeclaration,
)
from tests.domain.helpers import ROLE, Harness, make_ctx, make_decl, of_type, types

THREE = {"Build": ["b"], "Deploy": [("d1", 1), ("d2", 1)], "Test": ["t"]}
SOURCE_TYPE = ActionTypeId(category="Source", owner="Custom", provider="Src", version="1")


def with_result(decl: PipelineDeclaration, stage: str, result: str) -> PipelineDeclaration:
    stages = [
        msgspec.structs.replace(s, onFailure=FailureConditions(result=result))  # type: ignore[arg-type]
        if s.name == stage
        else s
        for s in decl.stages
    ]
    return msgspec.structs.replace(decl, stages=stages)


def pipeline(mode: str | None = None, auto: bool = False) -> Harness:
    h = Harness()
    decl = make_decl(THREE, mode=mode)
    h.create(with_result(decl, "Deploy", "ROLLBACK") if auto else decl)
    return h


def through(h: Harness, eid: str, *stages: str) -> None:
    """Let ``eid`` succeed every action of ``stages``."""
    for st in stages:
        x = h.x(eid)
        assert x.currentStage == st, (x.currentStage, st)
        for name in list(x.stages[st].latest):
            h.succeed(eid, name)


def good(h: Harness) -> str:
    eid = h.start()
    through(h, eid, "Build", "Deploy", "Test")
    assert h.x(eid).status == "Succeeded"
    return eid


def to_deploy(h: Harness) -> str:
    eid = h.start()
    through(h, eid, "Build")
    return eid


def rollback(h: Harness, stage: str, target: str) -> str:
    rid = h.exec_ids()
    h.run(c.RollbackStage(rollbackExecutionId=rid, stageName=stage, targetExecutionId=target))
    return rid


def rollback_error(h: Harness, stage: str, target: str) -> tuple[str, str]:
    err = h.error(
        c.RollbackStage(rollbackExecutionId=h.exec_ids(), stageName=stage, targetExecutionId=target)
    )
    return err.type_name, err.message


# --- RollbackStage ---------------------------------------------------------------------------


def test_manual_rollback_runs_only_the_stage_with_the_targets_inputs() -> None:
    h = pipeline()
    e1 = good(h)
    h.state.executions[e1].variables = {"env": "one"}  # as a start with variables gives
    h.state.executions[e1].sourceRevisions = [
        {"actionName": "b", "revisionType": "COMMIT_ID", "revisionValue": "abc"}
    ]
    e2 = good(h)
    h.actor = "arn:aws:iam::123456789012:user/ops"
    rid = h.exec_ids()
    envs = h.run(c.RollbackStage(rollbackExecutionId=rid, stageName="Deploy", targetExecutionId=e1))
    assert types(envs) == [
        "ExecutionStarted",
        "RollbackStarted",
        "StageEntered",
        "ActionExecutionScheduled",
        "ActionExecutionScheduled",
    ]
    started = envs[0].event
    assert isinstance(started, ev.ExecutionStarted)
    assert started.executionId == rid
    assert started.triggerType == "ManualRollback"
    assert started.triggerDetail == "arn:aws:iam::123456789012:user/ops"
    assert started.variables == {"env": "one"}
    assert started.sourceRevisions == h.x(e1).sourceRevisions
    assert envs[1].event == ev.RollbackStarted(
        executionId=rid, stageName="Deploy", targetExecutionId=e1, trigger="ManualRollback"
    )
    x = h.x(rid)
    assert (x.executionType, x.rollbackTarget, x.rollbackStage) == ("ROLLBACK", e1, "Deploy")
    assert h.state.occupant == {"Deploy": rid}
    assert h.state.rollbacks == {"Deploy": rid}
    envs = h.succeed(rid, "d1", "d2")
    assert types(envs)[-2:] == ["StageSucceeded", "ExecutionSucceeded"]
    assert list(h.x(rid).stages) == ["Deploy"]  # Build and Test do not run
    assert h.x(rid).status == "Succeeded"
    assert h.state.lastSucceeded["Deploy"] == e2  # a rollback is never a target
    assert h.state.stageLatest["Deploy"] == rid
    assert rid not in h.state.active and h.state.occupant == {}
    assert rb.artifact_execution(h.x(rid)) == e1
    assert rb.artifact_execution(h.x(e2)) == e2


def test_read_documents_show_the_rollback() -> None:
    h = pipeline()
    e1 = good(h)
    rid = rollback(h, "Deploy", e1)
    doc = q.get_pipeline_execution(h.state, rid)["pipelineExecution"]
    assert doc["executionType"] == "ROLLBACK"
    assert doc["rollbackMetadata"] == {"rollbackTargetPipelineExecutionId": e1}
    assert doc["trigger"] == {"triggerType": "ManualRollback", "triggerDetail": "tester"}
    std = q.get_pipeline_execution(h.state, e1)["pipelineExecution"]
    assert std["executionType"] == "STANDARD" and "rollbackMetadata" not in std
    summaries = q.list_pipeline_executions(h.state)["pipelineExecutionSummaries"]
    by_id = {s["pipelineExecutionId"]: s for s in summaries}
    assert by_id[rid]["executionType"] == "ROLLBACK"
    assert by_id[rid]["rollbackMetadata"] == {"rollbackTargetPipelineExecutionId": e1}
    assert "rollbackMetadata" not in by_id[e1]
    state = q.get_pipeline_state(h.state)
    deploy = next(s for s in state["stageStates"] if s["stageName"] == "Deploy")
    assert deploy["latestExecution"] == {
        "pipelineExecutionId": rid,
        "status": "InProgress",
        "type": "ROLLBACK",
    }
    build = next(s for s in state["stageStates"] if s["stageName"] == "Build")
    assert build["latestExecution"] == {"pipelineExecutionId": e1, "status": "Succeeded"}


def test_rollback_errors() -> None:
    h = Harness()
    assert rollback_error(h, "Deploy", "x")[0] == "PipelineNotFoundException"
    h.create(make_decl(THREE))
    e1 = good(h)
    assert rollback_error(h, "Nope", e1)[0] == "StageNotFoundException"
    unknown = "ffffffff-ffff-4fff-8fff-ffffffffffff"
    assert rollback_error(h, "Deploy", unknown)[0] == "PipelineExecutionNotFoundException"
    # the target must have succeeded in that stage
    e2 = to_deploy(h)
    h.fail(e2, "d1")
    h.succeed(e2, "d2")
    name, msg = rollback_error(h, "Deploy", e2)
    assert name == "UnableToRollbackStageException" and "did not succeed" in msg
    assert rollback_error(h, "Test", e2)[0] == "UnableToRollbackStageException"  # never ran
    # a rollback execution is no target
    rid = rollback(h, "Deploy", e1)
    # the stage must not be running (rid is in it)
    name, msg = rollback_error(h, "Deploy", e1)
    assert name == "UnableToRollbackStageException"
    assert f"is in progress (execution {rid}): wait for it to end or stop it first" in msg
    h.succeed(rid, "d1", "d2")
    name, msg = rollback_error(h, "Deploy", rid)
    assert name == "UnableToRollbackStageException" and "rollback execution" in msg
    assert rollback(h, "Deploy", e1)  # and now the stage is free again
    # a target of an older pipeline version is outdated
    h2 = pipeline()
    old = good(h2)
    h2.update()
    assert rollback_error(h2, "Deploy", old)[0] == "PipelineExecutionOutdatedException"
    assert rollback(h2, "Deploy", good(h2))


def test_no_rollback_in_parallel_mode_or_of_a_source_stage() -> None:
    h = pipeline("PARALLEL")
    e1 = good(h)
    name, msg = rollback_error(h, "Deploy", e1)
    assert name == "UnableToRollbackStageException" and "PARALLEL" in msg
    h2 = Harness()
    src = StageDeclaration(
        name="Source",
        actions=[ActionDeclaration(name="s", actionTypeId=SOURCE_TYPE)],
    )
    decl = make_decl(THREE)
    h2.create(msgspec.structs.replace(decl, stages=[src, *decl.stages]))
    e = h2.start()
    h2.succeed(e, "s")
    through(h2, e, "Build", "Deploy", "Test")
    name, msg = rollback_error(h2, "Source", e)
    assert name == "UnableToRollbackStageException" and "source stage" in msg
    assert rollback(h2, "Build", e)


def test_rollback_counts_against_the_concurrency_limit() -> None:
    h = Harness()
    h.create(make_decl(THREE), limit=2)
    e1 = good(h)
    h.start()
    h.start()
    name, _ = rollback_error(h, "Test", e1)
    assert name == "ConflictException"
    h.stop(sorted(h.state.active)[0], abandon=True)
    assert len(h.state.active) == 1
    assert rollback(h, "Test", e1)  # one below the limit: accepted


def test_rollback_enters_before_executions_held_for_the_stage() -> None:
    h = pipeline("QUEUED")
    e1 = good(h)
    h.run(c.DisableStageTransition(stageName="Deploy", transitionType="Inbound", reason="hold"))
    w = to_deploy(h)
    assert h.state.waiting == {"Deploy": [w]}
    rid = rollback(h, "Deploy", e1)  # a rollback does not pass the transition
    assert h.state.occupant == {"Deploy": rid}
    assert h.state.waiting == {"Deploy": [w]}
    h.succeed(rid, "d1", "d2")
    assert h.x(w).waitingFor == "Deploy"  # still held by the transition
    h.run(c.EnableStageTransition(stageName="Deploy", transitionType="Inbound"))
    assert h.x(w).currentStage == "Deploy"


def test_an_execution_reaching_the_stage_during_a_rollback_waits_for_it() -> None:
    h = pipeline("SUPERSEDED")
    e1 = good(h)
    rid = rollback(h, "Deploy", e1)
    w = to_deploy(h)
    assert h.x(w).waitingFor == "Deploy"
    envs = h.succeed(rid, "d1", "d2")
    assert [e.executionId for e in of_type(envs, ev.StageEntered)] == [w]


# --- onFailure ROLLBACK ----------------------------------------------------------------------


def test_on_failure_rollback_starts_an_automated_rollback_to_the_last_good_execution() -> None:
    h = pipeline(auto=True)
    e1 = good(h)
    e2 = good(h)
    e3 = to_deploy(h)
    h.succeed(e3, "d2")
    envs = h.fail(e3, "d1")
    assert types(envs) == [
        "ActionExecutionFailed",
        "StageFailed",
        "ExecutionFailed",
        "ExecutionStarted",
        "RollbackStarted",
        "StageEntered",
        "ActionExecutionScheduled",
        "ActionExecutionScheduled",
    ]
    started = envs[3].event
    assert isinstance(started, ev.ExecutionStarted)
    assert started.triggerType == "AutomatedRollback"
    assert started.triggerDetail == e3
    rolled = envs[4].event
    assert isinstance(rolled, ev.RollbackStarted)
    assert rolled.targetExecutionId == e2 != e1
    assert rolled.failedExecutionId == e3 and rolled.trigger == "AutomatedRollback"
    rid = rolled.executionId
    assert h.x(e3).status == "Failed"
    assert h.x(rid).status == "InProgress"
    assert h.state.occupant == {"Deploy": rid}
    h.succeed(rid, "d1", "d2")
    assert h.x(rid).status == "Succeeded"
    assert list(h.x(rid).stages) == ["Deploy"]


def test_no_automated_rollback_without_a_previous_success() -> None:
    h = pipeline(auto=True)
    e1 = to_deploy(h)
    envs = h.fail(e1, "d1")
    assert "ExecutionStarted" not in types(envs)
    assert h.x(e1).status == "Failed"
    assert h.state.rollbacks == {}


def test_no_automated_rollback_to_an_execution_of_an_older_version() -> None:
    h = pipeline(auto=True)
    good(h)
    h.update()
    e2 = to_deploy(h)
    envs = h.fail(e2, "d1")
    assert "RollbackStarted" not in types(envs)


def test_a_failed_rollback_is_not_rolled_back_again_and_can_be_retried() -> None:
    h = pipeline(auto=True)
    good(h)
    e2 = to_deploy(h)
    h.fail(e2, "d1")
    rid = h.state.rollbacks["Deploy"]
    envs = h.fail(rid, "d1")
    assert "ExecutionStarted" not in types(envs)
    assert h.x(rid).status == "Failed"
    assert h.state.occupant.get("Deploy") is None
    h.succeed(rid, "d2")
    # a retry of the rollback execution re-runs the failed action and ends the rollback
    envs = h.retry_now(rid, "Deploy", "FAILED_ACTIONS")
    assert "StageRetryStarted" in types(envs)
    envs = h.succeed(rid, "d1")
    assert types(envs)[-2:] == ["StageSucceeded", "ExecutionSucceeded"]
    assert h.x(rid).status == "Succeeded"
    assert "Test" not in h.x(rid).stages
    assert h.state.rollbacks["Deploy"] == rid
    assert h.state.lastSucceeded["Deploy"] != rid  # still not a target after its retry


def test_a_stage_that_succeeded_on_retry_is_a_rollback_target() -> None:
    h = pipeline(auto=True)
    e1 = to_deploy(h)
    h.fail(e1, "d1")  # no earlier success: it just fails
    h.succeed(e1, "d2")
    assert h.x(e1).status == "Failed"
    h.retry_now(e1, "Deploy", "FAILED_ACTIONS")
    h.succeed(e1, "d1")
    assert h.state.lastSucceeded["Deploy"] == e1
    through(h, e1, "Test")
    e2 = to_deploy(h)
    envs = h.fail(e2, "d1")
    rolled = of_type(envs, ev.RollbackStarted)
    assert [r.targetExecutionId for r in rolled] == [e1]
    # and RollbackStage accepts it as a target as well
    h.succeed(rolled[0].executionId, "d1", "d2")
    assert rollback(h, "Deploy", e1)


def test_other_results_start_no_rollback() -> None:
    h = Harness()
    h.create(with_result(make_decl(THREE), "Deploy", "FAIL"))
    good(h)
    e2 = to_deploy(h)
    assert "RollbackStarted" not in types(h.fail(e2, "d1"))


def test_rollback_result_is_refused_in_parallel_mode_and_for_a_source_stage() -> None:
    h = Harness()
    err = h.error(
        c.CreatePipeline(
            declaration=with_result(make_decl(THREE, mode="PARALLEL"), "Deploy", "ROLLBACK")
        )
    )
    assert err.type_name == "InvalidStructureException"
    assert err.message == (
        "stage 'Deploy': onFailure result ROLLBACK is not available in PARALLEL execution mode"
    )
    src = StageDeclaration(
        name="Source",
        actions=[ActionDeclaration(name="s", actionTypeId=SOURCE_TYPE)],
        onFailure=FailureConditions(result="ROLLBACK"),
    )
    decl = make_decl(THREE)
    err = h.error(
        c.CreatePipeline(declaration=msgspec.structs.replace(decl, stages=[src, *decl.stages]))
    )
    assert err.type_name == "InvalidStructureException"
    assert err.message == "stage 'Source': a source stage cannot be rolled back"
    h.create(with_result(make_decl(THREE), "Deploy", "ROLLBACK"))
    err = h.error(
        c.UpdatePipeline(
            declaration=with_result(make_decl(THREE, mode="PARALLEL"), "Deploy", "ROLLBACK")
        )
    )
    assert err.type_name == "InvalidStructureException"


# --- the helper for conditions ---------------------------------------------------------------


def test_decision_rollback_stage_helper() -> None:
    h = pipeline()
    e1 = good(h)
    e2 = to_deploy(h)
    h.fail(e2, "d1")  # no onFailure: just failed
    d = Decision(h.state, make_ctx())
    rid = d.rollback_stage(e2, "Deploy")
    assert rid is not None
    assert types(d.events) == [
        "ExecutionStarted",
        "RollbackStarted",
        "StageEntered",
        "ActionExecutionScheduled",
        "ActionExecutionScheduled",
    ]
    assert d.s.executions[rid].rollbackTarget == e1
    # nothing to roll back to: None, and nothing emitted
    h2 = pipeline()
    x = to_deploy(h2)
    h2.fail(x, "d1")
    d2 = Decision(h2.state, make_ctx())
    assert d2.rollback_stage(x, "Deploy") is None
    assert d2.events == []


def test_decision_rollback_stage_helper_waits_for_an_occupied_stage() -> None:
    h = pipeline("QUEUED")
    good(h)
    e2 = to_deploy(h)
    w = h.start()
    through(h, w, "Build")
    assert h.state.waiting == {"Deploy": [w]}
    h.fail(e2, "d1")  # no onFailure: e2 fails and w is admitted into Deploy
    assert h.state.occupant == {"Deploy": w}
    d = Decision(h.state, make_ctx())
    assert d.rollback_stage(e2, "Deploy") is None
    assert d.events == []


def test_other_results_are_accepted_in_parallel_mode() -> None:
    h = Harness()
    h.create(with_result(make_decl(THREE, mode="PARALLEL"), "Deploy", "FAIL"))
    assert h.state.declaration is not None


@pytest.mark.parametrize("mode", ["SUPERSEDED", "QUEUED"])
def test_last_succeeded_follows_the_latest_success(mode: str) -> None:
    h = pipeline(mode)
    e1 = good(h)
    assert h.state.lastSucceeded == {"Build": e1, "Deploy": e1, "Test": e1}
    e2 = to_deploy(h)
    assert h.state.lastSucceeded["Build"] == e2
    assert h.state.lastSucceeded["Deploy"] == e1


# --- what the rolled-back stage runs with ----------------------------------------------------


def test_the_rolled_back_stage_gets_the_targets_artifacts_and_namespace_variables() -> None:
    cmd = {"category": "Compute", "owner": "AWS", "provider": "Commands", "version": "1"}
    decl = msgspec.convert(
        {
            "name": "p",
            "roleArn": ROLE,
            "stages": [
                {
                    "name": "Build",
                    "actions": [
                        {
                            "name": "b",
                            "actionTypeId": cmd,
                            "commands": ["make"],
                            "namespace": "B",
                            "outputVariables": ["version"],
                            "outputArtifacts": [{"name": "app"}],
                        }
                    ],
                },
                {
                    "name": "Deploy",
                    "actions": [
                        {
                            "name": "d",
                            "actionTypeId": cmd,
                            "commands": ["deploy #{B.version}"],
                            "inputArtifacts": [{"name": "app"}],
                        }
                    ],
                },
            ],
        },
        PipelineDeclaration,
    )
    h = Harness()
    h.create(decl)

    def run(version: str) -> str:
        eid = h.start()
        h.complete(
            eid,
            "b",
            outputVariables={"version": version},
            outputArtifacts={"app": ArtifactLocation(bucket="b", key=f"k{version}", store="S3")},
        )
        h.succeed(eid, "d")
        assert h.x(eid).status == "Succeeded"
        return eid

    first = run("1")
    run("2")
    rid = rollback(h, "Deploy", first)
    scheduled = [
        e.event
        for e in h.log
        if isinstance(e.event, ev.ActionExecutionScheduled) and e.event.executionId == rid
    ]
    assert len(scheduled) == 1
    assert scheduled[0].resolvedCommands == ["deploy 1"]
    assert scheduled[0].inputArtifacts == {
        "app": ArtifactLocation(bucket="b", key="k1", store="S3")
    }
    assert h.action(rid, "d").status == "InProgress"  # it runs: nothing is missing
    assert list(h.x(rid).stages) == ["Deploy"]  # the target's stages are only looked at
    assert rb.inputs_execution(h.state, h.x(first)) is h.x(first)
