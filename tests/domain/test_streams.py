"""Example tests of the per-stream pieces: partial states, ``NeedExecutions``, the result
recorded on its own plus ``Advance``, ``decide_many``, head references, and the guide's named
gaps (pipeline versions past 2, which worker's result counts, stopping a failed or waiting
stage). The properties are in ``test_streams_properties``."""

from __future__ import annotations

import msgspec
import pytest

from app.domain import commands as c
from app.domain import events as ev
from app.domain.decide import Ctx, decide, decide_many
from app.domain.errors import DomainError
from app.domain.state import (
    NeedExecutions,
    copy_state,
    encode_head,
    evolve,
    evolve_execution,
    evolve_ref,
    execution_from,
    fold,
    head_of,
)
from tests.domain.helpers import Harness, IdGen, make_ctx, make_decl, of_type, types
from tests.domain.test_streams_properties import head_from_refs, stream_of

THREE = {"Source": ["src"], "Build": [("b1", 1), ("b2", 1), ("b3", 2)], "Deploy": ["d"]}
UNKNOWN = "0000000e-0000-4000-8000-0000000000ff"


def in_build(mode: str | None = None, auto: dict[str, str] | None = None) -> tuple[Harness, str]:
    h = Harness()
    h.create(make_decl(THREE, mode=mode, auto_retry=auto))
    return h, h.to_build()


def complete(h: Harness, eid: str, name: str, ok: bool = True, **kw: object) -> c.CompleteAction:
    return c.CompleteAction(executionId=eid, actionExecutionId=h.aid(eid, name), succeeded=ok, **kw)  # type: ignore[arg-type]


# --- partial states --------------------------------------------------------------------------


def test_lookup_on_a_partial_state_asks_for_what_it_does_not_hold() -> None:
    h, a = in_build()
    s = head_from_refs(h.name, h.log)
    with pytest.raises(NeedExecutions) as info:
        decide(s, complete(h, a, "b1"), make_ctx())
    assert info.value.ids == [a]
    assert a in str(info.value)
    # known not to exist: no question, the usual refusal
    s.absent.append(UNKNOWN)
    with pytest.raises(DomainError) as err:
        decide(s, c.StopExecution(executionId=UNKNOWN), make_ctx())
    assert err.value.type_name == "PipelineExecutionNotFoundException"
    # a full state never asks
    with pytest.raises(DomainError):
        decide(h.state, c.StopExecution(executionId=UNKNOWN), make_ctx())


def test_execution_of_an_earlier_pipeline_of_the_same_name_is_not_found() -> None:
    h, a = in_build()
    old = stream_of(h.log, a)
    h.run(c.DeletePipeline())
    h.create()
    s = head_from_refs(h.name, h.log)
    x = execution_from(old)
    assert x is not None and x.started < s.incarnation
    s.executions[a] = x  # held, but of the deleted pipeline
    with pytest.raises(DomainError) as err:
        decide(s, c.StopExecution(executionId=a), make_ctx())
    assert err.value.type_name == "PipelineExecutionNotFoundException"
    assert s.lookup(a) is None
    # the same id started again in the new pipeline is found
    b = h.start()
    assert h.state.lookup(b) is not None
    assert h.state.incarnation == next(
        e.version for e in reversed(h.log) if isinstance(e.event, ev.PipelineCreated)
    )


def test_a_partial_state_past_an_execution_start_does_not_create_a_blank_one() -> None:
    h, a = in_build()
    s = head_from_refs(h.name, h.log)
    start = stream_of(h.log, a)[0]
    evolve(s, start)  # seen again (a dispatch stream) after the head was folded past it
    assert a not in s.executions
    assert s.active == [a]
    # a full state folds it once
    full = fold(h.name, h.log)
    evolve(full, start)
    assert msgspec.json.encode(full) == msgspec.json.encode(h.state)


def test_decide_on_a_loaded_execution_newer_than_the_head() -> None:
    """Found by mutation testing: decide numbers its (provisional) events after everything
    the state holds, also an execution newer than the head."""
    h, a = in_build()
    h.succeed(a, "b1")
    s = head_from_refs(h.name, h.log)
    x = execution_from(stream_of(h.log, a))
    assert x is not None
    s.executions[a] = x  # exactly what the repository's load_executions does
    assert x.version > s.version
    cmd = complete(h, a, "b2")
    assert types(decide(h.state, cmd, make_ctx())) == [
        "ActionExecutionSucceeded",
        "ActionExecutionScheduled",
    ]
    assert types(decide(s, cmd, make_ctx())) == [
        "ActionExecutionSucceeded",
        "ActionExecutionScheduled",
    ]


def test_head_references_fold_the_head_only() -> None:
    h, a = in_build()
    b = h.to_build()  # waits for Build
    h.fail(a, "b1")  # a fails, b enters Build
    s = head_from_refs(h.name, h.log)
    assert encode_head(s) == encode_head(h.state)
    assert s.occupant == {"Build": b} and s.active == [b]
    assert s.executionCount == 2 and s.headVersion == h.state.headVersion
    # a reference older than the head is ignored
    before = encode_head(s)
    evolve_ref(s, 1, ev.HeadRef(t="ExecutionStopped", x=b))
    assert encode_head(s) == before
    # references round-trip; StageFailed keeps its autoRetry flag
    ref = ev.head_ref(ev.StageFailed(executionId=a, stageName="Build", autoRetry=True))
    assert ref == ev.HeadRef(t="StageFailed", x=a, s="Build", a=True)
    assert ev.decode_ref(ev.encode_ref(ref)) == ref
    assert ev.head_ref(ev.ExecutionSucceeded(executionId=a)) == ev.HeadRef(
        t="ExecutionSucceeded", x=a
    )
    assert ev.encode_ref(ev.HeadRef(t="ExecutionSucceeded", x=a)) == (
        b'["ExecutionSucceeded","' + a.encode() + b'","",false]'
    )


def test_head_of_drops_executions_tokens_and_absent() -> None:
    h = Harness()
    h.create()
    a = h.start(token="tok")
    s = copy_state(h.state)
    s.absent.append(UNKNOWN)
    head = head_of(s)
    assert head.executions == {} and head.tokens == {} and head.absent == []
    assert head.partial and head.version == s.headVersion
    assert s.executions and s.tokens == {"tok": a} and s.absent == [UNKNOWN]  # untouched


def test_execution_from_ignores_what_is_not_newer() -> None:
    h, a = in_build()
    own = stream_of(h.log, a)
    assert execution_from([]) is None
    x = execution_from(own)
    assert x is not None
    assert (x.started, x.version) == (own[0].version, own[-1].version)
    assert x.lastUpdateTime == own[-1].time
    src = x.actions[x.stages["Source"].latest["src"]]
    assert src.seq == max(e.version for e in own if ev.action_of(e.event) == src.actionExecutionId)
    again = execution_from([*own, own[-2], own[1]])
    assert msgspec.json.encode(again) == msgspec.json.encode(x)


# --- a result on its own, then Advance ---------------------------------------------------------


def test_result_alone_records_only_the_result_and_advance_moves_on() -> None:
    h, a = in_build()
    h.succeed(a, "b1")
    alone = complete(h, a, "b2", consequences=False)
    envs = h.run(alone)
    assert types(envs) == ["ActionExecutionSucceeded"]
    adv = c.Advance(executionId=a, actionExecutionId=alone.actionExecutionId)
    assert types(h.run(adv)) == ["ActionExecutionScheduled"]
    assert h.run(adv) == []  # done already
    # unknown targets: nothing
    assert h.run(c.Advance(executionId=a, actionExecutionId=UNKNOWN)) == []
    assert h.run(c.Advance(executionId=UNKNOWN, actionExecutionId=UNKNOWN)) == []
    # an action still running: nothing
    assert h.run(c.Advance(executionId=a, actionExecutionId=h.aid(a, "b3"))) == []


def test_failure_alone_then_advance_fails_the_stage_with_the_recorded_reason() -> None:
    h, a = in_build()
    alone = complete(h, a, "b1", ok=False, errorCode="Exit2", message="no", consequences=False)
    assert types(h.run(alone)) == ["ActionExecutionFailed"]
    envs = h.run(c.Advance(executionId=a, actionExecutionId=alone.actionExecutionId))
    assert types(envs) == ["StageFailed", "ExecutionFailed"]
    (failed,) = of_type(envs, ev.StageFailed)
    assert failed.reason == "Action 'b1' failed: Exit2: no"
    # LoseAction on its own: WorkerLost, then the sibling's failure is recorded only
    lost = c.LoseAction(executionId=a, actionExecutionId=h.aid(a, "b2"), consequences=False)
    assert types(h.run(lost)) == ["ActionExecutionFailed"]
    assert h.run(c.Advance(executionId=a, actionExecutionId=lost.actionExecutionId)) == []


def test_advance_of_an_old_attempt_after_an_automatic_retry_does_nothing() -> None:
    h, a = in_build(auto={"Build": "FAILED_ACTIONS"})
    b1 = h.aid(a, "b1")
    h.fail(a, "b1")  # automatic retry: a new b1 attempt
    assert h.aid(a, "b1") != b1
    assert h.run(c.Advance(executionId=a, actionExecutionId=b1)) == []


def test_lose_alone_of_a_worker_that_does_not_hold_it_is_ignored() -> None:
    h, a = in_build()
    b1 = h.aid(a, "b1")
    h.run(c.StartAction(executionId=a, actionExecutionId=b1, worker="w1"))
    lost = c.LoseAction(executionId=a, actionExecutionId=b1, worker="w2", consequences=False)
    assert h.run(lost) == []
    done = complete(h, a, "b1", worker="w2", consequences=False)
    assert h.run(done) == []
    assert h.x(a).actions[b1].status == "InProgress"


# --- decide_many ------------------------------------------------------------------------------


def test_decide_many_chains_commands_and_collects_refusals() -> None:
    h, a = in_build()
    ids = IdGen(prefix=0xC)
    b1, b2 = h.aid(a, "b1"), h.aid(a, "b2")
    items: list[tuple[c.Command, Ctx]] = [
        (c.CompleteAction(executionId=a, actionExecutionId=b1, succeeded=True), Ctx(1.0, ids)),
        (c.StopExecution(executionId=UNKNOWN), Ctx(2.0, ids)),
        (c.CompleteAction(executionId=a, actionExecutionId=b2, succeeded=True), Ctx(3.0, ids)),
        (c.StartAction(executionId=a, actionExecutionId=UNKNOWN, worker="w"), Ctx(4.0, ids)),
    ]
    before = msgspec.json.encode(h.state)
    events, refused = decide_many(h.state, items)
    assert msgspec.json.encode(h.state) == before
    assert types(events) == [
        "ActionExecutionSucceeded",
        "ActionExecutionSucceeded",
        "ActionExecutionScheduled",
    ]
    assert [e.time for e in events] == [1.0, 3.0, 3.0]
    assert [e.version for e in events] == [h.state.version + i for i in (1, 2, 3)]
    assert [(type(cmd).__name__, err.type_name) for cmd, err in refused] == [
        ("StopExecution", "PipelineExecutionNotFoundException"),
        ("StartAction", "ActionExecutionNotFoundException"),
    ]


def test_decide_many_on_a_partial_state_asks_for_executions() -> None:
    h, a = in_build()
    s = head_from_refs(h.name, h.log)
    with pytest.raises(NeedExecutions) as info:
        decide_many(s, [(complete(h, a, "b1"), make_ctx())])
    assert info.value.ids == [a]


# --- pipeline versions past 2 -----------------------------------------------------------------


def _renamed(action_name: str) -> c.UpdatePipeline:
    return c.UpdatePipeline(
        declaration=make_decl({"Source": [action_name], "Build": [("b1", 1), ("b2", 1)]})
    )


def test_pipeline_versions_past_two() -> None:
    h = Harness()
    h.create(make_decl(THREE))
    h.run(_renamed("s2"))
    h.run(_renamed("s3"))
    assert h.state.declaration is not None and h.state.declaration.version == 3
    assert sorted(h.state.declarations) == [1, 2, 3]
    a = h.start()
    (sched,) = of_type(h.log[-1:], ev.ActionExecutionScheduled)
    assert (sched.actionName, sched.pipelineVersion) == ("s3", 3)
    assert h.x(a).pipelineVersion == 3
    h.run(_renamed("s4"))
    assert h.state.declaration.version == 4
    # the running execution keeps its version's declaration: fail it, it is not retryable
    assert h.state.action_declaration(h.x(a), "Source", "s3") is not None
    assert h.state.action_declaration(h.x(a), "Source", "s4") is None
    assert h.state.action_declaration(h.x(a), "Nope", "s3") is None
    h.fail(a, "s3")
    err = h.retry_error(a, "Source", "FAILED_ACTIONS")
    assert err.type_name == "StageNotRetryableException"
    assert "version 3 -> 4" in err.message
    # a new execution runs version 4 and is retryable
    b = h.start()
    h.fail(b, "s4")
    assert types(h.retry(b, "Source", "FAILED_ACTIONS")) == ["StageRetryRequested"]


def test_update_keeps_the_pipeline_type() -> None:
    h = Harness()
    decl = msgspec.structs.replace(make_decl(), pipelineType="V1")
    h.create(decl)
    h.update(msgspec.structs.replace(decl, pipelineType=None, version=None))
    assert h.state.declaration is not None
    assert (h.state.declaration.pipelineType, h.state.declaration.version) == ("V1", 2)
    h.update(msgspec.structs.replace(decl, pipelineType="V2", version=None))
    assert (h.state.declaration.pipelineType, h.state.declaration.version) == ("V2", 3)


# --- which worker's result counts ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("taken_by", "result_from", "counts"),
    [
        (None, None, True),
        (None, "w1", True),  # nobody took it: a result counts
        ("w1", None, True),  # the API (job results, approvals) names no worker
        ("w1", "w1", True),
        ("w1", "w2", False),  # a runner that lost the action
    ],
)
@pytest.mark.parametrize("consequences", [True, False])
def test_which_workers_result_counts(
    taken_by: str | None, result_from: str | None, counts: bool, consequences: bool
) -> None:
    h, a = in_build()
    b1 = h.aid(a, "b1")
    if taken_by is not None:
        h.run(c.StartAction(executionId=a, actionExecutionId=b1, worker=taken_by))
    envs = h.run(
        c.CompleteAction(
            executionId=a,
            actionExecutionId=b1,
            succeeded=False,
            worker=result_from,
            consequences=consequences,
        )
    )
    if not counts:
        assert envs == []
        assert h.x(a).actions[b1].status == "InProgress"
        return
    expected = ["ActionExecutionFailed"]
    if consequences:
        expected += ["StageFailed", "ExecutionFailed"]
    assert types(envs) == expected
    assert h.x(a).actions[b1].worker == taken_by


@pytest.mark.parametrize(
    ("taken_by", "lost_by", "counts"),
    [
        (None, None, True),
        (None, "w1", False),  # a lease nobody took cannot expire
        ("w1", None, True),
        ("w1", "w1", True),
        ("w1", "w2", False),
    ],
)
def test_which_workers_loss_counts(taken_by: str | None, lost_by: str | None, counts: bool) -> None:
    h, a = in_build()
    b1 = h.aid(a, "b1")
    if taken_by is not None:
        h.run(c.StartAction(executionId=a, actionExecutionId=b1, worker=taken_by))
    envs = h.run(c.LoseAction(executionId=a, actionExecutionId=b1, worker=lost_by, message="gone"))
    if not counts:
        assert envs == []
        return
    assert types(envs) == ["ActionExecutionFailed", "StageFailed", "ExecutionFailed"]
    (failed,) = of_type(envs, ev.ActionExecutionFailed)
    assert (failed.errorCode, failed.message) == (ev.WORKER_LOST, "gone")
    (stage_failed,) = of_type(envs, ev.StageFailed)
    assert stage_failed.reason == "Action 'b1' failed: WorkerLost: gone"


# --- stop of a failed or waiting stage --------------------------------------------------------


def test_stop_while_a_failed_stage_waits_for_its_siblings_to_retry() -> None:
    """ALL_ACTIONS automatic retry: the stage failed but a sibling still runs."""
    h, a = in_build(auto={"Build": "ALL_ACTIONS"})
    waiter = h.to_build()
    h.fail(a, "b1")
    assert h.run_of(a, "Build").status == "Failed"
    assert h.x(a).status == "InProgress"
    envs = h.stop(a, reason="halt")
    assert types(envs) == ["ExecutionStopping"]
    assert h.run_of(a, "Build").status == "Failed"  # not InProgress: stays Failed
    envs = h.succeed(a, "b2")
    assert types(envs)[:2] == ["ActionExecutionSucceeded", "ExecutionStopped"]
    (stopped,) = of_type(envs, ev.ExecutionStopped)
    assert stopped.reason == "halt"  # the stop's reason, recorded in the event too
    assert h.x(a).status == "Stopped"
    assert h.run_of(a, "Build").status == "Failed"
    assert h.x(a).statusSummary == "halt"
    assert h.x(waiter).currentStage == "Build"  # released to the waiter
    assert h.x(a).stages["Build"].autoRetries == 0  # no retry after the stop


def test_stop_of_a_failed_execution_is_refused() -> None:
    h, a = in_build()
    h.fail(a, "b1")
    err = h.error(c.StopExecution(executionId=a))
    assert err.type_name == "PipelineExecutionNotStoppableException"
    assert "Failed" in err.message


def test_stop_of_a_waiting_execution_with_abandon_abandons_nothing() -> None:
    h, a = in_build(mode="QUEUED")
    b = h.to_build()  # waits for Build; its Source actions all succeeded
    envs = h.stop(b, abandon=True, reason="r")
    assert types(envs) == ["ExecutionStopped"]
    assert h.state.occupant == {"Build": a}  # the occupant keeps the stage
    assert h.state.waiting == {}
    assert h.x(b).statusSummary == "r"
    assert h.run_of(b, "Source").status == "Succeeded"


def test_stop_of_a_stopping_execution_with_abandon_stops_it() -> None:
    h, a = in_build()
    h.stop(a)
    envs = h.stop(a, abandon=True)
    assert types(envs) == [
        "ActionExecutionAbandoned",
        "ActionExecutionAbandoned",
        "ExecutionStopped",
    ]
    assert {e.reason for e in of_type(envs, ev.ActionExecutionAbandoned)} == {
        "Execution stopped and abandoned"
    }
    assert h.run_of(a, "Build").status == "Stopped"


# --- stored forms -----------------------------------------------------------------------------


def test_every_envelope_field_round_trips_through_the_stored_payload() -> None:
    env = ev.Envelope(
        id="i",
        pipeline="p",
        version=7,
        time=1.5,
        actor="worker:w",
        event=ev.StageFailed(executionId=UNKNOWN, stageName="S", reason="r", autoRetry=True),
        correlationId="corr",
        causationId="cause",
        commandId="cmd",
        requestId="req",
        source="src",
    )
    data = ev.encode_payload(env)
    assert ev.decode_payload("p", 7, data) == env
    assert msgspec.json.decode(data) == {
        "id": "i",
        "time": 1.5,
        "actor": "worker:w",
        "event": {
            "type": "StageFailed",
            "executionId": UNKNOWN,
            "stageName": "S",
            "reason": "r",
            "autoRetry": True,
        },
        "correlationId": "corr",
        "causationId": "cause",
        "commandId": "cmd",
        "requestId": "req",
        "source": "src",
    }
    # the pipeline and version are the stream's
    back = ev.decode_payload("q", 9, data)
    assert (back.pipeline, back.version) == ("q", 9)
    assert ev.event_type(env.event) == "StageFailed"


def test_execution_and_action_of_an_event() -> None:
    assert ev.execution_of(ev.PipelineDeleted()) is None
    assert ev.execution_of(ev.ExecutionSucceeded(executionId="x")) == "x"
    assert ev.action_of(ev.ExecutionSucceeded(executionId="x")) is None
    assert (
        ev.action_of(
            ev.JobAcknowledged(executionId="x", actionExecutionId="a", jobId="j", nonce="n")
        )
        == "a"
    )
    assert ev.head_ref(ev.ExecutionWaiting(executionId="x", stageName="S")) == ev.HeadRef(
        t="ExecutionWaiting", x="x", s="S", a=False
    )
    assert ev.head_ref(ev.PipelineDeleted()) == ev.HeadRef(t="PipelineDeleted", x="")


def test_errors_say_what_and_why() -> None:
    err = DomainError("SomeException", "because")
    assert (str(err), err.type_name, err.message, err.status) == (
        "SomeException: because",
        "SomeException",
        "because",
        400,
    )
    assert DomainError("ConflictException", "x", status=409).status == 409
    need = NeedExecutions(["a", "b"])
    assert (str(need), need.ids) == ("executions needed: a, b", ["a", "b"])


def test_refolding_a_deleted_execution_start_changes_nothing() -> None:
    h = Harness()
    h.create()
    a = h.start()
    h.run(c.DeletePipeline())
    s = fold(h.name, h.log)
    assert s.executions == {}
    fold(h.name, stream_of(h.log, a)[:1], s)  # its start, seen again (a dispatch stream)
    assert s.executions == {}


# --- more of what mutation testing found untested ----------------------------------------------


def test_a_pending_automated_retry_is_applied_as_automated() -> None:
    """The event catalogue allows a requested retry of either trigger: applying it keeps it."""
    h, a = in_build()
    h.fail(a, "b1")
    h.succeed(a, "b2")
    requested = ev.StageRetryRequested(
        executionId=a, stageName="Build", retryMode="FAILED_ACTIONS", trigger="AutomatedStageRetry"
    )
    env = ev.Envelope(
        id="r",
        pipeline=h.name,
        version=h.state.version + 1,
        time=1.0,
        actor="system",
        event=requested,
    )
    evolve(h.state, env)
    h.log.append(env)
    assert h.run_of(a, "Build").pendingTrigger == "AutomatedStageRetry"
    envs = h.apply(a, "Build")
    (started,) = of_type(envs, ev.StageRetryStarted)
    assert started.trigger == "AutomatedStageRetry"
    run = h.run_of(a, "Build")
    assert (run.autoRetries, run.manualRetries, run.latestTrigger) == (1, 0, "AutomatedStageRetry")


def test_a_stopping_execution_s_running_action_can_still_be_taken() -> None:
    h, a = in_build()
    h.stop(a)
    assert h.x(a).status == "Stopping"
    b1 = h.aid(a, "b1")
    envs = h.run(c.StartAction(executionId=a, actionExecutionId=b1, worker="w1"))
    assert types(envs) == ["ActionExecutionStarted"]
    assert h.x(a).actions[b1].worker == "w1"
    # ... and one of a failed execution (a sibling of the failed action)
    h2, x = in_build()
    h2.fail(x, "b1")
    b2 = h2.aid(x, "b2")
    assert types(h2.run(c.StartAction(executionId=x, actionExecutionId=b2, worker="w"))) == [
        "ActionExecutionStarted"
    ]
    # but not an ended one
    err = h2.error(c.StartAction(executionId=x, actionExecutionId=h2.aid(x, "b1"), worker="w"))
    assert err.type_name == "ActionNotRunnableException"
    assert "Failed" in err.message


@pytest.mark.parametrize("status", ["Approved", "Rejected"])
def test_approval_result_names_the_execution_and_keeps_the_summary(status: str) -> None:
    h = Harness()
    h.create(make_decl({"Gate": [("ok", 1, "approval")], "Next": ["n"]}))
    a = h.start()
    gate = h.action(a, "ok")
    assert gate.token is not None
    envs = h.run(
        c.PutApproval(
            stageName="Gate", actionName="ok", token=gate.token, status=status, summary="lgtm"
        )  # type: ignore[arg-type]
    )
    (recorded,) = of_type(envs, ev.ApprovalRecorded)
    assert (recorded.executionId, recorded.actionExecutionId) == (a, gate.actionExecutionId)
    # the recorded approval alone (a fold that stops there) keeps who approved and why
    upto = fold(h.name, [e for e in h.log if e.version <= envs[0].version])
    kept = upto.executions[a].actions[gate.actionExecutionId]
    assert (kept.status, kept.summary, kept.updatedBy) == ("InProgress", "lgtm", "tester")
    assert (recorded.status, recorded.summary) == (status, "lgtm")
    ended = h.x(a).actions[gate.actionExecutionId]
    assert (ended.summary, ended.updatedBy) == ("lgtm", "tester")
    if status == "Approved":
        (ok,) = of_type(envs, ev.ActionExecutionSucceeded)
        assert (ok.executionId, ok.summary) == (a, "lgtm")
        assert h.x(a).currentStage == "Next"
        return
    (failed,) = of_type(envs, ev.ActionExecutionFailed)
    assert (failed.executionId, failed.errorCode, failed.message) == (a, "Rejected", "lgtm")
    (stage_failed,) = of_type(envs, ev.StageFailed)
    assert stage_failed.reason == "Approval 'ok' was rejected"
    assert h.x(a).statusSummary == "Approval 'ok' was rejected"
    again = h.error(
        c.PutApproval(stageName="Gate", actionName="ok", token=gate.token, status="Approved")
    )
    assert again.type_name == "ApprovalAlreadyCompletedException"


def test_an_actions_result_is_kept_field_by_field() -> None:
    h, a = in_build()
    h.actor = "worker:w1"
    b1, b2 = h.aid(a, "b1"), h.aid(a, "b2")
    h.run(
        c.CompleteAction(
            executionId=a,
            actionExecutionId=b1,
            succeeded=True,
            summary="built",
            externalExecutionId="ext-1",
            outputVariables={"K": "V"},
        )
    )
    ok = h.x(a).actions[b1]
    assert (ok.status, ok.summary, ok.externalExecutionId, ok.outputVariables) == (
        "Succeeded",
        "built",
        "ext-1",
        {"K": "V"},
    )
    assert (ok.updatedBy, ok.lastUpdateTime, ok.errorCode) == ("worker:w1", h.now, None)
    h.actor = "worker:w2"
    h.run(
        c.CompleteAction(
            executionId=a,
            actionExecutionId=b2,
            succeeded=False,
            errorCode="Exit3",
            message="broke",
            summary="sum",
            externalExecutionId="ext-2",
        )
    )
    bad = h.x(a).actions[b2]
    assert (bad.status, bad.errorCode, bad.errorMessage, bad.summary) == (
        "Failed",
        "Exit3",
        "broke",
        "sum",
    )
    assert (bad.externalExecutionId, bad.updatedBy, bad.lastUpdateTime) == (
        "ext-2",
        "worker:w2",
        h.now,
    )
    x = h.x(a)
    assert (x.status, x.statusSummary) == ("Failed", "Action 'b2' failed: Exit3: broke")
    assert x.lastUpdateTime == h.now and x.version == h.state.version
    # a failure without a code or message
    h2, y = in_build()
    h2.run(c.CompleteAction(executionId=y, actionExecutionId=h2.aid(y, "b1"), succeeded=False))
    plain = h2.action(y, "b1")
    assert (plain.errorCode, plain.errorMessage, plain.summary) == ("JobFailed", "", None)
    assert h2.x(y).statusSummary == "Action 'b1' failed: JobFailed"


def test_abandoned_actions_keep_the_reason() -> None:
    h, a = in_build()
    h.stop(a, abandon=True, reason="no more")
    for name in ("b1", "b2"):
        gone = h.action(a, name)
        assert (gone.status, gone.errorMessage) == ("Abandoned", "no more")
    x = h.x(a)
    assert (x.status, x.statusSummary, x.stopAbandon) == ("Stopped", "no more", None)


def test_execution_started_keeps_its_trigger() -> None:
    h = Harness()
    h.create()
    eid = h.exec_ids()
    h.run(
        c.StartExecution(
            executionId=eid,
            triggerType="CloudWatchEvent",
            triggerDetail="rule",
            clientRequestToken="t",
        )
    )
    x = h.x(eid)
    assert (x.triggerType, x.triggerDetail, x.pipelineVersion) == ("CloudWatchEvent", "rule", 1)
    assert (x.startTime, x.started, h.state.tokens) == (h.now, 1 + 1, {"t": eid})
    (started,) = of_type(h.log, ev.ExecutionStarted)
    assert (started.triggerType, started.triggerDetail, started.clientRequestToken) == (
        "CloudWatchEvent",
        "rule",
        "t",
    )


def test_an_execution_event_folded_twice_counts_once() -> None:
    h, a = in_build()
    h.fail(a, "b1")
    h.retry_now(a, "Build", "FAILED_ACTIONS")
    (retried,) = [e for e in h.log if isinstance(e.event, ev.StageRetryStarted)]
    s = head_from_refs(h.name, [e for e in h.log if e.version <= retried.version])
    x = execution_from(stream_of([e for e in h.log if e.version <= retried.version], a))
    assert x is not None
    s.executions[a] = x
    evolve_execution(s, retried)  # already folded: nothing
    assert s.executions[a].stages["Build"].manualRetries == 1
    for e in h.log:
        if e.version > retried.version:
            evolve_execution(s, e)
            evolve_execution(s, e)
    assert msgspec.json.encode(s.executions[a]) == msgspec.json.encode(h.x(a))
    assert s.version == h.state.version


def test_stage_index_names_a_missing_stage() -> None:
    decl = make_decl(THREE)
    assert decl.stage_index("Deploy") == 2
    with pytest.raises(KeyError, match="Nope"):
        decl.stage_index("Nope")


def test_a_declaration_logged_without_a_version_is_version_1() -> None:
    """Old logs may hold a declaration without ``version``: it is version 1."""
    h = Harness()
    env = ev.Envelope(
        id="c",
        pipeline=h.name,
        version=1,
        time=1.0,
        actor="system",
        event=ev.PipelineCreated(declaration=make_decl(THREE)),
    )
    assert env.event.declaration.version is None  # type: ignore[union-attr]
    evolve(h.state, env)
    h.log.append(env)
    assert sorted(h.state.declarations) == [1]
    a = h.to_build()
    assert h.x(a).pipelineVersion == 1
    h.fail(a, "b1")
    assert types(h.retry(a, "Build", "FAILED_ACTIONS")) == ["StageRetryRequested"]
    h.update()
    assert sorted(h.state.declarations) == [1, 2]


def test_all_actions_retry_with_actions_running_says_what_can_retry_now() -> None:
    h, a = in_build()
    h.fail(a, "b1")
    err = h.retry_error(a, "Build", "ALL_ACTIONS")
    assert err.type_name == "StageNotRetryableException"
    assert err.message.endswith("(FAILED_ACTIONS can retry now)")


def test_a_long_failure_message_is_cut_to_2000_characters() -> None:
    h, a = in_build()
    h.run(complete(h, a, "b1", ok=False, errorCode="E", message="m" * 3000))
    reason = h.x(a).statusSummary
    assert reason is not None and len(reason) == 2000
    assert reason.startswith("Action 'b1' failed: E: mmm")
    assert h.action(a, "b1").errorMessage == "m" * 3000  # the action keeps all of it


def test_declaration_problems_are_named() -> None:
    from app.domain.model import ActionDeclaration, ActionTypeId, declaration_problems

    assert declaration_problems(make_decl(THREE)) == []
    empty = msgspec.structs.replace(make_decl(THREE), stages=[])
    assert declaration_problems(empty) == ["pipeline must have at least one stage"]
    src = make_decl(THREE).stages[0]
    no_commands = ActionDeclaration(name="cmd", actionTypeId=src.actions[0].actionTypeId)
    bad = msgspec.structs.replace(
        make_decl(THREE),
        stages=[
            src,
            src,
            msgspec.structs.replace(src, name="Empty", actions=[]),
            msgspec.structs.replace(src, name="Twice", actions=[src.actions[0], src.actions[0]]),
            msgspec.structs.replace(src, name="Cmd", actions=[no_commands]),
            # not Compute/Commands of AWS: no 'commands' needed
            msgspec.structs.replace(
                src,
                name="Others",
                actions=[
                    ActionDeclaration(
                        name=f"o{i}",
                        actionTypeId=ActionTypeId(
                            category=cat, owner=owner, provider=prov, version="1"
                        ),
                    )
                    for i, (owner, cat, prov) in enumerate(
                        [
                            ("Custom", "Compute", "Commands"),
                            ("AWS", "Build", "Commands"),
                            ("AWS", "Compute", "Other"),
                        ]
                    )
                ],
            ),
        ],
    )
    assert declaration_problems(bad) == [
        "duplicate stage name 'Source'",
        "stage 'Empty' must have at least one action",
        "duplicate action name 'src' in stage 'Twice'",
        "action 'cmd': Compute/Commands needs a non-empty 'commands'",
    ]
    h = Harness()
    err = h.error(c.CreatePipeline(declaration=bad))
    assert err.type_name == "InvalidStructureException"
    assert err.message == "; ".join(declaration_problems(bad))
    err = h.error(c.CreatePipeline(declaration=make_decl(THREE, name="other")))
    assert err.message == "declaration name 'other' is not 'p'"
    h.create(make_decl(THREE))
    err = h.error(c.UpdatePipeline(declaration=empty))
    assert (err.type_name, err.message) == (
        "InvalidStructureException",
        "pipeline must have at least one stage",
    )


def test_the_last_head_event_folded_again_changes_nothing() -> None:
    h = Harness()
    h.create(make_decl(THREE, mode="QUEUED"))
    h.start()
    b = h.start()  # waits: its ExecutionWaiting is the head's last event
    last = h.log[-1]
    assert isinstance(last.event, ev.ExecutionWaiting) and last.version == h.state.headVersion
    s = fold(h.name, h.log)
    evolve(s, last)
    assert s.waiting == {"Source": [b]}
    assert msgspec.json.encode(s) == msgspec.json.encode(h.state)
    refs = head_from_refs(h.name, h.log)
    evolve_ref(refs, last.version, ev.head_ref(last.event))
    assert encode_head(refs) == encode_head(h.state)


def test_events_carry_the_context_of_the_command() -> None:
    h = Harness()
    ctx = Ctx(
        now=5.0,
        new_id=IdGen(prefix=0xD),
        actor="AKID",
        correlationId="corr",
        causationId="cause",
        commandId="cmd",
        requestId="req",
        source="api",
    )
    (env,) = decide(h.state, c.CreatePipeline(declaration=make_decl(THREE)), ctx)
    assert (env.id, env.pipeline, env.version, env.time, env.actor) == (
        "0000000d-0000-4000-8000-000000000001",
        "p",
        1,
        5.0,
        "AKID",
    )
    assert (env.correlationId, env.causationId, env.commandId, env.requestId, env.source) == (
        "corr",
        "cause",
        "cmd",
        "req",
        "api",
    )


def test_an_update_without_a_mode_records_the_default_mode() -> None:
    h = Harness()
    h.create(make_decl(THREE, mode="QUEUED"))
    h.run(c.UpdatePipeline(declaration=make_decl(THREE)))
    assert h.state.declaration is not None
    assert (h.state.declaration.executionMode, h.state.declaration.version) == ("SUPERSEDED", 2)


def test_a_pending_all_actions_retry_is_rejected_while_an_action_runs() -> None:
    """Re-checked when applied: a requested ALL_ACTIONS retry (the catalogue allows any)
    cannot start while a sibling still runs."""
    h, a = in_build()
    h.fail(a, "b1")  # b2 still runs
    env = ev.Envelope(
        id="r",
        pipeline=h.name,
        version=h.state.version + 1,
        time=1.0,
        actor="system",
        event=ev.StageRetryRequested(executionId=a, stageName="Build", retryMode="ALL_ACTIONS"),
    )
    evolve(h.state, env)
    h.log.append(env)
    envs = h.apply(a, "Build")
    (rejected,) = of_type(envs, ev.StageRetryRejected)
    assert rejected.errorType == "StageNotRetryableException"
    assert "ALL_ACTIONS needs them to finish" in rejected.reason
    assert h.run_of(a, "Build").pendingRetry is None
