"""The JSON 1.1 wire protocol, driven by a real boto3 client, raw HTTP and direct ASGI calls."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import botocore.session
import msgspec
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.api import shapes
from app.api.shapes import (
    OPERATIONS,
    CreatePipelineInput,
    GetPipelineStateInput,
    ListPipelinesInput,
    PutJobSuccessResultInput,
    RetryStageExecutionInput,
)
from app.api.sigv4 import Headers, parse_authorization, verify_sigv4
from app.api.wire import (
    DRAIN_LIMIT,
    TARGET_PREFIX,
    AwsError,
    Handler,
    RequestContext,
    build_app,
    validation_message,
)
from tests.api_helpers import (
    AKID,
    JSON11,
    SECRET,
    asgi_call,
    assert_aws_error,
    check_response,
    client,
    json_values,
    raw,
    serve,
    shaped_objects,
    target,
)

EXEC_ID = "0f4a1b2c-3d4e-4f50-8a6b-7c8d9e0f1a2b"
ACTOR = f"arn:aws:iam::000000000000:user/{AKID}"


# --- dummy handlers -----------------------------------------------------------------------

seen: list[tuple[Any, RequestContext]] = []


async def retry_stage(req: RetryStageExecutionInput, ctx: RequestContext) -> dict[str, Any]:
    seen.append((req, ctx))
    if req.stageName == "NotRetryable":
        raise AwsError("StageNotRetryableException", "stage NotRetryable has no failed action")
    if req.stageName == "Busy":
        raise AwsError("ConflictException", "a retry of Busy is already in progress")
    if req.stageName == "Boom":
        raise RuntimeError("secret internal detail")
    return {"pipelineExecutionId": req.pipelineExecutionId}


async def pipeline_state(req: GetPipelineStateInput, ctx: RequestContext) -> dict[str, Any]:
    seen.append((req, ctx))
    return {
        "pipelineName": ctx.actor,
        "pipelineVersion": None,  # None-valued fields are left out of the body
        "created": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "stageStates": [],
    }


async def echo_any(req: Any, ctx: RequestContext) -> dict[str, Any]:
    return {}


HANDLERS: dict[str, Handler] = {
    "RetryStageExecution": retry_stage,
    "GetPipelineState": pipeline_state,
}


# --- servers ------------------------------------------------------------------------------


healthy = {"ok": True}


async def health() -> bool:
    return healthy["ok"]


@pytest.fixture(scope="module")
def open_url() -> Iterator[str]:
    with serve(build_app(HANDLERS, health=health, max_body_bytes=64 * 1024)) as url:
        yield url


@pytest.fixture(scope="module")
def auth_url() -> Iterator[str]:
    with serve(build_app(HANDLERS, credentials={AKID: SECRET})) as url:
        yield url


def retry_args(stage: str = "Build") -> dict[str, str]:
    return {
        "pipelineName": "demo",
        "stageName": stage,
        "pipelineExecutionId": EXEC_ID,
        "retryMode": "FAILED_ACTIONS",
    }


# --- boto3 against the server -------------------------------------------------------------


def test_retry_success_echoes_execution_id(open_url: str) -> None:
    resp = client(open_url).retry_stage_execution(**retry_args())
    assert resp["pipelineExecutionId"] == EXEC_ID
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 200
    request_id = resp["ResponseMetadata"]["RequestId"]
    assert len(request_id) == 36
    req, ctx = seen[-1]
    assert isinstance(req, RetryStageExecutionInput)
    assert req.retryMode == "FAILED_ACTIONS"
    assert ctx.request_id == request_id
    # auth off: the actor is anonymous; the claimed key id is kept apart, unverified
    assert ctx.actor == "anonymous"
    assert ctx.claimed_key == AKID
    assert not ctx.authenticated
    assert ctx.source.startswith("127.0.0.1:")
    assert abs(ctx.received_at - time.time()) < 60


def test_modelled_error_becomes_client_exception(open_url: str) -> None:
    c = client(open_url)
    with pytest.raises(c.exceptions.StageNotRetryableException) as ei:
        c.retry_stage_execution(**retry_args("NotRetryable"))
    assert ei.value.response["Error"]["Message"] == "stage NotRetryable has no failed action"
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_conflict_is_409(open_url: str) -> None:
    c = client(open_url)
    with pytest.raises(c.exceptions.ConflictException) as ei:
        c.retry_stage_execution(**retry_args("Busy"))
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409


def test_server_side_validation_names_the_field(open_url: str) -> None:
    c = client(open_url, validate=False)
    with pytest.raises(c.exceptions.ValidationException) as ei:
        c.retry_stage_execution(**retry_args("bad name!"))
    msg = ei.value.response["Error"]["Message"]
    assert "'stageName'" in msg and "regular expression" in msg

    with pytest.raises(c.exceptions.ValidationException) as ei:
        c.retry_stage_execution(**{**retry_args(), "stageName": "x" * 101})
    assert "'stageName'" in ei.value.response["Error"]["Message"]
    assert "less than or equal to 100" in ei.value.response["Error"]["Message"]

    args = retry_args()
    del args["retryMode"]
    with pytest.raises(c.exceptions.ValidationException) as ei:
        c.retry_stage_execution(**args)
    assert "'retryMode'" in ei.value.response["Error"]["Message"]

    with pytest.raises(c.exceptions.ValidationException) as ei:
        c.retry_stage_execution(**{**retry_args(), "retryMode": "SOME"})
    assert "'retryMode'" in ei.value.response["Error"]["Message"]

    with pytest.raises(c.exceptions.ValidationException) as ei:
        c.retry_stage_execution(**{**retry_args(), "pipelineExecutionId": "NOT-A-UUID"})
    assert "'pipelineExecutionId'" in ei.value.response["Error"]["Message"]


def test_unsupported_operation(open_url: str) -> None:
    with pytest.raises(ClientError) as ei:
        client(open_url).list_webhooks()
    err = ei.value.response["Error"]
    assert err["Code"] == "UnsupportedOperationException"
    assert "ListWebhooks" in err["Message"]
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_handler_crash_is_internal_failure_without_traceback(open_url: str) -> None:
    status, headers, body = raw(
        open_url,
        body=json.dumps(retry_args("Boom")).encode(),
        headers=target("RetryStageExecution"),
    )
    assert_aws_error(status, headers, body, "InternalFailure", 500)
    assert "secret internal detail" not in body["message"]
    assert "Traceback" not in body["message"]
    assert headers["x-amzn-requestid"] in body["message"]


def test_output_timestamps_and_none_fields(open_url: str) -> None:
    resp = client(open_url).get_pipeline_state(name="demo")
    assert resp["created"] == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert resp["pipelineName"] == "anonymous"  # auth off
    status, _, body = raw(open_url, body=b'{"name":"demo"}', headers=target("GetPipelineState"))
    assert status == 200
    assert body["created"] == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC).timestamp()
    assert "pipelineVersion" not in body


def test_actor_is_anonymous_without_authorization(open_url: str) -> None:
    status, _, body = raw(open_url, body=b'{"name":"demo"}', headers=target("GetPipelineState"))
    assert status == 200
    assert body["pipelineName"] == "anonymous"


# --- authentication -----------------------------------------------------------------------


def test_auth_correct_signature_passes_and_actor_is_key(auth_url: str) -> None:
    resp = client(auth_url).get_pipeline_state(name="demo")
    assert resp["pipelineName"] == ACTOR
    assert client(auth_url).retry_stage_execution(**retry_args())["pipelineExecutionId"] == EXEC_ID


def test_auth_wrong_secret(auth_url: str) -> None:
    with pytest.raises(ClientError) as ei:
        client(auth_url, secret="wrong").get_pipeline_state(name="demo")
    assert ei.value.response["Error"]["Code"] == "InvalidSignatureException"


def test_auth_unknown_key(auth_url: str) -> None:
    with pytest.raises(ClientError) as ei:
        client(auth_url, key="AKIDUNKNOWN").get_pipeline_state(name="demo")
    assert ei.value.response["Error"]["Code"] == "UnrecognizedClientException"


def test_auth_unsigned_request_and_open_health(auth_url: str) -> None:
    status, headers, body = raw(
        auth_url, body=b'{"name":"demo"}', headers=target("GetPipelineState")
    )
    assert_aws_error(status, headers, body, "UnrecognizedClientException", 403)
    status, _, body = raw(auth_url, "GET", "/health")
    assert (status, body) == (200, {"status": "ok"})


def test_auth_comes_before_target_checks(auth_url: str) -> None:
    status, headers, body = raw(auth_url, body=b"{}", headers=target("NoSuchOperation"))
    assert_aws_error(status, headers, body, "UnrecognizedClientException", 403)


# --- raw HTTP: malformed requests never 5xx -----------------------------------------------


def test_malformed_json(open_url: str) -> None:
    status, headers, body = raw(open_url, body=b'{"name": ', headers=target("GetPipelineState"))
    assert_aws_error(status, headers, body, "ValidationException")
    assert "JSON" in body["message"]


@pytest.mark.parametrize("payload", [b"[1, 2]", b'"x"', b"42", b"null", b"true"])
def test_non_object_json(open_url: str, payload: bytes) -> None:
    status, headers, body = raw(open_url, body=payload, headers=target("GetPipelineState"))
    assert_aws_error(status, headers, body, "ValidationException")
    assert "JSON object" in body["message"]


def test_empty_body_is_empty_object(open_url: str) -> None:
    status, headers, body = raw(open_url, body=b"", headers=target("GetPipelineState"))
    assert_aws_error(status, headers, body, "ValidationException")
    assert "'name'" in body["message"]


@pytest.mark.parametrize("ctype", ["text/plain", "application/xml", None])
def test_wrong_content_type(open_url: str, ctype: str | None) -> None:
    headers = {"X-Amz-Target": TARGET_PREFIX + "GetPipelineState"}
    if ctype is not None:
        headers["Content-Type"] = ctype
    status, hdrs, body = raw(open_url, body=b'{"name":"demo"}', headers=headers)
    assert_aws_error(status, hdrs, body, "ValidationException")
    assert "Content-Type" in body["message"]


@pytest.mark.parametrize("ctype", ["application/x-amz-json-1.0", "application/json; charset=utf-8"])
def test_other_json_content_types_accepted(open_url: str, ctype: str) -> None:
    headers = {"X-Amz-Target": TARGET_PREFIX + "GetPipelineState", "Content-Type": ctype}
    status, _, _ = raw(open_url, body=b'{"name":"demo"}', headers=headers)
    assert status == 200


def test_oversized_body(open_url: str) -> None:
    big = b'{"name":"' + b"a" * (3 * 1024 * 1024) + b'"}'
    status, headers, body = raw(open_url, body=big, headers=target("GetPipelineState"))
    assert_aws_error(status, headers, body, "ValidationException")
    assert "too large" in body["message"]


@pytest.mark.parametrize(
    ("tgt", "name"),
    [
        ("CodePipeline_20150709.NoSuchOperation", "UnknownOperationException"),
        ("DynamoDB_20120810.GetItem", "UnknownOperationException"),
        (None, "UnknownOperationException"),
        ("CodePipeline_20150709.CreateCustomActionType", "UnsupportedOperationException"),
    ],
)
def test_bad_targets(open_url: str, tgt: str | None, name: str) -> None:
    headers = {"Content-Type": JSON11}
    if tgt is not None:
        headers["X-Amz-Target"] = tgt
    status, hdrs, body = raw(open_url, body=b"{}", headers=headers)
    assert_aws_error(status, hdrs, body, name)


@pytest.mark.parametrize(
    ("method", "path", "name", "code"),
    [
        ("GET", "/", "MethodNotAllowedException", 405),
        ("PUT", "/", "MethodNotAllowedException", 405),
        ("POST", "/health", "MethodNotAllowedException", 405),
        ("GET", "/index.html", "NotFoundException", 404),
        ("POST", "/2015-07-09/pipelines", "NotFoundException", 404),
    ],
)
def test_other_routes_are_aws_shaped(
    open_url: str, method: str, path: str, name: str, code: int
) -> None:
    status, headers, body = raw(open_url, method, path, headers={"Content-Type": JSON11})
    assert_aws_error(status, headers, body, name, code)
    if code == 405:
        assert headers["allow"] in ("GET", "POST")


def test_health(open_url: str) -> None:
    status, headers, body = raw(open_url, "GET", "/health")
    assert (status, body) == (200, {"status": "ok"})
    assert headers["x-amzn-requestid"]
    healthy["ok"] = False
    try:
        status, _, body = raw(open_url, "GET", "/health")
    finally:
        healthy["ok"] = True
    assert status == 503
    assert body["status"] != "ok"


# --- sigv4 unit tests ---------------------------------------------------------------------


def signed(
    body: bytes = b'{"name":"demo"}',
    *,
    key: str = AKID,
    secret: str = SECRET,
    extra: dict[str, str] | None = None,
) -> list[tuple[str, str]]:
    req = AWSRequest(
        method="POST",
        url="http://localhost:8080/",
        data=body,
        headers={**target("GetPipelineState"), **(extra or {})},
    )
    SigV4Auth(Credentials(key, secret), "codepipeline", "us-east-1").add_auth(req)
    return [("Host", "localhost:8080"), ("User-Agent", "test"), *req.headers.items()]


def verify(headers: Headers, body: bytes = b'{"name":"demo"}', **kw: Any) -> str:
    kw.setdefault("now", time.time())
    return verify_sigv4("POST", "/", "", headers, body, {AKID: SECRET}, **kw).access_key


def sig_error(headers: Headers, body: bytes = b'{"name":"demo"}', **kw: Any) -> str:
    with pytest.raises(AwsError) as ei:
        verify(headers, body, **kw)
    return ei.value.type_name


def test_sigv4_accepts_botocore_signature() -> None:
    assert verify(signed()) == AKID
    # header names are case-insensitive, a mapping works too
    assert verify([(k.upper(), v) for k, v in signed()]) == AKID
    assert verify(dict(signed())) == AKID


def test_sigv4_rejects_wrong_secret_and_tampering() -> None:
    assert sig_error(signed(secret="nope")) == "InvalidSignatureException"
    assert sig_error(signed(), b'{"name":"other"}') == "InvalidSignatureException"
    tampered = [
        (k, "CodePipeline_20150709.DeletePipeline") if k == "X-Amz-Target" else (k, v)
        for k, v in signed()
    ]
    assert sig_error(tampered) == "InvalidSignatureException"
    with pytest.raises(AwsError):
        verify_sigv4(
            "POST", "/other", "", signed(), b'{"name":"demo"}', {AKID: SECRET}, now=time.time()
        )


def test_sigv4_unknown_key_and_missing_header() -> None:
    assert sig_error(signed(key="AKIDOTHER")) == "UnrecognizedClientException"
    no_auth = [(k, v) for k, v in signed() if k.lower() != "authorization"]
    assert sig_error(no_auth) == "UnrecognizedClientException"


def test_sigv4_expired_and_malformed() -> None:
    assert sig_error(signed(), now=time.time() + 3600) == "InvalidSignatureException"
    assert sig_error(signed(), now=time.time() - 3600) == "InvalidSignatureException"
    for bad in ["Basic abc", "AWS4-HMAC-SHA256 Credential=x", "AWS4-HMAC-SHA256 garbage"]:
        headers = [(k, bad) if k == "Authorization" else (k, v) for k, v in signed()]
        assert sig_error(headers) == "IncompleteSignatureException"
    no_host = [(k, v) for k, v in signed() if k != "Host"]
    assert sig_error(no_host) == "InvalidSignatureException"


def test_sigv4_payload_hash_header_must_match_body() -> None:
    import hashlib

    good = hashlib.sha256(b'{"name":"demo"}').hexdigest()
    assert verify(signed(extra={"X-Amz-Content-SHA256": good})) == AKID
    other = hashlib.sha256(b"x").hexdigest()
    assert sig_error(signed(extra={"X-Amz-Content-SHA256": other})) == "InvalidSignatureException"
    unsigned = signed(extra={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    assert sig_error(unsigned) == "InvalidSignatureException"


def test_parse_authorization() -> None:
    value = dict(signed())["Authorization"]
    parsed = parse_authorization(value)
    assert parsed.access_key == AKID
    assert (parsed.region, parsed.service) == ("us-east-1", "codepipeline")
    assert "host" in parsed.signed_headers and "x-amz-date" in parsed.signed_headers


# --- direct ASGI calls --------------------------------------------------------------------


ALL_OPS_APP = build_app({op: echo_any for op in OPERATIONS})


ops = st.sampled_from(sorted(OPERATIONS))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op=ops, body=st.binary(max_size=200))
def test_random_bytes_never_5xx(op: str, body: bytes) -> None:
    status, headers, out = asyncio.run(
        asgi_call(ALL_OPS_APP, "POST", "/", list(target(op).items()), [body])
    )
    check_response(status, headers, out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op=ops, value=json_values)
def test_random_json_never_5xx(op: str, value: Any) -> None:
    body = json.dumps(value).encode()
    status, headers, out = asyncio.run(
        asgi_call(ALL_OPS_APP, "POST", "/", list(target(op).items()), [body])
    )
    check_response(status, headers, out)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), op=ops)
def test_random_shaped_objects_never_5xx(data: st.DataObject, op: str) -> None:
    obj = data.draw(shaped_objects(op))
    body = json.dumps(obj).encode()
    status, headers, out = asyncio.run(
        asgi_call(ALL_OPS_APP, "POST", "/", list(target(op).items()), [body])
    )
    decoded = check_response(status, headers, out)
    if status == 400 and decoded["__type"] == "ValidationException":
        assert decoded["message"].startswith("1 validation error detected")
    if status == 200:
        assert decoded == {}
        msgspec.json.decode(body, type=OPERATIONS[op])  # the server accepted a valid input


async def test_body_chunks_are_joined() -> None:
    app = build_app(HANDLERS)
    body = json.dumps(retry_args()).encode()
    parts = [body[:10], body[10:20], body[20:]]
    status, _, out = await asgi_call(
        app, "POST", "/", list(target("RetryStageExecution").items()), parts
    )
    assert status == 200
    assert json.loads(out) == {"pipelineExecutionId": EXEC_ID}


async def test_endless_body_is_not_buffered_or_drained_forever() -> None:
    app = build_app(HANDLERS, max_body_bytes=1024)
    chunk = b"x" * 65536
    delivered = 0

    async def endless() -> Any:
        nonlocal delivered
        while True:
            delivered += len(chunk)
            yield chunk, True

    status, headers, out = await asgi_call(
        app, "POST", "/", list(target("GetPipelineState").items()), endless()
    )
    assert_aws_error(status, headers, json.loads(out), "ValidationException")
    assert delivered <= 1024 + DRAIN_LIMIT + len(chunk)


async def test_disconnect_before_body_sends_nothing() -> None:
    app = build_app(HANDLERS)
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""}
    await app(scope, receive, send)
    assert sent == []


async def test_lifespan() -> None:
    app = build_app(HANDLERS)
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_auth_with_fixed_clock_via_asgi() -> None:
    """The app's clock drives the signature expiry check."""
    headers = signed()
    app = build_app(HANDLERS, credentials={AKID: SECRET}, clock=lambda: time.time() + 7200)
    status, hdrs, out = await asgi_call(
        app,
        "POST",
        "/",
        [(k, v) for k, v in headers if k != "Host"] + [("host", "localhost:8080")],
        [b'{"name":"demo"}'],
    )
    assert_aws_error(status, hdrs, json.loads(out), "InvalidSignatureException", 403)
    assert "expired" in json.loads(out)["message"]
    app = build_app(HANDLERS, credentials={AKID: SECRET})
    status, _, out = await asgi_call(app, "POST", "/", headers, [b'{"name":"demo"}'])
    assert status == 200
    assert json.loads(out)["pipelineName"] == ACTOR


def test_build_app_rejects_unknown_handler_names() -> None:
    with pytest.raises(ValueError, match="Bogus"):
        build_app({"Bogus": echo_any})


def test_operations_cover_the_shapes_module() -> None:
    from app.api.modelshapes import input_struct

    for op, cls in OPERATIONS.items():  # hand-written in shapes, else built from the model
        assert getattr(shapes, cls.__name__, None) is cls or input_struct(op) is cls, op
    model = botocore.session.get_session().get_service_model("codepipeline")
    assert set(OPERATIONS) == set(model.operation_names)


# --- validation messages ------------------------------------------------------------------


def _message(cls: type[msgspec.Struct], body: bytes) -> str:
    with pytest.raises(msgspec.ValidationError) as ei:
        msgspec.json.decode(body, type=cls)
    return validation_message(ei.value, cls)


def test_validation_messages_read_well() -> None:
    retry = json.dumps({**retry_args(), "retryMode": "SOME"}).encode()
    msg = _message(RetryStageExecutionInput, retry)
    assert msg.startswith("1 validation error detected: Value at 'retryMode'")
    assert "[ALL_ACTIONS, FAILED_ACTIONS]" in msg or "[FAILED_ACTIONS, ALL_ACTIONS]" in msg

    msg = _message(RetryStageExecutionInput, json.dumps(retry_args("a b")).encode())
    assert msg.endswith("Member must satisfy regular expression pattern: [A-Za-z0-9.@\\-_]+")

    decl = {
        "name": "p",
        "roleArn": "arn:aws:iam::123456789012:role/r",
        "stages": [{"name": "S", "actions": [{"name": "A"}]}],
    }
    msg = _message(CreatePipelineInput, json.dumps({"pipeline": decl}).encode())
    assert "'pipeline.stages[0].actions[0].actionTypeId'" in msg
    assert msg.endswith("Member must not be null")

    msg = _message(
        PutJobSuccessResultInput,
        json.dumps({"jobId": EXEC_ID, "outputVariables": {"a b": "x"}}).encode(),
    )
    assert "a key of map 'outputVariables'" in msg

    msg = _message(ListPipelinesInput, b'{"maxResults": 0}')
    assert msg.endswith("Member must have value greater than or equal to 1")


def test_trailing_newline_is_not_a_valid_name() -> None:
    # msgspec patterns use re.search, and '$' also matches before a trailing newline:
    # the model's patterns end in '\\Z' for that reason.
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(
            json.dumps(retry_args("Build\n")).encode(), type=RetryStageExecutionInput
        )


# --- aws-cli ------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("aws") is None, reason="aws-cli not installed")
def test_aws_cli_against_auth_server(auth_url: str, tmp_path: Any) -> None:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": AKID,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"),
        "AWS_MAX_ATTEMPTS": "1",
    }

    def aws(stage: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "aws", "codepipeline", "retry-stage-execution", "--endpoint-url", auth_url,
                "--output", "json", "--pipeline-name", "demo", "--stage-name", stage,
                "--pipeline-execution-id", EXEC_ID, "--retry-mode", "FAILED_ACTIONS",
            ],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    ok = aws("Build")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"pipelineExecutionId": EXEC_ID}
    bad = aws("NotRetryable")
    assert bad.returncode != 0
    assert "StageNotRetryableException" in bad.stderr
