"""Source actions in the domain: which are sources, revision overrides at start, the fetched
revision recorded with the result. Pure (no Redis)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.domain import commands as c
from app.domain import events as ev
from app.domain.decide import action_kind
from app.domain.model import ActionDeclaration, ActionTypeId, PipelineDeclaration
from app.domain.sources import (
    COMMIT_ID_PATTERN,
    REVISION_TYPES,
    configuration_problems,
    fetched_revisions,
    override_problem,
    overrides_for,
    put_revision_override,
    source_family,
)
from tests.domain.helpers import ROLE, Harness, action, of_type, stage

SHA = "0123456789abcdef0123456789abcdef01234567"


def src(
    name: str, provider: str, owner: str = "AWS", category: str = "Source", version: str = "1"
) -> ActionDeclaration:
    config = {
        "CodeStarSourceConnection": {
            "FullRepositoryId": "team/app",
            "BranchName": "main",
            "ConnectionArn": "arn:aws:codestar-connections:us-east-1:123456789012:connection/x",
        },
        "CodeCommit": {"RepositoryName": "app", "BranchName": "main"},
        "S3": {"S3Bucket": "b", "S3ObjectKey": "k.zip"},
    }.get(provider, {"X": "y"})
    return ActionDeclaration(
        name=name,
        actionTypeId=ActionTypeId(
            category=category,  # type: ignore[arg-type]
            owner=owner,  # type: ignore[arg-type]
            provider=provider,
            version=version,
        ),
        configuration=config,
        outputArtifacts=[{"name": f"{name}Out"}],
    )


def decl() -> PipelineDeclaration:
    return PipelineDeclaration(
        name="p",
        roleArn=ROLE,
        stages=[
            stage(
                "Source",
                [
                    src("Git", "CodeStarSourceConnection"),
                    src("Cc", "CodeCommit"),
                    src("Obj", "S3"),
                    src("Other", "OtherSource", owner="Custom"),
                ],
            ),
            stage("Build", [action("b1")]),
        ],
    )


def harness() -> Harness:
    h = Harness()
    h.create(decl())
    return h


def override(name: str, rtype: str, value: str = SHA) -> dict[str, str]:
    return {"actionName": name, "revisionType": rtype, "revisionValue": value}


# --- which actions are sources ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "family"),
    [("CodeStarSourceConnection", "git"), ("CodeCommit", "git"), ("S3", "s3")],
)
def test_engine_source_providers(provider: str, family: str) -> None:
    a = src("a", provider)
    assert source_family(a) == family
    assert action_kind(a) == "source"


@pytest.mark.parametrize(
    "kw",
    [
        {"owner": "Custom"},
        {"owner": "ThirdParty"},
        {"category": "Build"},
        {"version": "2"},
    ],
)
def test_not_an_engine_source(kw: dict[str, str]) -> None:
    a = src("a", "S3", **kw)
    assert source_family(a) is None
    assert action_kind(a) != "source"


def test_unknown_aws_source_provider_is_not_run() -> None:
    assert source_family(src("a", "ECR")) is None
    assert action_kind(src("a", "ECR")) == "other"


def test_source_actions_are_scheduled_as_source_kind() -> None:
    h = harness()
    eid = h.start()
    kinds = {n: h.action(eid, n).kind for n in ("Git", "Cc", "Obj", "Other")}
    assert kinds == {"Git": "source", "Cc": "source", "Obj": "source", "Other": "custom"}


# --- overrides at start ----------------------------------------------------------------------


def test_start_records_the_overrides() -> None:
    h = harness()
    eid = h.exec_ids()
    revs = [
        override("Git", "COMMIT_ID"),
        override("Obj", "S3_OBJECT_KEY", "other.zip"),
        override("Obj", "S3_OBJECT_VERSION_ID", "v1"),
    ]
    envs = h.run(c.StartExecution(executionId=eid, sourceRevisions=revs))
    (started,) = of_type(envs, ev.ExecutionStarted)
    assert started.sourceRevisions == revs
    assert h.x(eid).sourceRevisions == revs


def test_start_without_overrides_records_none() -> None:
    h = harness()
    eid = h.exec_ids()
    envs = h.run(c.StartExecution(executionId=eid, sourceRevisions=[]))
    (started,) = of_type(envs, ev.ExecutionStarted)
    assert started.sourceRevisions is None
    assert h.x(eid).sourceRevisions is None


@pytest.mark.parametrize(
    ("revs", "words"),
    [
        ([override("Nope", "COMMIT_ID")], "no action 'Nope'"),
        ([override("b1", "COMMIT_ID")], "'b1' is not a source action"),
        ([override("Other", "COMMIT_ID")], "'Other' is not a source action"),
        ([override("Git", "S3_OBJECT_KEY", "k")], "'S3_OBJECT_KEY' does not apply"),
        ([override("Obj", "COMMIT_ID")], "'COMMIT_ID' does not apply"),
        ([override("Cc", "IMAGE_DIGEST", "sha256:x")], "'IMAGE_DIGEST' does not apply"),
        ([override("Git", "COMMIT_ID"), override("Git", "COMMIT_ID")], "given twice"),
        ([override("Git", "COMMIT_ID", "main")], "'main' is not a commit id"),
        ([override("Git", "COMMIT_ID", "--upload-pack=x")], "is not a commit id"),
        ([override("Git", "COMMIT_ID", "abc")], "is not a commit id"),
        ([override("Git", "COMMIT_ID", "a" * 65)], "is not a commit id"),
        ([override("Obj", "S3_OBJECT_KEY", "")], "empty revision value"),
    ],
)
def test_start_refuses_bad_overrides(revs: list[dict[str, str]], words: str) -> None:
    h = harness()
    before = len(h.log)
    err = h.error(c.StartExecution(executionId=h.exec_ids(), sourceRevisions=revs))
    assert err.type_name == "ValidationException"
    assert words in err.message
    assert len(h.log) == before
    assert h.state.active == []


def test_the_same_type_on_two_actions_is_fine() -> None:
    revs = [override("Git", "COMMIT_ID"), override("Cc", "COMMIT_ID")]
    assert override_problem(decl(), revs) is None


def test_commit_id_bounds() -> None:
    assert override_problem(decl(), [override("Git", "COMMIT_ID", "abcd")]) is None
    assert override_problem(decl(), [override("Git", "COMMIT_ID", "A" * 64)]) is None
    assert override_problem(decl(), [override("Git", "COMMIT_ID", "abcg")]) is not None


@given(st.text(min_size=1, max_size=80))
def test_a_commit_override_is_hex_or_refused(value: str) -> None:
    problem = override_problem(decl(), [override("Git", "COMMIT_ID", value)])
    ok = 4 <= len(value) <= 64 and all(ch in "0123456789abcdefABCDEF" for ch in value)
    assert (problem is None) == ok
    assert (COMMIT_ID_PATTERN.fullmatch(value) is not None) == ok


def test_revision_types_per_family() -> None:
    assert REVISION_TYPES["git"] == {"COMMIT_ID"}
    assert REVISION_TYPES["s3"] == {"S3_OBJECT_VERSION_ID", "S3_OBJECT_KEY"}


def test_overrides_for_one_action() -> None:
    revs = [
        override("Git", "COMMIT_ID"),
        override("Obj", "S3_OBJECT_KEY", "k2"),
        override("Obj", "S3_OBJECT_VERSION_ID", "v2"),
    ]
    assert overrides_for(revs, "Git") == {"COMMIT_ID": SHA}
    assert overrides_for(revs, "Obj") == {"S3_OBJECT_KEY": "k2", "S3_OBJECT_VERSION_ID": "v2"}
    assert overrides_for(revs, "Cc") == {}
    assert overrides_for(None, "Git") == {}


# --- the revision recorded with the result ---------------------------------------------------

REV = ev.ArtifactRevision(
    revisionId=SHA,
    revisionSummary="first commit",
    revisionUrl="https://git.example/team/app/commit/" + SHA,
    created=1_700_000_000.0,
    revisionChangeIdentifier="2023-11-14T22:13:20Z",
)


def test_success_records_the_revision() -> None:
    h = harness()
    eid = h.start()
    envs = h.complete(eid, "Git", True, revision=REV, outputVariables={"CommitId": SHA})
    (ok,) = of_type(envs, ev.ActionExecutionSucceeded)
    assert ok.revision == REV
    a = h.action(eid, "Git")
    assert a.revision == REV
    assert a.outputVariables == {"CommitId": SHA}
    assert h.action(eid, "Obj").revision is None


def test_result_alone_records_the_revision_too() -> None:
    h = harness()
    eid = h.start()
    aid = h.aid(eid, "Git")
    h.run(c.StartAction(executionId=eid, actionExecutionId=aid, worker="w"))
    h.run(
        c.CompleteAction(
            executionId=eid,
            actionExecutionId=aid,
            succeeded=True,
            worker="w",
            consequences=False,
            revision=REV,
        )
    )
    assert h.action(eid, "Git").revision == REV


def test_failure_has_no_revision() -> None:
    h = harness()
    eid = h.start()
    h.complete(eid, "Git", False, errorCode="SourceNotFound", message="no branch", revision=REV)
    assert h.action(eid, "Git").status == "Failed"
    assert h.action(eid, "Git").revision is None


def test_retrying_a_later_stage_does_not_run_the_source_again() -> None:
    h = harness()
    eid = h.start()
    h.complete(eid, "Git", True, revision=REV)
    h.succeed(eid, "Cc", "Obj", "Other")
    h.fail(eid, "b1")
    assert h.x(eid).status == "Failed"
    envs = h.retry_now(eid, "Build", "FAILED_ACTIONS")
    scheduled = of_type(envs, ev.ActionExecutionScheduled)
    assert [s.actionName for s in scheduled] == ["b1"]
    assert len(h.attempts(eid, "Git")) == 1
    assert h.action(eid, "Git").revision == REV


def test_old_success_events_decode_without_a_revision() -> None:
    old = b'{"type":"ActionExecutionSucceeded","executionId":"e","actionExecutionId":"a"}'
    e = msgspec.json.decode(old, type=ev.AnyEvent)
    assert isinstance(e, ev.ActionExecutionSucceeded)
    assert e.revision is None
    new = ev.ActionExecutionSucceeded(executionId="e", actionExecutionId="a", revision=REV)
    assert msgspec.json.decode(msgspec.json.encode(new), type=ev.AnyEvent) == new
    # a revision with only its id encodes only its id
    bare = ev.ActionExecutionSucceeded(
        executionId="e", actionExecutionId="a", revision=ev.ArtifactRevision(revisionId="r")
    )
    assert b'"revision":{"revisionId":"r"}' in msgspec.json.encode(bare)


# --- configuration checked at create ---------------------------------------------------------


def _with(a: ActionDeclaration, **changes: object) -> ActionDeclaration:
    return msgspec.structs.replace(a, **changes)  # type: ignore[arg-type]


def _decl_of(*actions: ActionDeclaration) -> PipelineDeclaration:
    return PipelineDeclaration(
        name="p", roleArn=ROLE, stages=[stage("Source", list(actions)), stage("B", [action("b")])]
    )


def test_complete_source_declarations_pass() -> None:
    assert configuration_problems(decl()) == []
    ok = _with(
        src("Git", "CodeStarSourceConnection"),
        configuration={
            "FullRepositoryId": "a/b",
            "BranchName": "main",
            "OutputArtifactFormat": "CODEBUILD_CLONE_REF",
        },
    )
    assert configuration_problems(_decl_of(ok)) == []


@pytest.mark.parametrize(
    ("provider", "key"),
    [
        ("CodeStarSourceConnection", "FullRepositoryId"),
        ("CodeStarSourceConnection", "BranchName"),
        ("CodeCommit", "RepositoryName"),
        ("CodeCommit", "BranchName"),
        ("S3", "S3Bucket"),
        ("S3", "S3ObjectKey"),
    ],
)
def test_a_missing_required_key_is_refused(provider: str, key: str) -> None:
    a = src("Src", provider)
    config = dict(a.configuration or {})
    del config[key]
    problems = configuration_problems(_decl_of(_with(a, configuration=config)))
    assert problems == [
        f"Action configuration for action 'Src' is missing required configuration '{key}'"
    ]
    h = Harness()
    err = h.error(c.CreatePipeline(declaration=_decl_of(_with(a, configuration=config))))
    assert err.type_name == "InvalidActionDeclarationException"
    assert f"'{key}'" in err.message
    assert h.state.declaration is None


def test_no_configuration_at_all() -> None:
    problems = configuration_problems(_decl_of(_with(src("Src", "S3"), configuration=None)))
    assert len(problems) == 2


def test_output_format_and_artifact_count() -> None:
    git = src("Git", "CodeStarSourceConnection")
    bad_fmt = _with(git, configuration={**(git.configuration or {}), "OutputArtifactFormat": "X"})
    (problem,) = configuration_problems(_decl_of(bad_fmt))
    assert "OutputArtifactFormat 'X'" in problem
    s3 = src("Obj", "S3")  # the format is a git source's key: S3 ignores it
    s3_fmt = _with(s3, configuration={**(s3.configuration or {}), "OutputArtifactFormat": "X"})
    assert configuration_problems(_decl_of(s3_fmt)) == []
    two = _with(git, outputArtifacts=[{"name": "a"}, {"name": "b"}])
    (problem,) = configuration_problems(_decl_of(two))
    assert "has 2 output artifacts; a source action has at most one" in problem
    for outputs in ([], None):  # no artifact: the revision is still fetched
        assert configuration_problems(_decl_of(_with(git, outputArtifacts=outputs))) == []


def test_other_actions_are_not_checked() -> None:
    custom = src("Other", "OtherSource", owner="Custom")
    assert configuration_problems(_decl_of(_with(custom, configuration=None))) == []


def test_put_action_revision_becomes_an_override() -> None:
    git = put_revision_override(src("Git", "CodeCommit"), SHA)
    assert git == [override("Git", "COMMIT_ID")]
    obj = put_revision_override(src("Obj", "S3"), "v9")
    assert obj == [override("Obj", "S3_OBJECT_VERSION_ID", "v9")]
    assert put_revision_override(src("Other", "X", owner="Custom"), SHA) is None
    assert put_revision_override(action("b1"), SHA) is None
    assert override_problem(decl(), git) is None  # what it makes is always accepted
    assert override_problem(decl(), obj) is None


# --- exact messages (what a caller reads) ----------------------------------------------------


def test_override_messages_in_full() -> None:
    d = decl()
    assert override_problem(d, [override("Nope", "COMMIT_ID")]) == (
        "Source revision override: no action 'Nope' in pipeline 'p'"
    )
    assert override_problem(d, [override("Other", "COMMIT_ID")]) == (
        "Source revision override: action 'Other' is not a source action stageline runs "
        "(Custom/Source/OtherSource/1); overrides apply to AWS CodeStarSourceConnection, "
        "CodeCommit and S3 source actions"
    )
    assert override_problem(d, [override("Obj", "COMMIT_ID")]) == (
        "Source revision override: revision type 'COMMIT_ID' does not apply to action 'Obj' "
        "(provider S3: S3_OBJECT_KEY, S3_OBJECT_VERSION_ID)"
    )
    assert override_problem(d, [override("Git", "COMMIT_ID")] * 2) == (
        "Source revision override: 'COMMIT_ID' given twice for action 'Git'"
    )
    assert override_problem(d, [override("Obj", "S3_OBJECT_KEY", "")]) == (
        "Source revision override: empty revision value for action 'Obj'"
    )
    assert override_problem(d, [override("Git", "COMMIT_ID", "xyz1")]) == (
        "Source revision override: 'xyz1' is not a commit id (4 to 64 hex digits) for action 'Git'"
    )


def test_overrides_missing_members() -> None:
    d = decl()
    assert override_problem(d, [{"revisionType": "COMMIT_ID", "revisionValue": SHA}]) == (
        "Source revision override: no action '' in pipeline 'p'"
    )
    assert override_problem(d, [{"actionName": "Git", "revisionValue": SHA}]) == (
        "Source revision override: revision type '' does not apply to action 'Git' "
        "(provider CodeStarSourceConnection: COMMIT_ID)"
    )
    assert override_problem(d, [{"actionName": "Obj", "revisionType": "S3_OBJECT_KEY"}]) == (
        "Source revision override: empty revision value for action 'Obj'"
    )
    assert overrides_for([{"actionName": "Git", "revisionType": "COMMIT_ID"}], "Git") == {}
    assert overrides_for([{"actionName": "Git", "revisionValue": SHA}], "Git") == {}


def test_configuration_messages_in_full() -> None:
    git = src("Git", "CodeStarSourceConnection")
    bad = _with(
        git,
        configuration={"BranchName": "main", "OutputArtifactFormat": "TAR"},
        outputArtifacts=[{"name": "a"}, {"name": "b"}],
    )
    # a non-source action before it does not end the check
    assert configuration_problems(_decl_of(src("C", "X", owner="Custom"), bad)) == [
        "Action configuration for action 'Git' is missing required configuration "
        "'FullRepositoryId'",
        "Action configuration for action 'Git': OutputArtifactFormat 'TAR' is not one of "
        "CODE_ZIP, CODEBUILD_CLONE_REF",
        "Action 'Git' in stage 'Source' has 2 output artifacts; a source action has at most one",
    ]


# --- what an execution's sources fetched -----------------------------------------------------


def test_fetched_revisions() -> None:
    h = harness()
    eid = h.start()
    d = h.state.declaration_for(h.x(eid))
    assert fetched_revisions(d, h.x(eid)) == []
    s3rev = ev.ArtifactRevision(revisionId="v1")
    h.complete(eid, "Obj", True, revision=s3rev)
    h.complete(eid, "Git", True, revision=REV)
    h.complete(eid, "Cc", True)  # no revision reported
    # declaration order, not completion order; the output artifact's name
    assert fetched_revisions(d, h.x(eid)) == [("Git", "GitOut", REV), ("Obj", "ObjOut", s3rev)]


def test_fetched_revisions_skip_what_is_not_a_fetch() -> None:
    nameless = _with(src("Git", "CodeStarSourceConnection"), outputArtifacts=None)
    d = PipelineDeclaration(
        name="p",
        roleArn=ROLE,
        stages=[
            stage("Source", [nameless, src("Obj", "S3")]),
            stage("Build", [action("b1")]),
            stage("Later", [src("Late", "S3")]),
        ],
    )
    h = Harness()
    h.create(d)
    eid = h.start()
    h.complete(eid, "Git", True, revision=REV)
    h.complete(eid, "Obj", False, errorCode="ObjectNotFound", message="gone")
    assert fetched_revisions(d, h.x(eid)) == [("Git", None, REV)]  # no artifact: no name
    h.retry_now(eid, "Source", "FAILED_ACTIONS")
    h.complete(eid, "Obj", True, revision=REV)
    h.complete(eid, "b1", True, revision=REV)  # not a Source-category action
    names = [n for n, _, _ in fetched_revisions(d, h.x(eid))]
    assert names == ["Git", "Obj"]  # "Late" has not fetched yet (InProgress)


def test_a_later_stage_retry_keeps_the_fetch() -> None:
    h = harness()
    eid = h.start()
    h.complete(eid, "Git", True, revision=REV)
    h.succeed(eid, "Cc", "Obj", "Other")
    h.fail(eid, "b1")
    h.retry_now(eid, "Build", "FAILED_ACTIONS")
    d = h.state.declaration_for(h.x(eid))
    assert [n for n, _, _ in fetched_revisions(d, h.x(eid))] == ["Git"]


def test_fetched_revisions_around_other_actions() -> None:
    later = _with(src("Late", "S3"), runOrder=2)  # not scheduled before run order 1 ends
    d = PipelineDeclaration(
        name="p",
        roleArn=ROLE,
        stages=[
            stage("Source", [action("prep"), src("Git", "CodeStarSourceConnection"), later]),
            stage("Build", [action("b1")]),
        ],
    )
    h = Harness()
    h.create(d)
    eid = h.start()
    h.complete(eid, "prep", True, revision=REV)  # a Compute action first: not a fetch
    assert fetched_revisions(d, h.x(eid)) == []
    h.complete(eid, "Git", True, revision=REV)
    assert fetched_revisions(d, h.x(eid)) == [("Git", "GitOut", REV)]
