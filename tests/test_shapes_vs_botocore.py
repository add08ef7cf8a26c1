"""The msgspec input shapes agree with the CodePipeline service model shipped in botocore.

Each Struct is walked recursively next to its botocore shape: field names, required-ness,
string length/pattern/enum, integer range, list and map sizes must be the model's. Places
where the project keeps a generic JSON value instead of modelling the shape are listed in
``SIMPLIFIED`` below; every entry there must actually be used (so the list stays honest).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import botocore.session
import msgspec
import msgspec.inspect as mi
import pytest

from app.api.shapes import OPERATIONS
from app.domain.model import PipelineDeclaration
from tests.minimal_requests import minimal_requests

MODEL = botocore.session.get_session().get_service_model("codepipeline")

# Locations (``<model shape>.<member>``, with ``[]`` for a list member and ``{}`` for a map
# value) that are allowed to be a generic JSON object instead of a modelled Struct. These are
# parts of the declaration the engine stores and returns but does not act on.
SIMPLIFIED: frozenset[str] = frozenset(
    {
        "PipelineDeclaration.artifactStore",
        "PipelineDeclaration.artifactStores{}",
        "PipelineDeclaration.variables[]",
        "PipelineDeclaration.triggers[]",
        "StageDeclaration.blockers[]",
        "StageDeclaration.onSuccess",
        "StageDeclaration.beforeEntry",
        "FailureConditions.conditions[]",
        "ActionDeclaration.outputArtifacts[]",
        "ActionDeclaration.inputArtifacts[]",
    }
)

# Model patterns that accept any single-line string; a Struct may leave them out.
TRIVIAL_PATTERNS = frozenset({".*"})


@dataclass
class Walk:
    errors: list[str] = field(default_factory=list)
    simplified_used: set[str] = field(default_factory=set)
    seen: set[tuple[type, str]] = field(default_factory=set)

    def err(self, path: str, msg: str) -> None:
        self.errors.append(f"{path}: {msg}")


def _strip_anchors(pattern: str) -> str:
    if pattern.startswith("^"):
        pattern = pattern[1:]
    for end in ("\\Z", "$"):
        if pattern.endswith(end) and not pattern.endswith("\\" + end):
            pattern = pattern[: -len(end)]
            break
    if pattern.startswith("(?:") and pattern.endswith(")"):  # ^(?:a|b)\Z
        pattern = pattern[3:-1]
    return pattern


def _unwrap_optional(t: mi.Type) -> mi.Type:
    if isinstance(t, mi.UnionType):
        rest = [x for x in t.types if not isinstance(x, mi.NoneType)]
        if len(rest) == 1:
            return rest[0]
    return t


def _min(v: Any) -> Any:
    """A minimum of 0 is no constraint at all; treat it like an absent one."""
    return None if v in (0, None) else v


def _is_generic_json(t: mi.Type) -> bool:
    if isinstance(t, mi.AnyType):
        return True
    return (
        isinstance(t, mi.DictType)
        and isinstance(t.key_type, mi.StrType)
        and isinstance(t.value_type, mi.AnyType)
    )


def check(w: Walk, t: mi.Type, shape: Any, path: str, where: str) -> None:
    """Compare msgspec type ``t`` with botocore ``shape``; ``where`` names the location."""
    t = _unwrap_optional(t)
    if where in SIMPLIFIED and _is_generic_json(t):
        w.simplified_used.add(where)
        return
    kind = shape.type_name
    meta = shape.metadata
    if kind == "structure":
        if not isinstance(t, mi.StructType):
            w.err(path, f"model has structure {shape.name}, Struct has {t!r}")
            return
        key = (t.cls, shape.name)
        if key in w.seen:
            return
        w.seen.add(key)
        if t.forbid_unknown_fields:
            w.err(path, f"{t.cls.__name__} must not forbid unknown fields")
        required = set(shape.required_members)
        names = {f.encode_name for f in t.fields}
        for missing in sorted(required - names):
            w.err(path, f"required model member {missing!r} missing from {t.cls.__name__}")
        for f in t.fields:
            fpath = f"{path}.{f.encode_name}"
            if f.encode_name not in shape.members:
                w.err(fpath, f"not a member of model shape {shape.name}")
                continue
            if f.required != (f.encode_name in required):
                w.err(fpath, f"required={f.required}, model says {f.encode_name in required}")
            check(w, f.type, shape.members[f.encode_name], fpath, f"{shape.name}.{f.encode_name}")
    elif kind == "string":
        if "enum" in meta:
            if not isinstance(t, mi.LiteralType):
                w.err(path, f"model enum {meta['enum']}, Struct has {t!r}")
            elif set(t.values) != set(meta["enum"]):
                w.err(path, f"enum {sorted(map(str, t.values))} != model {sorted(meta['enum'])}")
            return
        if not isinstance(t, mi.StrType):
            w.err(path, f"model has string, Struct has {t!r}")
            return
        if _min(t.min_length) != _min(meta.get("min")):
            w.err(path, f"min length {t.min_length} != model {meta.get('min')}")
        if t.max_length != meta.get("max"):
            w.err(path, f"max length {t.max_length} != model {meta.get('max')}")
        model_pat = meta.get("pattern")
        ours = None if t.pattern is None else _strip_anchors(t.pattern)
        theirs = None if model_pat is None else _strip_anchors(model_pat)
        if theirs in TRIVIAL_PATTERNS and ours in (None, theirs):
            return
        if ours != theirs:
            w.err(path, f"pattern {t.pattern!r} != model {model_pat!r}")
    elif kind in ("integer", "long"):
        if not isinstance(t, mi.IntType):
            w.err(path, f"model has {kind}, Struct has {t!r}")
            return
        if t.gt is not None or t.lt is not None:
            w.err(path, "use ge/le (inclusive) like the model")
        if t.ge != meta.get("min"):
            w.err(path, f"ge {t.ge} != model min {meta.get('min')}")
        if t.le != meta.get("max"):
            w.err(path, f"le {t.le} != model max {meta.get('max')}")
    elif kind == "boolean":
        if not isinstance(t, mi.BoolType):
            w.err(path, f"model has boolean, Struct has {t!r}")
    elif kind == "timestamp":
        if not isinstance(t, mi.FloatType | mi.IntType):
            w.err(path, f"model has timestamp (epoch seconds), Struct has {t!r}")
    elif kind == "list":
        if not isinstance(t, mi.ListType):
            w.err(path, f"model has list, Struct has {t!r}")
            return
        if _min(t.min_length) != _min(meta.get("min")):
            w.err(path, f"list min {t.min_length} != model {meta.get('min')}")
        if t.max_length != meta.get("max"):
            w.err(path, f"list max {t.max_length} != model {meta.get('max')}")
        check(w, t.item_type, shape.member, f"{path}[]", f"{where}[]")
    elif kind == "map":
        if not isinstance(t, mi.DictType):
            w.err(path, f"model has map, Struct has {t!r}")
            return
        if _min(t.min_length) != _min(meta.get("min")):
            w.err(path, f"map min {t.min_length} != model {meta.get('min')}")
        if t.max_length != meta.get("max"):
            w.err(path, f"map max {t.max_length} != model {meta.get('max')}")
        check(w, t.key_type, shape.key, f"{path}<key>", f"{where}<key>")
        check(w, t.value_type, shape.value, f"{path}{{}}", f"{where}{{}}")
    else:
        w.err(path, f"unhandled model type {kind}")


def _walk(cls: type[msgspec.Struct], shape: Any) -> Walk:
    w = Walk()
    check(w, mi.type_info(cls), shape, cls.__name__, shape.name)
    return w


class _WrongRetryInput(msgspec.Struct):
    """Deliberately disagrees with the model (see ``test_checker_catches_mismatches``)."""

    pipelineName: Annotated[str, msgspec.Meta(min_length=1, max_length=99)]
    stageName: str | None = None
    pipelineExecutionId: Annotated[str, msgspec.Meta(pattern="^[0-9]+$")] = ""
    retryMode: Literal["FAILED_ACTIONS"] = "FAILED_ACTIONS"
    bogus: int = 0


@pytest.mark.parametrize("op", sorted(OPERATIONS))
def test_operation_input_matches_model(op: str) -> None:
    assert op in MODEL.operation_names
    cls = OPERATIONS[op]
    shape = MODEL.operation_model(op).input_shape
    assert cls.__name__ == shape.name == f"{op}Input"
    w = _walk(cls, shape)
    assert w.errors == []


def test_pipeline_declaration_matches_model() -> None:
    w = _walk(PipelineDeclaration, MODEL.shape_for("PipelineDeclaration"))
    assert w.errors == []


def test_every_simplification_is_used() -> None:
    used: set[str] = set()
    used |= _walk(PipelineDeclaration, MODEL.shape_for("PipelineDeclaration")).simplified_used
    for op, cls in OPERATIONS.items():
        used |= _walk(cls, MODEL.operation_model(op).input_shape).simplified_used
    assert used == SIMPLIFIED


def test_checker_catches_mismatches() -> None:
    """The walker itself is not vacuous: deliberately wrong Structs are reported."""
    w = _walk(_WrongRetryInput, MODEL.shape_for("RetryStageExecutionInput"))
    text = "\n".join(w.errors)
    assert "pipelineName: max length 99" in text
    assert "stageName: required=False" in text
    assert "stageName: min length None" in text
    assert "pipelineExecutionId: pattern" in text
    assert "retryMode: enum" in text
    assert "bogus: not a member" in text


def test_anchor_stripping() -> None:
    assert _strip_anchors("^[a-z]+$") == "[a-z]+"
    assert _strip_anchors("^[a-z]+\\Z") == "[a-z]+"
    assert _strip_anchors("[a-z]+") == "[a-z]+"
    assert _strip_anchors("^a\\$") == "a\\$"


def test_operations_decode_boto3_serialized_requests() -> None:
    """A request botocore serializes for each operation decodes into our Struct."""
    from botocore.serialize import create_serializer

    uuid = "0f4a1b2c-3d4e-4f50-8a6b-7c8d9e0f1a2b"
    atid = {"category": "Build", "owner": "Custom", "provider": "MyProv", "version": "1"}
    decl = {
        "name": "p",
        "roleArn": "arn:aws:iam::123456789012:role/r",
        "stages": [{"name": "S", "actions": [{"name": "A", "actionTypeId": atid}]}],
    }
    params: dict[str, dict[str, Any]] = {
        "RetryStageExecution": {
            "pipelineName": "p",
            "stageName": "S",
            "pipelineExecutionId": uuid,
            "retryMode": "FAILED_ACTIONS",
        },
        "CreatePipeline": {"pipeline": decl, "tags": [{"key": "k", "value": ""}]},
        "GetPipeline": {"name": "p", "version": 2},
        "UpdatePipeline": {"pipeline": decl},
        "DeletePipeline": {"name": "p"},
        "ListPipelines": {"maxResults": 10},
        "StartPipelineExecution": {
            "name": "p",
            "variables": [{"name": "v", "value": "x"}],
            "clientRequestToken": "abc-1",
            "sourceRevisions": [
                {"actionName": "A", "revisionType": "COMMIT_ID", "revisionValue": "deadbeef"}
            ],
        },
        "StopPipelineExecution": {
            "pipelineName": "p",
            "pipelineExecutionId": uuid,
            "abandon": True,
            "reason": "r",
        },
        "GetPipelineExecution": {"pipelineName": "p", "pipelineExecutionId": uuid},
        "ListPipelineExecutions": {
            "pipelineName": "p",
            "filter": {"succeededInStage": {"stageName": "S"}},
        },
        "GetPipelineState": {"name": "p"},
        "ListActionExecutions": {
            "pipelineName": "p",
            "filter": {
                "latestInPipelineExecution": {
                    "pipelineExecutionId": uuid,
                    "startTimeRange": "All",
                }
            },
        },
        "PollForJobs": {"actionTypeId": atid, "maxBatchSize": 5, "queryParam": {"k": "v"}},
        "AcknowledgeJob": {"jobId": uuid, "nonce": "1"},
        "GetJobDetails": {"jobId": uuid},
        "PutJobSuccessResult": {
            "jobId": uuid,
            "currentRevision": {
                "revision": "r",
                "changeIdentifier": "c",
                "created": 1700000000,
            },
            "executionDetails": {"summary": "ok", "percentComplete": 100},
            "outputVariables": {"out": "1"},
        },
        "PutJobFailureResult": {
            "jobId": uuid,
            "failureDetails": {"type": "JobFailed", "message": "boom"},
        },
        "PutApprovalResult": {
            "pipelineName": "p",
            "stageName": "S",
            "actionName": "A",
            "result": {"summary": "", "status": "Approved"},
            "token": uuid,
        },
    }
    params = {**minimal_requests(), **params}
    assert set(params) == set(OPERATIONS) == set(MODEL.operation_names)
    serializer = create_serializer("json", include_validation=True)
    for op, cls in OPERATIONS.items():
        req = serializer.serialize_to_request(params[op], MODEL.operation_model(op))
        decoded = msgspec.json.decode(req["body"], type=cls)
        assert isinstance(decoded, cls)
