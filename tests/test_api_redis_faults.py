"""Redis faults in the API: full and unreachable Redis answer 503 with the cause (issue 12).

Before: ``500 InternalFailure "internal error processing StartPipelineExecution"`` for both.
Now ``503 ServiceUnavailableException`` with ``event store is out of memory`` or ``event store
unreachable`` (botocore retries a 503 by itself). Private ``redis-server`` processes: one
with ``maxmemory`` set tiny, one killed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis
from redis import exceptions as rx

from app.api.server import ServeConfig
from app.api.wire import STORE_OUT_OF_MEMORY, STORE_UNREACHABLE, build_app
from tests.api_helpers import AKID, SECRET, asgi_call, client, raw, run_stageline, target, wait_for

pytestmark = [pytest.mark.redis_real, pytest.mark.timeout(120)]

ROLE = "arn:aws:iam::123456789012:role/faults"


def declaration(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "roleArn": ROLE,
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


def create(url: str, name: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    body = json.dumps({"pipeline": declaration(name)}).encode()
    return raw(url, body=body, headers=target("CreatePipeline"))


def unavailable(result: tuple[int, dict[str, str], dict[str, Any]], message: str) -> None:
    status, headers, body = result
    assert (status, body) == (503, {"__type": "ServiceUnavailableException", "message": message})
    assert headers["x-amzn-errortype"] == "ServiceUnavailableException"


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (rx.OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'."),
         STORE_OUT_OF_MEMORY),
        (rx.ResponseError("Error running script (call to f_x): @user_script:1: OOM command not "
                          "allowed when used memory > 'maxmemory'."), STORE_OUT_OF_MEMORY),
        (rx.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused."),
         STORE_UNREACHABLE),
        (rx.TimeoutError("Timeout reading from socket"), STORE_UNREACHABLE),
        (rx.BusyLoadingError("Redis is loading the dataset in memory"), STORE_UNREACHABLE),
    ],
)  # fmt: skip
async def test_redis_exceptions_map_to_503(exc: Exception, message: str) -> None:
    async def failing(req: Any, ctx: Any) -> dict[str, Any]:
        raise exc

    app = build_app({"ListPipelines": failing})
    headers = list(target("ListPipelines").items())
    status, hdrs, out = await asgi_call(app, "POST", "/", headers, [b"{}"])
    assert (status, json.loads(out)) == (
        503,
        {"__type": "ServiceUnavailableException", "message": message},
    )
    assert hdrs["x-amzn-errortype"] == "ServiceUnavailableException"


async def test_other_errors_stay_internal_failures() -> None:
    async def failing(req: Any, ctx: Any) -> dict[str, Any]:
        raise rx.ResponseError("WRONGTYPE Operation against a key holding the wrong kind")

    app = build_app({"ListPipelines": failing})
    headers = list(target("ListPipelines").items())
    status, _, out = await asgi_call(app, "POST", "/", headers, [b"{}"])
    assert (status, json.loads(out)["__type"]) == (500, "InternalFailure")


def test_full_redis_answers_503_out_of_memory(redis_factory: Any, tmp_path: Path) -> None:
    server = redis_factory(tmp_path / "redis")
    server.start()
    cfg = ServeConfig(port=0, redis_url=server.url, workers=False, log_level="critical")
    with run_stageline(cfg) as srv:
        assert create(srv.url, "before")[0] == 200
        admin = redis.Redis.from_url(server.url)
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")
        try:
            unavailable(create(srv.url, "during"), STORE_OUT_OF_MEMORY)
            cp = client(srv.url)
            with pytest.raises(cp.exceptions.ClientError) as ei:
                cp.start_pipeline_execution(name="before")
            err = ei.value.response
            assert err["Error"] == {
                "Code": "ServiceUnavailableException",
                "Message": STORE_OUT_OF_MEMORY,
            }
            assert err["ResponseMetadata"]["HTTPStatusCode"] == 503
            # reads still work while Redis is full
            assert cp.get_pipeline(name="before")["pipeline"]["name"] == "before"
        finally:
            admin.config_set("maxmemory", "0")
            admin.close()
        assert create(srv.url, "after")[0] == 200


def test_unreachable_redis_answers_503_unreachable(redis_factory: Any, tmp_path: Path) -> None:
    server = redis_factory(tmp_path / "redis")
    server.start()
    cfg = ServeConfig(
        port=0,
        redis_url=server.url,
        workers=False,
        log_level="critical",
        credentials={AKID: SECRET},  # the replay cache is in Redis too
    )
    with run_stageline(cfg) as srv:
        cp = client(srv.url)
        cp.create_pipeline(pipeline=declaration("p"))
        server.kill()
        for call in (
            lambda: cp.start_pipeline_execution(name="p"),
            lambda: cp.get_pipeline(name="p"),
            lambda: cp.create_pipeline(pipeline=declaration("q")),
        ):
            with pytest.raises(cp.exceptions.ClientError) as ei:
                call()
            assert ei.value.response["Error"] == {
                "Code": "ServiceUnavailableException",
                "Message": STORE_UNREACHABLE,
            }
        assert raw(srv.url, "GET", "/health")[0] == 503
        server.start()
        wait_for(lambda: raw(srv.url, "GET", "/health")[0] == 200, what="Redis to be back")
        assert cp.get_pipeline(name="p")["pipeline"]["name"] == "p"


def test_botocore_retries_the_503_by_itself(redis_factory: Any, tmp_path: Path) -> None:
    """With retries on (the default), an outage that ends is invisible to a boto3 caller."""
    import boto3

    server = redis_factory(tmp_path / "redis")
    server.start()
    cfg = ServeConfig(port=0, redis_url=server.url, workers=False, log_level="critical")
    with run_stageline(cfg) as srv:
        cp = boto3.client(
            "codepipeline",
            endpoint_url=srv.url,
            region_name="us-east-1",
            aws_access_key_id="k",
            aws_secret_access_key="s",
        )
        cp.create_pipeline(pipeline=declaration("r"))
        admin = redis.Redis.from_url(server.url)
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")
        seen: list[int] = []

        def free_on_first_503(response: Any = None, **_: Any) -> None:
            if response is not None and response[0] is not None:
                seen.append(response[0].status_code)
                if response[0].status_code == 503:
                    admin.config_set("maxmemory", "0")  # the outage ends

        event = "needs-retry.codepipeline.StartPipelineExecution"
        cp.meta.events.register(event, free_on_first_503)
        try:
            out = cp.start_pipeline_execution(name="r")
        finally:
            admin.config_set("maxmemory", "0")
            admin.close()
        assert seen == [503, 200]
        assert out["ResponseMetadata"]["RetryAttempts"] == 1
        assert out["pipelineExecutionId"]


def test_paused_redis_answers_503_unreachable(redis_factory: Any, tmp_path: Path) -> None:
    """Redis frozen (SIGSTOP): a call gives up after the socket timeout with a 503 naming the
    cause instead of hanging; answers are normal again once Redis resumes (issue 12). The
    URL's ``socket_timeout`` (default 10 s, app/store/connection.py) keeps the test short."""
    import os
    import signal

    server = redis_factory(tmp_path / "redis")
    server.start()
    cfg = ServeConfig(
        port=0,
        redis_url=server.url + "?socket_timeout=1.5",
        workers=False,
        log_level="critical",
    )
    with run_stageline(cfg) as srv:
        cp = client(srv.url)
        cp.create_pipeline(pipeline=declaration("p"))
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(cp.exceptions.ClientError) as ei:
                cp.start_pipeline_execution(name="p")
            assert ei.value.response["Error"] == {
                "Code": "ServiceUnavailableException",
                "Message": STORE_UNREACHABLE,
            }
            assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        wait_for(lambda: raw(srv.url, "GET", "/health")[0] == 200, what="Redis to be back")
        assert cp.start_pipeline_execution(name="p")["pipelineExecutionId"]
