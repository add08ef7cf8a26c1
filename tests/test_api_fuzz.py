"""Fuzzing the real API: the app ``stageline serve`` builds (real handlers, real engine, embedded
fakeredis), called as ASGI directly (no network), with random and malformed bodies.

Before every example the store is flushed and re-seeded with the same small world (ids are
deterministic), so the random requests meet real pipelines, executions, stages, approvals and
jobs and get past validation into the engine. No workers run, so no action is ever executed.

Properties: never a 5xx, always a JSON object; an error is AWS-shaped (``__type`` + ``message``
+ ``x-amzn-ErrorType``) and names an error of the service model (or a protocol-level one); a
success body parses with botocore's own parser against the operation's output shape.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import botocore.parsers
import botocore.session
import msgspec
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from app import catalog as cat
from app.api.server import ServeConfig, make_app
from app.api.shapes import OPERATIONS
from app.api.wire import ASGIApp
from app.domain.model import ActionTypeId, PipelineDeclaration
from app.engine import Engine
from app.jobs import JobRef
from app.repository import PipelineRepository
from app.store.connection import fake_client
from app.store.eventstore import EventStore
from app.store.keys import Keys
from tests.api_helpers import (
    asgi_call,
    check_response,
    field_names,
    json_values,
    shaped_objects,
    target,
)

MODEL = botocore.session.get_session().get_service_model("codepipeline")
MODEL_ERRORS = frozenset(
    e.name for op in MODEL.operation_names for e in MODEL.operation_model(op).error_shapes
)
PROTOCOL_ERRORS = frozenset(
    {
        "ValidationException",
        "UnknownOperationException",
        "UnsupportedOperationException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignatureException",
        "PipelineExecutionNotFoundException",
        "ConflictException",
    }
)
SUPPORTED = sorted(OPERATIONS)
UNSUPPORTED = sorted(set(MODEL.operation_names) - set(OPERATIONS))[:5]
ROLE = "arn:aws:iam::123456789012:role/fuzz"
CUSTOM = {"category": "Source", "owner": "Custom", "provider": "Fuzz", "version": "1"}
MANUAL = {"category": "Approval", "owner": "AWS", "provider": "Manual", "version": "1"}
COMMANDS = {"category": "Compute", "owner": "AWS", "provider": "Commands", "version": "1"}


def uid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012x}"


class Ids:
    """Deterministic uuids: the same seed gives the same executions, tokens and jobs."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return uid(self.n)


def declaration(name: str, *stages: Any, mode: str = "SUPERSEDED") -> PipelineDeclaration:
    doc = {"name": name, "roleArn": ROLE, "executionMode": mode, "stages": list(stages)}
    return msgspec.convert(doc, PipelineDeclaration)


DEMO = declaration(
    "demo",
    {
        "name": "Gate",
        "actions": [
            {"name": "a1", "actionTypeId": MANUAL},
            {"name": "a2", "actionTypeId": MANUAL},
        ],
    },
    {
        "name": "Build",
        "actions": [{"name": "compile", "actionTypeId": COMMANDS, "commands": ["true"]}],
    },
    {"name": "Ext", "actions": [{"name": "job", "actionTypeId": CUSTOM}]},
)
FLOW = declaration(
    "flow",
    {
        "name": "Src",
        "actions": [{"name": "fetch", "actionTypeId": CUSTOM, "configuration": {"K": "v"}}],
    },
    {"name": "Approve", "actions": [{"name": "ok", "actionTypeId": MANUAL}]},
    mode="PARALLEL",
)

KNOWN_IDS = 48


@dataclass
class World:
    loop: asyncio.AbstractEventLoop
    redis: Redis
    engine: Engine
    ids: Ids
    app: ASGIApp
    demo_execution: str = ""

    async def seed(self) -> None:
        await self.redis.flushall()
        self.engine.repo.forget()
        self.ids.n = 0
        e = self.engine
        await e.start()
        await e.create_pipeline(DEMO)
        await e.create_pipeline(FLOW)
        key = msgspec.convert(CUSTOM, ActionTypeId).key  # FLOW's custom type, as created
        await cat.CatalogStore(self.redis, e.keys.namespace).change(
            lambda c: [cat.ActionTypeCreated(key=key, declaration={"id": CUSTOM}, at=0.0)]
        )
        # demo: an execution whose Gate stage failed (a1 rejected) while a2 is still waiting
        e1 = self.demo_execution = await e.start_execution("demo", client_request_token="tok-1")
        s = await e.pipeline("demo")
        a1 = next(a for a in s.executions[e1].actions.values() if a.actionName == "a1")
        assert a1.token is not None
        await e.put_approval("demo", "Gate", "a1", a1.token, "Rejected", "no")
        # flow: two executions with open custom jobs (the second acknowledged)
        key = msgspec.convert(CUSTOM, ActionTypeId).key
        for ack in (False, True):
            eid = await e.start_execution("flow")
            s = await e.pipeline("flow")
            a = next(iter(s.executions[eid].actions.values()))
            assert a.jobId is not None and a.jobNonce is not None
            ref = JobRef(a.jobId, key, "flow", eid, a.actionExecutionId)
            await e.jobs.publish(ref, a.startTime)
            if ack:
                await e.acknowledge_job(a.jobId, a.jobNonce)
        assert self.ids.n < KNOWN_IDS, "the seed outgrew the known ids"

    def post(self, op: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        async def run() -> tuple[int, dict[str, str], bytes]:
            await self.seed()
            return await asgi_call(self.app, "POST", "/", list(target(op).items()), [body])

        return self.loop.run_until_complete(run())

    def post_many(
        self, requests: list[tuple[str, bytes]]
    ) -> list[tuple[int, dict[str, str], bytes]]:
        """Seed once, then send the requests in order (each sees the previous ones' effects)."""

        async def run() -> list[tuple[int, dict[str, str], bytes]]:
            await self.seed()
            return [
                await asgi_call(self.app, "POST", "/", list(target(op).items()), [body])
                for op, body in requests
            ]

        return self.loop.run_until_complete(run())

    def close(self) -> None:
        self.loop.run_until_complete(self.redis.aclose())
        self.loop.close()


@contextmanager
def world_context() -> Iterator[World]:
    """The real app over a private fakeredis, with deterministic ids (execution ids too)."""
    loop = asyncio.new_event_loop()
    redis = loop.run_until_complete(fake_client())
    keys = Keys(partitions=2)
    ids = Ids()
    engine = Engine(redis, keys, repository=PipelineRepository(EventStore(redis, keys), new_id=ids))
    w = World(loop, redis, engine, ids, make_app(engine, ServeConfig(partitions=2)))
    try:
        yield w
    finally:
        w.close()


def _seeded_ids() -> dict[str, list[str]]:
    """The ids the seed creates (the same every time), by what they are."""
    with world_context() as w:
        w.loop.run_until_complete(w.seed())
        found: dict[str, list[str]] = {"execution": [], "action": [], "token": [], "job": []}
        found["nonce"] = []
        for name in ("demo", "flow"):
            st_ = w.loop.run_until_complete(w.engine.pipeline(name))
            for x in st_.executions.values():
                found["execution"].append(x.executionId)
                for a in x.actions.values():
                    found["action"].append(a.actionExecutionId)
                    for kind, value in (
                        ("token", a.token),
                        ("job", a.jobId),
                        ("nonce", a.jobNonce),
                    ):
                        if value is not None:
                            found[kind].append(value)
        return found


SEEDED = _seeded_ids()
OTHER_ID = uid(KNOWN_IDS + 1)  # well-formed, unknown
PIPELINES = ["demo", "flow", "nope"]
STAGES = ["Gate", "Build", "Ext", "Src", "Approve", "Nope"]
ACTIONS = ["a1", "a2", "compile", "job", "fetch", "ok", "nope"]
# Per model shape: the values that hit the seeded world (drawn three times out of four).
KNOWN_BY_SHAPE: dict[str, list[Any]] = {
    "PipelineName": PIPELINES,
    "StageName": STAGES,
    "ActionName": ACTIONS,
    "PipelineExecutionId": [*SEEDED["execution"], OTHER_ID],
    "JobId": [*SEEDED["job"], OTHER_ID],
    "ApprovalToken": [*SEEDED["token"], OTHER_ID],
    "Nonce": [*SEEDED["nonce"], "nonce"],
    "ClientRequestToken": ["tok-1", "tok-2"],
    "ActionTypeId": [CUSTOM, MANUAL, COMMANDS],
    "ActionConfigurationKey": ["K"],
    "QueryParamMap": [{"K": "v"}, {"K": "w"}],
    "PipelineDeclaration": [msgspec.to_builtins(DEMO), msgspec.to_builtins(FLOW)],
    "PipelineVersion": [1, 2],
}
# Values for members drawn without the model (real names, random or known values).
KNOWN_VALUES: list[Any] = [
    *PIPELINES, *STAGES, *ACTIONS, *(v for k in SEEDED.values() for v in k), OTHER_ID,
    "FAILED_ACTIONS", "ALL_ACTIONS", "Approved", "Rejected", "Latest", "All", "JobFailed",
    "tok-1", ROLE, CUSTOM, MANUAL, {"summary": "s", "status": "Rejected"},
    {"type": "JobFailed", "message": "m"}, {"pipelineExecutionId": SEEDED["execution"][0]},
    msgspec.to_builtins(DEMO), msgspec.to_builtins(FLOW),
]  # fmt: skip
KNOWN_STRINGS = [v for v in KNOWN_VALUES if isinstance(v, str)]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with world_context() as w:
        yield w


# --- checks -------------------------------------------------------------------------------

_parser = botocore.parsers.create_parser("json")


def check(op: str, status: int, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    decoded = check_response(status, headers, body)
    if currently_in_test_context():  # see --hypothesis-show-statistics
        event(f"{op} -> {status} {decoded.get('__type', '')}")
    if status >= 400:
        assert decoded["__type"] in MODEL_ERRORS | PROTOCOL_ERRORS, decoded
        assert headers["content-type"] == "application/x-amz-json-1.1"
        if decoded["__type"] == "ConflictException":
            assert status == 409
        else:
            assert status == 400, decoded
    elif op in MODEL.operation_names:
        out = MODEL.operation_model(op).output_shape
        parsed = _parser.parse({"body": body, "headers": headers, "status_code": status}, out)
        assert "Error" not in parsed, parsed
    return decoded


# --- strategies ---------------------------------------------------------------------------


def _regex(pattern: str) -> st.SearchStrategy[str] | None:
    try:
        re.compile(pattern)
        return st.from_regex(pattern, fullmatch=True)
    except re.error:
        return None


def _fits(value: str, meta: dict[str, Any]) -> bool:
    if len(value) < meta.get("min", 0) or len(value) > meta.get("max", 10**9):
        return False
    pattern = meta.get("pattern")
    return pattern is None or re.fullmatch(pattern, value) is not None


def from_shape(shape: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values of a botocore shape that mostly satisfy its constraints (known values first)."""
    known = KNOWN_BY_SHAPE.get(shape.name)
    generated = _from_shape(shape, depth)
    if known:
        hit = st.sampled_from(known)
        return st.one_of(hit, hit, hit, generated)
    return generated


def _from_shape(shape: Any, depth: int) -> st.SearchStrategy[Any]:
    meta = shape.metadata
    kind = shape.type_name
    if kind == "structure":
        if depth > 6:
            return st.fixed_dictionaries({})
        required = set(shape.required_members)
        return st.fixed_dictionaries(
            {k: from_shape(v, depth + 1) for k, v in shape.members.items() if k in required},
            optional={
                k: from_shape(v, depth + 1) for k, v in shape.members.items() if k not in required
            },
        )
    if kind == "list":
        return st.lists(
            from_shape(shape.member, depth + 1),
            min_size=meta.get("min", 0),
            max_size=min(meta.get("max", 2), max(meta.get("min", 0), 2)),
        )
    if kind == "map":
        return st.dictionaries(
            from_shape(shape.key, depth + 1), from_shape(shape.value, depth + 1), max_size=2
        )
    if kind == "string":
        if "enum" in meta:
            return st.sampled_from(meta["enum"])
        options: list[st.SearchStrategy[Any]] = []
        known = [v for v in KNOWN_STRINGS if _fits(v, meta)]
        if known:
            options.append(st.sampled_from(known))
        pattern = meta.get("pattern")
        regex = _regex(pattern) if pattern else None
        if regex is not None:
            options.append(regex.filter(lambda v: _fits(v, meta)))
        else:
            options.append(
                st.text(min_size=meta.get("min", 0), max_size=min(meta.get("max", 20), 20))
            )
        return st.one_of(options)
    if kind in ("integer", "long"):
        # no model bound: go past int64 as well (a client may send any JSON number)
        lo, hi = meta.get("min", -(2**70)), meta.get("max", 2**70)
        return st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi]))
    if kind == "boolean":
        return st.booleans()
    if kind in ("float", "double"):
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == "timestamp":
        return st.integers(0, 2**33)
    return json_values


_INPUTS = {op: from_shape(MODEL.operation_model(op).input_shape) for op in SUPPORTED}
known_or_random = st.sampled_from(KNOWN_VALUES) | json_values

# STAGELINE_FUZZ_SCALE=10 runs ten times as many examples (a longer hunt).
SCALE = float(os.environ.get("STAGELINE_FUZZ_SCALE", "1"))


def examples(n: int) -> int:
    return max(1, int(n * SCALE))


FUZZ = settings(
    max_examples=examples(120),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
ops = st.sampled_from(SUPPORTED)


@FUZZ
@given(op=st.sampled_from(SUPPORTED + UNSUPPORTED), body=st.binary(max_size=200))
def test_random_bytes(world: World, op: str, body: bytes) -> None:
    check(op, *world.post(op, body))


@FUZZ
@given(op=ops, value=json_values)
def test_random_json(world: World, op: str, value: Any) -> None:
    check(op, *world.post(op, json.dumps(value).encode()))


@settings(FUZZ, max_examples=examples(250))
@given(data=st.data(), op=ops)
def test_real_field_names_with_random_values(world: World, data: st.DataObject, op: str) -> None:
    obj = data.draw(shaped_objects(op, known_or_random))
    check(op, *world.post(op, json.dumps(obj).encode()))


@settings(FUZZ, max_examples=examples(300))
@given(data=st.data(), op=ops)
def test_model_shaped_requests(world: World, data: st.DataObject, op: str) -> None:
    """Requests that (mostly) satisfy the model reach the handlers and the engine."""
    obj = data.draw(_INPUTS[op], label="request")
    decoded = check(op, *world.post(op, json.dumps(obj).encode()))
    if decoded.get("__type") == "ValidationException":
        assert decoded["message"]


@settings(FUZZ, max_examples=examples(150))
@given(data=st.data(), op=ops)
def test_model_shaped_requests_with_one_member_broken(
    world: World, data: st.DataObject, op: str
) -> None:
    obj = data.draw(_INPUTS[op], label="request")
    if obj:
        key = data.draw(st.sampled_from(sorted(obj)), label="broken member")
        obj[key] = data.draw(known_or_random, label="value")
    check(op, *world.post(op, json.dumps(obj).encode()))


@st.composite
def coherent_request(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A request about things that exist together (pipeline, its stage, its action, ids)."""
    p = draw(st.sampled_from([DEMO, FLOW]))
    sdecl = draw(st.sampled_from(p.stages))
    adecl = draw(st.sampled_from(sdecl.actions))
    eid = draw(st.sampled_from(SEEDED["execution"]))
    job = draw(st.sampled_from(SEEDED["job"]))
    mode = draw(st.sampled_from(["FAILED_ACTIONS", "ALL_ACTIONS"]))
    small = draw(st.integers(1, 3))
    rng = draw(st.sampled_from(["Latest", "All"]))
    names = {"pipelineName": p.name}
    requests: dict[str, dict[str, Any]] = {
        "RetryStageExecution": {
            **names, "stageName": sdecl.name, "pipelineExecutionId": eid, "retryMode": mode,
        },
        "PutApprovalResult": {
            **names, "stageName": sdecl.name, "actionName": adecl.name,
            "token": draw(st.sampled_from(SEEDED["token"])),
            "result": {"summary": "s", "status": draw(st.sampled_from(["Approved", "Rejected"]))},
        },
        "StopPipelineExecution": {
            **names, "pipelineExecutionId": eid, "abandon": draw(st.booleans()), "reason": "r",
        },
        "StartPipelineExecution": {
            "name": p.name, **draw(st.sampled_from([{}, {"clientRequestToken": "tok-1"}])),
        },
        "AcknowledgeJob": {"jobId": job, "nonce": draw(st.sampled_from(SEEDED["nonce"]))},
        "GetJobDetails": {"jobId": job},
        "PutJobSuccessResult": {
            "jobId": job, "outputVariables": {"v": "1"}, "executionDetails": {"summary": "ok"},
        },
        "PutJobFailureResult": {
            "jobId": job, "failureDetails": {"type": "JobFailed", "message": "no"},
        },
        "ListActionExecutions": {
            **names, "maxResults": small,
            "filter": draw(st.sampled_from([
                {}, {"pipelineExecutionId": eid},
                {"latestInPipelineExecution": {"pipelineExecutionId": eid, "startTimeRange": rng}},
            ])),
        },
        "ListPipelineExecutions": {**names, "maxResults": small},
        "GetPipelineExecution": {**names, "pipelineExecutionId": eid},
        "GetPipelineState": {"name": p.name},
        "GetPipeline": {"name": p.name, "version": small},
        "UpdatePipeline": {"pipeline": msgspec.to_builtins(p)},
        "DeletePipeline": {"name": p.name},
        "PollForJobs": {"actionTypeId": CUSTOM, "maxBatchSize": small},
        "ListPipelines": {"maxResults": small},
    }  # fmt: skip
    op = draw(st.sampled_from(sorted(requests)))
    return op, requests[op]


@settings(FUZZ, max_examples=examples(250))
@given(seq=st.lists(coherent_request(), min_size=1, max_size=4))
def test_coherent_request_sequences(world: World, seq: list[tuple[str, dict[str, Any]]]) -> None:
    """Sequences of sensible requests (retry, approve, stop, job results ...) on one world."""
    replies = world.post_many([(op, json.dumps(obj).encode()) for op, obj in seq])
    for (op, _), reply in zip(seq, replies, strict=True):
        check(op, *reply)


def _nest(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


@settings(FUZZ, max_examples=examples(60))
@given(
    op=ops,
    depth=st.sampled_from([63, 64, 65, 100, 500, 999, 1000, 5000, 100_000]) | st.integers(1, 3000),
    kind=st.sampled_from(["array", "object"]),
    where=st.sampled_from(["top", "unknown member", "known member"]),
)
def test_deeply_nested_bodies(world: World, op: str, depth: int, kind: str, where: str) -> None:
    """Nesting is bounded before decoding: never a crash, never a half-applied request."""
    deep = _nest(depth, kind)
    member = sorted(field_names(OPERATIONS[op]))[0]
    body = {
        "top": deep,
        "unknown member": b'{"zzz":' + deep + b"}",
        "known member": b'{"' + member.encode() + b'":' + deep + b"}",
    }[where]
    decoded = check(op, *world.post(op, body))
    if depth > 64:
        assert decoded["__type"] == "ValidationException", decoded


@pytest.mark.parametrize("depth", [10, 64, 65, 500])
def test_deep_free_form_declaration_parts(world: World, depth: int) -> None:
    """artifactStore & co. are free-form JSON: a deep one is refused up front (a stored one
    would break every later read of the pipeline)."""
    decl = msgspec.to_builtins(declaration("deep", DEMO.stages[0]))
    body = json.dumps({"pipeline": {**decl, "artifactStore": {"x": "@"}}}).encode()
    body = body.replace(b'"@"', _nest(depth - 3, "object"))  # {pipeline:{artifactStore:{x:
    create, get = world.post_many([("CreatePipeline", body), ("GetPipeline", b'{"name":"deep"}')])
    created = check("CreatePipeline", *create)
    if depth <= 64:
        assert create[0] == 200, created
        assert get[0] == 200
    else:
        assert created["__type"] == "ValidationException"
        assert json.loads(get[2])["__type"] == "PipelineNotFoundException"


def test_seeded_world_reaches_the_engine(world: World) -> None:
    """The fixture's world is what the strategies aim at (guards against a silent no-op)."""
    retry = {
        "pipelineName": "demo",
        "stageName": "Gate",
        "pipelineExecutionId": "",
        "retryMode": "FAILED_ACTIONS",
    }
    world.post("GetPipelineState", b'{"name": "demo"}')  # seeds
    eid = retry["pipelineExecutionId"] = world.demo_execution
    assert eid in KNOWN_STRINGS
    status, headers, body = world.post("RetryStageExecution", json.dumps(retry).encode())
    assert status == 200, body
    assert check("RetryStageExecution", status, headers, body) == {"pipelineExecutionId": eid}
    status, headers, body = world.post(
        "RetryStageExecution", json.dumps({**retry, "retryMode": "ALL_ACTIONS"}).encode()
    )
    assert json.loads(body)["__type"] == "StageNotRetryableException"
    status, headers, body = world.post("PollForJobs", json.dumps({"actionTypeId": CUSTOM}).encode())
    jobs = check("PollForJobs", status, headers, body)["jobs"]
    assert [j["data"]["pipelineContext"]["pipelineName"] for j in jobs] == ["flow"]
