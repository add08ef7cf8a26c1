"""All 44 CodePipeline operations against the real ``stageline serve``, through boto3.

- every operation answers a minimal valid request with its output shape (walked against the
  botocore model) or with one of its modelled errors, never ``UnsupportedOperationException``;
- tags (pipelines, custom action types, webhooks) with AWS's limits and errors;
- custom action types (declared, listed, required for Custom actions, deleted for good);
- the third-party job protocol, end to end (a ThirdParty action completed by a job worker);
- the smithy rpc-v2-cbor protocol: raw requests encoded by botocore's own serializer from
  the model, and a botocore client made to pick the protocol;
- ``--aws-strict`` (AWS's source-stage rules) and the limits that hold in both modes.

The servers use the embedded store (no Redis needed) with workers on and auth off.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.loaders
import botocore.parsers
import botocore.serialize
import botocore.session
import cbor2
import pytest
from botocore.exceptions import ClientError

from app.api.server import ServeConfig
from tests.api_helpers import AKID, SECRET, Stageline, client, run_stageline, wait_for
from tests.minimal_requests import minimal_requests
from tests.shape_walk import MODEL, walk
from workers.config import WorkerConfig

ROLE = "arn:aws:iam::123456789012:role/all-ops"
COMMANDS = {"category": "Compute", "owner": "AWS", "provider": "Commands", "version": "1"}
SOURCE = {"category": "Source", "owner": "Custom", "provider": "AllOpsSource", "version": "1"}
THIRD = {"category": "Build", "owner": "ThirdParty", "provider": "AllOpsPartner", "version": "1"}
ARTIFACTS = {"minimumCount": 0, "maximumCount": 1}
# Errors any operation may answer (SDK-level, not in per-operation lists).
COMMON_ERRORS = {"ValidationException", "ThrottlingException", "ServiceUnavailableException"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def commands(name: str, *cmds: str) -> dict[str, Any]:
    return {"name": name, "actionTypeId": COMMANDS, "commands": list(cmds or ["true"])}


def pipeline(name: str, *stages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "roleArn": ROLE, "stages": list(stages), **extra}


def stage(name: str, *actions: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "actions": list(actions)}


def _config(**kw: Any) -> ServeConfig:
    worker = WorkerConfig(
        name=unique("all-ops"), block_ms=200, shutdown_grace_s=2.0, reap_every_s=0.5
    )
    return ServeConfig(port=0, worker=worker, log_level="warning", **kw)


@pytest.fixture(scope="module")
def server() -> Iterator[Stageline]:
    with run_stageline(_config()) as srv:
        yield srv


@pytest.fixture(scope="module")
def strict() -> Iterator[Stageline]:
    with run_stageline(_config(aws_strict=True, workers=False)) as srv:
        yield srv


@pytest.fixture
def cp(server: Stageline) -> Any:
    return client(server.url)


def error_code(exc: ClientError) -> str:
    return str(exc.response["Error"]["Code"])


def error_message(exc: ClientError) -> str:
    return str(exc.response["Error"]["Message"])


def _method(op: str) -> str:
    return botocore.xform_name(op)


# --- every operation ----------------------------------------------------------------------


def test_every_operation_answers_with_its_shapes(cp: Any) -> None:
    name = unique("all")
    cp.create_pipeline(pipeline=pipeline(name, stage("S", commands("A"))))
    eid = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]
    requests = minimal_requests(name, execution_id=eid, action_type=SOURCE)
    requests.pop("CreatePipeline")  # done above
    order = [op for op in requests if op != "DeletePipeline"] + ["DeletePipeline"]
    answered: dict[str, str] = {}
    bodies: list[bytes] = []

    def keep_body(response_dict: dict[str, Any], **_: Any) -> None:
        bodies.append(response_dict["body"])

    cp.meta.events.register("before-parse.codepipeline.*", keep_body)
    for op in order:
        try:
            out = getattr(cp, _method(op))(**requests[op])
        except ClientError as exc:
            code = error_code(exc)
            modelled = {e.name for e in MODEL.operation_model(op).error_shapes}
            assert code in modelled | COMMON_ERRORS, (op, code, error_message(exc))
            answered[op] = code
            continue
        out.pop("ResponseMetadata", None)
        answered[op] = "ok"
        # the raw document, as the wire carried it, walks clean against the model
        doc = json.loads(bodies[-1])
        assert walk(op, doc) == [], (op, doc)
    assert "UnsupportedOperationException" not in answered.values()
    # the read operations again over rpc-v2-cbor: the same documents, timestamps as tag 1
    for op in ("ListPipelines", "ListActionTypes", "GetActionType", "ListWebhooks"):
        req = botocore.serialize.create_serializer("smithy-rpc-v2-cbor").serialize_to_request(
            requests[op], MODEL.operation_model(op)
        )
        status, _, body = _post(cp.meta.endpoint_url, req["url_path"], req["body"], req["headers"])
        assert status == 200, body
        doc = _epoch(cbor2.loads(body))
        assert walk(op, doc) == [], (op, doc)
    kept = unique("kept")
    cp.create_pipeline(pipeline=pipeline(kept, stage("S", commands("A"))))
    listed = cbor2.loads(
        _post(
            cp.meta.endpoint_url,
            "/service/CodePipeline_20150709/operation/ListPipelines",
            b"",
            {"smithy-protocol": "rpc-v2-cbor"},
        )[2]
    )
    created = {p["name"]: p["created"] for p in listed["pipelines"]}
    assert isinstance(created[kept], dt.datetime)  # a tag-1 timestamp
    cp.delete_pipeline(name=kept)
    assert len(answered) == len(MODEL.operation_names) - 1  # all but CreatePipeline
    # what works for real in stageline
    for op in (
        "GetPipeline",
        "GetPipelineState",
        "ListPipelines",
        "ListTagsForResource",
        "TagResource",
        "UntagResource",
        "ListActionTypes",
        "GetActionType",
        "EnableStageTransition",
        "PutActionRevision",
        "ListRuleTypes",
        "ListRuleExecutions",
        "ListWebhooks",
        "DeleteWebhook",
        "PutWebhook",
        "RegisterWebhookWithThirdParty",
        "DeletePipeline",
    ):
        assert answered[op] == "ok", (op, answered[op])
    assert answered["DisableStageTransition"] == "ValidationException"
    # the stage S of the started execution: running (refused) or already succeeded (a
    # rollback to it starts); tests/test_api_flow.py covers both for certain
    assert answered["RollbackStage"] in ("ok", "UnableToRollbackStageException")
    assert answered["OverrideStageCondition"] == "ConditionNotOverridableException"
    assert answered["UpdateActionType"] == "ActionTypeNotFoundException"
    # asked before PutWebhook made the webhook (the requests go in name order)
    assert answered["DeregisterWebhookWithThirdParty"] == "WebhookNotFoundException"


def _epoch(value: Any) -> Any:
    """cbor2 decodes tag-1 timestamps to datetimes: back to epoch seconds for the walker."""
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, dict):
        return {k: _epoch(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_epoch(v) for v in value]
    return value


def _first_doc(url: str, op: str, params: dict[str, Any]) -> dict[str, Any]:
    serializer = botocore.serialize.create_serializer("json", include_validation=True)
    req = serializer.serialize_to_request(params, MODEL.operation_model(op))
    status, _, body = _post(url, req["url_path"], req["body"], dict(req["headers"]))
    assert status == 200, body
    doc: dict[str, Any] = json.loads(body)
    return doc


def _post(url: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any, bytes]:
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_responses_carry_aws_defaults_and_milliseconds(cp: Any) -> None:
    name = unique("defaults")
    approval = {
        "name": "Gate",
        "actionTypeId": {
            "category": "Approval",
            "owner": "AWS",
            "provider": "Manual",
            "version": "1",
        },
    }
    created = cp.create_pipeline(
        pipeline=pipeline(name, stage("B", commands("A")), stage("G", approval))
    )
    action = created["pipeline"]["stages"][0]["actions"][0]
    assert action["runOrder"] == 1
    assert action["inputArtifacts"] == [] and action["outputArtifacts"] == []
    gate = created["pipeline"]["stages"][1]["actions"][0]
    assert gate["configuration"] == {}
    doc = _first_doc(cp.meta.endpoint_url, "GetPipeline", {"name": name})
    created_at = doc["metadata"]["created"]
    assert round(created_at, 3) == created_at  # milliseconds, as AWS
    state = cp.get_pipeline_state(name=name)
    first, second = state["stageStates"]
    assert "inboundTransitionState" not in first  # no transition into the first stage
    assert second["inboundTransitionState"] == {"enabled": True}
    cp.delete_pipeline(name=name)


def test_validation_messages_name_the_value(cp: Any) -> None:
    with pytest.raises(cp.exceptions.ValidationException) as exc:
        cp.get_pipeline_execution(pipelineName="p", pipelineExecutionId="not-a-uuid")
    assert error_message(exc.value) == (
        "1 validation error detected: Value 'not-a-uuid' at 'pipelineExecutionId' failed to "
        "satisfy constraint: Member must satisfy regular expression pattern: "
        "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    )
    raw_client = client(cp.meta.endpoint_url, validate=False)  # no client-side checks
    with pytest.raises(cp.exceptions.ValidationException) as exc:
        raw_client.list_pipeline_executions(pipelineName="p", maxResults=0)
    assert "Value '0' at 'maxResults' failed to satisfy constraint" in error_message(exc.value)
    with pytest.raises(cp.exceptions.ValidationException) as exc:  # a list is not repeated
        raw_client.start_pipeline_execution(name="p", variables=[])
    assert error_message(exc.value).startswith("1 validation error detected: Value at 'variables'")


# --- tags ---------------------------------------------------------------------------------


def test_tags_on_pipelines(cp: Any) -> None:
    name = unique("tagged")
    arn = f"arn:aws:codepipeline:us-east-1:000000000000:{name}"
    out = cp.create_pipeline(
        pipeline=pipeline(name, stage("S", commands("A"))),
        tags=[{"key": "team", "value": "ci"}],
    )
    assert out["tags"] == [{"key": "team", "value": "ci"}]
    assert cp.list_tags_for_resource(resourceArn=arn)["tags"] == [{"key": "team", "value": "ci"}]
    cp.tag_resource(
        resourceArn=arn, tags=[{"key": "env", "value": "prod"}, {"key": "team", "value": "ops"}]
    )
    tags = cp.list_tags_for_resource(resourceArn=arn)["tags"]
    assert tags == [{"key": "env", "value": "prod"}, {"key": "team", "value": "ops"}]
    page = cp.list_tags_for_resource(resourceArn=arn, maxResults=1)
    assert page["tags"] == [{"key": "env", "value": "prod"}]
    rest = cp.list_tags_for_resource(resourceArn=arn, nextToken=page["nextToken"])
    assert rest["tags"] == [{"key": "team", "value": "ops"}] and "nextToken" not in rest
    cp.untag_resource(resourceArn=arn, tagKeys=["env", "absent"])
    assert cp.list_tags_for_resource(resourceArn=arn)["tags"] == [{"key": "team", "value": "ops"}]

    # AWS's limits and errors
    many = [{"key": f"k{i}", "value": "v"} for i in range(50)]
    with pytest.raises(cp.exceptions.TooManyTagsException):
        cp.tag_resource(resourceArn=arn, tags=many)  # 50 new + team = 51
    with pytest.raises(cp.exceptions.InvalidTagsException) as reserved:
        cp.tag_resource(resourceArn=arn, tags=[{"key": "aws:owner", "value": "me"}])
    assert "aws:owner" in error_message(reserved.value)
    with pytest.raises(cp.exceptions.InvalidArnException):
        cp.list_tags_for_resource(resourceArn=f"{arn}/not a name")
    with pytest.raises(cp.exceptions.ResourceNotFoundException):
        cp.list_tags_for_resource(resourceArn=f"{arn}-missing")
    with pytest.raises(cp.exceptions.ResourceNotFoundException):
        cp.list_tags_for_resource(resourceArn=arn.replace("000000000000", "111111111111"))
    with pytest.raises(cp.exceptions.ResourceNotFoundException):
        cp.tag_resource(
            resourceArn="arn:aws:codepipeline:us-east-1:000000000000:webhook:nope",
            tags=[{"key": "a", "value": "b"}],
        )
    with pytest.raises(cp.exceptions.TooManyTagsException):
        cp.create_pipeline(
            pipeline=pipeline(unique("many"), stage("S", commands("A"))),
            tags=[*many, {"key": "x", "value": ""}],
        )

    # a deleted and re-created pipeline starts without the old one's tags
    cp.delete_pipeline(name=name)
    with pytest.raises(cp.exceptions.ResourceNotFoundException):
        cp.list_tags_for_resource(resourceArn=arn)
    cp.create_pipeline(pipeline=pipeline(name, stage("S", commands("A"))))
    assert cp.list_tags_for_resource(resourceArn=arn)["tags"] == []
    cp.delete_pipeline(name=name)


# --- custom action types ------------------------------------------------------------------


def test_custom_action_types(cp: Any) -> None:
    provider = unique("Prov")[:35]
    tid = {"category": "Deploy", "owner": "Custom", "provider": provider, "version": "1"}
    decl = pipeline(
        unique("custom"),
        stage("Deploy", {"name": "ship", "actionTypeId": tid}),
    )
    with pytest.raises(cp.exceptions.InvalidActionDeclarationException) as refused:
        cp.create_pipeline(pipeline=decl)
    assert f"Provider: '{provider}'" in error_message(refused.value)
    assert "in action 'ship' is not available" in error_message(refused.value)

    with pytest.raises(cp.exceptions.ActionTypeNotFoundException):
        cp.poll_for_jobs(actionTypeId=tid)
    out = cp.create_custom_action_type(
        category="Deploy",
        provider=provider,
        version="1",
        settings={"entityUrlTemplate": "https://ci.example/{Config:Project}"},
        configurationProperties=[
            {"name": "Project", "required": True, "key": True, "secret": False, "queryable": True}
        ],
        inputArtifactDetails={"minimumCount": 0, "maximumCount": 1},
        outputArtifactDetails={"minimumCount": 0, "maximumCount": 0},
        tags=[{"key": "owner", "value": "deploy-team"}],
    )
    assert out["actionType"]["id"] == tid
    assert out["tags"] == [{"key": "owner", "value": "deploy-team"}]
    type_arn = f"arn:aws:codepipeline:us-east-1:000000000000:actiontype:Custom/Deploy/{provider}/1"
    assert cp.list_tags_for_resource(resourceArn=type_arn)["tags"] == out["tags"]
    with pytest.raises(cp.exceptions.ValidationException) as again:
        cp.create_custom_action_type(
            category="Deploy",
            provider=provider,
            version="1",
            inputArtifactDetails=ARTIFACTS,
            outputArtifactDetails=ARTIFACTS,
        )
    assert "already exists" in error_message(again.value)

    listed = cp.list_action_types()["actionTypes"]
    ids = [t["id"] for t in listed]
    assert COMMANDS in ids and tid in ids  # what the engine runs, and the custom type
    assert [t["id"] for t in cp.list_action_types(actionOwnerFilter="Custom")["actionTypes"]].count(
        tid
    ) == 1
    assert all(
        t["id"]["owner"] == "AWS"
        for t in cp.list_action_types(actionOwnerFilter="AWS")["actionTypes"]
    )
    got = cp.get_action_type(**COMMANDS)["actionType"]
    assert got["id"] == COMMANDS and got["executor"]["type"] == "JobWorker"
    with pytest.raises(cp.exceptions.ActionTypeNotFoundException):
        cp.get_action_type(category="Build", owner="ThirdParty", provider="Nope", version="1")

    assert cp.poll_for_jobs(actionTypeId=tid)["jobs"] == []
    cp.create_pipeline(pipeline=decl)  # now the type exists
    cp.delete_pipeline(name=decl["name"])

    cp.delete_custom_action_type(category="Deploy", provider=provider, version="1")
    assert tid not in [t["id"] for t in cp.list_action_types()["actionTypes"]]
    with pytest.raises(cp.exceptions.ResourceNotFoundException):
        cp.list_tags_for_resource(resourceArn=type_arn)
    with pytest.raises(cp.exceptions.ValidationException) as gone:  # as AWS: never again
        cp.create_custom_action_type(
            category="Deploy",
            provider=provider,
            version="1",
            inputArtifactDetails=ARTIFACTS,
            outputArtifactDetails=ARTIFACTS,
        )
    assert "another version" in error_message(gone.value)
    with pytest.raises(cp.exceptions.InvalidActionDeclarationException):
        cp.create_pipeline(pipeline=decl)


# --- third-party jobs ---------------------------------------------------------------------


def test_third_party_job_protocol(cp: Any) -> None:
    name = unique("partner")
    third = {**THIRD, "provider": unique("P")[:35]}
    cp.create_pipeline(
        pipeline=pipeline(
            name,
            stage("Build", {"name": "partner", "actionTypeId": third, "configuration": {"K": "v"}}),
            stage("Done", commands("d")),
        )
    )
    eid = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]

    def poll() -> Any:
        return cp.poll_for_third_party_jobs(actionTypeId=third, maxBatchSize=5)["jobs"]

    (job,) = wait_for(poll, what="a third-party job")
    job_id, client_id = job["jobId"], job["clientId"]
    uuid.UUID(client_id)  # the model's pattern for clientId
    with pytest.raises(cp.exceptions.InvalidClientTokenException):
        cp.get_third_party_job_details(jobId=job_id, clientToken=str(uuid.uuid4()))
    details = cp.get_third_party_job_details(jobId=job_id, clientToken=client_id)["jobDetails"]
    assert details["id"] == job_id
    assert details["data"]["actionTypeId"] == third
    assert details["data"]["actionConfiguration"] == {"configuration": {"K": "v"}}
    assert details["data"]["pipelineContext"]["pipelineName"] == name
    status = cp.acknowledge_third_party_job(
        jobId=job_id, nonce=details["nonce"], clientToken=client_id
    )["status"]
    assert status == "InProgress"
    cp.put_third_party_job_success_result(
        jobId=job_id,
        clientToken=client_id,
        executionDetails={"summary": "partner did it", "externalExecutionId": "ext-1"},
    )

    def done() -> bool:
        x = cp.get_pipeline_execution(pipelineName=name, pipelineExecutionId=eid)
        return bool(x["pipelineExecution"]["status"] == "Succeeded")

    wait_for(done, what="the execution to succeed")
    # a custom job is not a third-party job
    with pytest.raises(cp.exceptions.ActionTypeNotFoundException):
        cp.poll_for_third_party_jobs(actionTypeId=SOURCE)
    with pytest.raises(cp.exceptions.JobNotFoundException):
        cp.get_third_party_job_details(jobId=str(uuid.uuid4()), clientToken="c")
    cp.delete_pipeline(name=name)


def test_third_party_job_failure(cp: Any) -> None:
    name = unique("partner-fail")
    third = {**THIRD, "provider": unique("F")[:35]}
    cp.create_pipeline(
        pipeline=pipeline(name, stage("Build", {"name": "p", "actionTypeId": third}))
    )
    eid = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]
    (job,) = wait_for(lambda: cp.poll_for_third_party_jobs(actionTypeId=third)["jobs"], what="job")
    with pytest.raises(cp.exceptions.InvalidJobStateException):  # not acknowledged yet
        cp.put_third_party_job_failure_result(
            jobId=job["jobId"],
            clientToken=job["clientId"],
            failureDetails={"type": "JobFailed", "message": "too early"},
        )
    details = cp.get_third_party_job_details(jobId=job["jobId"], clientToken=job["clientId"])
    cp.acknowledge_third_party_job(
        jobId=job["jobId"], nonce=details["jobDetails"]["nonce"], clientToken=job["clientId"]
    )
    cp.put_third_party_job_failure_result(
        jobId=job["jobId"],
        clientToken=job["clientId"],
        failureDetails={"type": "JobFailed", "message": "partner broke"},
    )

    def failed() -> bool:
        x = cp.get_pipeline_execution(pipelineName=name, pipelineExecutionId=eid)
        return bool(x["pipelineExecution"]["status"] == "Failed")

    wait_for(failed, what="the execution to fail")
    cp.delete_pipeline(name=name)


# --- rpc-v2-cbor --------------------------------------------------------------------------


def _cbor_call(url: str, op: str, params: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    """``op`` encoded by botocore's own rpc-v2-cbor serializer from the model; the response
    parsed by botocore's rpc-v2-cbor parser."""
    serializer = botocore.serialize.create_serializer("smithy-rpc-v2-cbor", include_validation=True)
    op_model = MODEL.operation_model(op)
    req = serializer.serialize_to_request(params, op_model)
    assert req["url_path"] == f"/service/CodePipeline_20150709/operation/{op}"
    status, headers, body = _post(url, req["url_path"], req["body"], dict(req["headers"]))
    assert headers["content-type"] == "application/cbor"
    assert headers["smithy-protocol"] == "rpc-v2-cbor"
    parser = botocore.parsers.create_parser("smithy-rpc-v2-cbor")
    shape = op_model.output_shape if status == 200 else None
    parsed = parser.parse({"status_code": status, "headers": headers, "body": body}, shape)
    parsed.pop("ResponseMetadata", None)
    return status, headers, parsed


def test_rpc_v2_cbor_raw_requests(server: Stageline) -> None:
    url = server.url
    name = unique("cbor")
    decl = pipeline(name, stage("S", commands("A")))
    status, _, created = _cbor_call(
        url, "CreatePipeline", {"pipeline": decl, "tags": [{"key": "p", "value": "cbor"}]}
    )
    assert status == 200, created
    assert created["pipeline"]["name"] == name and created["tags"] == [
        {"key": "p", "value": "cbor"}
    ]
    status, _, got = _cbor_call(url, "GetPipeline", {"name": name})
    assert status == 200
    assert got["metadata"]["created"].year >= 2024  # a tag-1 timestamp, parsed to datetime
    assert got["pipeline"]["stages"][0]["actions"][0]["runOrder"] == 1
    status, _, listed = _cbor_call(url, "ListPipelines", {})
    assert status == 200 and name in [p["name"] for p in listed["pipelines"]]
    status, _, started = _cbor_call(url, "StartPipelineExecution", {"name": name})
    assert status == 200
    eid = started["pipelineExecutionId"]
    status, _, x = _cbor_call(
        url, "GetPipelineExecution", {"pipelineName": name, "pipelineExecutionId": eid}
    )
    assert status == 200 and x["pipelineExecution"]["pipelineExecutionId"] == eid
    # errors come back as CBOR too, with the modelled code
    status, headers, err = _cbor_call(url, "GetPipeline", {"name": unique("ghost")})
    assert status == 400 and err["Error"]["Code"] == "PipelineNotFoundException"
    assert headers["x-amzn-errortype"] == "PipelineNotFoundException"
    assert "does not have a pipeline with name" in err["Error"]["Message"]
    status, _, err = _cbor_call(
        url, "GetPipelineExecution", {"pipelineName": name, "pipelineExecutionId": "x" * 36}
    )
    assert status == 400 and err["Error"]["Code"] == "ValidationException"
    assert err["Error"]["Message"].startswith(
        f"1 validation error detected: Value '{'x' * 36}' at 'pipelineExecutionId' failed to "
        "satisfy constraint: Member must satisfy regular expression pattern: "
    )
    # protocol errors
    path = "/service/CodePipeline_20150709/operation/ListPipelines"
    cbor_headers = {"Content-Type": "application/cbor", "smithy-protocol": "rpc-v2-cbor"}
    status, _, body = _post(url, path, b"\xff\xff", cbor_headers)
    assert status == 400 and cbor2.loads(body)["__type"] == "ValidationException"
    status, _, body = _post(url, path, cbor2.dumps({}), {"Content-Type": "application/cbor"})
    assert status == 400 and "smithy-protocol" in cbor2.loads(body)["message"]
    status, _, body = _post(url, "/service/CodePipeline_20150709/operation/Nope", b"", cbor_headers)
    assert status == 400 and cbor2.loads(body)["__type"] == "UnknownOperationException"
    status, _, body = _post(url, path, b"", cbor_headers)  # an empty body is an empty input
    assert status == 200 and "pipelines" in cbor2.loads(body)
    _cbor_call(url, "DeletePipeline", {"name": name})


def cbor_client(url: str, tmp_path: Path, *, secret: str = SECRET) -> Any:
    """A botocore client that picks rpc-v2-cbor: the same model with only that protocol."""
    loader = botocore.loaders.Loader()
    model = loader.load_service_model("codepipeline", "service-2")
    model["metadata"]["protocols"] = ["smithy-rpc-v2-cbor"]
    model["metadata"]["protocol"] = "smithy-rpc-v2-cbor"
    target = tmp_path / "codepipeline" / "2015-07-09"
    target.mkdir(parents=True)
    (target / "service-2.json").write_text(json.dumps(model))
    session = botocore.session.Session()
    session.get_component("data_loader").search_paths.insert(0, str(tmp_path))
    return boto3.Session(botocore_session=session).client(
        "codepipeline",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=AKID,
        aws_secret_access_key=secret,
        config=botocore.config.Config(retries={"total_max_attempts": 1}),
    )


def test_rpc_v2_cbor_with_botocore(server: Stageline, tmp_path: Path) -> None:
    cp = cbor_client(server.url, tmp_path)
    assert cp.meta.service_model.resolved_protocol == "smithy-rpc-v2-cbor"
    name = unique("cbor-sdk")
    cp.create_pipeline(pipeline=pipeline(name, stage("S", commands("A"))))
    eid = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]

    def done() -> bool:
        x = cp.get_pipeline_execution(pipelineName=name, pipelineExecutionId=eid)
        return bool(x["pipelineExecution"]["status"] == "Succeeded")

    wait_for(done, what="the execution to succeed")
    summaries = cp.list_pipeline_executions(pipelineName=name)["pipelineExecutionSummaries"]
    assert summaries[0]["pipelineExecutionId"] == eid
    assert summaries[0]["startTime"].timestamp() > time.time() - 600
    with pytest.raises(cp.exceptions.PipelineNotFoundException):
        cp.get_pipeline_state(name=unique("ghost"))
    cp.delete_pipeline(name=name)


def test_rpc_v2_cbor_is_signed_like_json(tmp_path: Path) -> None:
    cfg = _config(workers=False, credentials={AKID: SECRET})
    with run_stageline(cfg) as srv:
        good = cbor_client(srv.url, tmp_path / "good", secret=SECRET)
        assert "pipelines" in good.list_pipelines()
        bad = cbor_client(srv.url, tmp_path / "bad", secret="wrong")
        with pytest.raises(ClientError) as exc:
            bad.list_pipelines()
        assert error_code(exc.value) == "InvalidSignatureException"
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


# --- aws-strict and limits ----------------------------------------------------------------


def test_aws_strict_source_rules(strict: Stageline, cp: Any) -> None:
    sp = client(strict.url)
    one = pipeline(unique("one"), stage("S", commands("A")))
    with pytest.raises(sp.exceptions.InvalidStructureException) as exc:
        sp.create_pipeline(pipeline=one)
    assert error_message(exc.value).startswith(
        "Pipeline has only 1 stage(s). There should be a minimum of 2 stages in a pipeline"
    )
    store = {"type": "S3", "location": "bucket"}
    no_source = pipeline(
        unique("nosrc"), stage("A", commands("a")), stage("B", commands("b")), artifactStore=store
    )
    with pytest.raises(sp.exceptions.InvalidStructureException) as exc:
        sp.create_pipeline(pipeline=no_source)
    assert "can only contain source actions" in error_message(exc.value)
    sp.create_custom_action_type(
        category="Source",
        provider="StrictSrc",
        version="1",
        inputArtifactDetails={"minimumCount": 0, "maximumCount": 0},
        outputArtifactDetails=ARTIFACTS,
    )
    src = {"name": "src", "actionTypeId": {**SOURCE, "provider": "StrictSrc"}}
    no_store = pipeline(unique("nostore"), stage("Source", src), stage("B", commands("b")))
    with pytest.raises(sp.exceptions.InvalidStructureException) as exc:
        sp.create_pipeline(pipeline=no_store)
    assert "artifactStore" in error_message(exc.value)
    late = pipeline(
        unique("late"),
        stage("Source", src),
        stage("B", dict(src, name="again")),
        artifactStore=store,
    )
    with pytest.raises(sp.exceptions.InvalidStructureException) as exc:
        sp.create_pipeline(pipeline=late)
    assert "source actions can only be in the first stage" in error_message(exc.value)
    good = pipeline(
        unique("good"), stage("Source", src), stage("B", commands("b")), artifactStore=store
    )
    sp.create_pipeline(pipeline=good)
    sp.delete_pipeline(name=good["name"])
    # the default server keeps accepting a pipeline of plain Commands stages
    cp.create_pipeline(pipeline=one)
    cp.delete_pipeline(name=one["name"])


@pytest.mark.parametrize("which", ["default", "strict"])
def test_limits_hold_in_both_modes(which: str, server: Stageline, strict: Stageline) -> None:
    sp = client((server if which == "default" else strict).url)
    store = {"type": "S3", "location": "bucket"}
    stages = [stage(f"S{i}", commands("a")) for i in range(51)]
    with pytest.raises(sp.exceptions.InvalidStructureException) as exc:
        sp.create_pipeline(pipeline=pipeline(unique("wide"), *stages, artifactStore=store))
    assert "Pipeline has 51 stage(s). There should be a maximum of 50" in error_message(exc.value)
    wide = stage("Wide", *[commands(f"a{i}") for i in range(51)])
    with pytest.raises(sp.exceptions.InvalidStructureException) as exc:
        sp.create_pipeline(
            pipeline=pipeline(unique("fat"), stage("S", commands("a")), wide, artifactStore=store)
        )
    assert "Stage 'Wide' has 51 action(s)" in error_message(exc.value)
    with pytest.raises(sp.exceptions.ValidationException) as exc:
        sp.create_pipeline(pipeline=pipeline("n" * 101, stage("S", commands("a"))))
    assert "Member must have length less than or equal to 100" in error_message(exc.value)
