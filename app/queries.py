"""Read side: build the CodePipeline API *output* documents from a :class:`PipelineState`.

Pure functions, no I/O. Every function returns a plain ``dict`` whose member names are
exactly those of the botocore output shape of the operation (``GetPipelineOutput``,
``GetPipelineStateOutput`` ...); ``tests/test_queries.py`` walks every document against the
service model and feeds it through botocore's own JSON response parser. Conventions:

- timestamps are epoch seconds (floats), as the JSON 1.1 protocol sends them;
- a member whose value would be ``None`` (or an empty string where the model has
  ``min: 1``) is left out, never sent as ``null``;
- strings with a model maximum (summaries, error messages) are cut to that maximum;
- the service's errors are raised as :class:`~app.domain.errors.DomainError` with the
  CodePipeline error name (``PipelineNotFoundException``, ``InvalidNextTokenException`` ...).

**States.** A state may be *partial* (head + some executions, see ``app.domain.state``).
The functions read only what they are asked about, but they need the executions they
reference to be in the state:

- :func:`get_pipeline_state` needs every execution named by ``s.stageLatest`` for the
  stages of the current declaration; a missing one raises ``KeyError`` (a caller bug: load
  those executions first). Executions waiting for a stage (``s.waiting``) are always
  ``InProgress`` and need not be loaded.
- :func:`list_pipeline_executions` and :func:`list_action_executions` list the executions
  the state holds; pass a full state (or, for an execution-filtered action listing, a state
  holding that execution) to list everything.

**Pagination.** The functions page over the executions the state holds; the engine gives
them a window of executions read through the store's derived indexes (see
:func:`cursor_item`), so a page costs the same however long the history.
``nextToken`` is opaque: the urlsafe-base64 of a msgpack cursor (operation, pipeline name
and creation time, the filter, the id and start time of the last returned item) followed
by a short checksum. The next page starts right after that item, so items that appear
meanwhile (newer executions go to the front) neither shift nor repeat a page.
A token that does not decode, fails its checksum, or belongs to another pipeline (also a
deleted and re-created one of the same name), another operation or another filter raises
``InvalidNextTokenException``. The checksum catches corruption; it is not a signature (a
token only points into data the caller may read anyway).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import msgspec

from app.domain import transitions
from app.domain.artifacts import ArtifactLocation
from app.domain.errors import DomainError
from app.domain.model import (
    ActionDeclaration,
    PipelineDeclaration,
    StageExecutionStatus,
)
from app.domain.sources import fetched_revisions
from app.domain.state import ActionExec, ExecutionState, PipelineState, StageRun
from app.logs import log_stream_arn

__all__ = [
    "DEFAULT_ACCOUNT",
    "DEFAULT_REGION",
    "MAX_RESULTS",
    "cursor_item",
    "declaration_document",
    "find_job",
    "get_job_details",
    "get_pipeline",
    "get_pipeline_execution",
    "get_pipeline_state",
    "job_document",
    "limit_of",
    "list_action_executions",
    "list_pipeline_executions",
    "pipeline_arn",
    "pipeline_summary",
]

DEFAULT_REGION = "us-east-1"
DEFAULT_ACCOUNT = "000000000000"
# ListPipelineExecutions / ListActionExecutions ``maxResults``: model shape MaxResults, 1..100;
# the documented default is 100.
MAX_RESULTS = 100

# Model maxima of the free-text members we fill.
_SUMMARY_MAX = 2048  # ExecutionSummary
_MESSAGE_MAX = 5000  # Message (ErrorDetails.message)
_EXTERNAL_ID_MAX = 1500  # ExecutionId (ActionExecution.externalExecutionId)
_STOP_REASON_MAX = 200  # StopPipelineExecutionReason
_TRIGGER_DETAIL_MAX = 1024  # TriggerDetail

_STAGE_STATUSES: frozenset[str] = frozenset(
    {"Cancelled", "InProgress", "Failed", "Stopped", "Stopping", "Succeeded", "Skipped"}
)

JSON = dict[str, Any]
T = TypeVar("T")


# --- small helpers -------------------------------------------------------------------------


def _obj(**members: Any) -> JSON:
    """A JSON object without the members whose value is None."""
    return {k: v for k, v in members.items() if v is not None}


def _text(value: str | None, limit: int) -> str | None:
    """None for a missing or empty string (model ``min: 1``), else cut to ``limit``."""
    if not value:
        return None
    return value[:limit]


def pipeline_arn(name: str, *, region: str = DEFAULT_REGION, account: str = DEFAULT_ACCOUNT) -> str:
    return f"arn:aws:codepipeline:{region}:{account}:{name}"


# --- pipelines -----------------------------------------------------------------------------


def get_pipeline(
    s: PipelineState,
    *,
    version: int | None = None,
    region: str = DEFAULT_REGION,
    account: str = DEFAULT_ACCOUNT,
) -> JSON:
    """GetPipelineOutput. ``version`` picks an earlier declaration (GetPipeline's input)."""
    decl = s.require_declaration()
    if version is not None:
        found = s.declarations.get(version)
        if found is None:
            raise DomainError(
                "PipelineVersionNotFoundException",
                f"Pipeline '{s.name}' has no version {version}",
            )
        decl = found
    return {
        "pipeline": declaration_document(decl),
        "metadata": _obj(
            pipelineArn=pipeline_arn(s.name, region=region, account=account),
            created=s.created,
            updated=s.updated,
        ),
    }


def _action_document(a: ActionDeclaration) -> JSON:
    doc: JSON = msgspec.to_builtins(a)
    doc.setdefault("runOrder", 1)
    doc.setdefault("inputArtifacts", [])
    doc.setdefault("outputArtifacts", [])
    t = a.actionTypeId
    if t.category == "Approval" or t.owner != "AWS":
        doc.setdefault("configuration", {})
    return doc


def declaration_document(decl: PipelineDeclaration) -> JSON:
    """A PipelineDeclaration as AWS returns it: every action with ``runOrder`` (1),
    ``inputArtifacts`` and ``outputArtifacts`` ([]) and, for approvals and custom/third-party
    actions, ``configuration`` ({}) filled in when the caller left them out."""
    doc: JSON = msgspec.to_builtins(decl)
    doc["version"] = decl.version or 1
    for stage_doc, stage in zip(doc["stages"], decl.stages, strict=True):
        stage_doc["actions"] = [_action_document(a) for a in stage.actions]
    return doc


def _identity(value: str | None) -> str | None:
    """An identity as AWS sends it: an ARN, or nothing (never a worker or key name)."""
    return value if value is not None and value.startswith("arn:") else None


def pipeline_summary(s: PipelineState) -> JSON:
    """One PipelineSummary (an element of ListPipelinesOutput.pipelines)."""
    decl = s.require_declaration()
    return _obj(
        name=decl.name,
        version=decl.version or 1,
        pipelineType=decl.pipelineType or "V2",
        executionMode=decl.mode,
        created=s.created,
        updated=s.updated,
    )


# --- GetPipelineState ----------------------------------------------------------------------


def _stage_status(status: str) -> StageExecutionStatus:
    return status if status in _STAGE_STATUSES else "InProgress"  # type: ignore[return-value]


def _error_details(a: ActionExec) -> JSON | None:
    if a.status not in ("Failed", "Abandoned"):
        return None
    details = _obj(code=a.errorCode or None, message=_text(a.errorMessage, _MESSAGE_MAX))
    return details or None


def _last_status_change(a: ActionExec) -> float:
    # An attempt changes status when it is scheduled (InProgress) and when it ends; between
    # the two, lastUpdateTime also moves for lease/acknowledge events, which are not changes.
    return a.startTime if a.status == "InProgress" else a.lastUpdateTime


def _action_execution(a: ActionExec) -> JSON:
    """ActionExecution (ActionState.latestExecution)."""
    return _obj(
        actionExecutionId=a.actionExecutionId,
        status=a.status,
        summary=_text(a.summary, _SUMMARY_MAX),
        lastStatusChange=_last_status_change(a),
        token=a.token if a.kind == "approval" else None,
        lastUpdatedBy=_identity(a.updatedBy) if a.kind == "approval" else None,
        externalExecutionId=_text(a.externalExecutionId, _EXTERNAL_ID_MAX),
        errorDetails=_error_details(a),
    )


def _retry_metadata(run: StageRun) -> JSON | None:
    if run.manualRetries == 0 and run.autoRetries == 0:
        return None
    # AWS sends both counters once a stage was retried (0 for the kind that never ran, below
    # the model's documented minimum of 1: a deviation of the service from its own model).
    return _obj(
        autoStageRetryAttempt=run.autoRetries,
        manualStageRetryAttempt=run.manualRetries,
        latestRetryTrigger=run.latestTrigger,
    )


def _stage_state(
    s: PipelineState, stage_name: str, action_names: list[str], *, first: bool = False
) -> JSON:
    doc: JSON = {"stageName": stage_name}
    waiters = s.waiting.get(stage_name) or []
    if waiters:
        inbound = []
        for eid in waiters:
            w = s.executions.get(eid)
            inbound.append(
                {
                    "pipelineExecutionId": eid,
                    "status": _stage_status(w.status) if w is not None else "InProgress",
                }
            )
        doc["inboundExecution"] = inbound[0]  # the next one to enter
        doc["inboundExecutions"] = inbound
    if not first:  # AWS has no transition into the first stage
        doc["inboundTransitionState"] = transitions.inbound_state(s, stage_name)

    run: StageRun | None = None
    x: ExecutionState | None = None
    latest_id = s.stageLatest.get(stage_name)
    if latest_id is not None:
        x = s.executions.get(latest_id)
        if x is None:
            raise KeyError(
                f"execution {latest_id} (latest in stage {stage_name!r}) is not in the state; "
                "get_pipeline_state needs the executions named by stageLatest"
            )
        run = x.stages.get(stage_name)

    action_states: list[JSON] = []
    for name in action_names:
        state: JSON = {"actionName": name}
        if x is not None and run is not None and name in run.latest:
            latest = x.actions[run.latest[name]]
            state["latestExecution"] = _action_execution(latest)
            r = latest.revision
            if r is not None:  # a source action: the revision it fetched
                state["currentRevision"] = {
                    "revisionId": r.revisionId[:_REVISION_MAX],
                    "revisionChangeId": (r.revisionChangeIdentifier or r.revisionId)[
                        :_CHANGE_ID_MAX
                    ],
                    "created": r.created if r.created is not None else latest.lastUpdateTime,
                }
                if r.revisionUrl:
                    state["revisionUrl"] = r.revisionUrl[:_URL_MAX]
        action_states.append(state)
    doc["actionStates"] = action_states

    if x is not None and run is not None:
        doc["latestExecution"] = {
            "pipelineExecutionId": x.executionId,
            "status": _stage_status(run.status),
        }
        if x.executionType != "STANDARD":
            doc["latestExecution"]["type"] = x.executionType
        meta = _retry_metadata(run)
        if meta is not None:
            doc["retryStageMetadata"] = meta
        from app.condition_queries import stage_condition_states  # (it imports this module)

        doc.update(stage_condition_states(x, run))
    return doc


def get_pipeline_state(s: PipelineState) -> JSON:
    """GetPipelineStateOutput, for the stages and actions of the current declaration.

    Raises ``KeyError`` when an execution named by ``s.stageLatest`` (for a current stage)
    is not in ``s`` (see the module docstring on partial states).
    """
    decl = s.require_declaration()
    return _obj(
        pipelineName=decl.name,
        pipelineVersion=decl.version or 1,
        stageStates=[
            _stage_state(s, st.name, [a.name for a in st.actions], first=i == 0)
            for i, st in enumerate(decl.stages)
        ],
        created=s.created,
        updated=s.updated,
    )


# --- pipeline executions -------------------------------------------------------------------


def _trigger(x: ExecutionState) -> JSON:
    return _obj(
        triggerType=x.triggerType,
        triggerDetail=x.triggerDetail[:_TRIGGER_DETAIL_MAX] if x.triggerDetail else None,
    )


_REVISION_MAX = 1500  # Revision
_REVISION_SUMMARY_MAX = 2048  # RevisionSummary
_URL_MAX = 2048  # Url
_CHANGE_ID_MAX = 100  # RevisionChangeIdentifier


def _artifact_revisions(s: PipelineState, x: ExecutionState) -> list[JSON]:
    """ArtifactRevisionList: what the execution's source actions fetched."""
    return [
        _obj(
            name=name,
            revisionId=_text(r.revisionId, _REVISION_MAX),
            revisionChangeIdentifier=_text(r.revisionChangeIdentifier, _CHANGE_ID_MAX),
            revisionSummary=_text(r.revisionSummary, _REVISION_SUMMARY_MAX),
            created=r.created,
            revisionUrl=_text(r.revisionUrl, _URL_MAX),
        )
        for _, name, r in fetched_revisions(s.declaration_for(x), x)
    ]


def _source_revisions(s: PipelineState, x: ExecutionState) -> list[JSON]:
    """SourceRevisionList (ListPipelineExecutions): per source action, its revision."""
    return [
        _obj(
            actionName=action,
            revisionId=_text(r.revisionId, _REVISION_MAX),
            revisionSummary=_text(r.revisionSummary, _REVISION_SUMMARY_MAX),
            revisionUrl=_text(r.revisionUrl, _URL_MAX),
        )
        for action, _, r in fetched_revisions(s.declaration_for(x), x)
    ]


def _rollback_metadata(x: ExecutionState) -> JSON | None:
    if x.rollbackTarget is None:
        return None
    return {"rollbackTargetPipelineExecutionId": x.rollbackTarget}


def get_pipeline_execution(s: PipelineState, execution_id: str) -> JSON:
    """GetPipelineExecutionOutput."""
    s.require_declaration()
    x = s.require_execution(execution_id)
    return {
        "pipelineExecution": _obj(
            pipelineName=s.name,
            pipelineVersion=x.pipelineVersion,
            pipelineExecutionId=x.executionId,
            status=x.status,
            statusSummary=x.statusSummary or None,
            artifactRevisions=_artifact_revisions(s, x),
            trigger=_trigger(x),
            executionMode=s.declaration_for(x).mode,
            executionType=x.executionType,
            rollbackMetadata=_rollback_metadata(x),
            variables=_resolved_variables(x),
        )
    }


def _resolved_variables(x: ExecutionState) -> list[JSON] | None:
    """``ResolvedPipelineVariable`` s of the execution (pipeline-level, as resolved at start)."""
    if not x.variables:
        return None
    return [{"name": k, "resolvedValue": v} for k, v in x.variables.items()]


def _artifact_details(found: Mapping[str, ArtifactLocation] | None) -> list[JSON]:
    """``ArtifactDetail`` s (name, s3location) of an attempt's input or output artifacts."""
    return [{"name": n, "s3location": loc.s3_location()} for n, loc in (found or {}).items()]


def _execution_summary(s: PipelineState, x: ExecutionState) -> JSON:
    stop = None
    if x.status in ("Stopped", "Stopping") and x.statusSummary:
        stop = {"reason": x.statusSummary[:_STOP_REASON_MAX]}
    return _obj(
        pipelineExecutionId=x.executionId,
        status=x.status,
        statusSummary=x.statusSummary or None,
        startTime=x.startTime,
        lastUpdateTime=x.lastUpdateTime,
        sourceRevisions=_source_revisions(s, x),
        trigger=_trigger(x),
        stopTrigger=stop,
        executionMode=s.declaration_for(x).mode,
        executionType=x.executionType,
        rollbackMetadata=_rollback_metadata(x),
    )


def _newest_first(items: list[tuple[float, T]]) -> list[T]:
    """Sort ``(startTime, item)`` pairs given in insertion order: newest first, and among
    equal start times the later-inserted first."""
    indexed = [(t, i, item) for i, (t, item) in enumerate(items)]
    indexed.sort(key=lambda e: (e[0], e[1]), reverse=True)
    return [item for _, _, item in indexed]


def list_pipeline_executions(
    s: PipelineState,
    *,
    max_results: int | None = MAX_RESULTS,
    next_token: str | None = None,
    succeeded_in_stage: str | None = None,
) -> JSON:
    """ListPipelineExecutionsOutput: the executions newest first (start time, then insertion).

    ``succeeded_in_stage`` is the input's ``filter.succeededInStage.stageName``: only
    executions in which that stage succeeded.
    """
    s.require_declaration()
    limit = _limit(max_results)
    pairs: list[tuple[float, ExecutionState]] = []
    for x in s.executions.values():
        if succeeded_in_stage is not None:
            run = x.stages.get(succeeded_in_stage)
            if run is None or run.status != "Succeeded":
                continue
        pairs.append((x.startTime, x))
    ordered = _newest_first(pairs)
    scope = f"succeededInStage={succeeded_in_stage or ''}"
    page, token = _paginate(
        s,
        "ListPipelineExecutions",
        scope,
        ordered,
        key=lambda x: (x.executionId, x.startTime),
        limit=limit,
        next_token=next_token,
    )
    return _obj(
        pipelineExecutionSummaries=[_execution_summary(s, x) for x in page],
        nextToken=token,
    )


# --- action executions ---------------------------------------------------------------------


def _action_input(s: PipelineState, x: ExecutionState, a: ActionExec, region: str) -> JSON:
    decl = s.action_declaration(x, a.stageName, a.actionName)
    if decl is None:  # its declaration is gone (not kept for that pipeline version)
        return {"region": region, "inputArtifacts": []}
    config = dict(decl.configuration or {})
    return _obj(
        actionTypeId=msgspec.to_builtins(decl.actionTypeId),
        configuration=config,
        resolvedConfiguration=dict(a.resolvedConfiguration or config),
        roleArn=decl.roleArn,
        region=decl.region or region,
        inputArtifacts=_artifact_details(a.inputArtifacts),
        namespace=decl.namespace,
    )


def _action_output(s: PipelineState, x: ExecutionState, a: ActionExec, region: str) -> JSON:
    stream = None
    if a.kind == "commands":  # the engine ran it: its output is in the logs API
        stream = log_stream_arn(region, DEFAULT_ACCOUNT, s.name, x.executionId, a.actionExecutionId)
    return {
        "outputArtifacts": _artifact_details(a.outputArtifacts),
        "executionResult": _obj(
            externalExecutionId=a.externalExecutionId or None,
            externalExecutionSummary=a.summary or None,
            errorDetails=_error_details(a),
            logStreamARN=stream,
        ),
        "outputVariables": dict(a.outputVariables or {}),
    }


def _action_detail(s: PipelineState, x: ExecutionState, a: ActionExec, region: str) -> JSON:
    return _obj(
        pipelineExecutionId=x.executionId,
        actionExecutionId=a.actionExecutionId,
        pipelineVersion=a.pipelineVersion,
        stageName=a.stageName,
        actionName=a.actionName,
        startTime=a.startTime,
        lastUpdateTime=a.lastUpdateTime,
        updatedBy=_identity(a.updatedBy),
        status=a.status,
        input=_action_input(s, x, a, region),
        output=_action_output(s, x, a, region),
    )


def _latest_attempts(x: ExecutionState) -> set[str]:
    """The action execution ids that are the latest attempt of their action (per stage)."""
    return {aid for run in x.stages.values() for aid in run.latest.values()}


def list_action_executions(
    s: PipelineState,
    *,
    execution_id: str | None = None,
    latest_in_execution: Mapping[str, Any] | None = None,
    max_results: int | None = MAX_RESULTS,
    next_token: str | None = None,
    region: str = DEFAULT_REGION,
) -> JSON:
    """ListActionExecutionsOutput: every attempt (a failed one and its retries), newest first
    (start time, then insertion order: among equal start times the later-scheduled first).

    ``execution_id`` is the input's ``filter.pipelineExecutionId``. ``latest_in_execution``
    is ``filter.latestInPipelineExecution`` (model shape ``LatestInPipelineExecutionFilter``:
    required ``pipelineExecutionId`` and ``startTimeRange`` = ``Latest`` | ``All``): the
    action executions of that execution; with ``Latest`` only the latest attempt of each
    action (what the execution's current result is made of), with ``All`` every attempt.
    Both filters together must name the same execution (else ``ValidationException``).
    An execution id not in the pipeline raises ``PipelineExecutionNotFoundException``.
    """
    s.require_declaration()
    limit = _limit(max_results)
    latest_only = False
    if latest_in_execution is not None:
        lid = latest_in_execution.get("pipelineExecutionId")
        rng = latest_in_execution.get("startTimeRange")
        if not isinstance(lid, str):
            raise DomainError(
                "ValidationException",
                "Value at 'filter.latestInPipelineExecution.pipelineExecutionId' "
                "failed to satisfy constraint: Member must not be null",
            )
        if rng not in ("Latest", "All"):
            raise DomainError(
                "ValidationException",
                "Value at 'filter.latestInPipelineExecution.startTimeRange' failed to satisfy "
                "constraint: Member must satisfy enum value set: [Latest, All]",
            )
        if execution_id is not None and execution_id != lid:
            raise DomainError(
                "ValidationException",
                "filter.pipelineExecutionId and filter.latestInPipelineExecution."
                "pipelineExecutionId name different executions",
            )
        execution_id = lid
        latest_only = rng == "Latest"

    if execution_id is not None:
        executions = [s.require_execution(execution_id)]
    else:
        executions = list(s.executions.values())

    pairs: list[tuple[float, tuple[ExecutionState, ActionExec]]] = []
    for x in executions:
        keep = _latest_attempts(x) if latest_only else None
        for a in x.actions.values():
            if keep is None or a.actionExecutionId in keep:
                pairs.append((a.startTime, (x, a)))
    ordered = _newest_first(pairs)
    scope = f"execution={execution_id or ''};latest={int(latest_only)}"
    page, token = _paginate(
        s,
        "ListActionExecutions",
        scope,
        ordered,
        key=lambda xa: (f"{xa[0].executionId}/{xa[1].actionExecutionId}", xa[1].startTime),
        limit=limit,
        next_token=next_token,
    )
    return _obj(
        actionExecutionDetails=[_action_detail(s, x, a, region) for x, a in page],
        nextToken=token,
    )


# --- pagination ----------------------------------------------------------------------------


class _Cursor(msgspec.Struct, array_like=True, frozen=True):
    op: str
    pipeline: str
    created: float | None
    scope: str
    last: str  # id of the last item returned
    lastStart: float  # its start time (to resume if that item has vanished)


_cursor_encoder = msgspec.msgpack.Encoder()
_cursor_decoder = msgspec.msgpack.Decoder(_Cursor)
_DIGEST_SIZE = 8
_DIGEST_PERSON = b"stageline-page"
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,2048}")  # NextToken: 1..2048 chars


def _digest(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=_DIGEST_SIZE, person=_DIGEST_PERSON).digest()


def _encode_token(cursor: _Cursor) -> str:
    payload = _cursor_encoder.encode(cursor)
    return base64.urlsafe_b64encode(payload + _digest(payload)).decode("ascii").rstrip("=")


def _invalid_token() -> DomainError:
    return DomainError("InvalidNextTokenException", "The nextToken is not valid")


def _decode_token(token: str) -> _Cursor:
    if not isinstance(token, str) or _TOKEN_RE.fullmatch(token) is None:
        raise _invalid_token()
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _invalid_token() from exc
    payload, digest = raw[:-_DIGEST_SIZE], raw[-_DIGEST_SIZE:]
    if len(raw) <= _DIGEST_SIZE or _digest(payload) != digest:
        raise _invalid_token()
    try:
        return _cursor_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise _invalid_token() from exc


def cursor_item(next_token: str) -> str:
    """The id of the last item a page token points after (``InvalidNextTokenException``
    when it does not decode): for ListPipelineExecutions an execution id, for
    ListActionExecutions ``<execution id>/<action execution id>``. The caller uses it to
    load only the window of executions the next page needs."""
    return _decode_token(next_token).last


def limit_of(max_results: int | None) -> int:
    """The page size for ``maxResults`` (ValidationException when out of range)."""
    return _limit(max_results)


def _limit(max_results: int | None) -> int:
    if max_results is None:
        return MAX_RESULTS
    if isinstance(max_results, bool) or not isinstance(max_results, int):
        raise DomainError(
            "ValidationException",
            "Value at 'maxResults' failed to satisfy constraint: Member must be an integer",
        )
    if not 1 <= max_results <= MAX_RESULTS:
        bound = "greater than or equal to 1" if max_results < 1 else "less than or equal to 100"
        raise DomainError(
            "ValidationException",
            f"Value '{max_results}' at 'maxResults' failed to satisfy constraint: "
            f"Member must have value {bound}",
        )
    return max_results


def _paginate(
    s: PipelineState,
    op: str,
    scope: str,
    ordered: list[T],
    *,
    key: Callable[[T], tuple[str, float]],
    limit: int,
    next_token: str | None,
) -> tuple[list[T], str | None]:
    """One page of ``ordered`` (newest first) and the token for the next page (or None)."""
    start = 0
    if next_token is not None:
        cur = _decode_token(next_token)
        if (cur.op, cur.pipeline, cur.created, cur.scope) != (op, s.name, s.created, scope):
            raise _invalid_token()
        keys = [key(item) for item in ordered]
        ids = [k[0] for k in keys]
        if cur.last in ids:
            start = ids.index(cur.last) + 1
        else:
            # The item vanished (e.g. no longer the latest attempt): go on with older ones.
            start = next((i for i, k in enumerate(keys) if k[1] < cur.lastStart), len(keys))
    page = ordered[start : start + limit]
    if start + limit >= len(ordered) or not page:
        return page, None
    last_id, last_start = key(page[-1])
    token = _encode_token(
        _Cursor(
            op=op,
            pipeline=s.name,
            created=s.created,
            scope=scope,
            last=last_id,
            lastStart=last_start,
        )
    )
    return page, token


# --- jobs (custom actions) -----------------------------------------------------------------


def _job(
    s: PipelineState, execution_id: str, action_execution_id: str
) -> tuple[ExecutionState, ActionExec, ActionDeclaration]:
    not_found = DomainError(
        "JobNotFoundException",
        f"No job for action execution {action_execution_id} in pipeline '{s.name}'",
    )
    if s.declaration is None:
        raise not_found
    x = s.executions.get(execution_id)
    a = x.actions.get(action_execution_id) if x is not None else None
    if x is None or a is None or a.jobId is None:
        raise not_found
    decl = s.action_declaration(x, a.stageName, a.actionName)
    if decl is None:
        raise not_found
    return x, a, decl


def _job_data(
    s: PipelineState,
    x: ExecutionState,
    a: ActionExec,
    decl: ActionDeclaration,
    region: str,
    account: str,
) -> JSON:
    return {
        "actionTypeId": msgspec.to_builtins(decl.actionTypeId),
        "actionConfiguration": {
            "configuration": dict(a.resolvedConfiguration or decl.configuration or {})
        },
        "pipelineContext": {
            "pipelineName": s.name,
            "stage": {"name": a.stageName},
            "action": {"name": a.actionName, "actionExecutionId": a.actionExecutionId},
            "pipelineArn": pipeline_arn(s.name, region=region, account=account),
            "pipelineExecutionId": x.executionId,
        },
        "inputArtifacts": [
            {
                "name": n,
                "location": {
                    "type": "S3",
                    "s3Location": {"bucketName": loc.bucket, "objectKey": loc.key},
                },
            }
            for n, loc in (a.inputArtifacts or {}).items()
        ],
        "outputArtifacts": [],
    }


def job_document(
    s: PipelineState,
    execution_id: str,
    action_execution_id: str,
    *,
    account: str = DEFAULT_ACCOUNT,
    region: str = DEFAULT_REGION,
) -> JSON:
    """One Job (an element of PollForJobsOutput.jobs): id, data, nonce, accountId.

    Raises ``JobNotFoundException`` when that action execution has no job.
    """
    x, a, decl = _job(s, execution_id, action_execution_id)
    assert a.jobId is not None
    return _obj(
        id=a.jobId,
        data=_job_data(s, x, a, decl, region, account),
        nonce=a.jobNonce,
        accountId=account,
    )


def get_job_details(
    s: PipelineState,
    execution_id: str,
    action_execution_id: str,
    *,
    account: str = DEFAULT_ACCOUNT,
    region: str = DEFAULT_REGION,
) -> JSON:
    """GetJobDetailsOutput: ``{"jobDetails": {id, data, accountId}}`` (JobDetails has no
    nonce). Raises ``JobNotFoundException`` when that action execution has no job."""
    x, a, decl = _job(s, execution_id, action_execution_id)
    assert a.jobId is not None
    return {
        "jobDetails": {
            "id": a.jobId,
            "data": _job_data(s, x, a, decl, region, account),
            "accountId": account,
        }
    }


def find_job(s: PipelineState, job_id: str) -> tuple[str, str] | None:
    """``(executionId, actionExecutionId)`` of the job ``job_id`` in the state, else None.

    A linear scan of the held executions; an API with many pipelines wants an index instead.
    """
    for x in s.executions.values():
        for a in x.actions.values():
            if a.jobId == job_id:
                return x.executionId, a.actionExecutionId
    return None
