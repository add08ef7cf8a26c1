"""Pipeline state and ``evolve``: fold one event into it. Pure: no I/O, no clock, no randomness.

One :class:`PipelineState` is the fold of one pipeline's stream. It has a small *head*
(declarations, which execution occupies or waits for each stage, the active executions,
idempotency tokens) and one :class:`ExecutionState` per execution.

A state may be *partial*: the head plus only some executions (what the repository loaded:
the head from the pipeline's stream, each execution from its own stream). Every event's
effect on the head depends on the event alone, never on an execution's state, so folding
the same events into a partial state gives the same head, and the same state for every
execution it holds, as folding into the full state (a property test checks this). Events
about executions that a partial state does not hold only touch the head. ``decide`` on a
partial state raises :class:`NeedExecutions` when it needs an execution that is not held
(the repository loads it and decides again); ``absent`` lists ids known not to exist.

Versions: ``Envelope.version`` numbers a pipeline's events in commit order. The state
keeps the last one folded (``version``), the last one of the pipeline's own stream
(``headVersion``) and each execution the last one of its stream (``ExecutionState.version``);
an event is folded into a part only if it is newer than that part, so folding an event
twice (seen in the log and on a dispatch stream) changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from app.domain import events as ev
from app.domain.artifacts import ArtifactLocation
from app.domain.errors import DomainError
from app.domain.model import (
    ActionDeclaration,
    ActionExecutionStatus,
    PipelineDeclaration,
    PipelineExecutionStatus,
    RetryTrigger,
    StageExecutionStatus,
    StageRetryMode,
)

ACTIVE_STATUSES: frozenset[str] = frozenset({"InProgress", "Stopping"})


class ActionExec(msgspec.Struct, omit_defaults=True, gc=False):
    """One attempt of one action (an action execution)."""

    actionExecutionId: str
    stageName: str
    actionName: str
    runOrder: int
    pipelineVersion: int
    startTime: float
    lastUpdateTime: float
    kind: ev.Kind = "other"
    status: ActionExecutionStatus = "InProgress"
    token: str | None = None
    jobId: str | None = None
    jobNonce: str | None = None
    acknowledged: bool = False
    worker: str | None = None
    summary: str | None = None
    errorCode: str | None = None
    errorMessage: str | None = None
    externalExecutionId: str | None = None
    outputVariables: dict[str, str] | None = None
    updatedBy: str | None = None
    seq: int = 0  # the last event about this attempt (a runner appends against it)
    # what the attempt ran with (variables resolved at scheduling) and what it produced
    resolvedConfiguration: dict[str, str] | None = None
    inputArtifacts: dict[str, ArtifactLocation] | None = None
    outputArtifacts: dict[str, ArtifactLocation] | None = None
    revision: ev.ArtifactRevision | None = None  # a source action's fetched revision


class StageRun(msgspec.Struct, omit_defaults=True, gc=False):
    """One stage within one execution."""

    name: str
    status: StageExecutionStatus = "InProgress"
    group: int = 1  # the runOrder currently running
    latest: dict[str, str] = msgspec.field(default_factory=dict)  # action -> latest attempt id
    manualRetries: int = 0
    autoRetries: int = 0
    latestTrigger: RetryTrigger | None = None
    pendingRetry: StageRetryMode | None = None
    pendingTrigger: RetryTrigger | None = None
    # condition type -> its latest run in this stage (``ExecutionState.conditions``)
    conditions: dict[str, str] = msgspec.field(default_factory=dict)


class RuleRun(msgspec.Struct, omit_defaults=True, gc=False):
    """One run of one rule of a stage condition (a rule execution)."""

    ruleExecutionId: str
    ruleName: str
    provider: str
    stageName: str
    conditionExecutionId: str
    pipelineVersion: int
    startTime: float
    lastUpdateTime: float
    kind: str = "engine"
    status: str = "InProgress"  # RuleExecutionStatus: InProgress Succeeded Failed Abandoned
    summary: str | None = None
    errorCode: str | None = None
    errorMessage: str | None = None
    resolvedConfiguration: dict[str, str] | None = None
    worker: str | None = None
    until: float | None = None  # deferred: evaluated again then
    updatedBy: str | None = None


class ConditionRun(msgspec.Struct, omit_defaults=True, gc=False):
    """One evaluation of one stage condition: its rules and its result."""

    conditionExecutionId: str
    conditionType: str
    stageName: str
    startTime: float
    lastUpdateTime: float
    result: str | None = None
    status: str = "InProgress"  # ConditionExecutionStatus
    summary: str | None = None
    rules: list[str] = msgspec.field(default_factory=list)  # rule execution ids, in order
    overriddenBy: str | None = None


class ExecutionState(msgspec.Struct, omit_defaults=True, gc=False):
    executionId: str
    pipelineVersion: int
    startTime: float
    lastUpdateTime: float
    version: int = 0  # the last event of this execution's stream folded in
    started: int = 0  # the seq of its ExecutionStarted
    status: PipelineExecutionStatus = "InProgress"
    statusSummary: str | None = None
    triggerType: str = "StartPipelineExecution"
    triggerDetail: str | None = None
    currentStage: str | None = None
    waitingFor: str | None = None
    stopAbandon: bool | None = None
    stages: dict[str, StageRun] = msgspec.field(default_factory=dict)
    actions: dict[str, ActionExec] = msgspec.field(default_factory=dict)  # every attempt
    variables: dict[str, str] | None = None  # pipeline-level variables, resolved at start
    sourceRevisions: list[dict[str, str]] | None = None  # overrides asked for at start
    conditions: dict[str, ConditionRun] = msgspec.field(default_factory=dict)  # every run
    rules: dict[str, RuleRun] = msgspec.field(default_factory=dict)  # every rule execution
    executionType: str = "STANDARD"  # ROLLBACK: re-runs rollbackStage as rollbackTarget did
    rollbackTarget: str | None = None
    rollbackStage: str | None = None

    def latest_actions(self, stage: str) -> list[ActionExec]:
        run = self.stages.get(stage)
        if run is None:
            return []
        return [self.actions[a] for a in run.latest.values()]


class Transition(msgspec.Struct, omit_defaults=True, frozen=True, gc=False):
    """The last change of one stage transition (DisableStageTransition / Enable...)."""

    enabled: bool
    at: float
    by: str | None = None
    reason: str | None = None


class NeedExecutions(Exception):
    """``decide`` needs executions a partial state does not hold: load them, decide again."""

    def __init__(self, ids: list[str]) -> None:
        super().__init__(f"executions needed: {', '.join(ids)}")
        self.ids = ids


class PipelineState(msgspec.Struct, omit_defaults=True):
    name: str
    version: int = 0  # the last event folded (pipeline-wide sequence)
    headVersion: int = 0  # the last event of the pipeline's own stream folded
    incarnation: int = 0  # the seq of the PipelineCreated the state is of
    declaration: PipelineDeclaration | None = None
    declarations: dict[int, PipelineDeclaration] = msgspec.field(default_factory=dict)
    created: float | None = None
    updated: float | None = None
    concurrencyLimit: int = 50
    stageLatest: dict[str, str] = msgspec.field(default_factory=dict)
    occupant: dict[str, str] = msgspec.field(default_factory=dict)
    waiting: dict[str, list[str]] = msgspec.field(default_factory=dict)
    active: list[str] = msgspec.field(default_factory=list)
    tokens: dict[str, str] = msgspec.field(default_factory=dict)
    executionCount: int = 0
    executions: dict[str, ExecutionState] = msgspec.field(default_factory=dict)
    partial: bool = False
    absent: list[str] = msgspec.field(default_factory=list)  # partial: known not to exist
    # "<stage>/Inbound" | "<stage>/Outbound" -> its last change (app/domain/transitions.py)
    transitions: dict[str, Transition] = msgspec.field(default_factory=dict)
    # stage -> the latest STANDARD execution that succeeded in it (a rollback's target)
    lastSucceeded: dict[str, str] = msgspec.field(default_factory=dict)
    # stage -> the latest ROLLBACK execution of it (app/domain/rollback.py)
    rollbacks: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def exists(self) -> bool:
        return self.declaration is not None

    def declaration_for(self, x: ExecutionState) -> PipelineDeclaration:
        decl = self.declarations.get(x.pipelineVersion) or self.declaration
        assert decl is not None
        return decl

    def action_declaration(
        self, x: ExecutionState, stage: str, action: str
    ) -> ActionDeclaration | None:
        """The declaration an action of execution ``x`` runs with (its pipeline version)."""
        sdecl = self.declaration_for(x).stage(stage)
        return sdecl.action(action) if sdecl is not None else None

    def require_declaration(self) -> PipelineDeclaration:
        """The current declaration, or PipelineNotFoundException."""
        if self.declaration is None:
            raise DomainError("PipelineNotFoundException", f"Pipeline '{self.name}' not found")
        return self.declaration

    def lookup(self, eid: str) -> ExecutionState | None:
        """The execution, None when there is none; NeedExecutions when a partial state does
        not know."""
        x = self.executions.get(eid)
        if x is None and self.partial and eid not in self.absent:
            raise NeedExecutions([eid])
        if x is not None and (self.declaration is None or x.started < self.incarnation):
            return None  # of a deleted pipeline, or of an earlier one of the same name
        return x

    def require_execution(self, eid: str) -> ExecutionState:
        """The execution, or PipelineExecutionNotFoundException."""
        x = self.lookup(eid)
        if x is None:
            raise DomainError(
                "PipelineExecutionNotFoundException",
                f"Pipeline execution '{eid}' not found in pipeline '{self.name}'",
            )
        return x


def new_state(name: str) -> PipelineState:
    return PipelineState(name=name)


def _release(s: PipelineState, stage: str, eid: str) -> None:
    if s.occupant.get(stage) == eid:
        del s.occupant[stage]


def _unwait(s: PipelineState, eid: str) -> None:
    for stage in [k for k, v in s.waiting.items() if eid in v]:
        s.waiting[stage].remove(eid)
        if not s.waiting[stage]:
            del s.waiting[stage]


def _deactivate(s: PipelineState, eid: str) -> None:
    if eid in s.active:
        s.active.remove(eid)


def _parallel(s: PipelineState) -> bool:
    return s.declaration is not None and s.declaration.mode == "PARALLEL"


def evolve(s: PipelineState, env: ev.Envelope) -> PipelineState:
    """Fold one event into ``s`` (in place) and return it."""
    e = env.event
    t = env.time
    v = env.version
    kind = type(e)
    if v > s.version:
        s.version = v
    if kind in _ATTEMPT_EVENTS:  # most of every log; they never change the head
        x = s.executions.get(e.executionId)  # type: ignore[union-attr]
        if x is not None and v > x.version:
            x.version = v
            x.lastUpdateTime = t
            _evolve_execution(x, e, env)
        return s
    if kind in ev.PIPELINE_EVENTS:
        if v > s.headVersion:
            _evolve_pipeline(s, e, v, t, env.actor)
        return s
    eid: str = e.executionId  # type: ignore[union-attr]
    if kind is ev.ExecutionStarted:
        assert isinstance(e, ev.ExecutionStarted)
        if eid not in s.executions and eid not in s.absent and not _folded(s, eid, v):
            s.executions[eid] = ExecutionState(
                executionId=eid,
                pipelineVersion=e.pipelineVersion,
                startTime=t,
                lastUpdateTime=t,
                started=v,
            )
        if e.clientRequestToken is not None:
            s.tokens[e.clientRequestToken] = eid
    if kind in ev.HEAD_EVENTS and v > s.headVersion:
        s.headVersion = v
        _head(s, kind.__name__, eid, getattr(e, "stageName", ""), getattr(e, "autoRetry", False))
    x = s.executions.get(eid)
    if x is not None and v > x.version:
        x.version = v
        x.lastUpdateTime = t
        _evolve_execution(x, e, env)
    return s


def _folded(s: PipelineState, eid: str, v: int) -> bool:
    """A state that has folded its head past ``v`` without holding execution ``eid``: a
    partial state that did not load it, or a full one whose pipeline was deleted since (do
    not create a blank one: folding an event again changes nothing)."""
    return v <= s.headVersion


def evolve_ref(s: PipelineState, version: int, ref: ev.HeadRef) -> PipelineState:
    """Fold a head event from its reference in the pipeline's stream (the head only)."""
    if version > s.version:
        s.version = version
    if version > s.headVersion:
        s.headVersion = version
        _head(s, ref.t, ref.x, ref.s, ref.a)
    return s


def _evolve_pipeline(s: PipelineState, e: ev.Event, v: int, t: float, actor: str) -> None:
    match e:
        case ev.PipelineCreated():
            fresh = PipelineState(name=s.name, version=s.version, headVersion=v, incarnation=v)
            fresh.partial = s.partial
            fresh.declaration = e.declaration
            fresh.declarations = {e.declaration.version or 1: e.declaration}
            fresh.created = fresh.updated = t
            fresh.concurrencyLimit = e.concurrencyLimit
            for f in msgspec.structs.fields(PipelineState):
                setattr(s, f.name, getattr(fresh, f.name))
        case ev.PipelineUpdated():
            s.headVersion = v
            s.declaration = e.declaration
            s.declarations[e.declaration.version or 1] = e.declaration
            s.updated = t
        case ev.PipelineDeleted():
            keep = (s.version, s.partial)
            for f in msgspec.structs.fields(PipelineState):
                setattr(s, f.name, getattr(PipelineState(name=s.name), f.name))
            s.version, s.partial = keep
            s.headVersion = v
        case ev.StageTransitionDisabled() | ev.StageTransitionEnabled():
            s.headVersion = v
            on = isinstance(e, ev.StageTransitionEnabled)
            why = None if isinstance(e, ev.StageTransitionEnabled) else e.reason or None
            change = Transition(enabled=on, at=t, by=actor or None, reason=why)
            s.transitions = {**s.transitions, f"{e.stageName}/{e.transitionType}": change}
        case _:
            pass


# Events about one action attempt: they never change the head. The fold goes straight to
# their own cases, which it tries first (they are most of every log).
_ATTEMPT_EVENTS: frozenset[type[ev.Event]] = frozenset(
    {
        ev.ActionExecutionScheduled,
        ev.ActionExecutionStarted,
        ev.ActionExecutionSucceeded,
        ev.ActionExecutionFailed,
        ev.ActionExecutionAbandoned,
        ev.JobAcknowledged,
        ev.ApprovalRecorded,
    }
)


def _head(s: PipelineState, kind: str, eid: str, stage: str, auto_retry: bool) -> None:
    """A head event's effect on the head: from the event itself or from its reference."""
    match kind:
        case "ExecutionStarted":
            s.active.append(eid)
            s.executionCount += 1
        case "ExecutionWaiting":
            s.waiting.setdefault(stage, []).append(eid)
        case "ExecutionSuperseded":
            _unwait(s, eid)
            _deactivate(s, eid)
        case "StageEntered":
            _unwait(s, eid)
            s.stageLatest[stage] = eid
            if not _parallel(s):
                s.occupant[stage] = eid
        case "StageSucceeded":
            _release(s, stage, eid)
            if s.rollbacks.get(stage) != eid:
                s.lastSucceeded = {**s.lastSucceeded, stage: eid}
        case "StageFailed":
            if not auto_retry:
                _release(s, stage, eid)
        case "StageRetryStarted" | "StageConditionOverridden":
            if eid not in s.active:
                s.active.append(eid)
            s.stageLatest[stage] = eid
            if not _parallel(s):
                s.occupant[stage] = eid
        case "ExecutionSucceeded" | "ExecutionFailed":
            _deactivate(s, eid)
        case "ExecutionStopped":
            _deactivate(s, eid)
            _unwait(s, eid)
            for st in [k for k, v in s.occupant.items() if v == eid]:
                del s.occupant[st]
        case "RollbackStarted":
            s.rollbacks = {**s.rollbacks, stage: eid}
        case _:
            pass


def evolve_execution(s: PipelineState, env: ev.Envelope) -> None:
    """Fold an event of an execution's stream into that execution alone (not the head:
    a partial state folds its head from the pipeline's own stream)."""
    x = s.executions.get(env.event.executionId)  # type: ignore[union-attr]
    if x is not None and env.version > x.version:
        x.version = env.version
        x.lastUpdateTime = env.time
        _evolve_execution(x, env.event, env)
    if env.version > s.version:
        s.version = env.version


def _evolve_execution(x: ExecutionState, e: ev.Event, env: ev.Envelope) -> None:
    _evolve_execution_body(x, e, env)
    aid = getattr(e, "actionExecutionId", None)
    if aid is not None:
        a = x.actions.get(aid)
        if a is not None:
            a.seq = env.version


def _evolve_execution_body(x: ExecutionState, e: ev.Event, env: ev.Envelope) -> None:
    t = env.time
    run: StageRun | None
    match e:
        case ev.ExecutionStarted():
            x.triggerType = e.triggerType
            x.triggerDetail = e.triggerDetail
            x.variables = e.variables
            x.sourceRevisions = e.sourceRevisions
        case ev.ActionExecutionScheduled():
            x.actions[e.actionExecutionId] = ActionExec(
                actionExecutionId=e.actionExecutionId,
                stageName=e.stageName,
                actionName=e.actionName,
                runOrder=e.runOrder,
                pipelineVersion=x.pipelineVersion,
                startTime=t,
                lastUpdateTime=t,
                kind=e.kind,
                token=e.token,
                jobId=e.jobId,
                jobNonce=e.jobNonce,
                resolvedConfiguration=e.resolvedConfiguration,
                inputArtifacts=e.inputArtifacts,
            )
            run = x.stages[e.stageName]
            run.latest[e.actionName] = e.actionExecutionId
            run.group = e.runOrder
        case ev.ActionExecutionStarted():
            a = x.actions[e.actionExecutionId]
            a.worker = e.worker
            a.lastUpdateTime = t
        case ev.JobAcknowledged():
            a = x.actions[e.actionExecutionId]
            a.acknowledged = True
            a.lastUpdateTime = t
        case ev.ApprovalRecorded():
            a = x.actions[e.actionExecutionId]
            a.summary = e.summary or None
            a.updatedBy = env.actor
            a.lastUpdateTime = t
        case ev.ActionExecutionSucceeded():
            a = x.actions[e.actionExecutionId]
            a.status = "Succeeded"
            a.lastUpdateTime = t
            a.summary = e.summary if e.summary is not None else a.summary
            a.externalExecutionId = e.externalExecutionId
            a.outputVariables = e.outputVariables
            a.outputArtifacts = e.outputArtifacts
            a.updatedBy = a.updatedBy or env.actor
            a.revision = e.revision
        case ev.ActionExecutionFailed():
            a = x.actions[e.actionExecutionId]
            a.status = "Failed"
            a.lastUpdateTime = t
            a.errorCode = e.errorCode
            a.errorMessage = e.message
            a.summary = e.summary if e.summary is not None else a.summary
            a.externalExecutionId = e.externalExecutionId
            a.updatedBy = a.updatedBy or env.actor
        case ev.ActionExecutionAbandoned():
            a = x.actions[e.actionExecutionId]
            a.status = "Abandoned"
            a.lastUpdateTime = t
            a.errorMessage = e.reason or None
        case ev.ExecutionWaiting():
            x.waitingFor = e.stageName
        case ev.ExecutionSuperseded():
            x.status = "Superseded"
            x.waitingFor = None
            x.statusSummary = f"Superseded by execution {e.byExecutionId}"
        case ev.ExecutionSucceeded():
            x.status = "Succeeded"
        case ev.ExecutionFailed():
            x.status = "Failed"
            x.statusSummary = e.reason or None
        case ev.ExecutionStopping():
            x.status = "Stopping"
            x.stopAbandon = e.abandon
            x.statusSummary = e.reason
            run = x.stages.get(x.currentStage or "")
            if run is not None and run.status == "InProgress":
                run.status = "Stopping"
        case ev.ExecutionStopped():
            x.status = "Stopped"
            x.waitingFor = None
            if e.reason is not None:
                x.statusSummary = e.reason
            run = x.stages.get(x.currentStage or "")
            if run is not None and run.status in ("InProgress", "Stopping"):
                run.status = "Stopped"
            end_conditions(x, env.time)
        case ev.StageEntered():
            x.waitingFor = None
            x.currentStage = e.stageName
            x.stages[e.stageName] = StageRun(name=e.stageName)
        case ev.StageSucceeded():
            x.stages[e.stageName].status = "Skipped" if e.skipped else "Succeeded"
        case ev.StageFailed():
            x.stages[e.stageName].status = "Failed"
        case ev.StageRetryRequested():
            run = x.stages[e.stageName]
            run.pendingRetry = e.retryMode
            run.pendingTrigger = e.trigger
        case ev.StageRetryRejected():
            run = x.stages[e.stageName]
            run.pendingRetry = None
            run.pendingTrigger = None
        case ev.StageRetryStarted():
            run = x.stages[e.stageName]
            run.pendingRetry = None
            run.pendingTrigger = None
            run.status = "InProgress"
            run.latestTrigger = e.trigger
            if e.trigger == "ManualStageRetry":
                run.manualRetries += 1
            else:
                run.autoRetries += 1
            if e.retryMode == "ALL_ACTIONS":
                run.latest = {}
            x.status = "InProgress"
            x.statusSummary = None
            x.stopAbandon = None
            x.currentStage = e.stageName
        case ev.RollbackStarted():
            x.executionType = "ROLLBACK"
            x.rollbackTarget = e.targetExecutionId
            x.rollbackStage = e.stageName
        case (
            ev.ConditionStarted()
            | ev.RuleExecutionScheduled()
            | ev.RuleExecutionStarted()
            | ev.RuleExecutionDeferred()
            | ev.RuleExecutionSucceeded()
            | ev.RuleExecutionFailed()
            | ev.ConditionEnded()
            | ev.StageConditionOverridden()
        ):
            _evolve_condition(x, e, env)
        case _:
            pass


def end_conditions(x: ExecutionState, t: float, status: str = "Abandoned") -> None:
    """Conditions still being evaluated end (the execution stopped); their rules too."""
    for cond in x.conditions.values():
        if cond.status == "InProgress":
            cond.status = status
            cond.lastUpdateTime = t
            _abandon_rules(x, cond, t)


def _abandon_rules(x: ExecutionState, cond: ConditionRun, t: float) -> None:
    for rid in cond.rules:
        r = x.rules.get(rid)
        if r is not None and r.status == "InProgress":
            r.status = "Abandoned"
            r.until = None
            r.lastUpdateTime = t


def _evolve_condition(x: ExecutionState, e: ev.Event, env: ev.Envelope) -> None:
    t = env.time
    match e:
        case ev.ConditionStarted():
            x.conditions[e.conditionExecutionId] = ConditionRun(
                conditionExecutionId=e.conditionExecutionId,
                conditionType=e.conditionType,
                stageName=e.stageName,
                startTime=t,
                lastUpdateTime=t,
                result=e.result,
            )
            x.stages[e.stageName].conditions[e.conditionType] = e.conditionExecutionId
        case ev.RuleExecutionScheduled():
            x.rules[e.ruleExecutionId] = RuleRun(
                ruleExecutionId=e.ruleExecutionId,
                ruleName=e.ruleName,
                provider=e.provider,
                stageName=e.stageName,
                conditionExecutionId=e.conditionExecutionId,
                pipelineVersion=e.pipelineVersion or x.pipelineVersion,
                startTime=t,
                lastUpdateTime=t,
                kind=e.kind,
                resolvedConfiguration=e.resolvedConfiguration,
            )
            x.conditions[e.conditionExecutionId].rules.append(e.ruleExecutionId)
        case ev.RuleExecutionStarted():
            r = x.rules[e.ruleExecutionId]
            r.worker = e.worker
            r.lastUpdateTime = t
        case ev.RuleExecutionDeferred():
            r = x.rules[e.ruleExecutionId]
            r.until = e.until
            r.summary = e.summary or None
            r.lastUpdateTime = t
        case ev.RuleExecutionSucceeded():
            r = x.rules[e.ruleExecutionId]
            r.status = "Succeeded"
            r.until = None
            r.summary = e.summary
            r.lastUpdateTime = t
            r.updatedBy = env.actor
        case ev.RuleExecutionFailed():
            r = x.rules[e.ruleExecutionId]
            r.status = "Failed"
            r.until = None
            r.errorCode = e.errorCode
            r.errorMessage = e.message
            r.lastUpdateTime = t
            r.updatedBy = env.actor
        case ev.ConditionEnded():
            cond = x.conditions[e.conditionExecutionId]
            cond.status = e.status
            cond.summary = e.summary or None
            cond.lastUpdateTime = t
            _abandon_rules(x, cond, t)
        case ev.StageConditionOverridden():
            cond = x.conditions[e.conditionExecutionId]
            cond.status = "Overridden"
            cond.overriddenBy = env.actor
            cond.summary = f"Overridden by {env.actor}"
            cond.lastUpdateTime = t
            _abandon_rules(x, cond, t)
            run = x.stages[e.stageName]
            run.status = "InProgress"
            x.status = "InProgress"
            x.statusSummary = None
            x.stopAbandon = None
            x.currentStage = e.stageName
        case _:
            pass


def fold(
    name: str, envelopes: Iterable[ev.Envelope], state: PipelineState | None = None
) -> PipelineState:
    """Fold events into ``state`` (a fresh one when None)."""
    s = state if state is not None else new_state(name)
    for env in envelopes:
        evolve(s, env)
    return s


_state_encoder = msgspec.json.Encoder()
_state_decoder = msgspec.json.Decoder(PipelineState)


def copy_state(s: PipelineState) -> PipelineState:
    """A deep copy (used by tests and by callers that must not share a cached state)."""
    return _state_decoder.decode(_state_encoder.encode(s))


def head_of(s: PipelineState) -> PipelineState:
    """The head alone (no executions, no tokens): what a pipeline snapshot holds. Its size
    does not grow with the number of past executions."""
    return msgspec.structs.replace(
        s, version=s.headVersion, executions={}, tokens={}, absent=[], partial=True
    )


# The head snapshot's format: raise it whenever the head state gains a field folded from
# events or changes what one means (a snapshot of another format is ignored, so no head is
# ever a stale fold plus new events). 2: transitions, rollback targets, conditions (issue 13).
HEAD_FORMAT = 2


def encode_head(s: PipelineState) -> bytes:
    return _state_encoder.encode(head_of(s))


def decode_head(data: bytes) -> PipelineState:
    s = _state_decoder.decode(data)
    s.partial = True
    return s


_exec_encoder = msgspec.json.Encoder()
_exec_decoder = msgspec.json.Decoder(ExecutionState)


def copy_execution(x: ExecutionState) -> ExecutionState:
    return _exec_decoder.decode(_exec_encoder.encode(x))


def execution_from(envelopes: Iterable[ev.Envelope]) -> ExecutionState | None:
    """One execution folded from its own stream (the execution part of each event only)."""
    x: ExecutionState | None = None
    for env in envelopes:
        e = env.event
        if x is None:
            if not isinstance(e, ev.ExecutionStarted):
                return None  # a stream that does not begin with its start: not an execution
            x = ExecutionState(
                executionId=e.executionId,
                pipelineVersion=e.pipelineVersion,
                startTime=env.time,
                lastUpdateTime=env.time,
                started=env.version,
            )
        if env.version > x.version:
            x.version = env.version
            x.lastUpdateTime = env.time
            _evolve_execution(x, e, env)
    return x
