"""SDK retries are idempotent: the same ``amz-sdk-invocation-id`` is the same command.

botocore sends one invocation id per call and repeats it on every retry of that call, so a
request whose reply was lost and that the SDK sends again must not start a second execution
or turn into a ConflictException; it gets the first attempt's answer.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from redis.asyncio import Redis

from app.api.server import ServeConfig, make_app
from app.api.wire import ASGIApp
from app.domain import commands as c
from app.domain import events as ev
from app.engine import Engine
from app.store.keys import Keys
from tests.api_helpers import asgi_call

DECL: dict[str, Any] = {
    "name": "idem",
    "roleArn": "arn:aws:iam::123456789012:role/x",
    "executionMode": "PARALLEL",
    "stages": [
        {
            "name": "Build",
            "actions": [
                {
                    "name": "a",
                    "actionTypeId": {
                        "category": "Build",
                        "owner": "ThirdParty",  # a job action needing no custom type
                        "provider": "X",
                        "version": "1",
                    },
                }
            ],
        }
    ],
}


async def post(
    app: ASGIApp, op: str, body: dict[str, Any], *, invocation: str | None, key: str = "AKID1"
) -> tuple[int, dict[str, Any]]:
    headers = [
        ("x-amz-target", f"CodePipeline_20150709.{op}"),
        ("content-type", "application/x-amz-json-1.1"),
        (
            "authorization",
            f"AWS4-HMAC-SHA256 Credential={key}/20260101/us-east-1/codepipeline/aws4_request, "
            "SignedHeaders=host, Signature=00",
        ),
    ]
    if invocation is not None:
        headers.append(("amz-sdk-invocation-id", invocation))
    status, _, out = await asgi_call(app, "POST", "/", headers, [json.dumps(body).encode()])
    return status, json.loads(out or b"{}")


@pytest.fixture
async def world(redis: Redis) -> tuple[Engine, ASGIApp]:
    engine = Engine(redis, Keys(partitions=2))
    await engine.start()
    return engine, make_app(engine, ServeConfig(partitions=2))


async def test_repeated_start_is_one_execution(world: tuple[Engine, ASGIApp]) -> None:
    engine, app = world
    assert (await post(app, "CreatePipeline", {"pipeline": DECL}, invocation="c-1"))[0] == 200
    s1, first = await post(app, "StartPipelineExecution", {"name": "idem"}, invocation="i-1")
    s2, again = await post(app, "StartPipelineExecution", {"name": "idem"}, invocation="i-1")
    assert s1 == s2 == 200
    assert first["pipelineExecutionId"] == again["pipelineExecutionId"]
    state = await engine.full_state("idem")
    assert len(state.executions) == 1
    # a new call (new invocation id) is a new command; so is the same id from another caller
    _, other = await post(app, "StartPipelineExecution", {"name": "idem"}, invocation="i-2")
    _, theirs = await post(
        app, "StartPipelineExecution", {"name": "idem"}, invocation="i-1", key="AKID2"
    )
    ids = {
        first["pipelineExecutionId"],
        other["pipelineExecutionId"],
        theirs["pipelineExecutionId"],
    }
    assert len(ids) == 3
    assert len((await engine.full_state("idem")).executions) == 3


async def test_repeated_retry_is_accepted_once(world: tuple[Engine, ASGIApp]) -> None:
    engine, app = world
    await post(app, "CreatePipeline", {"pipeline": DECL}, invocation=None)
    _, started = await post(app, "StartPipelineExecution", {"name": "idem"}, invocation=None)
    eid = started["pipelineExecutionId"]
    x = (await engine.full_state("idem")).executions[eid]
    (aid,) = x.actions
    await engine.repo.execute(
        "idem",
        c.CompleteAction(executionId=eid, actionExecutionId=aid, succeeded=False, errorCode="E"),
    )
    retry = {
        "pipelineName": "idem",
        "stageName": "Build",
        "pipelineExecutionId": eid,
        "retryMode": "FAILED_ACTIONS",
    }
    s1, r1 = await post(app, "RetryStageExecution", retry, invocation="r-1")
    s2, r2 = await post(app, "RetryStageExecution", retry, invocation="r-1")
    assert (s1, s2) == (200, 200)
    assert r1 == r2 == {"pipelineExecutionId": eid}
    requested = [
        e for e in await engine.store.read("idem") if isinstance(e.event, ev.StageRetryRequested)
    ]
    assert len(requested) == 1
    # a different call while the first is still pending: check 7
    s3, r3 = await post(app, "RetryStageExecution", retry, invocation="r-2")
    assert s3 == 409 and r3["__type"] == "ConflictException"
    # and without an invocation id there is no idempotency key at all
    s4, r4 = await post(app, "RetryStageExecution", retry, invocation=None)
    assert s4 == 409 and r4["__type"] == "ConflictException"
