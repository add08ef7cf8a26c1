"""Stage rollback: RollbackStage and ``onFailure: {result: ROLLBACK}``. Pure.

A rollback is a new execution of ``executionType`` ROLLBACK (trigger ManualRollback or
AutomatedRollback) that runs ONE stage again, with the variables and source revisions of the
*target* execution (and, through :func:`artifact_execution`, its artifacts): an earlier
STANDARD execution in which that stage succeeded, started with the current pipeline
version. The rollback execution enters the stage directly (it does not pass the transition
into it nor wait behind the executions waiting for it) and ends when the stage ends:
Succeeded when the stage succeeds, Failed when it fails (a failed rollback is never rolled
back again; it can be retried like any stage, RetryStageExecution on the rollback
execution).

The pipeline's head keeps, per stage, the latest STANDARD execution that succeeded in it
(``PipelineState.lastSucceeded``: the automatic rollback's target) and the latest rollback
execution of it (``PipelineState.rollbacks``), both folded from head events alone.

Rules (AWS user guide, "Configuring stage rollback"): no rollback of a source stage (one
with a Source action), none in PARALLEL mode (and no ``ROLLBACK`` result in a PARALLEL
pipeline's declaration), the target must be a STANDARD execution of the current pipeline
version that succeeded in the stage, and the stage must not be running.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import msgspec

from app.domain import commands as c
from app.domain import events as ev
from app.domain.errors import DomainError
from app.domain.model import PipelineDeclaration
from app.domain.state import ExecutionState, PipelineState

if TYPE_CHECKING:
    from app.domain.decide import Decision

RollbackTrigger = Literal["ManualRollback", "AutomatedRollback"]


def declaration_problems(decl: PipelineDeclaration) -> list[str]:
    """A ROLLBACK result where AWS refuses one (InvalidStructureException)."""
    problems: list[str] = []
    for st in decl.stages:
        of = st.onFailure
        if of is None or of.result != "ROLLBACK":
            continue
        if decl.mode == "PARALLEL":
            problems.append(
                f"stage {st.name!r}: onFailure result ROLLBACK is not available in "
                "PARALLEL execution mode"
            )
        elif _is_source(decl, st.name):
            problems.append(f"stage {st.name!r}: a source stage cannot be rolled back")
    return problems


def _is_source(decl: PipelineDeclaration, stage: str) -> bool:
    sdecl = decl.stage(stage)
    return sdecl is not None and any(a.actionTypeId.category == "Source" for a in sdecl.actions)


def artifact_execution(x: ExecutionState) -> str:
    """The execution whose artifacts (and namespace variables) the actions of ``x`` read
    outside its own stage: the target for a rollback execution, else ``x`` itself (see
    :func:`inputs_execution`, what ``Decision.schedule_action`` resolves inputs in)."""
    return x.rollbackTarget if x.rollbackTarget is not None else x.executionId


def inputs_execution(s: PipelineState, x: ExecutionState) -> ExecutionState:
    """The execution an action of ``x`` finds its input artifacts and namespace variables in
    (``prepare_action``): ``x`` itself; for a rollback execution, ``x`` plus the target's
    stages and attempts outside the rolled-back stage, so the stage gets what it got in the
    target (its own attempts, newer, win within the stage). May raise NeedExecutions."""
    if x.rollbackTarget is None:
        return x
    target = s.lookup(x.rollbackTarget)
    if target is None:
        return x
    stage = x.rollbackStage
    stages = {k: v for k, v in target.stages.items() if k != stage}
    actions = {k: v for k, v in target.actions.items() if v.stageName != stage}
    return msgspec.structs.replace(
        x, stages={**stages, **x.stages}, actions={**actions, **x.actions}
    )


def is_rollback(x: ExecutionState) -> bool:
    return x.executionType == "ROLLBACK"


def target_problem(s: PipelineState, stage: str, target: str) -> DomainError | None:
    """Why ``target`` cannot be rolled back to in ``stage`` (None: it can). May raise
    NeedExecutions (a partial state loads the target and decides again)."""
    decl = s.require_declaration()
    if decl.stage(stage) is None:
        return DomainError(
            "StageNotFoundException", f"Stage '{stage}' not found in pipeline '{s.name}'"
        )
    if decl.mode == "PARALLEL":
        return DomainError(
            "UnableToRollbackStageException",
            f"Pipeline '{s.name}' is in PARALLEL execution mode: stage rollback is not available",
        )
    if _is_source(decl, stage):
        return DomainError(
            "UnableToRollbackStageException",
            f"Stage '{stage}' is a source stage: a source stage cannot be rolled back",
        )
    x = s.lookup(target)
    if x is None:
        return DomainError(
            "PipelineExecutionNotFoundException",
            f"Pipeline execution '{target}' not found in pipeline '{s.name}'",
        )
    if is_rollback(x):
        return DomainError(
            "UnableToRollbackStageException",
            f"Execution {target} is a rollback execution: it cannot be a rollback target",
        )
    if x.pipelineVersion != (decl.version or 1):
        return DomainError(
            "PipelineExecutionOutdatedException",
            f"Execution {target} ran pipeline version {x.pipelineVersion}; a rollback "
            f"target must be of the current version {decl.version or 1}",
        )
    run = x.stages.get(stage)
    if run is None or run.status != "Succeeded":
        return DomainError(
            "UnableToRollbackStageException",
            f"Stage '{stage}' did not succeed in execution {target}",
        )
    return None


def rollback_stage(d: Decision, cmd: c.Command) -> None:
    """RollbackStage: validate, then start the rollback execution in this decision."""
    assert isinstance(cmd, c.RollbackStage)
    s = d.s
    problem = target_problem(s, cmd.stageName, cmd.targetExecutionId)
    if problem is not None:
        raise problem
    busy = s.occupant.get(cmd.stageName)
    if busy is not None:
        raise DomainError(
            "UnableToRollbackStageException",
            f"Stage '{cmd.stageName}' is in progress (execution {busy}): wait for it to end "
            "or stop it first",
        )
    if len(s.active) >= s.concurrencyLimit:
        raise DomainError(
            "ConflictException",
            f"Pipeline '{s.name}' already has {len(s.active)} active executions "
            f"(limit {s.concurrencyLimit}): try again later",
            status=409,
        )
    start(d, cmd.rollbackExecutionId, cmd.stageName, cmd.targetExecutionId, "ManualRollback")


def start(
    d: Decision,
    eid: str,
    stage: str,
    target: str,
    trigger: RollbackTrigger,
    failed: str | None = None,
) -> None:
    """Start rollback execution ``eid`` of ``stage`` to ``target`` (already validated)."""
    decl = d.s.require_declaration()
    x = d.x(target)
    d.emit(
        ev.ExecutionStarted(
            executionId=eid,
            pipelineVersion=decl.version or 1,
            triggerType=trigger,
            triggerDetail=failed if failed is not None else d.ctx.actor,
            variables=x.variables,
            sourceRevisions=x.sourceRevisions,
        )
    )
    d.emit(
        ev.RollbackStarted(
            executionId=eid,
            stageName=stage,
            targetExecutionId=target,
            trigger=trigger,
            failedExecutionId=failed,
        )
    )
    d.enter(eid, stage)


def automatic_target(s: PipelineState, failed: str, stage: str) -> str | None:
    """The target of an automatic rollback of ``stage`` after ``failed`` failed in it: the
    latest STANDARD execution that succeeded there, when it is a valid target; else None."""
    x = s.lookup(failed)
    if x is None or is_rollback(x):
        return None  # a failed rollback is not rolled back again
    target = s.lastSucceeded.get(stage)
    if target is None:
        return None
    if target_problem(s, stage, target) is not None:
        return None
    return target


def roll_back(d: Decision, failed: str, stage: str) -> str | None:
    """Roll ``stage`` back after execution ``failed`` failed in it (its StageFailed and
    ExecutionFailed already emitted): the new rollback execution's id, or None when there is
    no valid target (nothing is emitted then). Callers: onFailure ROLLBACK (``after_failure``)
    and a condition whose result is ROLLBACK (``Decision.rollback_stage``)."""
    target = automatic_target(d.s, failed, stage)
    if target is None or d.s.occupant.get(stage) is not None:
        return None
    eid = d.ctx.new_id()
    start(d, eid, stage, target, "AutomatedRollback", failed)
    return eid


def fail_and_roll_back(d: Decision, eid: str, stage: str, reason: str) -> str | None:
    """A condition's ROLLBACK result: the execution fails in ``stage`` (StageFailed,
    ExecutionFailed; not again when it is failed already), the stage is rolled back, and
    released to the next waiting execution (after the rollback entered it)."""
    if d.x(eid).status == "InProgress":
        why = reason or f"Stage '{stage}' failed and is rolled back"
        d.emit(ev.StageFailed(executionId=eid, stageName=stage, reason=why))
        d.emit(ev.ExecutionFailed(executionId=eid, stageName=stage, reason=why))
    rid = roll_back(d, eid, stage)
    d.admit(stage)
    return rid


def after_failure(d: Decision, failed: str, stage: str) -> None:
    """``onFailure: {result: ROLLBACK}`` of the stage the execution just failed in."""
    x = d.x(failed)
    sdecl = d.s.declaration_for(x).stage(stage)
    if sdecl is None or sdecl.onFailure is None or sdecl.onFailure.result != "ROLLBACK":
        return
    roll_back(d, failed, stage)
