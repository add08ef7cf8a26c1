"""The event catalogue: every state change of a pipeline is one of these.

Events are msgspec Structs in one tagged union (tag field ``type``). Each is stored inside an
:class:`Envelope` that says who caused it, when, and why. Compatibility rule: a released
event type only ever gains *optional* fields (with defaults), so old logs stay readable.

Events of one pipeline are numbered by one sequence (``Envelope.version``: 1, 2, 3 ... in the
order they were committed), but stored in bounded streams: each execution's events in that
execution's stream, the declaration's events in the pipeline's stream, which also holds a
short reference to every event that changes what decisions across executions need (the
*head*: stage occupancy, waiting queues, active executions). See ``HEAD_EVENTS``.
"""

from __future__ import annotations

import typing
from typing import Literal

import msgspec

from app.domain.artifacts import ArtifactLocation
from app.domain.model import PipelineDeclaration, RetryTrigger, StageRetryMode

Kind = Literal["commands", "approval", "custom", "other", "source"]


class Event(msgspec.Struct, tag_field="type", omit_defaults=True, frozen=True, gc=False):
    """Base of every event body."""


# --- pipeline --------------------------------------------------------------------------------


class PipelineCreated(Event, tag=True, frozen=True):
    declaration: PipelineDeclaration
    concurrencyLimit: int = 50


class PipelineUpdated(Event, tag=True, frozen=True):
    declaration: PipelineDeclaration


class PipelineDeleted(Event, tag=True, frozen=True):
    pass


class StageTransitionDisabled(Event, tag=True, frozen=True):
    """DisableStageTransition: executions stop before the transition (app/domain/transitions.py).
    ``transitionType`` Inbound: into ``stageName``; Outbound: out of it into the next stage."""

    stageName: str
    transitionType: Literal["Inbound", "Outbound"]
    reason: str = ""


class StageTransitionEnabled(Event, tag=True, frozen=True):
    """EnableStageTransition: the transition is open again (the held executions go on in the
    same decision)."""

    stageName: str
    transitionType: Literal["Inbound", "Outbound"]


# --- execution -------------------------------------------------------------------------------


class ExecutionStarted(Event, tag=True, frozen=True):
    executionId: str
    pipelineVersion: int
    triggerType: str = "StartPipelineExecution"
    triggerDetail: str | None = None
    clientRequestToken: str | None = None
    # pipeline-level variables (V2) as resolved at start: declared defaults overridden by
    # StartPipelineExecution(variables=...); None for a pipeline without variables
    variables: dict[str, str] | None = None
    # source revision overrides for this execution ({"actionName", "revisionType",
    # "revisionValue"}), from StartPipelineExecution(sourceRevisions=...) or a webhook
    sourceRevisions: list[dict[str, str]] | None = None


class ExecutionWaiting(Event, tag=True, frozen=True):
    """The execution waits to enter ``stageName`` (occupied; SUPERSEDED and QUEUED only)."""

    executionId: str
    stageName: str


class ExecutionSuperseded(Event, tag=True, frozen=True):
    executionId: str
    byExecutionId: str


class ExecutionSucceeded(Event, tag=True, frozen=True):
    executionId: str


class ExecutionFailed(Event, tag=True, frozen=True):
    executionId: str
    stageName: str
    reason: str = ""


class ExecutionStopping(Event, tag=True, frozen=True):
    executionId: str
    abandon: bool = False
    reason: str | None = None


class ExecutionStopped(Event, tag=True, frozen=True):
    executionId: str
    reason: str | None = None


class RollbackStarted(Event, tag=True, frozen=True):
    """The execution (just started, executionType ROLLBACK) re-runs ``stageName`` only, with
    the variables and source revisions of ``targetExecutionId`` (app/domain/rollback.py).
    ``trigger`` ManualRollback (RollbackStage) or AutomatedRollback (onFailure: ROLLBACK of
    ``failedExecutionId``)."""

    executionId: str
    stageName: str
    targetExecutionId: str
    trigger: Literal["ManualRollback", "AutomatedRollback"] = "ManualRollback"
    failedExecutionId: str | None = None


# --- stage -----------------------------------------------------------------------------------


class StageEntered(Event, tag=True, frozen=True):
    executionId: str
    stageName: str


class StageSucceeded(Event, tag=True, frozen=True):
    executionId: str
    stageName: str
    skipped: bool = False  # a beforeEntry condition with result SKIP: the stage is Skipped


class StageFailed(Event, tag=True, frozen=True):
    """``autoRetry``: an automatic retry follows (at once, or when the running actions end),
    so the execution keeps holding the stage (SUPERSEDED/QUEUED: one execution per stage)."""

    executionId: str
    stageName: str
    reason: str = ""
    autoRetry: bool = False


class StageRetryRequested(Event, tag=True, frozen=True):
    """A retry was accepted (RetryStageExecution, or an automatic one) and awaits applying."""

    executionId: str
    stageName: str
    retryMode: StageRetryMode
    trigger: RetryTrigger = "ManualStageRetry"


class StageRetryStarted(Event, tag=True, frozen=True):
    """The accepted retry is applied: stage and execution are InProgress again."""

    executionId: str
    stageName: str
    retryMode: StageRetryMode
    trigger: RetryTrigger = "ManualStageRetry"


class StageRetryRejected(Event, tag=True, frozen=True):
    executionId: str
    stageName: str
    reason: str = ""
    errorType: str = "StageNotRetryableException"


# --- action ----------------------------------------------------------------------------------


class ActionExecutionScheduled(Event, tag=True, frozen=True):
    executionId: str
    stageName: str
    actionName: str
    actionExecutionId: str
    runOrder: int = 1
    kind: Kind = "other"
    token: str | None = None  # approval token
    jobId: str | None = None  # custom action job
    jobNonce: str | None = None
    pipelineVersion: int | None = None  # the declaration it runs with (runners need no read)
    attempt: int | None = None  # 1 for the action's first run in this execution, then 2 ...
    # what the attempt runs with, variable references resolved (app/domain/resolution.py):
    # each None when the declaration's values hold no reference (they run unchanged)
    resolvedConfiguration: dict[str, str] | None = None
    resolvedCommands: list[str] | None = None
    resolvedEnvironment: dict[str, str] | None = None  # plaintext environmentVariables
    inputArtifacts: dict[str, ArtifactLocation] | None = None  # name -> where it is


class ActionExecutionStarted(Event, tag=True, frozen=True):
    """A worker took the action and holds its lease."""

    executionId: str
    actionExecutionId: str
    worker: str


class JobAcknowledged(Event, tag=True, frozen=True):
    executionId: str
    actionExecutionId: str
    jobId: str
    nonce: str


class ApprovalRecorded(Event, tag=True, frozen=True):
    executionId: str
    actionExecutionId: str
    status: Literal["Approved", "Rejected"]
    summary: str = ""


class ArtifactRevision(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """The revision a source action fetched (model shape ArtifactRevision, without the
    artifact's name: that is the action's declared output artifact)."""

    revisionId: str  # commit id, S3 object version id (or ETag)
    revisionSummary: str | None = None  # commit message / object metadata summary
    revisionUrl: str | None = None
    created: float | None = None  # commit date / object last modified (epoch seconds)
    revisionChangeIdentifier: str | None = None  # e.g. the ETag of an S3 object


class ActionExecutionSucceeded(Event, tag=True, frozen=True):
    executionId: str
    actionExecutionId: str
    summary: str | None = None
    externalExecutionId: str | None = None
    outputVariables: dict[str, str] | None = None
    outputArtifacts: dict[str, ArtifactLocation] | None = None  # name -> where it was stored
    revision: ArtifactRevision | None = None  # source actions: what they fetched


class ActionExecutionFailed(Event, tag=True, frozen=True):
    executionId: str
    actionExecutionId: str
    errorCode: str = "JobFailed"
    message: str = ""
    summary: str | None = None
    externalExecutionId: str | None = None


class ActionExecutionAbandoned(Event, tag=True, frozen=True):
    executionId: str
    actionExecutionId: str
    reason: str = ""


# --- stage conditions (app/domain/conditions.py) ----------------------------------------------

ConditionType = Literal["BEFORE_ENTRY", "ON_SUCCESS", "ON_FAILURE"]
ConditionEndStatus = Literal["Succeeded", "Failed", "Errored", "Abandoned"]


class ConditionStarted(Event, tag=True, frozen=True):
    """A stage's condition (beforeEntry, onSuccess or onFailure) is being evaluated."""

    executionId: str
    stageName: str
    conditionType: ConditionType
    conditionExecutionId: str
    result: str | None = None  # what engages when the condition is not met (met: onFailure)


class RuleExecutionScheduled(Event, tag=True, frozen=True):
    """One rule of a condition runs: evaluated by the engine at once (``kind`` engine) or
    by a runner (``kind`` commands, the ``Commands`` rule)."""

    executionId: str
    stageName: str
    conditionExecutionId: str
    ruleName: str
    ruleExecutionId: str
    provider: str
    kind: Literal["engine", "commands"] = "engine"
    pipelineVersion: int | None = None
    resolvedConfiguration: dict[str, str] | None = None


class RuleExecutionStarted(Event, tag=True, frozen=True):
    """A runner took a ``Commands`` rule and holds its lease."""

    executionId: str
    ruleExecutionId: str
    worker: str


class RuleExecutionDeferred(Event, tag=True, frozen=True):
    """The rule cannot pass yet (a closed deployment window): evaluated again at ``until``."""

    executionId: str
    ruleExecutionId: str
    until: float
    summary: str = ""


class RuleExecutionSucceeded(Event, tag=True, frozen=True):
    executionId: str
    ruleExecutionId: str
    summary: str | None = None


class RuleExecutionFailed(Event, tag=True, frozen=True):
    executionId: str
    ruleExecutionId: str
    errorCode: str = "RuleFailed"
    message: str = ""


class ConditionEnded(Event, tag=True, frozen=True):
    """The condition's result: Succeeded (every rule passed) or Failed (one did not)."""

    executionId: str
    stageName: str
    conditionExecutionId: str
    status: ConditionEndStatus
    summary: str = ""


class StageConditionOverridden(Event, tag=True, frozen=True):
    """OverrideStageCondition: the waiting or failed condition no longer holds the stage
    back (a head event: a failed one had released the stage and ended the execution)."""

    executionId: str
    stageName: str
    conditionType: ConditionType
    conditionExecutionId: str


AnyEvent = (
    PipelineCreated
    | PipelineUpdated
    | PipelineDeleted
    | ExecutionStarted
    | ExecutionWaiting
    | ExecutionSuperseded
    | ExecutionSucceeded
    | ExecutionFailed
    | ExecutionStopping
    | ExecutionStopped
    | StageEntered
    | StageSucceeded
    | StageFailed
    | StageRetryRequested
    | StageRetryStarted
    | StageRetryRejected
    | ActionExecutionScheduled
    | ActionExecutionStarted
    | JobAcknowledged
    | ApprovalRecorded
    | ActionExecutionSucceeded
    | ActionExecutionFailed
    | ActionExecutionAbandoned
    | ConditionStarted
    | RuleExecutionScheduled
    | RuleExecutionStarted
    | RuleExecutionDeferred
    | RuleExecutionSucceeded
    | RuleExecutionFailed
    | ConditionEnded
    | StageConditionOverridden
    | StageTransitionDisabled
    | StageTransitionEnabled
    | RollbackStarted
)

EVENT_TYPES: tuple[type[Event], ...] = typing.get_args(AnyEvent)

# Error code recorded when the worker running an action disappeared (crash, lost lease).
WORKER_LOST = "WorkerLost"

# Events with an executionId that change the pipeline's head (what decisions across
# executions need). Each is stored in its execution's stream, and referenced (type,
# execution, stage) in the pipeline's stream, so the head is folded without reading any
# execution's stream.
HEAD_EVENTS: frozenset[type[Event]] = frozenset(
    {
        ExecutionStarted,
        ExecutionWaiting,
        ExecutionSuperseded,
        StageEntered,
        StageSucceeded,
        StageFailed,
        StageRetryStarted,
        ExecutionSucceeded,
        ExecutionFailed,
        ExecutionStopped,
        StageConditionOverridden,
        RollbackStarted,
    }
)
PIPELINE_EVENTS: frozenset[type[Event]] = frozenset(
    {
        PipelineCreated,
        PipelineUpdated,
        PipelineDeleted,
        StageTransitionDisabled,
        StageTransitionEnabled,
    }
)


def execution_of(e: Event) -> str | None:
    """The execution an event belongs to (its stream), None for a pipeline event."""
    return getattr(e, "executionId", None)


def action_of(e: Event) -> str | None:
    """The action execution an event is about, if any."""
    return getattr(e, "actionExecutionId", None)


class HeadRef(msgspec.Struct, array_like=True, omit_defaults=True, frozen=True, gc=False):
    """What the pipeline's stream keeps of a head event: enough to fold the head.

    ``t`` event type, ``x`` execution id, ``s`` stage (or ''), ``a`` StageFailed.autoRetry.
    """

    t: str
    x: str
    s: str = ""
    a: bool = False


def head_ref(e: Event) -> HeadRef:
    return HeadRef(
        t=type(e).__name__,
        x=getattr(e, "executionId", ""),
        s=getattr(e, "stageName", "") or "",
        a=bool(getattr(e, "autoRetry", False)),
    )


_ref_encoder = msgspec.json.Encoder()
_ref_decoder = msgspec.json.Decoder(HeadRef)


def encode_ref(ref: HeadRef) -> bytes:
    return _ref_encoder.encode(ref)


def decode_ref(data: bytes) -> HeadRef:
    return _ref_decoder.decode(data)


class Envelope(msgspec.Struct, omit_defaults=True, frozen=True, gc=False):
    """One stored event: the body plus who/when/why.

    ``version`` is the event's 1-based position in its pipeline's stream (it is the stream
    entry id, so it is not repeated in the stored payload). ``actor`` is the caller identity
    (access key id) or ``system`` / ``worker:<name>``. ``correlationId`` ties together every
    event that one request caused, directly or through workers; ``causationId`` is the id of
    the event or request that caused this one; ``commandId`` the idempotency key.
    """

    id: str
    pipeline: str
    version: int
    time: float
    actor: str
    event: AnyEvent
    correlationId: str | None = None
    causationId: str | None = None
    commandId: str | None = None
    requestId: str | None = None
    source: str | None = None
    claimed: str | None = None  # an identity the caller claimed, NOT verified (auth off)


class StoredPayload(msgspec.Struct, omit_defaults=True, frozen=True, gc=False):
    """What goes into the stream entry's ``e`` field (the envelope minus pipeline/version)."""

    id: str
    time: float
    actor: str
    event: AnyEvent
    correlationId: str | None = None
    causationId: str | None = None
    commandId: str | None = None
    requestId: str | None = None
    source: str | None = None
    claimed: str | None = None  # an identity the caller claimed, NOT verified (auth off)


_payload_encoder = msgspec.json.Encoder()
_payload_decoder = msgspec.json.Decoder(StoredPayload)


def encode_payload(env: Envelope) -> bytes:
    return _payload_encoder.encode(
        StoredPayload(
            id=env.id,
            time=env.time,
            actor=env.actor,
            event=env.event,
            correlationId=env.correlationId,
            causationId=env.causationId,
            commandId=env.commandId,
            requestId=env.requestId,
            source=env.source,
            claimed=env.claimed,
        )
    )


def decode_payload(pipeline: str, version: int, data: bytes) -> Envelope:
    p = _payload_decoder.decode(data)
    return Envelope(
        id=p.id,
        pipeline=pipeline,
        version=version,
        time=p.time,
        actor=p.actor,
        event=p.event,
        correlationId=p.correlationId,
        causationId=p.causationId,
        commandId=p.commandId,
        requestId=p.requestId,
        source=p.source,
        claimed=p.claimed,
    )


def event_type(ev: Event) -> str:
    return type(ev).__name__
