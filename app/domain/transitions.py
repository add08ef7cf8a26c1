"""Stage transitions: DisableStageTransition / EnableStageTransition. Pure.

A transition is the point where an execution moves from one stage into the next. The
pipeline's head keeps the last change of each one (``PipelineState.transitions``, folded from
``StageTransitionDisabled`` / ``StageTransitionEnabled``, events of the pipeline's own
stream). The transition into stage B is *closed* when B's ``Inbound`` transition or the
``Outbound`` transition of the stage before B (in the current declaration) is disabled.

An execution that reaches a closed transition waits for B exactly as it waits for an
occupied stage (``ExecutionWaiting``, ``PipelineState.waiting``; InProgress, B not entered):

- SUPERSEDED: a newer execution arriving at the same closed transition supersedes the
  waiting one (AWS: "only the latest execution continues when the transition is enabled");
- QUEUED: they wait in arrival order; when the transition opens the first enters (when B is
  free) and the others follow one by one as B is released;
- PARALLEL: each waits on its own, none is superseded; when it opens they all enter.

Enabling the transition lets the waiter(s) in within the same decision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.domain import commands as c
from app.domain import events as ev
from app.domain.errors import DomainError
from app.domain.state import PipelineState, Transition

if TYPE_CHECKING:
    from app.domain.decide import Decision

TRANSITION_TYPES = ("Inbound", "Outbound")
REASON_MAX = 300  # DisabledReason: 1..300 characters


def key(stage: str, transition_type: str) -> str:
    return f"{stage}/{transition_type}"


def _disabled(s: PipelineState, stage: str, transition_type: str) -> Transition | None:
    t = s.transitions.get(key(stage, transition_type))
    return t if t is not None and not t.enabled else None


def _previous(s: PipelineState, stage: str) -> str | None:
    decl = s.declaration
    if decl is None:
        return None
    for i, st in enumerate(decl.stages):
        if st.name == stage:
            return decl.stages[i - 1].name if i > 0 else None
    return None


def closing(s: PipelineState, stage: str) -> Transition | None:
    """What closes the transition into ``stage`` (its Inbound, else the Outbound of the
    stage before it), None when it is open."""
    if not s.transitions:
        return None
    inbound = _disabled(s, stage, "Inbound")
    if inbound is not None:
        return inbound
    prev = _previous(s, stage)
    return _disabled(s, prev, "Outbound") if prev is not None else None


def closed(s: PipelineState, stage: str) -> bool:
    """Whether an execution reaching ``stage`` must wait before entering it."""
    return closing(s, stage) is not None


def inbound_state(s: PipelineState, stage: str) -> dict[str, Any]:
    """GetPipelineState's ``inboundTransitionState`` (TransitionState) of ``stage``."""
    t = closing(s, stage)
    if t is None:
        t = s.transitions.get(key(stage, "Inbound"))
    if t is None:
        return {"enabled": True}
    doc: dict[str, Any] = {"enabled": t.enabled, "lastChangedAt": t.at}
    if t.by is not None:
        doc["lastChangedBy"] = t.by
    if t.reason:  # only a disabled transition has one
        doc["disabledReason"] = t.reason
    return doc


def _target(s: PipelineState, stage: str, transition_type: str) -> str:
    """The stage whose entry the transition guards (PipelineNotFound / StageNotFound /
    ValidationException for a transition that does not exist)."""
    decl = s.require_declaration()
    if transition_type not in TRANSITION_TYPES:
        raise DomainError(
            "ValidationException",
            f"Value '{transition_type}' at 'transitionType' failed to satisfy constraint: "
            "Member must satisfy enum value set: [Inbound, Outbound]",
        )
    if decl.stage(stage) is None:
        raise DomainError(
            "StageNotFoundException", f"Stage '{stage}' not found in pipeline '{s.name}'"
        )
    i = decl.stage_index(stage)
    if transition_type == "Inbound":
        if i == 0:
            raise DomainError(
                "ValidationException",
                f"Stage '{stage}' is the first stage of pipeline '{s.name}': it has no "
                "inbound transition",
            )
        return stage
    if i + 1 >= len(decl.stages):
        raise DomainError(
            "ValidationException",
            f"Stage '{stage}' is the last stage of pipeline '{s.name}': it has no outbound "
            "transition",
        )
    return decl.stages[i + 1].name


def disable(d: Decision, cmd: c.Command) -> None:
    assert isinstance(cmd, c.DisableStageTransition)
    _target(d.s, cmd.stageName, cmd.transitionType)
    if not cmd.reason or len(cmd.reason) > REASON_MAX:
        raise DomainError(
            "ValidationException",
            f"Value at 'reason' failed to satisfy constraint: Member must have length "
            f"between 1 and {REASON_MAX}",
        )
    d.emit(
        ev.StageTransitionDisabled(
            stageName=cmd.stageName, transitionType=cmd.transitionType, reason=cmd.reason
        )
    )


def enable(d: Decision, cmd: c.Command) -> None:
    assert isinstance(cmd, c.EnableStageTransition)
    try:
        into = _target(d.s, cmd.stageName, cmd.transitionType)
    except DomainError as err:
        if err.type_name != "ValidationException" or cmd.transitionType not in TRANSITION_TYPES:
            raise
        return  # the first stage's inbound / the last one's outbound: never disabled
    if _disabled(d.s, cmd.stageName, cmd.transitionType) is None:
        return  # already enabled: nothing changes (an idempotent repeat)
    d.emit(ev.StageTransitionEnabled(stageName=cmd.stageName, transitionType=cmd.transitionType))
    release(d, into)


def release(d: Decision, stage: str) -> None:
    """The transition into ``stage`` may have opened: let the held execution(s) in."""
    s = d.s
    if closed(s, stage):
        return
    if s.require_declaration().mode == "PARALLEL":
        for eid in list(s.waiting.get(stage, [])):
            d.enter(eid, stage)
        return
    d.admit(stage)
