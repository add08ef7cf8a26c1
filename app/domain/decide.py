"""``decide``: a command plus the current state gives new events, or a typed error. Pure.

The decision applies each event it emits to a private copy of the state as it goes, so a
command's consequences chain naturally (an action succeeds → its group is complete → the next
group is scheduled, or the stage succeeds → the waiting execution is admitted → the next
stage is entered ...). The caller's state is never modified: the copy shares unchanged
executions and copies an execution the first time an event touches it.

Everything that needs the outside world is passed in :class:`Ctx`: the time, the actor, and a
source of fresh ids. Given the same state, command and ctx, ``decide`` returns the same events.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import msgspec

from app.domain import commands as c
from app.domain import conditions, rollback, transitions
from app.domain import events as ev
from app.domain.artifacts import artifact_problems
from app.domain.errors import DomainError
from app.domain.model import (
    ActionDeclaration,
    PipelineDeclaration,
    RetryTrigger,
    StageRetryMode,
    action_type_problems,
    declaration_problems,
)
from app.domain.resolution import (
    CONFIGURATION_ERROR,
    prepare_action,
    start_variables,
    variable_problems,
)
from app.domain.sources import configuration_problems, override_problem, source_family
from app.domain.state import (
    ExecutionState,
    PipelineState,
    StageRun,
    copy_execution,
    evolve,
)

FAILED_OR_ABANDONED = ("Failed", "Abandoned")


class Ctx(msgspec.Struct, frozen=True):
    now: float
    new_id: Callable[[], str]
    actor: str = "system"
    correlationId: str | None = None
    causationId: str | None = None
    commandId: str | None = None
    requestId: str | None = None
    source: str | None = None
    claimed: str | None = None  # an unverified identity the caller claimed (auth off)


def action_kind(a: ActionDeclaration) -> ev.Kind:
    t = a.actionTypeId
    if t.owner == "AWS" and t.category == "Compute" and t.provider == "Commands":
        return "commands"
    if t.owner == "AWS" and t.category == "Approval" and t.provider == "Manual":
        return "approval"
    if t.owner in ("Custom", "ThirdParty"):
        return "custom"
    if source_family(a) is not None:
        return "source"
    return "other"


def _fork(s: PipelineState) -> PipelineState:
    """A copy whose head containers are private and whose executions are shared (COW)."""
    return msgspec.structs.replace(
        s,
        declarations=dict(s.declarations),
        stageLatest=dict(s.stageLatest),
        occupant=dict(s.occupant),
        waiting={k: list(v) for k, v in s.waiting.items()},
        active=list(s.active),
        tokens=dict(s.tokens),
        executions=dict(s.executions),
        absent=list(s.absent),
    )


class Decision:
    """Collects the events of one decision and keeps a private, evolving copy of the state."""

    def __init__(self, state: PipelineState, ctx: Ctx) -> None:
        self.s = _fork(state)
        self.ctx = ctx
        self.events: list[ev.Envelope] = []
        self._owned: set[str] = set()
        self.unrunnable: list[ev.ActionExecutionFailed] = []  # see fail_unrunnable

    def own(self, eid: str) -> None:
        if eid not in self._owned:
            x = self.s.lookup(eid)  # a partial state may need to load it first
            if x is not None:
                self.s.executions[eid] = copy_execution(x)
                self._owned.add(eid)

    def x(self, eid: str) -> ExecutionState:
        x = self.s.lookup(eid)
        assert x is not None, eid
        return x

    def emit(self, e: ev.Event) -> None:
        eid = getattr(e, "executionId", None)
        if isinstance(eid, str):
            if isinstance(e, ev.ExecutionStarted):
                self._owned.add(eid)
            else:
                self.own(eid)
        ctx = self.ctx
        # the next number after everything the state holds: a partial state's execution may
        # be newer than its head (the store renumbers on append; these are provisional)
        top = self.s.version
        held = self.s.executions.get(eid) if isinstance(eid, str) else None
        if held is not None and held.version > top:
            top = held.version
        env = ev.Envelope(
            id=ctx.new_id(),
            pipeline=self.s.name,
            version=top + 1,
            time=ctx.now,
            actor=ctx.actor,
            event=cast(ev.AnyEvent, e),
            correlationId=ctx.correlationId,
            causationId=ctx.causationId,
            commandId=ctx.commandId,
            requestId=ctx.requestId,
            source=ctx.source,
            claimed=ctx.claimed,
        )
        evolve(self.s, env)
        self.events.append(env)

    # --- execution flow ---------------------------------------------------------------------

    def decl(self, x: ExecutionState) -> PipelineDeclaration:
        return self.s.declaration_for(x)

    def schedule_group(self, eid: str, stage: str, run_order: int) -> None:
        x = self.x(eid)
        sdecl = self.decl(x).stage(stage)
        assert sdecl is not None
        for a in sdecl.actions:
            if a.run_order == run_order:
                self.schedule_action(eid, stage, a)
        self.fail_unrunnable()

    def schedule_action(self, eid: str, stage: str, a: ActionDeclaration) -> None:
        kind = action_kind(a)
        x = self.x(eid)
        runs = sum(1 for p in x.actions.values() if p.stageName == stage and p.actionName == a.name)
        prep = prepare_action(self.decl(x), rollback.inputs_execution(self.s, x), self.s.name, a)
        aid = self.ctx.new_id()
        self.emit(
            ev.ActionExecutionScheduled(
                executionId=eid,
                stageName=stage,
                actionName=a.name,
                actionExecutionId=aid,
                runOrder=a.run_order,
                pipelineVersion=x.pipelineVersion,
                attempt=runs + 1,
                kind=kind,
                token=self.ctx.new_id() if kind == "approval" else None,
                jobId=self.ctx.new_id() if kind == "custom" else None,
                jobNonce=self.ctx.new_id() if kind == "custom" else None,
                resolvedConfiguration=prep.configuration,
                resolvedCommands=prep.commands,
                resolvedEnvironment=prep.environment,
                inputArtifacts=prep.inputs,
            )
        )
        if prep.problem is not None:
            self.unrunnable.append(
                ev.ActionExecutionFailed(
                    executionId=eid,
                    actionExecutionId=aid,
                    errorCode=CONFIGURATION_ERROR,
                    message=prep.problem,
                    summary=prep.problem[:200],
                )
            )

    def fail_unrunnable(self) -> None:
        """Fail the attempts just scheduled that cannot run (an unresolvable variable
        reference, a missing input artifact): each result first, then what follows, as
        ``Advance`` would after results recorded on their own (only a latest attempt fails
        its stage; an automatic retry may schedule new attempts, checked the same way)."""
        failed, self.unrunnable = self.unrunnable, []
        for result in failed:
            self.emit(result)
        for result in failed:
            _advance(
                self,
                c.Advance(
                    executionId=result.executionId, actionExecutionId=result.actionExecutionId
                ),
            )

    def enter(self, eid: str, stage: str) -> None:
        self.emit(ev.StageEntered(executionId=eid, stageName=stage))
        sdecl = self.decl(self.x(eid)).stage(stage)
        assert sdecl is not None
        if conditions.start(self, eid, stage, "BEFORE_ENTRY"):
            return
        self.schedule_group(eid, stage, sdecl.run_orders()[0])

    def try_enter(self, eid: str, stage: str) -> None:
        """Enter ``stage`` now, or wait for it (SUPERSEDED: superseding older waiters)."""
        s = self.s
        assert s.declaration is not None
        mode = s.declaration.mode
        held = transitions.closed(s, stage)  # a disabled transition: wait (supersede, queue)
        if not held and (
            mode == "PARALLEL" or (stage not in s.occupant and not s.waiting.get(stage))
        ):
            self.enter(eid, stage)
            return
        if mode == "SUPERSEDED":
            for older in list(s.waiting.get(stage, [])):
                self.emit(ev.ExecutionSuperseded(executionId=older, byExecutionId=eid))
        self.emit(ev.ExecutionWaiting(executionId=eid, stageName=stage))

    def admit(self, stage: str) -> None:
        """The stage was released: let the first waiting execution in."""
        s = self.s
        if stage in s.occupant or transitions.closed(s, stage):
            return
        waiters = s.waiting.get(stage)
        if waiters:
            self.enter(waiters[0], stage)

    def fail_stage(self, eid: str, stage: str, reason: str) -> None:
        """A first action failure in a running stage: automatic retry, or fail the execution."""
        if conditions.on_failure(self, eid, stage, reason):
            return
        x = self.x(eid)
        run = x.stages[stage]
        sdecl = self.decl(x).stage(stage)
        assert sdecl is not None
        auto = sdecl.auto_retry_mode()
        retrying = auto is not None and run.autoRetries == 0 and x.status == "InProgress"
        self.emit(
            ev.StageFailed(executionId=eid, stageName=stage, reason=reason, autoRetry=retrying)
        )
        if auto is not None and retrying:
            running = any(a.status == "InProgress" for a in x.latest_actions(stage))
            if auto == "FAILED_ACTIONS" or not running:
                self.start_retry(eid, stage, auto, "AutomatedStageRetry")
            # ALL_ACTIONS with siblings still running: the retry starts when the last ends.
            return
        self.emit(ev.ExecutionFailed(executionId=eid, stageName=stage, reason=reason))
        rollback.after_failure(self, eid, stage)  # onFailure: ROLLBACK
        self.admit(stage)

    def rollback_stage(
        self,
        eid_failed: str,
        stage: str,
        trigger: rollback.RollbackTrigger = "AutomatedRollback",
        reason: str = "",
    ) -> str | None:
        """A stage result ROLLBACK (a condition's): ``eid_failed`` fails in ``stage`` (unless
        it failed already), the stage is rolled back (AutomatedRollback) and released: the
        rollback execution, or None when there is no valid target."""
        assert trigger == "AutomatedRollback", trigger
        return rollback.fail_and_roll_back(self, eid_failed, stage, reason)

    def start_retry(
        self,
        eid: str,
        stage: str,
        mode: StageRetryMode,
        trigger: RetryTrigger,
    ) -> None:
        x = self.x(eid)
        failed = [a for a in x.latest_actions(stage) if a.status in FAILED_OR_ABANDONED]
        self.emit(
            ev.StageRetryStarted(executionId=eid, stageName=stage, retryMode=mode, trigger=trigger)
        )
        sdecl = self.decl(x).stage(stage)
        assert sdecl is not None
        if conditions.retry_entry(self, eid, stage):
            return
        if mode == "ALL_ACTIONS":
            self.schedule_group(eid, stage, sdecl.run_orders()[0])
            return
        for prev in failed:
            adecl = sdecl.action(prev.actionName)
            assert adecl is not None
            self.schedule_action(eid, stage, adecl)
        self.fail_unrunnable()
        if not failed:  # failed by its onSuccess condition: evaluated again
            self.progress(eid)

    def progress(self, eid: str) -> None:
        """Move an execution on after one of its actions ended."""
        x = self.x(eid)
        stage = x.currentStage
        if stage is None or stage not in x.stages:
            return
        run = x.stages[stage]
        actions = x.latest_actions(stage)
        running = any(a.status == "InProgress" for a in actions)
        if x.status == "Stopping":
            if not running:
                self.emit(ev.ExecutionStopped(executionId=eid, reason=x.statusSummary))
                self.admit(stage)
            return
        if x.status != "InProgress" or running:
            return
        sdecl = self.decl(x).stage(stage)
        assert sdecl is not None
        if run.status == "Failed":
            auto = sdecl.auto_retry_mode()
            if (
                auto is not None
                and run.autoRetries == 0
                and conditions.failure_result_applies(x, sdecl, stage)
            ):
                self.start_retry(eid, stage, auto, "AutomatedStageRetry")
            return
        if run.status != "InProgress":
            return
        group = [a for a in actions if a.runOrder == run.group]
        if any(a.status != "Succeeded" for a in group):
            return
        later = [g for g in sdecl.run_orders() if g > run.group]
        if later:
            self.schedule_group(eid, stage, later[0])
            return
        if conditions.before_success(self, eid, stage):
            return
        self.succeed_stage(eid, stage)

    def succeed_stage(self, eid: str, stage: str, *, skipped: bool = False) -> None:
        """The stage succeeded (or was skipped): release it, enter the next one or end."""
        x = self.x(eid)
        self.emit(ev.StageSucceeded(executionId=eid, stageName=stage, skipped=skipped))
        self.admit(stage)
        decl = self.decl(x)
        idx = decl.stage_index(stage)
        if idx + 1 < len(decl.stages) and x.rollbackStage is None:  # a rollback: one stage
            self.try_enter(eid, decl.stages[idx + 1].name)
        else:
            self.emit(ev.ExecutionSucceeded(executionId=eid))

    def end_action(self, eid: str, result: ev.Event, reason: str) -> None:
        """Record an action's end (result is Succeeded/Failed/Abandoned) and its consequences."""
        self.emit(result)
        x = self.x(eid)
        a = x.actions[result.actionExecutionId]  # type: ignore[attr-defined]
        run = x.stages[a.stageName]
        if (
            a.status in FAILED_OR_ABANDONED
            and x.status == "InProgress"
            and run.status == "InProgress"
            and a.stageName == x.currentStage
        ):
            self.fail_stage(eid, a.stageName, reason)
            return
        self.progress(eid)


def retry_problem(
    s: PipelineState, eid: str, stage: str, mode: StageRetryMode, *, pending_ok: bool = False
) -> DomainError | None:
    """SPEC section 3 checks 2-8, in order. None when the retry may go ahead."""
    decl = s.declaration
    if decl is None:  # 2
        return DomainError("PipelineNotFoundException", f"Pipeline '{s.name}' not found")
    if decl.stage(stage) is None:  # 3
        return DomainError(
            "StageNotFoundException", f"Stage '{stage}' not found in pipeline '{s.name}'"
        )
    x = s.lookup(eid)
    if x is None:  # 4
        return DomainError(
            "PipelineExecutionNotFoundException",
            f"Pipeline execution '{eid}' not found in pipeline '{s.name}'",
        )
    if decl.mode != "PARALLEL" and s.stageLatest.get(stage, eid) != eid:  # 5
        return DomainError(
            "NotLatestPipelineExecutionException",
            f"Stage '{stage}' has since been entered by execution {s.stageLatest[stage]}; "
            f"execution {eid} is no longer the latest in it",
        )
    run: StageRun | None = x.stages.get(stage)  # 6
    if run is None:
        return DomainError(
            "StageNotRetryableException", f"Stage '{stage}' did not run in execution {eid}"
        )
    evaluating = conditions.evaluating(x, stage)
    if evaluating is not None:
        return DomainError(
            "StageNotRetryableException",
            f"Stage '{stage}' of execution {eid} is evaluating its "
            f"{conditions.WHERE[evaluating]} condition",
        )
    actions = x.latest_actions(stage)
    if not any(a.status in FAILED_OR_ABANDONED for a in actions) and not (
        conditions.failed_by_condition(x, stage)
    ):
        return DomainError(
            "StageNotRetryableException",
            f"Stage '{stage}' of execution {eid} has no failed or abandoned action",
        )
    if x.pipelineVersion != (decl.version or 1):
        return DomainError(
            "StageNotRetryableException",
            f"The pipeline was updated (version {x.pipelineVersion} -> {decl.version}) "
            f"since execution {eid} started",
        )
    if mode == "ALL_ACTIONS" and any(a.status == "InProgress" for a in actions):
        return DomainError(
            "StageNotRetryableException",
            f"Stage '{stage}' still has actions in progress; ALL_ACTIONS needs them to finish "
            "(FAILED_ACTIONS can retry now)",
        )
    if run.pendingRetry is not None and not pending_ok:  # 7
        return DomainError(
            "ConflictException",
            f"A retry of stage '{stage}' in execution {eid} is already accepted and pending",
            status=409,
        )
    if eid not in s.active and len(s.active) + 1 > s.concurrencyLimit:  # 8
        return DomainError(
            "ConcurrentPipelineExecutionsLimitExceededException",
            f"Pipeline '{s.name}' already has {len(s.active)} active executions "
            f"(limit {s.concurrencyLimit})",
        )
    return None


# --- the decision table ----------------------------------------------------------------------


def decide(s: PipelineState, cmd: c.Command, ctx: Ctx) -> list[ev.Envelope]:
    """The events that ``cmd`` causes in state ``s``; raises DomainError when refused.

    An empty list means the command was already applied (idempotent repeat): nothing to do.
    """
    d = Decision(s, ctx)
    handler = _HANDLERS[type(cmd)]
    handler(d, cmd)
    return d.events


def decide_many(
    s: PipelineState, items: list[tuple[c.Command, Ctx]]
) -> tuple[list[ev.Envelope], list[tuple[c.Command, DomainError]]]:
    """Several commands on one pipeline decided in order, each seeing the events of the
    ones before (what deciding and appending them one by one would give): the events, and
    the commands refused on the way (with their errors). A refusal after a command had
    already emitted events is raised (decide those commands one by one instead)."""
    d = Decision(s, items[0][1])
    refused: list[tuple[c.Command, DomainError]] = []
    for cmd, ctx in items:
        d.ctx = ctx
        before = len(d.events)
        try:
            _HANDLERS[type(cmd)](d, cmd)
        except DomainError as err:
            if len(d.events) != before:
                raise
            refused.append((cmd, err))
    return d.events, refused


def _create(d: Decision, cmd: c.Command) -> None:
    assert isinstance(cmd, c.CreatePipeline)
    if d.s.declaration is not None:
        raise DomainError("PipelineNameInUseException", f"Pipeline '{d.s.name}' already exists")
    _check_structure(cmd.declaration, d.s.name)
    decl = msgspec.structs.replace(
        cmd.declaration,
        version=1,
        executionMode=cmd.declaration.mode,
        pipelineType=cmd.declaration.pipelineType or "V2",
    )
    d.emit(ev.PipelineCreated(declaration=decl, concurrencyLimit=cmd.concurrencyLimit))


def _check_structure(decl: PipelineDeclaration, name: str) -> None:
    if decl.name != name:
        raise DomainError(
            "InvalidStructureException", f"declaration name {decl.name!r} is not {name!r}"
        )
    problems = declaration_problems(decl)
    if problems:
        raise DomainError("InvalidStructureException", "; ".join(problems))
    problems = variable_problems(decl) + artifact_problems(decl)
    if problems:
        raise DomainError("InvalidStructureException", "; ".join(problems))
    problems = rollback.declaration_problems(decl)
    if problems:
        raise DomainError("InvalidStructureException", "; ".join(problems))
    unrunnable = action_type_problems(decl) or configuration_problems(decl)
    if unrunnable:
        raise DomainError("InvalidActionDeclarationException", "; ".join(unrunnable))
    conditions.check(decl)


def _update(d: Decision, cmd: c.Command) -> None:
    assert isinstance(cmd, c.UpdatePipeline)
    current = d.s.require_declaration()
    _check_structure(cmd.declaration, d.s.name)
    decl = msgspec.structs.replace(
        cmd.declaration,
        version=(current.version or 1) + 1,
        executionMode=cmd.declaration.mode,
        pipelineType=cmd.declaration.pipelineType or current.pipelineType or "V2",
    )
    d.emit(ev.PipelineUpdated(declaration=decl))


def _delete(d: Decision, cmd: c.Command) -> None:
    if d.s.declaration is None:
        return
    d.emit(ev.PipelineDeleted())


def _start(d: Decision, cmd: c.Command) -> None:
    assert isinstance(cmd, c.StartExecution)
    decl = d.s.require_declaration()
    if cmd.clientRequestToken is not None and cmd.clientRequestToken in d.s.tokens:
        return
    if len(d.s.active) >= d.s.concurrencyLimit:
        raise DomainError(
            "ConcurrentPipelineExecutionsLimitExceededException",
            f"Pipeline '{d.s.name}' already has {len(d.s.active)} active executions "
            f"(limit {d.s.concurrencyLimit})",
        )
    problem = override_problem(decl, cmd.sourceRevisions)
    if problem is not None:
        raise DomainError("ValidationException", problem)
    d.emit(
        ev.ExecutionStarted(
            executionId=cmd.executionId,
            pipelineVersion=decl.version or 1,
            triggerType=cmd.triggerType,
            triggerDetail=cmd.triggerDetail,
            clientRequestToken=cmd.clientRequestToken,
            variables=start_variables(decl, d.s.name, cmd.variables),
            sourceRevisions=cmd.sourceRevisions or None,
        )
    )
    d.try_enter(cmd.executionId, decl.stages[0].name)


def _stop(d: Decision, cmd: c.Command) -> None:
    assert isinstance(cmd, c.StopExecution)
    d.s.require_declaration()
    x = d.s.require_execution(cmd.executionId)
    eid = cmd.executionId
    if x.status == "Stopping" and not cmd.abandon:
        raise DomainError(
            "DuplicatedStopRequestException", f"Execution {eid} is already being stopped"
        )
    stage = x.currentStage
    if x.status == "Failed" and cmd.abandon and stage is not None:
        # A sibling failed and the execution counts as Failed, but actions of the stage may
        # still run (their results count): abandon reaches them. The execution stays Failed.
        still = [a for a in x.latest_actions(stage) if a.status == "InProgress"]
        for a in still:
            d.emit(
                ev.ActionExecutionAbandoned(
                    executionId=eid,
                    actionExecutionId=a.actionExecutionId,
                    reason=cmd.reason or "Execution stopped and abandoned",
                )
            )
        if still:
            return
    if x.status not in ("InProgress", "Stopping"):
        hint = " (nothing of it is running)" if x.status == "Failed" and cmd.abandon else ""
        raise DomainError(
            "PipelineExecutionNotStoppableException",
            f"Execution {eid} is {x.status} and cannot be stopped{hint}",
        )
    running = [a for a in x.latest_actions(stage) if a.status == "InProgress"] if stage else []
    if x.waitingFor is not None:
        running = []
    if cmd.abandon:
        for a in running:
            d.emit(
                ev.ActionExecutionAbandoned(
                    executionId=eid,
                    actionExecutionId=a.actionExecutionId,
                    reason=cmd.reason or "Execution stopped and abandoned",
                )
            )
        running = []
    if running:
        d.emit(ev.ExecutionStopping(executionId=eid, abandon=cmd.abandon, reason=cmd.reason))
        return
    d.emit(ev.ExecutionStopped(executionId=eid, reason=cmd.reason))
    if stage is not None and x.waitingFor is None:
        d.admit(stage)


def _retry(d: Decision, cmd: c.Command) -> None:
    assert isinstance(cmd, c.RetryStage)
    problem = retry_problem(d.s, cmd.executionId, cmd.stageName, cmd.retryMode)
    if problem is not None:
        raise problem
    d.emit(
        ev.StageRetryRequested(
            executionId=cmd.executionId,
            stageName=cmd.stageName,
            retryMode=cmd.retryMode,
            trigger="ManualStageRetry",
        )
    )


def _apply_retry(d: Decision, cmd: c.Command) -> None:
    assert isinstance(cmd, c.ApplyStageRetry)
    x = d.s.lookup(cmd.executionId)
    run = x.stages.get(cmd.stageName) if x is not None else None
    if x is None or run is None or run.pendingRetry is None:
        return  # nothing pending: already applied or rejected
    mode = run.pendingRetry
    trigger = run.pendingTrigger or "ManualStageRetry"
    problem = retry_problem(d.s, cmd.executionId, cmd.stageName, mode, pending_ok=True)
    if problem is not None:
        d.emit(
            ev.StageRetryRejected(
                executionId=cmd.executionId,
                stageName=cmd.stageName,
                reason=problem.message,
                errorType=problem.type_name,
            )
        )
        return
    d.start_retry(cmd.executionId, cmd.stageName, mode, trigger)


def _find_action(d: Decision, eid: str, aid: str) -> tuple[ExecutionState, ev.Kind, str]:
    x = d.s.require_execution(eid)
    a = x.actions.get(aid)
    if a is None:
        raise DomainError("ActionExecutionNotFoundException", f"No action execution {aid}")
    return x, a.kind, a.status


def _start_action(d: Decision, cmd: c.Command) -> None:
    assert isinstance(cmd, c.StartAction)
    x, _, status = _find_action(d, cmd.executionId, cmd.actionExecutionId)
    a = x.actions[cmd.actionExecutionId]
    # A Failed execution may still have InProgress actions (siblings of the failed one): they
    # keep running and their results count (SPEC section 3), so their workers may start them.
    if status != "InProgress" or x.status not in ("InProgress", "Stopping", "Failed"):
        raise DomainError(
            "ActionNotRunnableException", f"Action execution is {status} (execution {x.status})"
        )
    if a.worker is not None:
        if a.worker == cmd.worker:
            return
        raise DomainError(
            "ActionNotRunnableException", f"Action execution already taken by {a.worker}"
        )
    d.emit(
        ev.ActionExecutionStarted(
            executionId=cmd.executionId, actionExecutionId=cmd.actionExecutionId, worker=cmd.worker
        )
    )


def _complete(d: Decision, cmd: c.Command) -> None:
    assert isinstance(cmd, c.CompleteAction)
    x, _kind, status = _find_action(d, cmd.executionId, cmd.actionExecutionId)
    a = x.actions[cmd.actionExecutionId]
    if cmd.jobId is not None:
        if a.jobId != cmd.jobId:
            raise DomainError("JobNotFoundException", f"Job {cmd.jobId} not found")
        if status != "InProgress":
            raise DomainError("InvalidJobStateException", f"Job {cmd.jobId} is {status}")
        if not a.acknowledged:
            raise DomainError(
                "InvalidJobStateException", f"Job {cmd.jobId} has not been acknowledged"
            )
    if status != "InProgress":
        return  # already ended: a repeated or late result changes nothing
    if cmd.worker is not None and a.worker is not None and a.worker != cmd.worker:
        return  # a result from a runner that lost the action
    result: ev.Event
    if cmd.succeeded:
        result = ev.ActionExecutionSucceeded(
            executionId=cmd.executionId,
            actionExecutionId=cmd.actionExecutionId,
            summary=cmd.summary,
            externalExecutionId=cmd.externalExecutionId,
            outputVariables=cmd.outputVariables,
            outputArtifacts=cmd.outputArtifacts,
            revision=cmd.revision,
        )
    else:
        result = ev.ActionExecutionFailed(
            executionId=cmd.executionId,
            actionExecutionId=cmd.actionExecutionId,
            errorCode=cmd.errorCode or "JobFailed",
            message=cmd.message or "",
            summary=cmd.summary,
            externalExecutionId=cmd.externalExecutionId,
        )
    if not cmd.consequences:
        d.emit(result)  # the partition's owner moves the execution on (``Advance``)
        return
    d.end_action(cmd.executionId, result, failure_reason(a.actionName, cmd.errorCode, cmd.message))


def failure_reason(action: str, error_code: str | None, message: str | None) -> str:
    """The reason a stage fails with when one of its actions failed."""
    reason = f"Action '{action}' failed: {error_code or 'JobFailed'}"
    if message:
        reason += f": {message}"
    return reason[:2000]


def _ack(d: Decision, cmd: c.Command) -> None:
    assert isinstance(cmd, c.AcknowledgeJob)
    x = d.s.lookup(cmd.executionId)
    a = x.actions.get(cmd.actionExecutionId) if x is not None else None
    if x is None or a is None or a.jobId != cmd.jobId:
        raise DomainError("JobNotFoundException", f"Job {cmd.jobId} not found")
    if a.jobNonce != cmd.nonce:
        raise DomainError("InvalidNonceException", f"Nonce does not match job {cmd.jobId}")
    if a.status != "InProgress":
        raise DomainError("InvalidJobStateException", f"Job {cmd.jobId} is {a.status}")
    if a.acknowledged:
        return
    d.emit(
        ev.JobAcknowledged(
            executionId=cmd.executionId,
            actionExecutionId=cmd.actionExecutionId,
            jobId=cmd.jobId,
            nonce=cmd.nonce,
        )
    )


def _approval(d: Decision, cmd: c.Command) -> None:
    assert isinstance(cmd, c.PutApproval)
    decl = d.s.require_declaration()
    sdecl = decl.stage(cmd.stageName)
    if sdecl is None:
        raise DomainError("StageNotFoundException", f"Stage '{cmd.stageName}' not found")
    adecl = sdecl.action(cmd.actionName)
    if adecl is None or action_kind(adecl) != "approval":
        raise DomainError(
            "ActionNotFoundException",
            f"No manual approval action '{cmd.actionName}' in stage '{cmd.stageName}'",
        )
    for eid in list(d.s.executions):
        x = d.s.executions[eid]
        for a in x.actions.values():
            if a.token != cmd.token or a.stageName != cmd.stageName:
                continue
            if a.actionName != cmd.actionName:
                continue
            if a.status != "InProgress":
                raise DomainError(
                    "ApprovalAlreadyCompletedException", "This approval was already completed"
                )
            d.emit(
                ev.ApprovalRecorded(
                    executionId=eid,
                    actionExecutionId=a.actionExecutionId,
                    status=cmd.status,
                    summary=cmd.summary,
                )
            )
            result: ev.Event
            if cmd.status == "Approved":
                result = ev.ActionExecutionSucceeded(
                    executionId=eid, actionExecutionId=a.actionExecutionId, summary=cmd.summary
                )
            else:
                result = ev.ActionExecutionFailed(
                    executionId=eid,
                    actionExecutionId=a.actionExecutionId,
                    errorCode="Rejected",
                    message=cmd.summary,
                    summary=cmd.summary,
                )
            d.end_action(eid, result, f"Approval '{cmd.actionName}' was rejected")
            return
    raise DomainError("InvalidApprovalTokenException", "The approval token is not valid")


def _lose(d: Decision, cmd: c.Command) -> None:
    assert isinstance(cmd, c.LoseAction)
    if conditions.lose_rule(d, cmd):
        return
    x = d.s.lookup(cmd.executionId)
    a = x.actions.get(cmd.actionExecutionId) if x is not None else None
    if x is None or a is None or a.status != "InProgress":
        return
    if cmd.worker is not None and a.worker != cmd.worker:
        return
    result = ev.ActionExecutionFailed(
        executionId=cmd.executionId,
        actionExecutionId=cmd.actionExecutionId,
        errorCode=ev.WORKER_LOST,
        message=cmd.message,
    )
    if not cmd.consequences:
        d.emit(result)
        return
    d.end_action(cmd.executionId, result, failure_reason(a.actionName, ev.WORKER_LOST, cmd.message))


def _advance(d: Decision, cmd: c.Command) -> None:
    """The consequences of an action's end recorded on its own (``consequences=False``):
    exactly what ``end_action`` does after the result. Idempotent: nothing when done."""
    assert isinstance(cmd, c.Advance)
    x = d.s.lookup(cmd.executionId)
    a = x.actions.get(cmd.actionExecutionId) if x is not None else None
    if x is None or a is None or a.status == "InProgress":
        return
    run = x.stages.get(a.stageName)
    if run is None:
        return
    if (
        a.status in FAILED_OR_ABANDONED
        and x.status == "InProgress"
        and run.status == "InProgress"
        and a.stageName == x.currentStage
        and run.latest.get(a.actionName) == a.actionExecutionId
    ):
        d.fail_stage(
            cmd.executionId,
            a.stageName,
            failure_reason(a.actionName, a.errorCode, a.errorMessage),
        )
        return
    d.progress(cmd.executionId)


_HANDLERS: dict[type[c.Command], Callable[[Decision, c.Command], None]] = {
    c.CreatePipeline: _create,
    c.UpdatePipeline: _update,
    c.DeletePipeline: _delete,
    c.StartExecution: _start,
    c.StopExecution: _stop,
    c.RetryStage: _retry,
    c.ApplyStageRetry: _apply_retry,
    c.StartAction: _start_action,
    c.CompleteAction: _complete,
    c.AcknowledgeJob: _ack,
    c.PutApproval: _approval,
    c.LoseAction: _lose,
    c.Advance: _advance,
    c.DisableStageTransition: transitions.disable,
    c.EnableStageTransition: transitions.enable,
    c.RollbackStage: rollback.rollback_stage,
}
_HANDLERS.update(conditions.HANDLERS)
