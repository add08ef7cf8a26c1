"""Revisions in the read documents (pure: a harness state, no Redis), checked against the
service model's output shapes."""

from __future__ import annotations

from app import queries as q
from app.domain import commands as c
from app.domain import events as ev
from app.domain.model import PipelineDeclaration
from tests.domain.helpers import ROLE, Harness, action, stage
from tests.domain.test_sources import src
from tests.shape_walk import conforms

SHA = "0123456789abcdef0123456789abcdef01234567"
REV = ev.ArtifactRevision(
    revisionId=SHA,
    revisionSummary="m" * 3000,  # longer than RevisionSummary's maximum (2048)
    revisionUrl="https://git.example.com/team/app/commit/" + SHA,
    created=1_700_000_100.0,
    revisionChangeIdentifier="2023-11-14T22:15:00Z",
)
S3REV = ev.ArtifactRevision(revisionId="v2", created=1_700_000_200.0)


def harness() -> tuple[Harness, str]:
    h = Harness()
    decl = PipelineDeclaration(
        name="p",
        roleArn=ROLE,
        stages=[
            stage("Source", [src("Git", "CodeStarSourceConnection"), src("Obj", "S3")]),
            stage("Build", [action("b1")]),
        ],
    )
    h.create(decl)
    return h, h.start()


def test_no_revisions_before_the_sources_ran() -> None:
    h, eid = harness()
    doc = q.get_pipeline_execution(h.state, eid)
    conforms("GetPipelineExecution", doc)
    assert doc["pipelineExecution"]["artifactRevisions"] == []
    (summary,) = q.list_pipeline_executions(h.state)["pipelineExecutionSummaries"]
    assert summary["sourceRevisions"] == []
    state = q.get_pipeline_state(h.state)
    assert all("currentRevision" not in a for a in state["stageStates"][0]["actionStates"])


def test_revisions_shown() -> None:
    h, eid = harness()
    h.complete(eid, "Git", True, revision=REV)
    h.complete(eid, "Obj", True, revision=S3REV)
    doc = q.get_pipeline_execution(h.state, eid)
    conforms("GetPipelineExecution", doc)
    assert doc["pipelineExecution"]["artifactRevisions"] == [
        {
            "name": "GitOut",
            "revisionId": SHA,
            "revisionChangeIdentifier": "2023-11-14T22:15:00Z",
            "revisionSummary": "m" * 2048,
            "created": 1_700_000_100.0,
            "revisionUrl": REV.revisionUrl,
        },
        {"name": "ObjOut", "revisionId": "v2", "created": 1_700_000_200.0},
    ]
    listing = q.list_pipeline_executions(h.state)
    conforms("ListPipelineExecutions", listing)
    (summary,) = listing["pipelineExecutionSummaries"]
    assert summary["sourceRevisions"] == [
        {
            "actionName": "Git",
            "revisionId": SHA,
            "revisionSummary": "m" * 2048,
            "revisionUrl": REV.revisionUrl,
        },
        {"actionName": "Obj", "revisionId": "v2"},
    ]
    state = q.get_pipeline_state(h.state)
    conforms("GetPipelineState", state)
    git, obj = state["stageStates"][0]["actionStates"]
    assert git["currentRevision"] == {
        "revisionId": SHA,
        "revisionChangeId": "2023-11-14T22:15:00Z",
        "created": 1_700_000_100.0,
    }
    assert git["revisionUrl"] == REV.revisionUrl
    # no change identifier: the revision id stands in (the member is required)
    assert obj["currentRevision"] == {
        "revisionId": "v2",
        "revisionChangeId": "v2",
        "created": 1_700_000_200.0,
    }
    assert "revisionUrl" not in obj
    assert "currentRevision" not in state["stageStates"][1]["actionStates"][0]


def test_a_failed_latest_attempt_shows_no_revision() -> None:
    h, eid = harness()
    h.complete(eid, "Git", True, revision=REV)
    h.fail(eid, "Obj")
    h.retry_now(eid, "Source", "ALL_ACTIONS")
    doc = q.get_pipeline_execution(h.state, eid)
    assert doc["pipelineExecution"]["artifactRevisions"] == []  # both attempts are new
    h.complete(eid, "Git", False, errorCode="BranchNotFound", message="gone")
    assert q.get_pipeline_execution(h.state, eid)["pipelineExecution"]["artifactRevisions"] == []


def test_revision_without_created_uses_the_result_time() -> None:
    h, eid = harness()
    h.run(
        c.CompleteAction(
            executionId=eid,
            actionExecutionId=h.aid(eid, "Obj"),
            succeeded=True,
            revision=ev.ArtifactRevision(revisionId="etag"),
        )
    )
    state = q.get_pipeline_state(h.state)
    conforms("GetPipelineState", state)
    obj = state["stageStates"][0]["actionStates"][1]
    assert obj["currentRevision"]["created"] == h.action(eid, "Obj").lastUpdateTime


def test_only_source_actions_count_as_source_revisions() -> None:
    h, eid = harness()
    h.succeed(eid, "Git", "Obj")
    h.complete(eid, "b1", True, revision=S3REV)  # a Build that reported a revision
    assert q.get_pipeline_execution(h.state, eid)["pipelineExecution"]["artifactRevisions"] == []
    (summary,) = q.list_pipeline_executions(h.state)["pipelineExecutionSummaries"]
    assert summary["sourceRevisions"] == []
