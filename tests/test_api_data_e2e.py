"""End to end through boto3 on a real Redis: pipeline variables, output variables and
artifacts between stages, across retries, on the local store and on S3 (a moto server).

One ``stageline serve`` for the module (real ``redis-server``, workers on), its artifact
store a private directory, its S3 endpoint the moto server.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from app.api.server import ServeConfig
from app.artifacts import ArtifactSettings
from tests.api_helpers import AKID, SECRET, Stageline, client, run_stageline
from tests.conftest import no_redis
from tests.redis_server import RedisServer, redis_binary
from tests.s3_server import FAKE_KEYS, make_bucket, s3_endpoint
from tests.test_api_e2e import (
    COMMANDS,
    ROLE,
    action_executions,
    retry,
    stage,
    wait_status,
)
from tests.workers.helpers import AS_TEST_USER
from workers.config import WorkerConfig

__all__ = ["s3_endpoint"]

pytestmark = pytest.mark.timeout(120)
PARTITIONS = 4
BUCKET = "data-e2e-artifacts"


@pytest.fixture(scope="module")
def aws_keys() -> Iterator[None]:
    """S3 credentials as a deployment passes them: the standard AWS environment."""
    saved = {k: os.environ.get(k) for k in FAKE_KEYS}
    os.environ.update(FAKE_KEYS)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def artifacts(
    tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str, aws_keys: None
) -> ArtifactSettings:
    settings = ArtifactSettings(
        dir=str(tmp_path_factory.mktemp("artifacts")), s3_endpoint=s3_endpoint
    )
    make_bucket(settings, BUCKET)
    return settings


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, artifacts: ArtifactSettings
) -> Iterator[Stageline]:
    if redis_binary() is None:
        no_redis("the end-to-end tests need the redis-server binary")
    server = RedisServer(tmp_path_factory.mktemp("data-redis"))
    server.start()
    worker = WorkerConfig(
        name="data-e2e",
        block_ms=200,
        shutdown_grace_s=2.0,
        reap_every_s=0.5,
        actions=dataclasses.replace(AS_TEST_USER, artifacts=artifacts),
    )
    cfg = ServeConfig(
        port=0,
        redis_url=server.url,
        credentials={AKID: SECRET},
        partitions=PARTITIONS,
        worker=worker,
        log_level="warning",
    )
    try:
        with run_stageline(cfg) as srv:
            yield srv
    finally:
        server.stop()


@pytest.fixture
def cp(live: Stageline) -> Any:
    return client(live.url)


def q(p: Path) -> str:
    return shlex.quote(str(p))


def build_deploy(name: str, tmp: Path, artifact_store: dict[str, str] | None) -> dict[str, Any]:
    """Build writes dist/app.txt and exports VERSION, then fails while ``build-ok`` is
    missing; Deploy checks what it got and records it, then fails while ``deploy-ok`` is."""
    build = {
        "name": "build",
        "actionTypeId": COMMANDS,
        "namespace": "BuildVariables",
        "outputVariables": ["VERSION"],
        "outputArtifacts": [{"name": "BuildOutput", "files": ["dist/**"]}],
        "commands": [
            "mkdir -p dist",
            'echo "built-$CODEPIPELINE_ACTION_ATTEMPT" > dist/app.txt',
            "echo scratch > not-packed.txt",
            "export VERSION=1.0.$CODEPIPELINE_ACTION_ATTEMPT",
            f"test -f {q(tmp / 'build-ok')}",
        ],
    }
    deploy = {
        "name": "deploy",
        "actionTypeId": COMMANDS,
        "inputArtifacts": [{"name": "BuildOutput"}],
        "environmentVariables": [{"name": "V", "value": "#{BuildVariables.VERSION}"}],
        "configuration": {"Target": "#{variables.TARGET}"},
        "commands": [
            "test ! -e not-packed.txt",
            f'echo "#{{BuildVariables.VERSION}} #{{variables.TARGET}} $V $(cat dist/app.txt)"'
            f" >> {q(tmp / 'deployed')}",
            f"test -f {q(tmp / 'deploy-ok')}",
        ],
    }
    p: dict[str, Any] = {
        "name": name,
        "roleArn": ROLE,
        "pipelineType": "V2",
        "variables": [{"name": "TARGET", "defaultValue": "staging", "description": "where"}],
        "stages": [stage("Build", build), stage("Deploy", deploy)],
    }
    if artifact_store is not None:
        p["artifactStore"] = artifact_store
    return p


@contextmanager
def aws_error(name: str, match: str) -> Iterator[None]:
    """The call raises the AWS error ``name`` (a boto3 ClientError) whose message has
    ``match``."""
    with pytest.raises(ClientError) as info:
        yield
    err = info.value.response["Error"]
    assert err["Code"] == name, err
    assert match in err["Message"], err


def details(cp: Any, name: str, eid: str, action_name: str) -> list[Any]:
    items = [i for i in action_executions(cp, name, eid) if i["actionName"] == action_name]
    return sorted(items, key=lambda i: i["startTime"])


def wait_stage_failed(cp: Any, name: str, eid: str) -> None:
    wait_status(cp, name, eid, "Failed", timeout=30)


def run_build_deploy(cp: Any, name: str, tmp: Path) -> tuple[str, list[Any], list[Any]]:
    eid = cp.start_pipeline_execution(name=name, variables=[{"name": "TARGET", "value": "prod"}])[
        "pipelineExecutionId"
    ]
    wait_stage_failed(cp, name, eid)  # the build failed (no build-ok yet)
    (tmp / "build-ok").touch()
    retry(cp, name, "Build", eid)
    wait_stage_failed(cp, name, eid)  # now the deploy failed (no deploy-ok yet)
    assert (tmp / "deployed").read_text() == "1.0.2 prod 1.0.2 built-2\n"
    (tmp / "deploy-ok").touch()
    retry(cp, name, "Deploy", eid)
    wait_status(cp, name, eid, "Succeeded", timeout=30)
    assert (tmp / "deployed").read_text().splitlines() == ["1.0.2 prod 1.0.2 built-2"] * 2
    return eid, details(cp, name, eid, "build"), details(cp, name, eid, "deploy")


def test_build_deploy_with_retries_on_the_local_store(
    cp: Any, tmp_path: Path, artifacts: ArtifactSettings
) -> None:
    name = "data-local"
    cp.create_pipeline(pipeline=build_deploy(name, tmp_path, None))
    eid, builds, deploys = run_build_deploy(cp, name, tmp_path)
    x = cp.get_pipeline_execution(pipelineName=name, pipelineExecutionId=eid)["pipelineExecution"]
    assert x["variables"] == [{"name": "TARGET", "resolvedValue": "prod"}]

    assert [b["status"] for b in builds] == ["Failed", "Succeeded"]
    assert builds[0]["output"]["outputArtifacts"] == []  # a failed attempt stores nothing
    assert builds[0]["output"].get("outputVariables", {}) == {}
    out = builds[1]["output"]
    assert out["outputVariables"] == {"VERSION": "1.0.2"}
    [art] = out["outputArtifacts"]
    assert art["name"] == "BuildOutput"
    loc = art["s3location"]
    assert loc["bucket"] == "stageline-artifacts"
    assert loc["key"] == f"{name}/{eid}/BuildOutput/{builds[1]['actionExecutionId']}.zip"
    with zipfile.ZipFile(Path(artifacts.root) / loc["bucket"] / loc["key"]) as z:
        assert z.namelist() == ["dist/app.txt"]
        assert z.read("dist/app.txt") == b"built-2\n"

    assert [d["status"] for d in deploys] == ["Failed", "Succeeded"]
    for d in deploys:  # the retried deploy reused the Build stage's artifact
        assert d["input"]["inputArtifacts"] == [{"name": "BuildOutput", "s3location": loc}]
        assert d["input"]["configuration"] == {"Target": "#{variables.TARGET}"}
        assert d["input"]["resolvedConfiguration"] == {"Target": "prod"}


def test_build_deploy_on_s3(cp: Any, tmp_path: Path, artifacts: ArtifactSettings) -> None:
    from app.artifacts.s3 import s3_client

    name = "data-s3"
    cp.create_pipeline(pipeline=build_deploy(name, tmp_path, {"type": "S3", "location": BUCKET}))
    eid, builds, deploys = run_build_deploy(cp, name, tmp_path)
    loc = builds[1]["output"]["outputArtifacts"][0]["s3location"]
    assert loc["bucket"] == BUCKET
    assert deploys[1]["input"]["inputArtifacts"][0]["s3location"] == loc
    listed = s3_client(artifacts).list_objects_v2(Bucket=BUCKET, Prefix=f"{name}/{eid}/")
    assert [o["Key"] for o in listed["Contents"]] == [loc["key"]]
    assert not (Path(artifacts.root) / BUCKET).exists()  # nothing went to the local store


def test_default_variables_and_refused_starts(cp: Any, tmp_path: Path) -> None:
    name = "data-vars"
    p = {
        "name": name,
        "roleArn": ROLE,
        "pipelineType": "V2",
        "variables": [{"name": "A", "defaultValue": "a-default"}, {"name": "B"}],
        "stages": [
            stage(
                "Only",
                {
                    "name": "echo",
                    "actionTypeId": COMMANDS,
                    "commands": [
                        f"echo '#{{variables.A}} #{{variables.B}} "
                        f"#{{codepipeline.PipelineExecutionId}}' > {q(tmp_path / 'out')}"
                    ],
                },
            )
        ],
    }
    cp.create_pipeline(pipeline=p)
    with aws_error("ValidationException", match="B"):
        cp.start_pipeline_execution(name=name)
    with aws_error("ValidationException", match="NOPE"):
        cp.start_pipeline_execution(
            name=name, variables=[{"name": "B", "value": "b"}, {"name": "NOPE", "value": "x"}]
        )
    with aws_error("ValidationException", match="twice"):
        cp.start_pipeline_execution(
            name=name, variables=[{"name": "B", "value": "b"}, {"name": "B", "value": "c"}]
        )
    eid = cp.start_pipeline_execution(name=name, variables=[{"name": "B", "value": "bee"}])[
        "pipelineExecutionId"
    ]
    wait_status(cp, name, eid, "Succeeded", timeout=30)
    assert (tmp_path / "out").read_text() == f"a-default bee {eid}\n"
    x = cp.get_pipeline_execution(pipelineName=name, pipelineExecutionId=eid)["pipelineExecution"]
    assert x["variables"] == [
        {"name": "A", "resolvedValue": "a-default"},
        {"name": "B", "resolvedValue": "bee"},
    ]
    with aws_error("InvalidStructureException", match="duplicate pipeline variable"):
        cp.create_pipeline(
            pipeline={**p, "name": "data-vars-dup", "variables": [{"name": "A"}, {"name": "A"}]}
        )


def test_an_unresolvable_reference_fails_the_action_before_it_runs(cp: Any, tmp_path: Path) -> None:
    name = "data-unresolved"
    marker = tmp_path / "ran"
    cp.create_pipeline(
        pipeline={
            "name": name,
            "roleArn": ROLE,
            "stages": [
                stage(
                    "Only",
                    {
                        "name": "a",
                        "actionTypeId": COMMANDS,
                        "commands": [f"touch {q(marker)}", "echo #{Nowhere.X}"],
                    },
                )
            ],
        }
    )
    eid = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]
    wait_status(cp, name, eid, "Failed", timeout=30)
    [a] = details(cp, name, eid, "a")
    assert a["status"] == "Failed"
    err = a["output"]["executionResult"]["errorDetails"]
    assert err["code"] == "ConfigurationError"
    assert "#{Nowhere.X}" in err["message"]
    assert not marker.exists()


def test_rollback_deploys_the_targets_artifact_and_variables(cp: Any, tmp_path: Path) -> None:
    """RollbackStage(Deploy, first): the rollback execution runs Deploy alone, with the
    artifact and the namespace variable the first execution's Build produced."""
    name = "data-rollback"
    build = {
        "name": "build",
        "actionTypeId": COMMANDS,
        "namespace": "BuildVariables",
        "outputVariables": ["VERSION"],
        "outputArtifacts": [{"name": "BuildOutput", "files": ["dist/**"]}],
        "commands": [
            "mkdir -p dist",
            'echo "built-by-$CODEPIPELINE_PIPELINE_EXECUTION_ID" > dist/app.txt',
            "export VERSION=v-$CODEPIPELINE_PIPELINE_EXECUTION_ID",
        ],
    }
    deploy = {
        "name": "deploy",
        "actionTypeId": COMMANDS,
        "inputArtifacts": [{"name": "BuildOutput"}],
        "commands": [
            f'echo "#{{BuildVariables.VERSION}} $(cat dist/app.txt)" >> {q(tmp_path / "deployed")}'
        ],
    }
    cp.create_pipeline(
        pipeline={
            "name": name,
            "roleArn": ROLE,
            "stages": [stage("Build", build), stage("Deploy", deploy)],
        }
    )
    first = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]
    wait_status(cp, name, first, "Succeeded", timeout=30)
    second = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]
    wait_status(cp, name, second, "Succeeded", timeout=30)
    rid = cp.rollback_stage(pipelineName=name, stageName="Deploy", targetPipelineExecutionId=first)[
        "pipelineExecutionId"
    ]
    wait_status(cp, name, rid, "Succeeded", timeout=30)
    assert (tmp_path / "deployed").read_text().splitlines() == [
        f"v-{first} built-by-{first}",
        f"v-{second} built-by-{second}",
        f"v-{first} built-by-{first}",
    ]
    assert [d["stageName"] for d in action_executions(cp, name, rid)] == ["Deploy"]
