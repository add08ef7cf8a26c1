"""Create-time validation of action types: what nothing could run is refused, naming it."""

from __future__ import annotations

import copy
import json
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from app.api.server import ServeConfig, make_app
from app.api.wire import ASGIApp
from app.domain.model import PipelineDeclaration, action_type_problems
from app.engine import Engine
from app.store.keys import Keys
from tests.api_helpers import asgi_call


def _type(category: str, owner: str, provider: str, version: str = "1") -> dict[str, str]:
    return {"category": category, "owner": owner, "provider": provider, "version": version}


SOURCE_CONFIG = {
    "S3": {"S3Bucket": "b", "S3ObjectKey": "k.zip"},
    "CodeStarSourceConnection": {"FullRepositoryId": "team/app", "BranchName": "main"},
    "CodeCommit": {"RepositoryName": "app", "BranchName": "main"},
}


def _decl(*types: dict[str, str], name: str = "types") -> dict[str, Any]:
    actions: list[dict[str, Any]] = []
    for i, t in enumerate(types):
        a: dict[str, Any] = {"name": f"a{i}", "actionTypeId": t}
        if t["provider"] == "Commands":
            a["commands"] = ["true"]
        if t["provider"] in SOURCE_CONFIG:  # what a source action needs (docs/pipelines.md)
            a["configuration"] = SOURCE_CONFIG[t["provider"]]
            a["outputArtifacts"] = [{"name": f"out{i}"}]
        actions.append(a)
    return {
        "name": name,
        "roleArn": "arn:aws:iam::123456789012:role/x",
        "stages": [{"name": "Build", "actions": actions}],
    }


RUNNABLE = [
    _type("Compute", "AWS", "Commands"),
    _type("Approval", "AWS", "Manual"),
    _type("Build", "Custom", "MyBuilder"),
    _type("Deploy", "ThirdParty", "Anything", "7"),
    _type("Source", "AWS", "S3"),  # source actions the engine runs (docs/pipelines.md)
    _type("Source", "AWS", "CodeStarSourceConnection"),
    _type("Source", "AWS", "CodeCommit"),
]
UNRUNNABLE = [
    _type("Compute", "AWS", "Comands"),  # the typo from the issue
    _type("Deploy", "AWS", "CodeDeploy"),
    _type("Compute", "AWS", "Commands", "2"),
    _type("Build", "AWS", "Commands"),  # right provider, wrong category
    _type("Approval", "AWS", "Manual", "2"),
    _type("Source", "AWS", "ECR"),
    _type("Source", "AWS", "S3", "2"),
    _type("Build", "AWS", "S3"),  # a source provider in another category
]


def test_pure_check_names_each_unrunnable_action() -> None:
    ok = msgspec.convert(_decl(*RUNNABLE), PipelineDeclaration)
    assert action_type_problems(ok) == []
    bad = msgspec.convert(_decl(*RUNNABLE, *UNRUNNABLE), PipelineDeclaration)
    problems = action_type_problems(bad)
    assert len(problems) == len(UNRUNNABLE)
    for i, problem in enumerate(problems, start=len(RUNNABLE)):
        assert f"action 'a{i}' in stage 'Build'" in problem


async def _post(app: ASGIApp, op: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    headers = [
        ("x-amz-target", f"CodePipeline_20150709.{op}"),
        ("content-type", "application/x-amz-json-1.1"),
    ]
    status, _, out = await asgi_call(app, "POST", "/", headers, [json.dumps(body).encode()])
    return status, json.loads(out or b"{}")


@pytest.fixture
async def app(redis: Redis) -> ASGIApp:
    engine = Engine(redis, Keys(partitions=2))
    await engine.start()
    return make_app(engine, ServeConfig(partitions=2))


@pytest.mark.parametrize("bad", UNRUNNABLE, ids=lambda t: "/".join(t.values()))
async def test_create_refuses_unrunnable_type(app: ASGIApp, bad: dict[str, str]) -> None:
    status, body = await _post(app, "CreatePipeline", {"pipeline": _decl(RUNNABLE[0], bad)})
    assert status == 400
    assert body["__type"] == "InvalidActionDeclarationException"
    assert "action 'a1' in stage 'Build'" in body["message"]
    assert f"Provider: '{bad['provider']}'" in body["message"]
    status, _ = await _post(app, "GetPipeline", {"name": "types"})
    assert status == 400  # nothing was created


async def test_update_refuses_unrunnable_type_and_keeps_the_pipeline(app: ASGIApp) -> None:
    # a Custom action's type must exist first (as in AWS: CreateCustomActionType)
    status, _ = await _post(
        app,
        "CreateCustomActionType",
        {
            "category": "Build",
            "provider": "MyBuilder",
            "version": "1",
            "inputArtifactDetails": {"minimumCount": 0, "maximumCount": 5},
            "outputArtifactDetails": {"minimumCount": 0, "maximumCount": 5},
        },
    )
    assert status == 200
    status, _ = await _post(app, "CreatePipeline", {"pipeline": _decl(*RUNNABLE)})
    assert status == 200
    decl = _decl(*RUNNABLE, _type("Deploy", "AWS", "CodeDeploy"))
    status, body = await _post(app, "UpdatePipeline", {"pipeline": copy.deepcopy(decl)})
    assert status == 400
    assert body["__type"] == "InvalidActionDeclarationException"
    assert f"action 'a{len(RUNNABLE)}'" in body["message"]
    status, got = await _post(app, "GetPipeline", {"name": "types"})
    assert status == 200 and got["metadata"] and got["pipeline"]["version"] == 1
