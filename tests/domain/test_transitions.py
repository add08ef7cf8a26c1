"""Stage transitions (DisableStageTransition / EnableStageTransition): records, holds per
execution mode, release in the enabling decision, errors."""

from __future__ import annotations

import pytest

from app import queries as q
from app.domain import commands as c
from app.domain import events as ev
from app.domain import transitions as tr
from tests.domain.helpers import Harness, make_decl, of_type, types

THREE = {"Source": ["src"], "Build": [("b1", 1), ("b2", 1)], "Deploy": ["d"]}


def pipeline(mode: str | None = None) -> Harness:
    h = Harness()
    h.create(make_decl(THREE, mode=mode))
    return h


def disable(h: Harness, stage: str = "Build", kind: str = "Inbound", reason: str = "hold") -> list:
    return h.run(
        c.DisableStageTransition(
            stageName=stage,
            transitionType=kind,  # type: ignore[arg-type]
            reason=reason,
        )
    )


def enable(h: Harness, stage: str = "Build", kind: str = "Inbound") -> list:
    return h.run(c.EnableStageTransition(stageName=stage, transitionType=kind))  # type: ignore[arg-type]


def inbound(h: Harness, stage: str) -> dict[str, object]:
    doc = q.get_pipeline_state(h.state)
    st = next(s for s in doc["stageStates"] if s["stageName"] == stage)
    return st["inboundTransitionState"]  # type: ignore[no-any-return]


# --- records ---------------------------------------------------------------------------------


def test_disable_then_enable_is_recorded_with_who_when_why() -> None:
    h = pipeline()
    assert inbound(h, "Build") == {"enabled": True}
    h.actor = "arn:aws:iam::123456789012:user/ops"
    envs = disable(h, reason="Freeze for release 1.2")
    assert types(envs) == ["StageTransitionDisabled"]
    assert envs[0].actor == "arn:aws:iam::123456789012:user/ops"
    at = envs[0].time
    assert inbound(h, "Build") == {
        "enabled": False,
        "lastChangedBy": "arn:aws:iam::123456789012:user/ops",
        "lastChangedAt": at,
        "disabledReason": "Freeze for release 1.2",
    }
    assert inbound(h, "Deploy") == {"enabled": True}
    h.actor = "arn:aws:iam::123456789012:user/lead"
    envs = enable(h)
    assert types(envs) == ["StageTransitionEnabled"]
    assert inbound(h, "Build") == {
        "enabled": True,
        "lastChangedBy": "arn:aws:iam::123456789012:user/lead",
        "lastChangedAt": envs[0].time,
    }
    assert envs[0].time > at


def test_transition_events_live_in_the_head_stream() -> None:
    h = pipeline()
    envs = disable(h) + enable(h)
    for e in envs:
        assert ev.execution_of(e.event) is None
        assert type(e.event) in ev.PIPELINE_EVENTS
        assert type(e.event) not in ev.HEAD_EVENTS


def test_outbound_of_previous_stage_closes_the_next_ones_inbound() -> None:
    h = pipeline()
    disable(h, "Source", "Outbound", reason="no builds")
    state = inbound(h, "Build")
    assert state["enabled"] is False and state["disabledReason"] == "no builds"
    assert inbound(h, "Deploy") == {"enabled": True}
    assert tr.closed(h.state, "Build") and not tr.closed(h.state, "Deploy")
    # enabling Build's inbound (never disabled) changes nothing: Source's outbound holds
    assert enable(h, "Build", "Inbound") == []
    assert tr.closed(h.state, "Build")
    disable(h, "Build", "Inbound", reason="both")
    assert inbound(h, "Build")["disabledReason"] == "both"  # the inbound one is shown first
    enable(h, "Build", "Inbound")
    assert tr.closed(h.state, "Build")
    assert inbound(h, "Build")["disabledReason"] == "no builds"
    enable(h, "Source", "Outbound")
    assert not tr.closed(h.state, "Build")


def test_enable_of_an_enabled_transition_emits_nothing() -> None:
    h = pipeline()
    assert enable(h) == []
    assert enable(h, "Source", "Outbound") == []
    disable(h)
    assert len(enable(h)) == 1
    assert enable(h) == []


def test_disable_again_replaces_reason() -> None:
    h = pipeline()
    disable(h, reason="one")
    disable(h, reason="two")
    assert inbound(h, "Build")["disabledReason"] == "two"


# --- errors ----------------------------------------------------------------------------------


def test_errors() -> None:
    h = Harness()
    err = h.error(c.DisableStageTransition(stageName="Build", transitionType="Inbound", reason="x"))
    assert err.type_name == "PipelineNotFoundException"
    err = h.error(c.EnableStageTransition(stageName="Build", transitionType="Inbound"))
    assert err.type_name == "PipelineNotFoundException"
    h.create(make_decl(THREE))
    for cmd in (
        c.DisableStageTransition(stageName="Nope", transitionType="Inbound", reason="x"),
        c.EnableStageTransition(stageName="Nope", transitionType="Outbound"),
    ):
        assert h.error(cmd).type_name == "StageNotFoundException"
    first = h.error(
        c.DisableStageTransition(stageName="Source", transitionType="Inbound", reason="x")
    )
    assert first.type_name == "ValidationException"
    assert "is the first stage of pipeline 'p': it has no inbound transition" in first.message
    last = h.error(
        c.DisableStageTransition(stageName="Deploy", transitionType="Outbound", reason="x")
    )
    assert last.type_name == "ValidationException"
    assert "is the last stage of pipeline 'p': it has no outbound transition" in last.message
    empty = h.error(
        c.DisableStageTransition(stageName="Build", transitionType="Inbound", reason="")
    )
    assert empty.type_name == "ValidationException"
    long_ = h.error(
        c.DisableStageTransition(stageName="Build", transitionType="Inbound", reason="x" * 301)
    )
    assert long_.type_name == "ValidationException"
    assert disable(h, reason="x" * 300)  # the maximum is accepted
    bad = h.error(c.EnableStageTransition(stageName="Build", transitionType="Sideways"))  # type: ignore[arg-type]
    assert bad.type_name == "ValidationException"
    assert "constraint: Member must satisfy enum value set: [Inbound, Outbound]" in bad.message
    # transitions that do not exist are never disabled: enabling them is a no-op
    assert enable(h, "Source", "Inbound") == []
    assert enable(h, "Deploy", "Outbound") == []


# --- holding executions ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["SUPERSEDED", "QUEUED", "PARALLEL"])
def test_an_execution_reaching_a_disabled_transition_waits_in_progress(mode: str) -> None:
    h = pipeline(mode)
    disable(h)
    a = h.start()
    envs = h.succeed(a, "src")
    assert types(envs)[-2:] == ["StageSucceeded", "ExecutionWaiting"]
    x = h.x(a)
    assert x.status == "InProgress"
    assert x.waitingFor == "Build"
    assert "Build" not in x.stages
    assert h.state.waiting == {"Build": [a]}
    assert "Source" not in h.state.occupant  # the previous stage is released
    doc = q.get_pipeline_state(h.state)
    build = next(s for s in doc["stageStates"] if s["stageName"] == "Build")
    assert build["inboundExecution"] == {"pipelineExecutionId": a, "status": "InProgress"}
    assert "latestExecution" not in build


def test_superseded_newer_execution_supersedes_the_held_one_and_enable_lets_it_in() -> None:
    h = pipeline("SUPERSEDED")
    disable(h)
    a = h.start()
    h.succeed(a, "src")
    b = h.start()
    envs = h.succeed(b, "src")
    assert of_type(envs, ev.ExecutionSuperseded) == [
        ev.ExecutionSuperseded(executionId=a, byExecutionId=b)
    ]
    assert h.x(a).status == "Superseded"
    assert h.state.waiting == {"Build": [b]}
    envs = enable(h)
    assert types(envs) == [
        "StageTransitionEnabled",
        "StageEntered",
        "ActionExecutionScheduled",
        "ActionExecutionScheduled",
    ]
    assert {e.event.executionId for e in envs[1:]} == {b}
    assert h.state.occupant == {"Build": b}
    assert h.state.waiting == {}
    assert h.x(b).currentStage == "Build" and h.x(b).waitingFor is None


def test_queued_held_executions_enter_in_order() -> None:
    h = pipeline("QUEUED")
    disable(h)
    a = h.start()
    h.succeed(a, "src")
    b = h.start()
    h.succeed(b, "src")
    assert h.state.waiting == {"Build": [a, b]}
    assert h.x(a).status == h.x(b).status == "InProgress"
    envs = enable(h)
    assert [e.event.executionId for e in envs if isinstance(e.event, ev.StageEntered)] == [a]
    assert h.state.waiting == {"Build": [b]}
    h.succeed(a, "b1")
    envs = h.succeed(a, "b2")
    entered = of_type(envs, ev.StageEntered)
    assert [(e.executionId, e.stageName) for e in entered] == [(b, "Build"), (a, "Deploy")]
    assert h.state.waiting == {}


def test_parallel_held_executions_all_enter_when_enabled() -> None:
    h = pipeline("PARALLEL")
    disable(h)
    a = h.start()
    h.succeed(a, "src")
    b = h.start()
    h.succeed(b, "src")
    assert h.state.waiting == {"Build": [a, b]}
    assert h.x(a).status == h.x(b).status == "InProgress"
    envs = enable(h)
    entered = [e.executionId for e in of_type(envs, ev.StageEntered)]
    assert entered == [a, b]
    assert h.state.waiting == {} and h.state.occupant == {}


def test_a_release_does_not_admit_through_a_closed_transition() -> None:
    h = pipeline("QUEUED")
    a = h.start()
    h.succeed(a, "src")
    b = h.start()
    h.succeed(b, "src")
    assert h.state.waiting == {"Build": [b]}  # Build occupied by a
    disable(h)
    assert h.x(a).currentStage == "Build"  # already inside: not affected
    h.succeed(a, "b1")
    envs = h.succeed(a, "b2")
    assert "StageEntered" in types(envs)  # a goes on to Deploy ...
    assert [e.executionId for e in of_type(envs, ev.StageEntered)] == [a]
    assert h.state.waiting == {"Build": [b]}  # ... b stays held
    assert "Build" not in h.state.occupant
    envs = enable(h)
    assert [e.executionId for e in of_type(envs, ev.StageEntered)] == [b]


def test_enable_while_the_stage_is_occupied_waits_for_its_release() -> None:
    h = pipeline("QUEUED")
    a = h.start()
    h.succeed(a, "src")
    disable(h)
    b = h.start()
    h.succeed(b, "src")
    envs = enable(h)
    assert types(envs) == ["StageTransitionEnabled"]  # a still holds Build
    h.succeed(a, "b1", "b2")
    assert h.x(b).currentStage == "Build"


def test_a_held_execution_can_be_stopped() -> None:
    h = pipeline("QUEUED")
    disable(h)
    a = h.start()
    h.succeed(a, "src")
    envs = h.stop(a)
    assert types(envs) == ["ExecutionStopped"]
    assert h.x(a).status == "Stopped"
    assert h.state.waiting == {}
    assert enable(h) and "Build" not in h.state.occupant


def test_disabled_outbound_holds_like_inbound() -> None:
    h = pipeline("SUPERSEDED")
    disable(h, "Build", "Outbound", reason="no deploys")
    a = h.to_build()
    h.succeed(a, "b1", "b2")
    assert h.x(a).waitingFor == "Deploy"
    assert h.state.waiting == {"Deploy": [a]}
    envs = enable(h, "Build", "Outbound")
    assert [e.executionId for e in of_type(envs, ev.StageEntered)] == [a]
    h.succeed(a, "d")
    assert h.x(a).status == "Succeeded"


def test_pipeline_delete_and_recreate_forgets_transitions() -> None:
    h = pipeline()
    disable(h)
    h.run(c.DeletePipeline())
    h.create(make_decl(THREE))
    assert h.state.transitions == {}
    assert inbound(h, "Build") == {"enabled": True}


def test_enabling_one_of_two_closing_transitions_keeps_the_execution_held() -> None:
    h = pipeline("QUEUED")
    disable(h, "Source", "Outbound", reason="one")
    disable(h, "Build", "Inbound", reason="two")
    a = h.start()
    h.succeed(a, "src")
    assert h.state.waiting == {"Build": [a]}
    assert enable(h, "Build", "Inbound") == envs_of_type(h, "StageTransitionEnabled")
    assert h.x(a).waitingFor == "Build"
    envs = enable(h, "Source", "Outbound")
    assert [e.executionId for e in of_type(envs, ev.StageEntered)] == [a]


def envs_of_type(h: Harness, name: str) -> list[ev.Envelope]:
    """The last event of the log, when it is of type ``name`` (else nothing)."""
    last = h.log[-1]
    return [last] if ev.event_type(last.event) == name else []


def test_enabling_one_of_two_in_parallel_mode_keeps_them_held() -> None:
    h = pipeline("PARALLEL")
    disable(h, "Source", "Outbound", reason="one")
    disable(h, "Build", "Inbound", reason="two")
    a = h.start()
    h.succeed(a, "src")
    assert types(enable(h, "Build", "Inbound")) == ["StageTransitionEnabled"]
    assert h.state.waiting == {"Build": [a]}
    assert types(enable(h, "Source", "Outbound"))[:2] == ["StageTransitionEnabled", "StageEntered"]


def test_enable_in_parallel_mode_with_nobody_held() -> None:
    h = pipeline("PARALLEL")
    disable(h)
    assert types(enable(h)) == ["StageTransitionEnabled"]


def test_a_stage_that_became_last_keeps_its_outbound_record_harmlessly() -> None:
    h = pipeline("QUEUED")
    disable(h, "Build", "Outbound", reason="no deploys")
    h.update(make_decl({"Source": ["src"], "Build": [("b1", 1), ("b2", 1)]}))
    a = h.start()
    assert h.x(a).currentStage == "Source"  # the first stage has no transition into it
    assert h.x(a).waitingFor is None
    h.succeed(a, "src")
    assert h.x(a).currentStage == "Build"


def test_a_stage_named_none_does_not_close_the_first_stage() -> None:
    h = Harness()
    h.create(make_decl({"First": ["f"], "None": ["n"], "Last": ["l"]}))
    disable(h, "None", "Outbound", reason="after None")
    a = h.start()
    assert h.x(a).currentStage == "First" and h.x(a).waitingFor is None
    h.succeed(a, "f")
    assert h.x(a).currentStage == "None"
    h.succeed(a, "n")
    assert h.x(a).waitingFor == "Last"


def test_after_a_change_to_parallel_a_stage_held_by_an_older_execution_is_entered() -> None:
    h = pipeline("QUEUED")
    a = h.to_build()
    assert h.state.occupant == {"Build": a}
    h.update(make_decl(THREE, mode="PARALLEL"))
    b = h.to_build()  # PARALLEL: no stage occupancy, the older occupant does not hold it
    assert h.x(b).currentStage == "Build" and h.x(b).waitingFor is None
