"""Webhooks and V2 triggers end to end: the real ``stageline serve`` on a real Redis, the
operations through boto3, deliveries as plain HTTP POSTs signed the way GitHub signs them."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from app.api.server import ServeConfig
from app.domain import events as ev
from app.store.eventstore import EventStore
from app.store.keys import Keys
from app.webhooks.store import WebhookDeleted, WebhookPut, WebhookRegistration, WebhookStore
from tests.api_helpers import AKID, SECRET, Stageline, client, raw, run_stageline

PARTITIONS = 4
ROLE = "arn:aws:iam::123456789012:role/hooks"
ACTOR = f"arn:aws:iam::000000000000:user/{AKID}"
TOKEN = "s3cr3t-t0ken-never-shown"
TRIGGER_SECRET = b"trigger-secret-for-tests"
COMMANDS = {"category": "Compute", "owner": "AWS", "provider": "Commands", "version": "1"}
CONN = {
    "category": "Source",
    "owner": "AWS",
    "provider": "CodeStarSourceConnection",
    "version": "1",
}
HOOK_SOURCE = {"category": "Source", "owner": "Custom", "provider": "HookSource", "version": "1"}
SHA = "0123456789abcdef0123456789abcdef01234567"

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(real_redis_url: str) -> Iterator[tuple[Stageline, str]]:
    r = SyncRedis.from_url(real_redis_url)
    r.flushdb()
    r.close()
    cfg = ServeConfig(
        port=0,
        redis_url=real_redis_url,
        credentials={AKID: SECRET},
        partitions=PARTITIONS,
        workers=False,  # nothing runs: what a delivery starts stays where it started
        trigger_secret=TRIGGER_SECRET,
        max_body_bytes=65536,
        log_level="warning",
    )
    with run_stageline(cfg) as srv:
        create_hook_source(client(srv.url))
        yield srv, real_redis_url


def create_hook_source(cp: Any) -> None:
    cp.create_custom_action_type(
        category="Source",
        provider="HookSource",
        version="1",
        inputArtifactDetails={"minimumCount": 0, "maximumCount": 0},
        outputArtifactDetails={"minimumCount": 0, "maximumCount": 1},
    )


@pytest.fixture
def cp(server: tuple[Stageline, str]) -> Any:
    return client(server[0].url)


@pytest.fixture
def url(server: tuple[Stageline, str]) -> str:
    return server[0].url


def pipeline(name: str, *, v2: dict[str, Any] | None = None, git: bool = False) -> dict[str, Any]:
    """Source stage: a git source action (AWS/Source/CodeStarSourceConnection) with ``git``,
    else a custom source action (which takes no commit as its revision)."""
    source: dict[str, Any] = {
        "name": "src",
        "actionTypeId": CONN if git else HOOK_SOURCE,
        "configuration": {
            "BranchName": "main",
            "FullRepositoryId": "octo/repo",
            "ConnectionArn": "arn:aws:codestar-connections:us-east-1:1:connection/x",
        },
    }
    doc: dict[str, Any] = {
        "name": name,
        "roleArn": ROLE,
        "stages": [
            {"name": "Source", "actions": [source]},
            {"name": "Build", "actions": [{"name": "b", "actionTypeId": COMMANDS,
                                           "commands": ["true"]}]},
        ],
    }  # fmt: skip
    if v2 is not None:
        doc["pipelineType"] = "V2"
        doc.update(v2)
    return doc


def fresh(cp: Any, prefix: str, **kw: Any) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    try:
        cp.create_pipeline(pipeline=pipeline(name, **kw))
    except ClientError as exc:
        message = str(exc.response["Error"]["Message"])
        if kw.get("git") and "CodeStarSourceConnection" in message:
            # git source actions come with the source runner (the 'sources' work)
            pytest.skip(f"this stageline runs no CodeStarSourceConnection actions: {message}")
        raise
    return name


def hook_def(name: str, target: str, **kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": name,
        "targetPipeline": target,
        "targetAction": "src",
        "filters": [{"jsonPath": "$.ref", "matchEquals": "refs/heads/{BranchName}"}],
        "authentication": "GITHUB_HMAC",
        "authenticationConfiguration": {"SecretToken": TOKEN},
    }
    d.update(kw)
    return d


def push_body(ref: str = "refs/heads/main", files: list[str] | None = None) -> bytes:
    return json.dumps(
        {
            "ref": ref,
            "after": SHA,
            "head_commit": {"id": SHA},
            "repository": {"full_name": "octo/repo", "name": "repo"},
            "commits": [{"id": SHA, "added": files or [], "modified": [], "removed": []}],
        }
    ).encode()


def signed(body: bytes, secret: bytes, event: str = "push", **extra: str) -> dict[str, str]:
    sig = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": f"sha256={sig}",
        **extra,
    }


def path_of(webhook_url: str) -> str:
    return "/" + webhook_url.split("/", 3)[3]


def executions(cp: Any, name: str) -> list[dict[str, Any]]:
    return list(cp.list_pipeline_executions(pipelineName=name)["pipelineExecutionSummaries"])


def events(redis_url: str, name: str) -> list[ev.Envelope]:
    async def read() -> list[ev.Envelope]:
        r = Redis.from_url(redis_url)
        try:
            return await EventStore(r, Keys(partitions=PARTITIONS)).read(name)
        finally:
            await r.aclose()

    return asyncio.run(read())


def webhook_events(redis_url: str) -> list[Any]:
    async def read() -> list[Any]:
        r = Redis.from_url(redis_url)
        try:
            return [e for _, e in await WebhookStore(r).events()]
        finally:
            await r.aclose()

    return asyncio.run(read())


def error_of(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


# --- operations -----------------------------------------------------------------------------


def test_put_list_delete_roundtrip(cp: Any, server: tuple[Stageline, str]) -> None:
    name = fresh(cp, "crud")
    hook = f"h-{name}"
    out = cp.put_webhook(
        webhook=hook_def(hook, name), tags=[{"key": "team", "value": "ci"}]
    )["webhook"]
    assert out["arn"] == f"arn:aws:codepipeline:us-east-1:000000000000:webhook:{hook}"
    assert out["url"].startswith(server[0].url + "/webhooks/")
    assert out["definition"]["authenticationConfiguration"] == {"SecretToken": "****"}
    assert out["tags"] == [{"key": "team", "value": "ci"}]
    assert "lastTriggered" not in out
    listed = {w["definition"]["name"]: w for w in cp.list_webhooks()["webhooks"]}
    assert listed[hook]["url"] == out["url"]
    assert TOKEN not in json.dumps(listed, default=str)
    tags = cp.list_tags_for_resource(resourceArn=out["arn"])["tags"]
    assert tags == [{"key": "team", "value": "ci"}]
    # an update keeps the URL
    again = cp.put_webhook(webhook=hook_def(hook, name, filters=[]))["webhook"]
    assert again["url"] == out["url"] and again["definition"]["filters"] == []
    cp.register_webhook_with_third_party(webhookName=hook)
    cp.deregister_webhook_with_third_party(webhookName=hook)
    cp.delete_webhook(name=hook)
    cp.delete_webhook(name=f"never-{hook}")  # a webhook that is not there: success, as AWS
    assert hook not in {w["definition"]["name"] for w in cp.list_webhooks()["webhooks"]}
    with pytest.raises(ClientError) as exc:
        cp.list_tags_for_resource(resourceArn=out["arn"])
    assert error_of(exc) == "ResourceNotFoundException"
    # re-created: a new URL, no old tags
    new = cp.put_webhook(webhook=hook_def(hook, name))["webhook"]
    assert new["url"] != out["url"] and "tags" not in new
    # every change is audited with who made it
    mine = [e for e in webhook_events(server[1]) if e.name == hook]
    kinds = [type(e) for e in mine]
    assert kinds == [
        WebhookPut, WebhookPut, WebhookRegistration, WebhookRegistration, WebhookDeleted,
        WebhookPut,
    ]  # fmt: skip
    assert {e.actor for e in mine} == {ACTOR}
    assert all(e.source and e.source.startswith("127.0.0.1:") for e in mine)


def test_list_webhooks_pages(cp: Any) -> None:
    name = fresh(cp, "pages")
    hooks = [f"pg-{name}-{i}" for i in range(3)]
    for h in hooks:
        cp.put_webhook(webhook=hook_def(h, name))
    seen: list[str] = []
    token = None
    while True:
        kw: dict[str, Any] = {"MaxResults": 1}
        if token:
            kw["NextToken"] = token
        page = cp.list_webhooks(**kw)
        assert len(page["webhooks"]) <= 1
        seen += [w["definition"]["name"] for w in page["webhooks"]]
        token = page.get("NextToken")
        if not token:
            break
    assert [s for s in seen if s in hooks] == hooks
    with pytest.raises(ClientError) as exc:
        cp.list_webhooks(NextToken="!!not-a-token")
    assert error_of(exc) == "InvalidNextTokenException"
    for h in hooks:
        cp.delete_webhook(name=h)


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"targetPipeline": "no-such-pipeline"}, "PipelineNotFoundException"),
        ({"targetAction": "b"}, "ValidationException"),  # not in the source stage
        ({"targetAction": "nope"}, "ValidationException"),
        ({"filters": [{"jsonPath": "ref"}]}, "InvalidWebhookFilterPatternException"),
        ({"filters": [{"jsonPath": "$.["}]}, "InvalidWebhookFilterPatternException"),
        (
            {"filters": [{"jsonPath": "$.ref", "matchEquals": "refs/{Branch"}]},
            "InvalidWebhookFilterPatternException",
        ),
        ({"authenticationConfiguration": {}}, "InvalidWebhookAuthenticationParametersException"),
        (
            {"authenticationConfiguration": {"SecretToken": "x", "AllowedIPRange": "10.0.0.0/8"}},
            "InvalidWebhookAuthenticationParametersException",
        ),
        (
            {"authentication": "IP", "authenticationConfiguration": {"AllowedIPRange": "nope"}},
            "InvalidWebhookAuthenticationParametersException",
        ),
        (
            {"authentication": "IP", "authenticationConfiguration": {"SecretToken": "x"}},
            "InvalidWebhookAuthenticationParametersException",
        ),
        (
            {"authentication": "UNAUTHENTICATED"},  # with the SecretToken still set
            "InvalidWebhookAuthenticationParametersException",
        ),
    ],
)
def test_put_webhook_validation(cp: Any, changes: dict[str, Any], error: str) -> None:
    name = fresh(cp, "val")
    with pytest.raises(ClientError) as exc:
        cp.put_webhook(webhook=hook_def(f"v-{name}", name, **changes))
    assert error_of(exc) == error
    assert exc.value.response["Error"]["Message"]
    assert f"v-{name}" not in {w["definition"]["name"] for w in cp.list_webhooks()["webhooks"]}


def test_put_webhook_tag_errors(cp: Any) -> None:
    name = fresh(cp, "tags")
    with pytest.raises(ClientError) as exc:
        cp.put_webhook(webhook=hook_def("t1", name), tags=[{"key": "aws:x", "value": "1"}])
    assert error_of(exc) == "InvalidTagsException"
    many = [{"key": f"k{i}", "value": "v"} for i in range(51)]
    with pytest.raises(ClientError) as exc:
        cp.put_webhook(webhook=hook_def("t1", name), tags=many)
    assert error_of(exc) == "TooManyTagsException"


def test_registration_of_a_missing_webhook(cp: Any) -> None:
    for op in (cp.register_webhook_with_third_party, cp.deregister_webhook_with_third_party):
        with pytest.raises(ClientError) as exc:
            op(webhookName="no-such-webhook")
        assert error_of(exc) == "WebhookNotFoundException"
        with pytest.raises(ClientError) as exc:
            op()
        assert error_of(exc) == "ValidationException"


def test_put_webhook_model_validation_through_the_wire(cp: Any) -> None:
    name = fresh(cp, "wire")
    raw_client = client(cp.meta.endpoint_url, validate=False)
    with pytest.raises(ClientError) as exc:
        raw_client.put_webhook(webhook=hook_def("bad name!", name))
    assert error_of(exc) == "ValidationException"
    with pytest.raises(ClientError) as exc:
        raw_client.put_webhook(webhook=hook_def("ok", name, authentication="BASIC"))
    assert error_of(exc) == "ValidationException"


# --- deliveries -----------------------------------------------------------------------------


def test_signed_push_starts_an_execution(
    cp: Any, server: tuple[Stageline, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    name = fresh(cp, "push")
    before = {x["pipelineExecutionId"] for x in executions(cp, name)}
    out = cp.put_webhook(webhook=hook_def(f"p-{name}", name))["webhook"]
    body = push_body()
    headers = signed(body, TOKEN.encode())
    status, _, doc = raw(server[0].url, "POST", path_of(out["url"]), body, headers)
    assert status == 200 and doc["started"] is True, doc
    eid = doc["pipelineExecutionId"]
    assert eid not in before
    x = cp.get_pipeline_execution(pipelineName=name, pipelineExecutionId=eid)
    trigger = x["pipelineExecution"]["trigger"]
    assert trigger == {"triggerType": "Webhook", "triggerDetail": out["arn"]}
    # a custom source action takes no commit
    assert started_event(server[1], name, eid).sourceRevisions is None
    # GitHub's redelivery (same X-GitHub-Delivery) starts nothing new
    status, _, again = raw(server[0].url, "POST", path_of(out["url"]), body, headers)
    assert status == 200 and again["pipelineExecutionId"] == eid
    listed = next(w for w in cp.list_webhooks()["webhooks"] if w["arn"] == out["arn"])
    assert "lastTriggered" in listed and "errorCode" not in listed
    # later deliveries that start nothing leave lastTriggered as it was
    other = push_body("refs/heads/dev")
    for _ in range(3):
        raw(server[0].url, "POST", path_of(out["url"]), other, signed(other, TOKEN.encode()))
    relisted = next(w for w in cp.list_webhooks()["webhooks"] if w["arn"] == out["arn"])
    assert relisted["lastTriggered"] == listed["lastTriggered"]
    # by name works too for a signed webhook
    by_name = f"/webhooks/p-{name}"
    status, _, doc = raw(server[0].url, "POST", by_name, body, signed(body, TOKEN.encode()))
    assert status == 200 and doc["started"] is True
    server_logs = [r for r in caplog.records if r.name.startswith(("stageline", "uvicorn"))]
    assert any(r.name == "stageline.webhooks" for r in server_logs)
    assert not [r for r in server_logs if TOKEN in r.getMessage()]


def started_event(redis_url: str, name: str, eid: str) -> ev.ExecutionStarted:
    [started] = [
        e.event for e in events(redis_url, name)
        if isinstance(e.event, ev.ExecutionStarted) and e.event.executionId == eid
    ]  # fmt: skip
    return started


def test_push_commit_is_the_revision_of_a_git_source(
    cp: Any, server: tuple[Stageline, str]
) -> None:
    name = fresh(cp, "gitpush", git=True)
    out = cp.put_webhook(webhook=hook_def(f"gp-{name}", name))["webhook"]
    body = push_body()
    headers = signed(body, TOKEN.encode())
    status, _, doc = raw(server[0].url, "POST", path_of(out["url"]), body, headers)
    assert status == 200 and doc["started"] is True, doc
    started = started_event(server[1], name, doc["pipelineExecutionId"])
    assert started.sourceRevisions == [
        {"actionName": "src", "revisionType": "COMMIT_ID", "revisionValue": SHA}
    ]


def test_sha1_signature_is_accepted(cp: Any, url: str) -> None:
    name = fresh(cp, "sha1")
    out = cp.put_webhook(webhook=hook_def(f"s-{name}", name))["webhook"]
    body = push_body()
    sig = hmac.new(TOKEN.encode(), body, hashlib.sha1).hexdigest()
    headers = {"Content-Type": "application/json", "X-Hub-Signature": f"sha1={sig}"}
    status, _, doc = raw(url, "POST", path_of(out["url"]), body, headers)
    assert status == 200 and doc["started"] is True


@pytest.mark.parametrize(
    "headers",
    [
        {},  # no signature
        {"X-Hub-Signature-256": "sha256=" + "0" * 64},
        {"X-Hub-Signature-256": "sha1=abc"},
        {"X-Hub-Signature": "sha1=" + "0" * 40},
    ],
)
def test_bad_signature_is_refused(cp: Any, url: str, headers: dict[str, str]) -> None:
    name = fresh(cp, "badsig")
    out = cp.put_webhook(webhook=hook_def(f"b-{name}", name))["webhook"]
    body = push_body()
    status, _, doc = raw(url, "POST", path_of(out["url"]), body, headers)
    assert status == 401
    assert doc["__type"] in ("MissingSignature", "InvalidSignature") and doc["message"]
    assert executions(cp, name) == [] or all(
        x["trigger"]["triggerType"] != "Webhook" for x in executions(cp, name)
    )
    listed = next(w for w in cp.list_webhooks()["webhooks"] if w["arn"] == out["arn"])
    assert listed["errorCode"] == doc["__type"] and "lastTriggered" not in listed


def test_signature_with_another_secret_or_body_is_refused(cp: Any, url: str) -> None:
    name = fresh(cp, "other")
    out = cp.put_webhook(webhook=hook_def(f"o-{name}", name))["webhook"]
    body = push_body()
    status, _, _ = raw(url, "POST", path_of(out["url"]), body, signed(body, b"not-the-token"))
    assert status == 401
    headers = signed(push_body("refs/heads/other"), TOKEN.encode())
    status, _, _ = raw(url, "POST", path_of(out["url"]), body, headers)
    assert status == 401
    assert not [x for x in executions(cp, name) if x["trigger"]["triggerType"] == "Webhook"]


def test_filters_no_match_starts_nothing(cp: Any, url: str) -> None:
    name = fresh(cp, "nomatch")
    out = cp.put_webhook(webhook=hook_def(f"n-{name}", name))["webhook"]
    body = push_body("refs/heads/dev")
    status, _, doc = raw(url, "POST", path_of(out["url"]), body, signed(body, TOKEN.encode()))
    assert status == 200 and doc["started"] is False
    assert not [x for x in executions(cp, name) if x["trigger"]["triggerType"] == "Webhook"]


def test_ip_allow_and_deny(cp: Any, url: str) -> None:
    name = fresh(cp, "ip")
    allow = cp.put_webhook(
        webhook=hook_def(
            f"ia-{name}", name, authentication="IP",
            authenticationConfiguration={"AllowedIPRange": "127.0.0.0/8"},
        )
    )["webhook"]  # fmt: skip
    deny = cp.put_webhook(
        webhook=hook_def(
            f"id-{name}", name, authentication="IP",
            authenticationConfiguration={"AllowedIPRange": "10.0.0.0/8"},
        )
    )["webhook"]  # fmt: skip
    body = push_body()
    status, _, doc = raw(url, "POST", path_of(deny["url"]), body, {"X-GitHub-Event": "push"})
    assert status == 403 and doc["__type"] == "AddressNotAllowed"
    status, _, doc = raw(url, "POST", path_of(allow["url"]), body, {"X-GitHub-Event": "push"})
    assert status == 200 and doc["started"] is True


def test_unauthenticated_only_by_its_url_id(
    cp: Any, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stageline.access")
    name = fresh(cp, "open")
    out = cp.put_webhook(
        webhook=hook_def(
            f"u-{name}", name, authentication="UNAUTHENTICATED", authenticationConfiguration={}
        )
    )["webhook"]
    body = push_body()
    status, _, doc = raw(url, "POST", f"/webhooks/u-{name}", body, {})
    assert status == 404 and doc["__type"] == "WebhookNotFoundException"
    status, _, doc = raw(url, "POST", path_of(out["url"]), body, {})
    assert status == 200 and doc["started"] is True
    # the URL id is all that protects this webhook: the access log does not show it
    webhook_id = out["url"].rsplit("/", 1)[1]
    access = [r.getMessage() for r in caplog.records if r.name == "stageline.access"]
    assert any("/webhooks/" in m for m in access)
    assert not [m for m in access if webhook_id in m]


def test_endpoint_refusals(cp: Any, url: str) -> None:
    name = fresh(cp, "refuse")
    out = cp.put_webhook(
        webhook=hook_def(
            f"r-{name}", name, authentication="UNAUTHENTICATED", authenticationConfiguration={}
        )
    )["webhook"]
    p = path_of(out["url"])
    assert raw(url, "GET", p)[0] == 405
    assert raw(url, "POST", "/webhooks/nope", b"{}")[0] == 404
    status, _, doc = raw(url, "POST", p, b"{not json", {"Content-Type": "application/json"})
    assert status == 400 and doc["__type"] == "InvalidPayload"
    big = b'{"x": "' + b"a" * 70000 + b'"}'
    status, _, doc = raw(url, "POST", p, big, {"Content-Type": "application/json"})
    assert status == 413 and doc["__type"] == "PayloadTooLarge"
    status, _, doc = raw(url, "POST", p, b"{}", {"X-GitHub-Event": "ping"})
    assert status == 200 and doc["started"] is False
    assert not [x for x in executions(cp, name) if x["trigger"]["triggerType"] == "Webhook"]


def test_form_encoded_delivery(cp: Any, url: str) -> None:
    import urllib.parse

    name = fresh(cp, "form")
    out = cp.put_webhook(webhook=hook_def(f"f-{name}", name))["webhook"]
    body = urllib.parse.urlencode({"payload": push_body().decode()}).encode()
    headers = signed(body, TOKEN.encode(), **{"Content-Type": "application/x-www-form-urlencoded"})
    status, _, doc = raw(url, "POST", path_of(out["url"]), body, headers)
    assert status == 200 and doc["started"] is True


def test_delivery_to_a_deleted_pipeline_is_recorded(cp: Any, url: str) -> None:
    name = fresh(cp, "gone")
    out = cp.put_webhook(webhook=hook_def(f"g-{name}", name))["webhook"]
    cp.delete_pipeline(name=name)
    body = push_body()
    status, _, doc = raw(url, "POST", path_of(out["url"]), body, signed(body, TOKEN.encode()))
    assert status == 404 and doc["__type"] == "PipelineNotFoundException"
    listed = next(w for w in cp.list_webhooks()["webhooks"] if w["arn"] == out["arn"])
    assert listed["errorCode"] == "PipelineNotFoundException"


# --- V2 triggers ----------------------------------------------------------------------------


def trigger_pipeline(
    cp: Any, prefix: str, config: dict[str, Any] | None, *, git: bool = False
) -> str:
    triggers = []
    if config is not None:
        triggers = [
            {
                "providerType": "CodeStarSourceConnection",
                "gitConfiguration": {"sourceActionName": "src", **config},
            }
        ]
    return fresh(cp, prefix, v2={"triggers": triggers} if triggers else {}, git=git)


def deliver(url: str, name: str, body: bytes, event: str = "push") -> tuple[int, dict[str, Any]]:
    headers = signed(body, TRIGGER_SECRET, event)
    status, _, doc = raw(url, "POST", f"/triggers/{name}", body, headers)
    return status, doc


def test_v2_push_filters(cp: Any, url: str, server: tuple[Stageline, str]) -> None:
    name = trigger_pipeline(
        cp,
        "v2push",
        {
            "push": [
                {
                    "branches": {"includes": ["release/**"], "excludes": ["release/old/**"]},
                    "filePaths": {"includes": ["src/**"]},
                }
            ]
        },
    )
    status, doc = deliver(url, name, push_body("refs/heads/release/1", ["docs/a.md"]))
    assert status == 200 and doc["started"] is False  # no file under src/
    status, doc = deliver(url, name, push_body("refs/heads/release/old/1", ["src/a.py"]))
    assert status == 200 and doc["started"] is False  # excluded branch
    status, doc = deliver(url, name, push_body("refs/heads/main", ["src/a.py"]))
    assert status == 200 and doc["started"] is False  # not included
    status, doc = deliver(url, name, push_body("refs/heads/release/2", ["src/a.py"]))
    assert status == 200 and doc["started"] is True, doc
    eid = doc["pipelineExecutionId"]
    x = cp.get_pipeline_execution(pipelineName=name, pipelineExecutionId=eid)
    assert x["pipelineExecution"]["trigger"]["triggerType"] == "WebhookV2"
    assert started_event(server[1], name, eid).sourceRevisions is None  # a custom source


def test_v2_trigger_commit_is_the_revision_of_a_git_source(
    cp: Any, url: str, server: tuple[Stageline, str]
) -> None:
    name = trigger_pipeline(cp, "v2git", {"push": [{"branches": {"includes": ["main"]}}]}, git=True)
    status, doc = deliver(url, name, push_body())
    assert status == 200 and doc["started"] is True, doc
    started = started_event(server[1], name, doc["pipelineExecutionId"])
    assert started.sourceRevisions == [
        {"actionName": "src", "revisionType": "COMMIT_ID", "revisionValue": SHA}
    ]
    assert started.triggerDetail == "arn:aws:codestar-connections:us-east-1:1:connection/x"


def test_v2_tags_and_pull_requests(cp: Any, url: str) -> None:
    name = trigger_pipeline(
        cp,
        "v2pr",
        {
            "push": [{"tags": {"includes": ["v*"]}}],
            "pullRequest": [{"events": ["OPEN"], "branches": {"includes": ["main"]}}],
        },
    )
    assert deliver(url, name, push_body("refs/tags/v1.0"))[1]["started"] is True
    assert deliver(url, name, push_body("refs/tags/x"))[1]["started"] is False
    assert deliver(url, name, push_body("refs/heads/main"))[1]["started"] is False

    def pr(action: str, base: str = "main") -> bytes:
        return json.dumps(
            {
                "action": action,
                "pull_request": {"base": {"ref": base}, "head": {"ref": "f", "sha": SHA}},
                "repository": {"full_name": "octo/repo"},
            }
        ).encode()

    assert deliver(url, name, pr("opened"), "pull_request")[1]["started"] is True
    assert deliver(url, name, pr("closed"), "pull_request")[1]["started"] is False
    assert deliver(url, name, pr("opened", "dev"), "pull_request")[1]["started"] is False


def test_v2_default_detection_and_repository(cp: Any, url: str) -> None:
    # no triggers: pushes to the BranchName of a connection source action
    name = trigger_pipeline(cp, "v2default", None, git=True)
    assert deliver(url, name, push_body("refs/heads/main"))[1]["started"] is True
    assert deliver(url, name, push_body("refs/heads/dev"))[1]["started"] is False
    other = json.loads(push_body())
    other["repository"]["full_name"] = "someone/else"
    assert deliver(url, name, json.dumps(other).encode())[1]["started"] is False


def test_v2_trigger_refusals(cp: Any, url: str) -> None:
    name = trigger_pipeline(cp, "v2bad", {})
    body = push_body()
    status, _, doc = raw(url, "POST", f"/triggers/{name}", body, signed(body, b"wrong"))
    assert status == 401 and doc["__type"] == "InvalidSignature"
    status, _, doc = raw(url, "POST", f"/triggers/{name}", body, {"X-GitHub-Event": "push"})
    assert status == 401
    status, doc = deliver(url, "no-such-pipeline", body)
    assert status == 404 and doc["__type"] == "PipelineNotFoundException"
    status, doc = deliver(url, name, b"{}", "ping")
    assert status == 200 and doc["started"] is False
    assert not [x for x in executions(cp, name) if x["trigger"]["triggerType"] == "WebhookV2"]


def test_bad_triggers_are_refused_at_create(cp: Any) -> None:
    bad = {
        "triggers": [
            {
                "providerType": "CodeStarSourceConnection",
                "gitConfiguration": {
                    "sourceActionName": "src",
                    "push": [{"tags": {"includes": ["v1"]}, "branches": {"includes": ["m"]}}],
                },
            }
        ]
    }
    with pytest.raises(ClientError) as exc:
        cp.create_pipeline(pipeline=pipeline(f"badtrig-{uuid.uuid4().hex[:6]}", v2=bad))
    assert error_of(exc) == "InvalidStructureException"


def test_triggers_off_without_a_secret(real_redis_url: str, server: Any) -> None:
    cfg = ServeConfig(port=0, redis_url=real_redis_url, workers=False, log_level="warning",
                      partitions=PARTITIONS)  # fmt: skip
    with run_stageline(cfg) as srv:
        status, _, doc = raw(srv.url, "POST", "/triggers/x", b"{}", {})
        assert status == 404 and "trigger-secret-file" in doc["message"]


def test_redis_down_answers_503(redis_factory: Any, tmp_path: Any) -> None:
    r = redis_factory(tmp_path / "r")
    r.start()
    cfg = ServeConfig(port=0, redis_url=r.url, workers=False, partitions=PARTITIONS,
                      log_level="warning")  # fmt: skip
    with run_stageline(cfg) as srv:
        cp = client(srv.url)
        create_hook_source(cp)
        cp.create_pipeline(pipeline=pipeline("down", v2={}))
        out = cp.put_webhook(
            webhook=hook_def("down", "down", authentication="UNAUTHENTICATED",
                             authenticationConfiguration={})
        )["webhook"]  # fmt: skip
        r.kill()
        status, _, doc = raw(srv.url, "POST", path_of(out["url"]), push_body(), {})
        assert status == 503 and doc["__type"] == "ServiceUnavailableException", doc
        status, _, doc = raw(srv.url, "POST", "/triggers/down", push_body(), {})
        assert status == 404  # triggers off: no Redis needed to say so
