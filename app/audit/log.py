"""The event log of a pipeline (or one execution), annotated for auditors.

Each event becomes a :class:`LogRow` with who (actor, request id), what (event type, stage,
action, status or retry mode) and two derived numbers:

- ``attempt``: for action events, which attempt of that action in that execution and stage
  it is about (1, 2, ... counting ``ActionExecutionScheduled`` events);
- ``retry``: for retry events, the retry's number in that execution and stage (1, 2, ...;
  a requested retry keeps its number when it starts or is rejected), and for action events,
  the retry that created the attempt.

So a retry reads as: ``StageRetryRequested`` (the caller, the mode) -> ``StageRetryStarted``
(the worker that applied it) -> ``ActionExecutionScheduled`` rows with attempt ``2 (retry
1)`` -> their outcomes. Rendering: :func:`format_table` (people) and :func:`format_jsonl`
(tools: the full envelope plus an ``audit`` object with the derived fields).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from app.audit.common import AuditError, iso, log_length, merged_events
from app.domain import events as ev
from app.store.eventstore import EventStore


@dataclass(frozen=True)
class LogRow:
    envelope: ev.Envelope
    type: str
    execution: str | None = None
    stage: str | None = None
    action: str | None = None
    attempt: int | None = None
    retry: int | None = None
    status: str | None = None
    mode: str | None = None
    detail: str | None = None

    @property
    def version(self) -> int:
        return self.envelope.version

    @property
    def actor(self) -> str:
        return self.envelope.actor

    def attempt_label(self) -> str:
        if self.attempt is not None:
            return f"{self.attempt} (retry {self.retry})" if self.retry else str(self.attempt)
        return f"retry {self.retry}" if self.retry else ""

    def audit_fields(self) -> dict[str, Any]:
        d: dict[str, Any] = {"time": iso(self.envelope.time)}
        for k in ("execution", "stage", "action", "attempt", "retry", "status", "mode"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return d


@dataclass
class _Attempt:
    stage: str
    action: str
    number: int
    retry: int | None


@dataclass
class _Annotator:
    """Running counters of one pipeline's log (memory: one small record per attempt)."""

    attempts: dict[str, _Attempt] = field(default_factory=dict)
    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)
    retries: dict[tuple[str, str], int] = field(default_factory=dict)  # numbers given
    pending: dict[tuple[str, str], int] = field(default_factory=dict)  # requested, not applied
    current: dict[tuple[str, str], int] = field(default_factory=dict)  # retry now running

    def _next_retry(self, key: tuple[str, str]) -> int:
        n = self.retries.get(key, 0) + 1
        self.retries[key] = n
        return n

    def row(self, env: ev.Envelope) -> LogRow:
        e = env.event
        t = ev.event_type(e)
        match e:
            case ev.PipelineCreated() | ev.PipelineUpdated():
                return LogRow(env, t, detail=f"pipeline version {e.declaration.version or 1}")
            case ev.PipelineDeleted():
                return LogRow(env, t, status="Deleted")
            case ev.StageTransitionDisabled():
                detail = f"{e.transitionType} transition disabled: {e.reason}"
                return LogRow(env, t, stage=e.stageName, status="Disabled", detail=detail)
            case ev.StageTransitionEnabled():
                detail = f"{e.transitionType} transition enabled"
                return LogRow(env, t, stage=e.stageName, status="Enabled", detail=detail)
            case ev.RollbackStarted():
                detail = f"{e.trigger} to {e.targetExecutionId}"
                if e.failedExecutionId is not None:
                    detail += f" after {e.failedExecutionId} failed"
                return LogRow(
                    env, t, e.executionId, stage=e.stageName, status="Rollback", detail=detail
                )
            case ev.ExecutionStarted():
                trig = e.triggerType + (f" ({e.triggerDetail})" if e.triggerDetail else "")
                return LogRow(env, t, e.executionId, status="InProgress", detail=trig)
            case ev.ExecutionWaiting():
                return LogRow(env, t, e.executionId, stage=e.stageName, status="Waiting")
            case ev.ExecutionSuperseded():
                return LogRow(
                    env, t, e.executionId, status="Superseded", detail=f"by {e.byExecutionId}"
                )
            case ev.ExecutionSucceeded():
                return LogRow(env, t, e.executionId, status="Succeeded")
            case ev.ExecutionFailed():
                return LogRow(
                    env, t, e.executionId, stage=e.stageName, status="Failed", detail=e.reason
                )
            case ev.ExecutionStopping() | ev.ExecutionStopped():
                status = "Stopping" if isinstance(e, ev.ExecutionStopping) else "Stopped"
                mode = None
                if isinstance(e, ev.ExecutionStopping):
                    mode = "STOP_AND_ABANDON" if e.abandon else "STOP_AND_WAIT"
                return LogRow(env, t, e.executionId, status=status, mode=mode, detail=e.reason)
            case ev.StageEntered():
                self.current.pop((e.executionId, e.stageName), None)
                return LogRow(env, t, e.executionId, stage=e.stageName, status="InProgress")
            case ev.StageSucceeded():
                return LogRow(env, t, e.executionId, stage=e.stageName, status="Succeeded")
            case ev.StageFailed():
                detail = e.reason + (" (automatic retry follows)" if e.autoRetry else "")
                return LogRow(
                    env, t, e.executionId, stage=e.stageName, status="Failed", detail=detail
                )
            case ev.StageRetryRequested():
                key = (e.executionId, e.stageName)
                n = self._next_retry(key)
                self.pending[key] = n
                return LogRow(
                    env,
                    t,
                    e.executionId,
                    stage=e.stageName,
                    retry=n,
                    status="Requested",
                    mode=e.retryMode,
                    detail=e.trigger,
                )
            case ev.StageRetryStarted():
                key = (e.executionId, e.stageName)
                n = self.pending.pop(key, 0) or self._next_retry(key)
                self.current[key] = n
                return LogRow(
                    env,
                    t,
                    e.executionId,
                    stage=e.stageName,
                    retry=n,
                    status="Started",
                    mode=e.retryMode,
                    detail=e.trigger,
                )
            case ev.StageRetryRejected():
                rejected = self.pending.pop((e.executionId, e.stageName), 0) or None
                return LogRow(
                    env,
                    t,
                    e.executionId,
                    stage=e.stageName,
                    retry=rejected,
                    status="Rejected",
                    detail=f"{e.errorType}: {e.reason}",
                )
            case ev.ActionExecutionScheduled():
                akey = (e.executionId, e.stageName, e.actionName)
                number = self.counts.get(akey, 0) + 1
                self.counts[akey] = number
                retry = self.current.get((e.executionId, e.stageName))
                self.attempts[e.actionExecutionId] = _Attempt(
                    e.stageName, e.actionName, number, retry
                )
                return LogRow(
                    env,
                    t,
                    e.executionId,
                    e.stageName,
                    e.actionName,
                    number,
                    retry,
                    status="InProgress",
                    detail=f"{e.kind} {e.actionExecutionId}",
                )
            case ev.ActionExecutionStarted():
                return self._action(env, e.executionId, e.actionExecutionId, "Running", e.worker)
            case ev.JobAcknowledged():
                return self._action(
                    env, e.executionId, e.actionExecutionId, "Acknowledged", f"job {e.jobId}"
                )
            case ev.ApprovalRecorded():
                return self._action(
                    env, e.executionId, e.actionExecutionId, e.status, e.summary or None
                )
            case ev.ActionExecutionSucceeded():
                return self._action(env, e.executionId, e.actionExecutionId, "Succeeded", e.summary)
            case ev.ActionExecutionFailed():
                msg = f"{e.errorCode}: {e.message}" if e.message else e.errorCode
                return self._action(env, e.executionId, e.actionExecutionId, "Failed", msg)
            case ev.ActionExecutionAbandoned():
                return self._action(
                    env, e.executionId, e.actionExecutionId, "Abandoned", e.reason or None
                )
            case ev.ConditionStarted():
                return LogRow(
                    env,
                    t,
                    e.executionId,
                    stage=e.stageName,
                    status="InProgress",
                    mode=e.conditionType,
                    detail=f"condition {e.conditionExecutionId} (result {e.result})",
                )
            case ev.ConditionEnded():
                return LogRow(
                    env, t, e.executionId, stage=e.stageName, status=e.status, detail=e.summary
                )
            case ev.StageConditionOverridden():
                return LogRow(
                    env,
                    t,
                    e.executionId,
                    stage=e.stageName,
                    status="Overridden",
                    mode=e.conditionType,
                )
            case ev.RuleExecutionScheduled():
                return LogRow(
                    env,
                    t,
                    e.executionId,
                    stage=e.stageName,
                    action=e.ruleName,
                    status="InProgress",
                    detail=f"rule {e.provider} {e.ruleExecutionId}",
                )
            case ev.RuleExecutionStarted():
                return LogRow(env, t, e.executionId, status="Running", detail=e.worker)
            case ev.RuleExecutionDeferred():
                return LogRow(env, t, e.executionId, status="Waiting", detail=e.summary)
            case ev.RuleExecutionSucceeded():
                return LogRow(env, t, e.executionId, status="Succeeded", detail=e.summary)
            case ev.RuleExecutionFailed():
                return LogRow(
                    env, t, e.executionId, status="Failed", detail=f"{e.errorCode}: {e.message}"
                )
        return LogRow(env, t)  # pragma: no cover - every event type is matched above

    def _action(
        self, env: ev.Envelope, eid: str, aid: str, status: str, detail: str | None
    ) -> LogRow:
        a = self.attempts.get(aid)
        if a is None:
            return LogRow(env, ev.event_type(env.event), eid, status=status, detail=detail)
        return LogRow(
            env,
            ev.event_type(env.event),
            eid,
            a.stage,
            a.action,
            a.number,
            a.retry,
            status=status,
            detail=detail,
        )


async def audit_log(
    store: EventStore,
    pipeline: str,
    *,
    execution: str | None = None,
    since: float | None = None,
    batch: int = 1000,
) -> AsyncIterator[LogRow]:
    """The annotated events of ``pipeline`` in seq order (every stream merged, streamed in
    batches).

    ``execution`` keeps the events of that execution, read from its stream alone; ``since``
    those stamped at or after that epoch time. Attempt and retry numbers count per
    execution and stage, from the execution's first event, so they are the same however
    the rows are filtered.
    """
    if await log_length(store, pipeline) == 0:
        raise AuditError(f"pipeline {pipeline!r} has no event log in this Redis")
    if execution is not None and not await store.redis.exists(
        store.keys.execution_log(pipeline, execution)
    ):
        raise AuditError(f"pipeline {pipeline!r} has no execution {execution!r} in this Redis")
    ann = _Annotator()
    async for chunk in merged_events(store, pipeline, batch=batch, execution=execution):
        for env in chunk:
            row = ann.row(env)
            if since is not None and env.time < since:
                continue
            yield row


# --- rendering -------------------------------------------------------------------------------

COLUMNS: tuple[tuple[str, int], ...] = (
    ("VER", 5),
    ("TIME", 24),
    ("ACTOR", 18),
    ("EVENT", 24),
    ("EXECUTION", 36),
    ("STAGE/ACTION", 18),
    ("ATTEMPT", 13),
    ("STATUS/MODE", 24),
    ("REQUEST", 12),
    ("DETAIL", 0),
)


def _cells(row: LogRow) -> dict[str, str]:
    env = row.envelope
    where = row.stage or ""
    if row.action:
        where = f"{where}/{row.action}"
    status = " ".join(x for x in (row.status, row.mode) if x)
    return {
        "VER": str(env.version),
        "TIME": iso(env.time),
        "ACTOR": env.actor,
        "EVENT": row.type,
        "EXECUTION": row.execution or "",
        "STAGE/ACTION": where,
        "ATTEMPT": row.attempt_label(),
        "STATUS/MODE": status,
        "REQUEST": env.requestId or "",
        "DETAIL": (row.detail or "").replace("\n", " "),
    }


def table_header(*, with_execution: bool = True) -> str:
    return _line({name: name for name, _ in COLUMNS}, with_execution)


def format_table(row: LogRow, *, with_execution: bool = True) -> str:
    """One table line (columns as in :func:`table_header`; long values are not cut)."""
    return _line(_cells(row), with_execution)


def _line(cells: dict[str, str], with_execution: bool) -> str:
    parts = []
    for name, width in COLUMNS:
        if name == "EXECUTION" and not with_execution:
            continue
        parts.append(cells[name].ljust(width) if width else cells[name])
    return "  ".join(parts).rstrip()


_json = msgspec.json.Encoder()


def format_jsonl(row: LogRow) -> str:
    """The full envelope as one JSON line, plus ``audit`` (derived: time, attempt, retry)."""
    doc = msgspec.to_builtins(row.envelope)
    doc["audit"] = row.audit_fields()
    return _json.encode(doc).decode()
