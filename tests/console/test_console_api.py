"""The console's HTTP side without a browser: static files, the signed login and session,
the read models (retry availability computed by the domain check), the event stream."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from app.api.server import ServeConfig
from tests.api_helpers import AKID, SECRET, Stageline, client, run_stageline

pytestmark = pytest.mark.timeout(60)

MANUAL = {"category": "Approval", "owner": "AWS", "provider": "Manual", "version": "1"}


@pytest.fixture(scope="module")
def server() -> Iterator[Stageline]:
    # no workers: nothing moves unless the test moves it (deterministic retry checks)
    with run_stageline(ServeConfig(port=0, workers=False, credentials={AKID: SECRET})) as s:
        yield s


def request(
    s: Stageline,
    method: str,
    path: str,
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    u = urllib.parse.urlsplit(s.url)
    conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def signed_login(s: Stageline, secret: str) -> tuple[int, dict[str, str], bytes]:
    req = AWSRequest(
        method="POST",
        url=s.url + "/console/api/login",
        data=b"{}",
        headers={"content-type": "application/json"},
    )
    SigV4Auth(Credentials(AKID, secret), "codepipeline", "us-east-1").add_auth(req)
    return request(s, "POST", "/console/api/login", body=b"{}", headers=dict(req.headers))


def login(s: Stageline) -> dict[str, str]:
    status, headers, _ = signed_login(s, SECRET)
    assert status == 200
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    return {"cookie": cookie.split(";", 1)[0]}


def get_json(s: Stageline, path: str, cookie: dict[str, str]) -> Any:
    status, _, body = request(s, "GET", path, headers=cookie)
    assert status == 200, body
    return json.loads(body)


def test_static_files_and_headers(server: Stageline) -> None:
    status, headers, body = request(server, "GET", "/console")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"/console/static/console.js" in body
    assert "default-src 'self'" in headers["content-security-policy"]
    for name in ("console.js", "sigv4.js", "console.css"):
        assert request(server, "GET", f"/console/static/{name}")[0] == 200
    for bad in ("../server.py", "nope.js", ".hidden", ""):
        status, headers, _ = request(server, "GET", f"/console/static/{bad}")
        assert status == 404 and headers["x-amzn-errortype"] == "NotFoundException"


def test_login_session_and_read_models(server: Stageline) -> None:
    status, _, body = request(server, "GET", "/console/api/pipelines")
    assert status == 401 and json.loads(body)["__type"] == "AccessDeniedException"
    assert json.loads(request(server, "GET", "/console/api/config")[2])["auth"] is True
    status, _, body = signed_login(server, "wrong")
    assert status == 403 and json.loads(body)["__type"] == "InvalidSignatureException"
    cookie = login(server)
    assert get_json(server, "/console/api/whoami", cookie)["actor"] == (
        f"arn:aws:iam::000000000000:user/{AKID}"  # the key's principal
    )

    cp = client(server.url)
    cp.create_pipeline(
        pipeline={
            "name": "gated",
            "roleArn": "arn:aws:iam::123456789012:role/c",
            "stages": [
                {
                    "name": "Gate",
                    "actions": [
                        {"name": "a", "actionTypeId": MANUAL},
                        {"name": "b", "actionTypeId": MANUAL},
                    ],
                },
                {"name": "After", "actions": [{"name": "c", "actionTypeId": MANUAL}]},
            ],
        }
    )
    eid = cp.start_pipeline_execution(name="gated")["pipelineExecutionId"]
    listed = get_json(server, "/console/api/pipelines", cookie)["pipelines"]
    [row] = [p for p in listed if p["name"] == "gated"]
    assert row["latest"]["pipelineExecutionId"] == eid and row["stages"] == ["Gate", "After"]

    view = get_json(server, "/console/api/pipelines/gated", cookie)
    gate = next(c for c in view["console"] if c["stageName"] == "Gate")
    # both approvals wait: no failed action, so RetryStageExecution would refuse both modes
    for mode in ("FAILED_ACTIONS", "ALL_ACTIONS"):
        opt = gate["retry"][mode]
        assert opt["allowed"] is False and opt["error"] == "StageNotRetryableException"
        assert "no failed or abandoned action" in opt["reason"]
        with pytest.raises(cp.exceptions.StageNotRetryableException):
            cp.retry_stage_execution(
                pipelineName="gated", stageName="Gate", pipelineExecutionId=eid, retryMode=mode
            )
    assert {a["actionName"] for a in gate["approvals"]} == {"a", "b"}
    assert gate["attempts"] == {"a": 1, "b": 1}

    # reject one approval: the stage fails; now FAILED_ACTIONS is allowed, ALL_ACTIONS not
    # (the sibling approval still waits), exactly as the API answers
    token = next(a["token"] for a in gate["approvals"] if a["actionName"] == "a")
    cp.put_approval_result(
        pipelineName="gated",
        stageName="Gate",
        actionName="a",
        result={"summary": "no", "status": "Rejected"},
        token=token,
    )
    x = get_json(server, f"/console/api/pipelines/gated/executions/{eid}", cookie)
    gate_x = next(st for st in x["stages"] if st["stageName"] == "Gate")
    assert gate_x["retry"]["FAILED_ACTIONS"]["allowed"] is True
    assert gate_x["retry"]["ALL_ACTIONS"]["allowed"] is False
    assert "in progress" in gate_x["retry"]["ALL_ACTIONS"]["reason"]
    [attempt] = next(a for a in gate_x["actions"] if a["actionName"] == "a")["attempts"]
    assert (attempt["status"], attempt["summary"]) == ("Failed", "no")
    assert next(st for st in x["stages"] if st["stageName"] == "After")["retry"] is None

    timeline = get_json(server, f"/console/api/pipelines/gated/executions/{eid}/timeline", cookie)
    rejected = [e for e in timeline["events"] if e["type"] == "ApprovalRecorded"]
    assert rejected and rejected[0]["source"]
    assert rejected[0]["actor"] == f"arn:aws:iam::000000000000:user/{AKID}"

    for path in (
        "/console/api/pipelines/nope",
        f"/console/api/pipelines/gated/executions/{'0' * 8}",
        "/console/api/nothing",
    ):
        status, _, body = request(server, "GET", path, headers=cookie)
        assert status == 404, (path, body)
        assert json.loads(body)["__type"].endswith("NotFoundException")

    # logout: the cookie no longer opens anything
    assert request(server, "POST", "/console/api/logout", headers=cookie)[0] == 200
    assert request(server, "GET", "/console/api/pipelines", headers=cookie)[0] == 401


@pytest.fixture(scope="module")
def real_server(real_redis_url: str) -> Iterator[Stageline]:
    """The same on a real Redis: the event feed blocks in XREAD there (flushed, as the
    other real-Redis tests do)."""
    import redis as redis_sync

    url = real_redis_url
    r = redis_sync.Redis.from_url(url)
    r.flushdb()
    cfg = ServeConfig(port=0, workers=False, credentials={AKID: SECRET}, redis_url=url)
    try:
        with run_stageline(cfg) as s:
            yield s
    finally:
        r.flushdb()
        r.close()


@pytest.mark.parametrize("which", ["embedded", "real"])
def test_event_stream_reports_new_events(which: str, request: pytest.FixtureRequest) -> None:
    server: Stageline = request.getfixturevalue("server" if which == "embedded" else "real_server")
    cookie = login(server)
    cp = client(server.url)
    cp.create_pipeline(
        pipeline={
            "name": "streamed",
            "roleArn": "arn:aws:iam::123456789012:role/c",
            "stages": [{"name": "Only", "actions": [{"name": "a", "actionTypeId": MANUAL}]}],
        }
    )
    u = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=10)
    try:
        conn.request("GET", "/console/api/events?pipeline=streamed", headers=cookie)
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("content-type", "").startswith("text/event-stream")
        assert r.readline() == b"retry: 1000\n"
        assert r.readline() == b"event: hello\n"
        eid = cp.start_pipeline_execution(name="streamed")["pipelineExecutionId"]
        seen: list[dict[str, Any]] = []
        while not any(e["type"] == "ExecutionStarted" for e in seen):
            line = r.readline()
            assert line, "the stream ended before the event came"
            if line.startswith(b"data: ["):
                seen += json.loads(line[len(b"data: ") :])
        started = next(e for e in seen if e["type"] == "ExecutionStarted")
        assert started == {
            "pipeline": "streamed",
            "version": started["version"],
            "type": "ExecutionStarted",
            "executionId": eid,
        }
        assert all(e["pipeline"] == "streamed" for e in seen)
    finally:
        conn.close()
