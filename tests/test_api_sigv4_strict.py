"""Strict SigV4: every forged or replayed request of issue 12 is refused with AWS's error.

Requests are signed with botocore's own signer (scoped as each test needs) and sent to the
real app (:func:`app.api.server.make_app`: handlers, engine, the Redis replay cache) through
ASGI calls, or over HTTP to a server for boto3 and aws-cli.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from redis.asyncio import Redis

from app.api.replay import KEY_PREFIX, MemoryReplayCache, RedisReplayCache
from app.api.server import ServeConfig, make_app
from app.api.wire import ASGIApp, RequestContext, build_app
from app.cli import main as cli_main
from app.domain import events as ev
from app.engine import Engine
from app.store.keys import Keys
from tests.api_helpers import AKID, JSON11, SECRET, asgi_call, serve, target

ALICE = "arn:aws:iam::000000000000:user/alice"
DECL: dict[str, Any] = {
    "name": "sig",
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


class _Only(SigV4Auth):  # type: ignore[misc]
    """A correct SigV4 signature over only the named headers (what an attacker would send)."""

    def __init__(self, creds: Credentials, service: str, region: str, only: set[str]) -> None:
        super().__init__(creds, service, region)
        self.only = only

    def headers_to_sign(self, request: Any) -> Any:
        full = super().headers_to_sign(request)
        out = HTTPHeaders()
        for k in full:
            if k in self.only:
                out[k] = full[k]
        return out


def sign(
    op: str,
    body: dict[str, Any] | bytes,
    *,
    service: str = "codepipeline",
    region: str = "us-east-1",
    key: str = AKID,
    secret: str = SECRET,
    only: set[str] | None = None,
    target_prefix: str = "CodePipeline_20150709.",
) -> list[tuple[str, str]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = AWSRequest(
        method="POST",
        url="http://localhost:8080/",
        data=data,
        headers={"X-Amz-Target": target_prefix + op, "Content-Type": JSON11},
    )
    creds = Credentials(key, secret)
    signer = _Only(creds, service, region, only) if only else SigV4Auth(creds, service, region)
    signer.add_auth(req)
    return [("host", "localhost:8080"), *((k, str(v)) for k, v in req.headers.items())]



async def call(
    app: ASGIApp, headers: list[tuple[str, str]], body: dict[str, Any] | bytes
) -> tuple[int, dict[str, str], dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, hdrs, out = await asgi_call(app, "POST", "/", headers, [data])
    return status, hdrs, json.loads(out or b"{}")


def retarget(headers: list[tuple[str, str]], op: str) -> list[tuple[str, str]]:
    return [
        (k, f"CodePipeline_20150709.{op}") if k.lower() == "x-amz-target" else (k, v)
        for k, v in headers
    ]


def refused(
    result: tuple[int, dict[str, str], dict[str, Any]], name: str, status: int, text: str = ""
) -> None:
    code, hdrs, out = result
    assert (code, out.get("__type")) == (status, name), out
    assert hdrs["x-amzn-errortype"] == name
    assert text in out["message"]


@pytest.fixture
async def world(redis: Redis) -> tuple[Engine, ASGIApp]:
    engine = Engine(redis, Keys(partitions=2))
    await engine.start()
    cfg = ServeConfig(partitions=2, credentials={AKID: SECRET}, principals={AKID: "alice"})
    app = make_app(engine, cfg)
    status, _, out = await call(app, sign("CreatePipeline", {"pipeline": DECL}), {"pipeline": DECL})
    assert status == 200, out
    return engine, app


# --- the credential scope ------------------------------------------------------------------


@pytest.mark.parametrize("service", ["s3", "sts", "execute-api", "logs"])
async def test_scope_naming_another_service_is_refused(
    world: tuple[Engine, ASGIApp], service: str
) -> None:
    _, app = world
    body = {"name": "sig"}
    refused(
        await call(app, sign("GetPipeline", body, service=service), body),
        "InvalidSignatureException",
        403,
        "Credential should be scoped to correct service: 'codepipeline'.",
    )


@pytest.mark.parametrize("region", ["xx-fake-9", "eu-west-1", "us-east-2"])
async def test_scope_naming_another_region_is_refused(
    world: tuple[Engine, ASGIApp], region: str
) -> None:
    _, app = world
    body = {"name": "sig"}
    refused(
        await call(app, sign("GetPipeline", body, region=region), body),
        "InvalidSignatureException",
        403,
        f"Credential should be scoped to a valid region, not '{region}'.",
    )


async def test_configured_region_is_the_one_accepted() -> None:
    app = build_app(HANDLERS, credentials={AKID: SECRET}, region="eu-west-1")
    body = {"name": "demo"}
    assert (await call(app, sign("GetPipelineState", body, region="eu-west-1"), body))[0] == 200
    refused(
        await call(app, sign("GetPipelineState", body), body),
        "InvalidSignatureException",
        403,
        "not 'us-east-1'",
    )


async def test_logs_target_wants_a_logs_scope() -> None:
    """A ``Logs_20140328.*`` target must be signed for ``logs``, a CodePipeline one not."""
    app = build_app(HANDLERS, credentials={AKID: SECRET})
    logs = "Logs_20140328."
    refused(
        await call(app, sign("GetLogEvents", b"{}", target_prefix=logs), b"{}"),
        "InvalidSignatureException",
        403,
        "scoped to correct service: 'logs'",
    )
    # correctly scoped, the request passes authentication (this build has no logs API)
    status, _, out = await call(
        app, sign("GetLogEvents", b"{}", service="logs", target_prefix=logs), b"{}"
    )
    assert (status, out["__type"]) == (400, "UnknownOperationException")


# --- what must be signed -------------------------------------------------------------------


async def test_unsigned_target_cannot_be_retargeted(world: tuple[Engine, ASGIApp]) -> None:
    """Issue 12: GetPipeline signed over host;x-amz-date, re-targeted to DeletePipeline."""
    engine, app = world
    body = {"name": "sig"}
    headers = sign("GetPipeline", body, only={"host", "x-amz-date"})
    assert "SignedHeaders=host;x-amz-date," in dict(headers)["Authorization"]
    for hdrs in (headers, retarget(headers, "DeletePipeline")):
        refused(
            await call(app, hdrs, body),
            "InvalidSignatureException",
            403,
            "'x-amz-target' must be a 'SignedHeader'",
        )
    assert (await engine.pipeline("sig")).name == "sig"  # not deleted
    # and with the target signed, changing it breaks the signature
    signed = sign("GetPipeline", body)
    refused(
        await call(app, retarget(signed, "DeletePipeline"), body),
        "InvalidSignatureException",
        403,
        "does not match the signature you provided",
    )
    assert (await engine.pipeline("sig")).name == "sig"


@pytest.mark.parametrize(
    ("only", "missing"),
    [
        ({"x-amz-date", "x-amz-target", "content-type"}, "host"),
        ({"host", "x-amz-target", "content-type"}, "x-amz-date"),
        ({"host", "x-amz-date", "x-amz-target"}, "content-type"),
    ],
)
async def test_required_headers_must_be_signed(
    world: tuple[Engine, ASGIApp], only: set[str], missing: str
) -> None:
    _, app = world
    body = {"name": "sig"}
    refused(
        await call(app, sign("GetPipeline", body, only=only), body),
        "InvalidSignatureException",
        403,
        f"'{missing}' must be a 'SignedHeader'",
    )


async def test_payload_is_checked(world: tuple[Engine, ASGIApp]) -> None:
    _, app = world
    headers = sign("StartPipelineExecution", {"name": "sig"})
    refused(
        await call(app, headers, {"name": "other"}),
        "InvalidSignatureException",
        403,
        "does not match",
    )
    bad_hash = [*headers, ("x-amz-content-sha256", "0" * 64)]
    refused(
        await call(app, bad_hash, {"name": "sig"}),
        "InvalidSignatureException",
        403,
        "x-amz-content-sha256",
    )


@pytest.mark.parametrize(
    ("authorization", "text"),
    [
        ("Basic abc", "AWS4-HMAC-SHA256"),
        ("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/codepipeline/aws4_request",
         "requires 'Signature' parameter"),
        ("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/x, SignedHeaders=host, Signature=" + "0" * 64,
         "Credential must have the form"),
        ("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/codepipeline/aws4_request,"
         " SignedHeaders=host, Signature=00", "64 hexadecimal"),
    ],
)  # fmt: skip
async def test_malformed_authorization_is_incomplete(
    world: tuple[Engine, ASGIApp], authorization: str, text: str
) -> None:
    _, app = world
    headers = [*target("GetPipeline").items(), ("host", "h"), ("authorization", authorization)]
    refused(await call(app, headers, b"{}"), "IncompleteSignatureException", 400, text)


async def test_unknown_key_and_no_authorization(world: tuple[Engine, ASGIApp]) -> None:
    _, app = world
    body = {"name": "sig"}
    refused(
        await call(app, sign("GetPipeline", body, key="AKIA-THE-CFO"), body),
        "UnrecognizedClientException",
        403,
        "The security token included in the request is invalid.",
    )
    refused(
        await call(app, [*target("GetPipeline").items(), ("host", "h")], body),
        "UnrecognizedClientException",
        403,
    )


# --- the clock -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "text"),
    [
        (14 * 60, "Signature expired"),  # the request is 14 minutes old
        (-14 * 60, "Signature not yet current"),  # ... or 14 minutes in the future
        (5 * 60 + 2, "Signature expired"),
        (-(5 * 60 + 2), "Signature not yet current"),
    ],
)
async def test_stale_and_future_dates_are_refused(offset: int, text: str) -> None:
    app = build_app(HANDLERS, credentials={AKID: SECRET}, clock=lambda: time.time() + offset)
    body = {"name": "demo"}
    result = await call(app, sign("GetPipelineState", body), body)
    refused(result, "InvalidSignatureException", 403, text)
    assert "5 min." in result[2]["message"]


@pytest.mark.parametrize("offset", [-240, 0, 240])
async def test_dates_within_the_window_pass(offset: int) -> None:
    app = build_app(HANDLERS, credentials={AKID: SECRET}, clock=lambda: time.time() + offset)
    body = {"name": "demo"}
    assert (await call(app, sign("GetPipelineState", body), body))[0] == 200


async def test_max_clock_skew_is_configurable() -> None:
    wide = build_app(
        HANDLERS, credentials={AKID: SECRET}, max_clock_skew=1800, clock=lambda: time.time() + 840
    )
    body = {"name": "demo"}
    assert (await call(wide, sign("GetPipelineState", body), body))[0] == 200
    narrow = build_app(
        HANDLERS, credentials={AKID: SECRET}, max_clock_skew=30, clock=lambda: time.time() + 60
    )
    result = await call(narrow, sign("GetPipelineState", body), body)
    refused(result, "InvalidSignatureException", 403, "(")
    assert "- 30 s.)" in result[2]["message"]


# --- replays -------------------------------------------------------------------------------


async def test_replay_with_another_invocation_id_is_refused(
    world: tuple[Engine, ASGIApp], redis: Redis
) -> None:
    """Issue 12: one signed StartPipelineExecution replayed with new invocation ids."""
    engine, app = world
    body = {"name": "sig"}  # signed by hand, without the token the SDKs fill in
    headers = sign("StartPipelineExecution", body)
    first = await call(app, [*headers, ("amz-sdk-invocation-id", "inv-1")], body)
    assert first[0] == 200, first
    for other in ("inv-2", "inv-3", None):
        extra = [("amz-sdk-invocation-id", other)] if other else []
        refused(
            await call(app, [*headers, *extra], body),
            "InvalidSignatureException",
            403,
            "Signature already used",
        )
    assert len((await engine.pipeline("sig")).executions) == 1
    signature = dict(headers)["Authorization"].rsplit("Signature=", 1)[1]
    ttl = await redis.pttl(KEY_PREFIX + signature)
    assert 300_000 <= ttl <= 302_000  # until the signature's date leaves the window


async def test_same_sdk_call_again_is_its_first_answer(world: tuple[Engine, ASGIApp]) -> None:
    """A same-second SDK retry has the same signature and invocation id: one execution."""
    engine, app = world
    body = {"name": "sig", "clientRequestToken": "tok-2"}
    headers = [*sign("StartPipelineExecution", body), ("amz-sdk-invocation-id", "inv-9")]
    s1, _, first = await call(app, headers, body)
    s2, _, again = await call(app, headers, body)
    assert (s1, s2) == (200, 200)
    assert first == again
    assert len((await engine.pipeline("sig")).executions) == 1


async def test_replayed_start_with_a_token_is_the_first_execution(
    world: tuple[Engine, ASGIApp],
) -> None:
    """With a signed clientRequestToken a repeat is AWS's idempotent retry: same execution.

    (boto3 and aws-cli always send one; two identical calls within one second carry the
    same signature, and AWS answers the second with the first's execution.)
    """
    engine, app = world
    body = {"name": "sig", "clientRequestToken": "tok-same"}
    headers = sign("StartPipelineExecution", body)
    answers = [
        await call(app, [*headers, ("amz-sdk-invocation-id", inv)], body)
        for inv in ("a", "b", "c")
    ]
    assert {a[0] for a in answers} == {200}
    assert len({a[2]["pipelineExecutionId"] for a in answers}) == 1
    assert len((await engine.pipeline("sig")).executions) == 1


async def test_read_only_operations_may_repeat(world: tuple[Engine, ASGIApp]) -> None:
    _, app = world
    body = {"name": "sig"}
    headers = sign("GetPipelineState", body)
    for inv in ("a", "b", "c"):
        assert (await call(app, [*headers, ("amz-sdk-invocation-id", inv)], body))[0] == 200


async def test_a_refused_request_does_not_burn_its_signature(
    world: tuple[Engine, ASGIApp],
) -> None:
    """Only accepted signatures are remembered: the wrong-key attempt leaves no trace."""
    engine, app = world
    body = {"name": "sig", "clientRequestToken": "tok-3"}
    headers = sign("StartPipelineExecution", body)
    refused(await call(app, headers, {"name": "tampered"}), "InvalidSignatureException", 403)
    assert (await call(app, headers, body))[0] == 200
    assert len((await engine.pipeline("sig")).executions) == 1


async def test_memory_replay_cache_forgets_after_the_window() -> None:
    now = [1000.0]
    cache = MemoryReplayCache(clock=lambda: now[0])
    assert await cache.use("s1", "i1", 10) == "new"
    assert await cache.use("s1", "i2", 10) == "replay"
    assert await cache.use("s1", None, 10) == "replay"
    assert await cache.use("s1", "i1", 10) == "repeat"  # the same call again
    now[0] += 11
    assert await cache.use("s1", "i2", 10) == "new"
    assert len(cache) == 1
    await cache.release("s1", "other")  # only the call that recorded it may release it
    assert await cache.use("s1", "i3", 10) == "replay"
    await cache.release("s1", "i2")
    assert await cache.use("s1", "i3", 10) == "new"


async def test_redis_replay_cache(redis: Redis) -> None:
    cache = RedisReplayCache(redis)
    assert await cache.use("sig-a", None, 5) == "new"
    assert await cache.use("sig-a", None, 5) == "replay"  # no invocation id: never a repeat
    assert await cache.use("sig-b", "i", 5) == "new"
    assert await cache.use("sig-b", "i", 5) == "repeat"
    assert await cache.use("sig-b", "j", 5) == "replay"
    await redis.delete(KEY_PREFIX + "sig-a")  # as if expired
    assert await cache.use("sig-a", "k", 5) == "new"
    await cache.release("sig-a", "x")
    assert await cache.use("sig-a", "y", 5) == "replay"
    await cache.release("sig-a", "k")
    assert await redis.exists(KEY_PREFIX + "sig-a") == 0


async def test_a_refused_call_may_be_repeated(world: tuple[Engine, ASGIApp]) -> None:
    """A 4xx answer records nothing, so the same signed call is not a replay afterwards."""
    _, app = world
    body = {
        "pipelineName": "sig",
        "stageName": "Build",
        "pipelineExecutionId": "0f4a1b2c-3d4e-4f50-8a6b-7c8d9e0f1a2b",
        "retryMode": "FAILED_ACTIONS",
    }
    headers = sign("RetryStageExecution", body)
    for inv in ("x-1", "x-2"):
        status, _, out = await call(app, [*headers, ("amz-sdk-invocation-id", inv)], body)
        assert (status, out["__type"]) == (400, "PipelineExecutionNotFoundException"), out


# --- who is recorded -----------------------------------------------------------------------


async def test_principal_arn_is_the_actor_everywhere(world: tuple[Engine, ASGIApp]) -> None:
    engine, app = world
    body = {"name": "sig", "clientRequestToken": "tok-4"}
    status, _, out = await call(app, sign("StartPipelineExecution", body), body)
    assert status == 200
    eid = out["pipelineExecutionId"]
    listed = {"pipelineName": "sig"}
    status, _, page = await call(app, sign("ListPipelineExecutions", listed), listed)
    [summary] = [
        x for x in page["pipelineExecutionSummaries"] if x["pipelineExecutionId"] == eid
    ]
    assert summary["trigger"]["triggerDetail"] == ALICE
    actors = {e.actor for e in await engine.store.read("sig")}
    assert actors == {ALICE}


async def test_auth_off_records_anonymous_whatever_is_claimed(redis: Redis) -> None:
    """Issue 12: ``Credential=AKIA-THE-CFO/..., Signature=00`` must not become the actor."""
    engine = Engine(redis, Keys(partitions=2))
    await engine.start()
    app = make_app(engine, ServeConfig(partitions=2))
    cfo = (
        "AWS4-HMAC-SHA256 Credential=AKIA-THE-CFO/20260101/us-east-1/codepipeline/aws4_request,"
        " SignedHeaders=host, Signature=00"
    )
    for op, body in (
        ("CreatePipeline", {"pipeline": DECL}),
        ("StartPipelineExecution", {"name": "sig"}),
    ):
        headers = [*target(op).items(), ("authorization", cfo)]
        assert (await call(app, headers, body))[0] == 200
    events = await engine.store.read("sig")
    assert {e.actor for e in events} == {"anonymous"}
    assert not any("CFO" in json.dumps(e.event, default=str) for e in events)
    started = [e.event for e in events if isinstance(e.event, ev.ExecutionStarted)]
    assert started


# --- boto3 and aws-cli with the right keys and region ----------------------------------------

seen: list[RequestContext] = []


async def _state(req: Any, ctx: RequestContext) -> dict[str, Any]:
    seen.append(ctx)
    return {"pipelineName": ctx.actor, "stageStates": []}


async def _retry(req: Any, ctx: RequestContext) -> dict[str, Any]:
    seen.append(ctx)
    return {"pipelineExecutionId": req.pipelineExecutionId}


HANDLERS: dict[str, Any] = {"GetPipelineState": _state, "RetryStageExecution": _retry}


@pytest.fixture(scope="module")
def eu_url() -> Iterator[str]:
    app = build_app(
        HANDLERS,
        credentials={AKID: SECRET, "AKIDBOB": "bobsecret"},
        principals={AKID: ALICE},
        region="eu-west-1",
    )
    with serve(app) as url:
        yield url


def boto(url: str, region: str, key: str = AKID, secret: str = SECRET) -> Any:
    import boto3
    import botocore.config

    return boto3.client(
        "codepipeline",
        endpoint_url=url,
        region_name=region,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=botocore.config.Config(retries={"total_max_attempts": 1}),
    )


RETRY = {
    "pipelineName": "demo",
    "stageName": "Build",
    "pipelineExecutionId": "0f4a1b2c-3d4e-4f50-8a6b-7c8d9e0f1a2b",
    "retryMode": "FAILED_ACTIONS",
}


def test_boto3_with_the_right_keys_and_region(eu_url: str) -> None:
    cp = boto(eu_url, "eu-west-1")
    assert cp.get_pipeline_state(name="demo")["pipelineName"] == ALICE
    for stage in ("Build", "Test", "Deploy"):  # mutating calls in a row, none a "replay"
        out = cp.retry_stage_execution(**{**RETRY, "stageName": stage})
        assert out["pipelineExecutionId"] == RETRY["pipelineExecutionId"]
    bob = boto(eu_url, "eu-west-1", "AKIDBOB", "bobsecret")
    assert bob.get_pipeline_state(name="demo")["pipelineName"] == (
        "arn:aws:iam::000000000000:user/AKIDBOB"
    )
    with pytest.raises(ClientError) as ei:
        boto(eu_url, "us-east-1").get_pipeline_state(name="demo")
    err = ei.value.response["Error"]
    assert err["Code"] == "InvalidSignatureException"
    assert err["Message"].startswith("Credential should be scoped to a valid region, not ")
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


@pytest.mark.skipif(shutil.which("aws") is None, reason="aws-cli not installed")
def test_aws_cli_with_the_right_keys_and_region(eu_url: str, tmp_path: Path) -> None:
    def aws(region: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": AKID,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": region,
            "AWS_CONFIG_FILE": str(tmp_path / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"),
            "AWS_MAX_ATTEMPTS": "1",
        }
        return subprocess.run(
            ["aws", "codepipeline", "get-pipeline-state", "--endpoint-url", eu_url,
             "--output", "json", "--name", "demo"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    ok = aws("eu-west-1")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["pipelineName"] == ALICE
    bad = aws("us-east-1")
    assert bad.returncode != 0
    assert "InvalidSignatureException" in bad.stderr and "valid region" in bad.stderr


# --- the command line ----------------------------------------------------------------------


def test_cli_keys_names_region_and_skew(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seen_cfg: list[ServeConfig] = []

    async def fake_serve(cfg: ServeConfig, **_: Any) -> None:
        seen_cfg.append(cfg)

    monkeypatch.setattr("app.api.server.serve", fake_serve)
    monkeypatch.delenv("STAGELINE_ACCESS_KEYS", raising=False)
    monkeypatch.delenv("STAGELINE_ACCESS_KEYS_FILE", raising=False)
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nAKIDFILE:filesecret:deployer\n\nAKIDNONAME:s2\n")
    argv = [
        "serve", "--access-key", "AKID1:s1:alice", "--access-keys-file", str(keys),
        "--region", "eu-central-1", "--max-clock-skew", "120", "--account-id", "123456789012",
    ]  # fmt: skip
    assert cli_main(argv) == 0
    [cfg] = seen_cfg
    assert cfg.credentials == {"AKID1": "s1", "AKIDFILE": "filesecret", "AKIDNONAME": "s2"}
    assert cfg.principals == {"AKID1": "alice", "AKIDFILE": "deployer"}
    assert (cfg.region, cfg.max_clock_skew_s, cfg.account_id) == (
        "eu-central-1",
        120.0,
        "123456789012",
    )
    for bad, text in (
        (["--access-key", "NOSECRET"], "expected ACCESS_KEY_ID:SECRET[:NAME]"),
        (["--access-key", "A:s:bad name"], "may only use letters"),
        (["--access-keys-file", str(tmp_path / "missing")], "No such file"),
        (["--max-clock-skew", "0"], "must be positive"),
    ):
        assert cli_main(["serve", *bad]) == 2
        err = capsys.readouterr().err
        assert text in err and "Traceback" not in err and "s1" not in err
