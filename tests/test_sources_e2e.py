"""Source actions end to end: the real ``stageline serve`` (workers on) on a real Redis,
driven by boto3: a local git repository and an S3 bucket (moto's server) as sources, the
revisions shown by the API, overrides, failures, and a retry of a later stage."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import hmac
import io
import json
import os
import shutil
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from redis.asyncio import Redis

from app.api.server import ServeConfig
from app.artifacts import ArtifactLocation, ArtifactSettings, LocalArtifactStore
from app.domain import events as ev
from app.store.eventstore import EventStore
from app.store.keys import Keys
from tests.api_helpers import AKID, SECRET, Stageline, client, raw, run_stageline, wait_for
from tests.conftest import IN_CI, no_redis
from tests.redis_server import RedisServer, redis_binary
from tests.s3_server import FAKE_KEYS, s3_endpoint  # noqa: F401 (a fixture)
from tests.test_sources_runner import Repo, git
from tests.workers.helpers import AS_TEST_USER
from workers.config import WorkerConfig
from workers.runners.sources import SourceSettings

pytestmark = pytest.mark.timeout(120)

ROLE = "arn:aws:iam::123456789012:role/stageline-sources"
ARN = "arn:aws:codestar-connections:us-east-1:123456789012:connection/e2e"
GIT_SOURCE = {
    "category": "Source",
    "owner": "AWS",
    "provider": "CodeStarSourceConnection",
    "version": "1",
}
S3_SOURCE = {"category": "Source", "owner": "AWS", "provider": "S3", "version": "1"}
COMMANDS = {"category": "Compute", "owner": "AWS", "provider": "Commands", "version": "1"}
BUCKET = "sources-e2e"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if shutil.which("git") is None:
        if IN_CI:
            pytest.fail("CI=true and no git CLI", pytrace=False)
        pytest.skip("no git CLI")
    if redis_binary() is None:
        no_redis("the source end-to-end tests need the redis-server binary")
    base = tmp_path_factory.mktemp("sources-e2e")
    repo = Repo(base / "git")
    server = RedisServer(base / "redis")
    server.start()
    saved = {k: os.environ.get(k) for k in FAKE_KEYS}
    os.environ.update(FAKE_KEYS)  # the S3 source's credentials, as a deployment passes them
    try:
        yield {"base": base, "repo": repo, "redis": server}
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def artifact_settings(world: dict[str, Any]) -> ArtifactSettings:
    return ArtifactSettings(dir=str(world["base"] / "artifacts"))


def serve(world: dict[str, Any], s3: str | None = None, db: int = 0) -> Any:
    """A server on Redis database ``db`` (its workers run only that database's actions)."""
    worker = WorkerConfig(
        name=f"sources-e2e-{db}",
        block_ms=200,
        shutdown_grace_s=2.0,
        reap_every_s=0.5,
        actions=dataclasses.replace(AS_TEST_USER, artifacts=artifact_settings(world)),
        sources=SourceSettings(git_root=str(world["repo"].root), s3_endpoint=s3),
    )
    cfg = ServeConfig(
        port=0,
        redis_url=f"redis://127.0.0.1:{world['redis'].port}/{db}",
        credentials={AKID: SECRET},
        partitions=2,
        worker=worker,
        log_level="warning",
    )
    return run_stageline(cfg)


@pytest.fixture(scope="module")
def live(world: dict[str, Any]) -> Iterator[Stageline]:
    with serve(world) as srv:
        yield srv


def git_action(branch: str = "main") -> dict[str, Any]:
    return {
        "name": "Checkout",
        "actionTypeId": GIT_SOURCE,
        "configuration": {
            "FullRepositoryId": "team/app",
            "BranchName": branch,
            "ConnectionArn": ARN,
        },
        "outputArtifacts": [{"name": "SourceOut"}],
        "namespace": "SourceVariables",
    }


def build(*cmds: str) -> dict[str, Any]:
    return {
        "name": "Make",
        "actionTypeId": COMMANDS,
        "commands": list(cmds),
        "inputArtifacts": [{"name": "SourceOut"}],
    }


def pipeline(name: str, source: dict[str, Any], *cmds: str) -> dict[str, Any]:
    return {
        "name": name,
        "roleArn": ROLE,
        "stages": [
            {"name": "Source", "actions": [source]},
            {"name": "Build", "actions": [build(*(cmds or ("true",)))]},
        ],
    }


def execution(cp: Any, name: str, eid: str) -> dict[str, Any]:
    doc: dict[str, Any] = cp.get_pipeline_execution(pipelineName=name, pipelineExecutionId=eid)[
        "pipelineExecution"
    ]
    return doc


def wait_done(cp: Any, name: str, eid: str, status: str = "Succeeded") -> dict[str, Any]:
    wait_for(
        lambda: execution(cp, name, eid)["status"] in ("Succeeded", "Failed", "Stopped"),
        timeout=30,
        what=f"execution {eid} of {name} to end",
    )
    doc = execution(cp, name, eid)
    assert doc["status"] == status, doc.get("statusSummary")
    return doc


def source_attempts(cp: Any, name: str, eid: str) -> list[dict[str, Any]]:
    details = cp.list_action_executions(pipelineName=name, filter={"pipelineExecutionId": eid})[
        "actionExecutionDetails"
    ]
    return [d for d in details if d["stageName"] == "Source"]


def stored_artifact(world: dict[str, Any], name: str, eid: str, db: int = 0) -> Path:
    """Unpack the output artifact the source's result recorded (read from the log)."""

    async def read() -> ArtifactLocation:
        redis = Redis.from_url(f"redis://127.0.0.1:{world['redis'].port}/{db}")
        try:
            store = EventStore(redis, Keys(partitions=2))
            for env in await store.read(name):
                e = env.event
                if (
                    isinstance(e, ev.ActionExecutionSucceeded)
                    and e.executionId == eid
                    and e.outputArtifacts
                ):
                    return e.outputArtifacts["SourceOut"]
        finally:
            await redis.aclose()
        raise AssertionError("no output artifact recorded")

    loc = asyncio.run(read())
    into = world["base"] / f"unpacked-{eid}"
    store = LocalArtifactStore(artifact_settings(world).root, loc.bucket)
    asyncio.run(store.get(loc, str(into)))
    return into


def test_git_source_head_then_override(live: Stageline, world: dict[str, Any]) -> None:
    repo: Repo = world["repo"]
    cp = client(live.url)
    out = world["base"] / "built"
    cp.create_pipeline(
        pipeline=pipeline(
            "git-src",
            git_action(),
            # the Build reads the checked-out tree and the source's variables
            f"cat app.txt > {out}-$CODEPIPELINE_PIPELINE_EXECUTION_ID",
            f"echo '#{{SourceVariables.CommitId}} #{{SourceVariables.BranchName}}' "
            f">> {out}-$CODEPIPELINE_PIPELINE_EXECUTION_ID",
        )
    )
    eid = cp.start_pipeline_execution(name="git-src")["pipelineExecutionId"]
    doc = wait_done(cp, "git-src", eid)
    assert Path(f"{out}-{eid}").read_text() == f"two\n{repo.second} main\n"
    (rev,) = doc["artifactRevisions"]
    assert rev["name"] == "SourceOut"
    assert rev["revisionId"] == repo.second
    assert rev["revisionSummary"] == "second commit\n\nwith a body"
    assert rev["revisionChangeIdentifier"] == "2024-01-02T02:04:05Z"
    assert rev["created"].timestamp() == 1704161045.0
    (summary,) = [
        x
        for x in cp.list_pipeline_executions(pipelineName="git-src")["pipelineExecutionSummaries"]
        if x["pipelineExecutionId"] == eid
    ]
    assert summary["sourceRevisions"] == [
        {
            "actionName": "Checkout",
            "revisionId": repo.second,
            "revisionSummary": "second commit\n\nwith a body",
        }
    ]
    state = cp.get_pipeline_state(name="git-src")["stageStates"][0]["actionStates"][0]
    assert state["currentRevision"]["revisionId"] == repo.second
    assert state["currentRevision"]["revisionChangeId"] == "2024-01-02T02:04:05Z"
    (attempt,) = source_attempts(cp, "git-src", eid)
    assert attempt["output"]["outputVariables"]["CommitId"] == repo.second
    assert attempt["output"]["outputVariables"]["BranchName"] == "main"
    assert attempt["output"]["executionResult"]["externalExecutionId"] == repo.second
    tree = stored_artifact(world, "git-src", eid)
    assert (tree / "app.txt").read_text() == "two\n"

    # an override: the first commit
    eid2 = cp.start_pipeline_execution(
        name="git-src",
        sourceRevisions=[
            {"actionName": "Checkout", "revisionType": "COMMIT_ID", "revisionValue": repo.first}
        ],
    )["pipelineExecutionId"]
    doc = wait_done(cp, "git-src", eid2)
    assert [r["revisionId"] for r in doc["artifactRevisions"]] == [repo.first]
    assert Path(f"{out}-{eid2}").read_text() == f"one\n{repo.first} main\n"
    assert (stored_artifact(world, "git-src", eid2) / "app.txt").read_text() == "one\n"
    # the first execution still shows what it fetched
    assert execution(cp, "git-src", eid)["artifactRevisions"][0]["revisionId"] == repo.second

    # PutActionRevision on the source: the revision put is what the new execution fetches
    put = cp.put_action_revision(
        pipelineName="git-src",
        stageName="Source",
        actionName="Checkout",
        actionRevision={
            "revisionId": repo.feature,
            "revisionChangeId": "push-1",
            "created": datetime.datetime(2024, 1, 3, tzinfo=datetime.UTC),
        },
    )
    assert put["newRevision"] is True
    doc = wait_done(cp, "git-src", put["pipelineExecutionId"])
    assert [r["revisionId"] for r in doc["artifactRevisions"]] == [repo.feature]


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ({"actionName": "Make", "revisionType": "COMMIT_ID"}, "'Make' is not a source action"),
        ({"actionName": "Nope", "revisionType": "COMMIT_ID"}, "no action 'Nope'"),
        ({"actionName": "Checkout", "revisionType": "S3_OBJECT_KEY"}, "does not apply"),
    ],
)
def test_bad_overrides_are_refused(live: Stageline, override: dict[str, str], words: str) -> None:
    cp = client(live.url)
    name = f"git-bad-{override['actionName']}-{override['revisionType']}".replace("_", "-")
    cp.create_pipeline(pipeline=pipeline(name, git_action()))
    before = cp.list_pipeline_executions(pipelineName=name)["pipelineExecutionSummaries"]
    with pytest.raises(ClientError) as info:
        cp.start_pipeline_execution(
            name=name, sourceRevisions=[{**override, "revisionValue": "0123abcd"}]
        )
    assert info.value.response["Error"]["Code"] == "ValidationException"
    assert words in info.value.response["Error"]["Message"]
    after = cp.list_pipeline_executions(pipelineName=name)["pipelineExecutionSummaries"]
    assert len(after) == len(before)  # nothing started


def test_missing_branch_fails_the_action(live: Stageline) -> None:
    cp = client(live.url)
    cp.create_pipeline(pipeline=pipeline("git-nobranch", git_action("nope")))
    eid = cp.start_pipeline_execution(name="git-nobranch")["pipelineExecutionId"]
    doc = wait_done(cp, "git-nobranch", eid, "Failed")
    assert doc["artifactRevisions"] == []
    (attempt,) = source_attempts(cp, "git-nobranch", eid)
    err = attempt["output"]["executionResult"]["errorDetails"]
    assert err["code"] == "BranchNotFound"
    assert err["message"] == "branch 'nope' not found in repository 'team/app'"


def test_retrying_build_does_not_fetch_again(live: Stageline, world: dict[str, Any]) -> None:
    repo: Repo = world["repo"]
    flag = world["base"] / "fail-once"
    flag.write_text("x")
    cp = client(live.url)
    cp.create_pipeline(
        pipeline=pipeline(
            "git-retry",
            git_action(),
            f"if [ -e {flag} ]; then rm {flag}; exit 1; fi",
            f"cp app.txt {world['base']}/retried",
        )
    )
    eid = cp.start_pipeline_execution(name="git-retry")["pipelineExecutionId"]
    wait_done(cp, "git-retry", eid, "Failed")
    # a new commit on the branch meanwhile: the execution keeps the revision it fetched
    (repo.path / "app.txt").write_text("three\n")
    git(repo.path, "commit", "--quiet", "-am", "third commit")
    try:
        cp.retry_stage_execution(
            pipelineName="git-retry",
            stageName="Build",
            pipelineExecutionId=eid,
            retryMode="FAILED_ACTIONS",
        )
        doc = wait_done(cp, "git-retry", eid)
        assert len(source_attempts(cp, "git-retry", eid)) == 1
        assert [r["revisionId"] for r in doc["artifactRevisions"]] == [repo.second]
        # the retried Build got the artifact the first fetch stored, not the new commit
        assert (world["base"] / "retried").read_text() == "two\n"
    finally:
        git(repo.path, "reset", "--quiet", "--hard", repo.second)


def _zip(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return buf.getvalue()


def test_s3_source_versions(world: dict[str, Any], s3_endpoint: str) -> None:  # noqa: F811
    from app.artifacts.s3 import s3_client

    s3 = s3_client(ArtifactSettings(s3_endpoint=s3_endpoint, s3_region="us-east-1"))
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    v1 = s3.put_object(
        Bucket=BUCKET,
        Key="app.zip",
        Body=_zip({"app.txt": "v1\n"}),
        Metadata={"codepipeline-artifact-revision-summary": "release one"},
    )["VersionId"]
    v2 = s3.put_object(Bucket=BUCKET, Key="app.zip", Body=_zip({"app.txt": "v2\n"}))
    s3.put_object(Bucket=BUCKET, Key="other.zip", Body=_zip({"app.txt": "other\n"}))
    source = {
        "name": "Fetch",
        "actionTypeId": S3_SOURCE,
        "configuration": {
            "S3Bucket": BUCKET,
            "S3ObjectKey": "app.zip",
            "PollForSourceChanges": "false",
        },
        "outputArtifacts": [{"name": "SourceOut"}],
    }
    with serve(world, s3=s3_endpoint, db=1) as srv:
        cp = client(srv.url)
        cp.create_pipeline(pipeline=pipeline("s3-src", source))
        eid = cp.start_pipeline_execution(name="s3-src")["pipelineExecutionId"]
        (rev,) = wait_done(cp, "s3-src", eid)["artifactRevisions"]
        assert rev["revisionId"] == v2["VersionId"]
        assert rev["revisionChangeIdentifier"] == v2["ETag"].strip('"')
        assert "revisionSummary" not in rev
        (attempt,) = source_attempts(cp, "s3-src", eid)
        assert attempt["output"]["outputVariables"] == {
            "ETag": v2["ETag"].strip('"'),
            "VersionId": v2["VersionId"],
        }
        assert (stored_artifact(world, "s3-src", eid, 1) / "app.txt").read_text() == "v2\n"

        eid = cp.start_pipeline_execution(
            name="s3-src",
            sourceRevisions=[
                {"actionName": "Fetch", "revisionType": "S3_OBJECT_VERSION_ID", "revisionValue": v1}
            ],
        )["pipelineExecutionId"]
        (rev,) = wait_done(cp, "s3-src", eid)["artifactRevisions"]
        assert rev["revisionId"] == v1
        assert rev["revisionSummary"] == "release one"
        assert (stored_artifact(world, "s3-src", eid, 1) / "app.txt").read_text() == "v1\n"

        eid = cp.start_pipeline_execution(
            name="s3-src",
            sourceRevisions=[
                {
                    "actionName": "Fetch",
                    "revisionType": "S3_OBJECT_KEY",
                    "revisionValue": "other.zip",
                }
            ],
        )["pipelineExecutionId"]
        wait_done(cp, "s3-src", eid)
        assert (stored_artifact(world, "s3-src", eid, 1) / "app.txt").read_text() == "other\n"

        eid = cp.start_pipeline_execution(
            name="s3-src",
            sourceRevisions=[
                {
                    "actionName": "Fetch",
                    "revisionType": "S3_OBJECT_KEY",
                    "revisionValue": "gone.zip",
                }
            ],
        )["pipelineExecutionId"]
        wait_done(cp, "s3-src", eid, "Failed")
        (attempt,) = source_attempts(cp, "s3-src", eid)
        err = attempt["output"]["executionResult"]["errorDetails"]
        assert err["code"] == "ObjectNotFound"
        assert f"s3://{BUCKET}/gone.zip not found" in err["message"]


def test_source_types_are_listed(live: Stageline) -> None:
    cp = client(live.url)
    ids = [t["id"] for t in cp.list_action_types(actionOwnerFilter="AWS")["actionTypes"]]
    assert GIT_SOURCE in ids and S3_SOURCE in ids
    codecommit = {**GIT_SOURCE, "provider": "CodeCommit"}
    assert codecommit in ids
    got = cp.get_action_type(**S3_SOURCE)["actionType"]
    assert got["outputArtifactDetails"] == {"minimumCount": 1, "maximumCount": 1}


def test_job_worker_source_reports_its_revision(live: Stageline) -> None:
    """A Custom source run by a job worker: PutJobSuccessResult's currentRevision is shown
    like an engine source's revision."""
    cp = client(live.url)
    tid = {"category": "Source", "owner": "Custom", "provider": "E2ESource", "version": "1"}
    cp.create_custom_action_type(
        category="Source",
        provider="E2ESource",
        version="1",
        inputArtifactDetails={"minimumCount": 0, "maximumCount": 0},
        outputArtifactDetails={"minimumCount": 1, "maximumCount": 1},
    )
    decl = {
        "name": "job-src",
        "roleArn": ROLE,
        "stages": [
            {
                "name": "Source",
                "actions": [
                    {
                        "name": "Poll",
                        "actionTypeId": tid,
                        "configuration": {"Repo": "x"},
                        "outputArtifacts": [{"name": "JobOut"}],
                    }
                ],
            },
            {"name": "Build", "actions": [{**build("true"), "inputArtifacts": []}]},
        ],
    }
    cp.create_pipeline(pipeline=decl)
    eid = cp.start_pipeline_execution(name="job-src")["pipelineExecutionId"]
    jobs = wait_for(lambda: cp.poll_for_jobs(actionTypeId=tid)["jobs"], what="the job")
    job = jobs[0]
    cp.acknowledge_job(jobId=job["id"], nonce=job["nonce"])
    cp.put_job_success_result(
        jobId=job["id"],
        currentRevision={
            "revision": "r-42",
            "changeIdentifier": "change-42",
            "created": datetime.datetime(2024, 5, 1, tzinfo=datetime.UTC),
            "revisionSummary": "from the job worker",
        },
    )
    (rev,) = wait_done(cp, "job-src", eid)["artifactRevisions"]
    assert rev["name"] == "JobOut"
    assert rev["revisionId"] == "r-42"
    assert rev["revisionChangeIdentifier"] == "change-42"
    assert rev["revisionSummary"] == "from the job worker"
    assert rev["created"] == datetime.datetime(2024, 5, 1, tzinfo=datetime.UTC)
    state = cp.get_pipeline_state(name="job-src")["stageStates"][0]["actionStates"][0]
    assert state["currentRevision"]["revisionId"] == "r-42"


def test_a_signed_push_webhook_fetches_the_pushed_commit(
    live: Stageline, world: dict[str, Any]
) -> None:
    """Webhooks and sources together: the push's commit (not the branch head) is fetched."""
    repo: Repo = world["repo"]
    cp = client(live.url)
    out = world["base"] / "pushed"
    cp.create_pipeline(pipeline=pipeline("git-push", git_action(), f"cp app.txt {out}"))
    secret = "push-secret-for-the-test"
    hook = cp.put_webhook(
        webhook={
            "name": "git-push-hook",
            "targetPipeline": "git-push",
            "targetAction": "Checkout",
            "filters": [{"jsonPath": "$.ref", "matchEquals": "refs/heads/{BranchName}"}],
            "authentication": "GITHUB_HMAC",
            "authenticationConfiguration": {"SecretToken": secret},
        }
    )["webhook"]
    body = json.dumps(
        {"ref": "refs/heads/main", "after": repo.first, "head_commit": {"id": repo.first}}
    ).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": "sha256="
        + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
    }
    path = "/" + hook["url"].split("/", 3)[3]
    status, _, doc = raw(live.url, "POST", path, body, headers)
    assert status == 200 and doc["started"] is True, doc
    done = wait_done(cp, "git-push", doc["pipelineExecutionId"])
    assert [r["revisionId"] for r in done["artifactRevisions"]] == [repo.first]
    assert done["trigger"]["triggerType"] == "Webhook"
    assert out.read_text() == "one\n"


def test_source_build_deploy_with_a_failed_build_retried(
    live: Stageline, world: dict[str, Any]
) -> None:
    """Issue 13's acceptance pipeline: Source (a local git repository) → Build (Commands
    making an artifact from the checkout and exporting output variables; it fails once and
    is retried with FAILED_ACTIONS) → Deploy (Commands consuming the build's artifact and
    the build's and the source's variables). Deploy sees the retried build's artifact and
    variables, and the revision the source fetched; the source ran once."""
    repo: Repo = world["repo"]
    base: Path = world["base"]
    flag, seen = base / "acceptance-fail-once", base / "acceptance-deployed"
    flag.write_text("x")
    build_action = {
        "name": "Make",
        "actionTypeId": COMMANDS,
        "inputArtifacts": [{"name": "SourceOut"}],
        "namespace": "BuildVars",
        "outputVariables": ["VERSION", "SOURCE_TEXT"],
        "outputArtifacts": [{"name": "BuildOut", "files": ["dist/**"]}],
        "commands": [
            "mkdir -p dist",
            'echo "built from $(cat app.txt) try $CODEPIPELINE_ACTION_ATTEMPT" > dist/app.txt',
            "export VERSION=1.0.$CODEPIPELINE_ACTION_ATTEMPT",
            'export SOURCE_TEXT="$(cat app.txt)"',
            f"if [ -e {flag} ]; then rm {flag}; echo failing once; exit 1; fi",
        ],
    }
    deploy_action = {
        "name": "Ship",
        "actionTypeId": COMMANDS,
        "inputArtifacts": [{"name": "BuildOut"}],
        "environmentVariables": [{"name": "COMMIT", "value": "#{SourceVariables.CommitId}"}],
        "commands": [
            "test ! -e app.txt",  # only the build's artifact, not the checkout
            f'echo "#{{BuildVars.VERSION}}|#{{BuildVars.SOURCE_TEXT}}|$COMMIT|$(cat dist/app.txt)"'
            f" >> {seen}",
        ],
    }
    cp = client(live.url)
    cp.create_pipeline(
        pipeline={
            "name": "acceptance",
            "roleArn": ROLE,
            "stages": [
                {"name": "Source", "actions": [git_action()]},
                {"name": "Build", "actions": [build_action]},
                {"name": "Deploy", "actions": [deploy_action]},
            ],
        }
    )
    eid = cp.start_pipeline_execution(name="acceptance")["pipelineExecutionId"]
    wait_done(cp, "acceptance", eid, "Failed")
    assert not seen.exists()  # Deploy did not run
    cp.retry_stage_execution(
        pipelineName="acceptance",
        stageName="Build",
        pipelineExecutionId=eid,
        retryMode="FAILED_ACTIONS",
    )
    doc = wait_done(cp, "acceptance", eid)
    assert seen.read_text() == f"1.0.2|two|{repo.second}|built from two try 2\n"
    assert [r["revisionId"] for r in doc["artifactRevisions"]] == [repo.second]
    assert len(source_attempts(cp, "acceptance", eid)) == 1
    details = cp.list_action_executions(
        pipelineName="acceptance", filter={"pipelineExecutionId": eid}
    )["actionExecutionDetails"]
    builds = sorted((d for d in details if d["actionName"] == "Make"), key=lambda d: d["startTime"])
    assert [b["status"] for b in builds] == ["Failed", "Succeeded"]
    assert builds[1]["output"]["outputVariables"] == {"VERSION": "1.0.2", "SOURCE_TEXT": "two"}
    ship = next(d for d in details if d["actionName"] == "Ship")
    assert [a["name"] for a in ship["input"]["inputArtifacts"]] == ["BuildOut"]
