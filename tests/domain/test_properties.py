"""Property-based tests: random valid command sequences against the pure domain.

A run creates a pipeline with random stages / actions / runOrders / execution mode /
onFailure, then applies random commands (start, complete, start/lose actions, jobs,
approvals, retries of random mode, applies of pending retries, stops, updates). Commands the
domain refuses (DomainError) are skipped. The Harness itself asserts on every command that
``decide`` did not mutate its input and that event versions follow the state's version.
"""

from __future__ import annotations

import os

import botocore.session
import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.domain import commands as c
from app.domain import events as ev
from app.domain import transitions
from app.domain.errors import DomainError
from app.domain.model import FailureConditions
from app.domain.state import ACTIVE_STATUSES, PipelineState, copy_state, fold
from tests.domain.helpers import Harness, check_error, make_decl

MODEL = botocore.session.get_session().get_service_model("codepipeline")
PIPELINE_STATUSES = frozenset(MODEL.shape_for("PipelineExecutionStatus").enum)
STAGE_STATUSES = frozenset(MODEL.shape_for("StageExecutionStatus").enum)
ACTION_STATUSES = frozenset(MODEL.shape_for("ActionExecutionStatus").enum)
RETRY_TRIGGERS = frozenset(MODEL.shape_for("RetryTrigger").enum)
RETRY_MODES = frozenset(MODEL.shape_for("StageRetryMode").enum)

# DOMAIN_PROP_EXAMPLES=5000 for a deeper search; the default keeps the suite fast.
EXAMPLES = int(os.environ.get("DOMAIN_PROP_EXAMPLES", "30"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

OPS = [
    "start",
    "start",
    "complete",
    "complete",
    "complete",
    "complete",
    "start_action",
    "lose",
    "retry",
    "retry",
    "apply",
    "apply",
    "stop",
    "approve",
    "ack",
    "job_result",
    "update",
    "delete",
    "disable",
    "disable",
    "enable",
    "enable",
    "rollback",
    "rollback",
]


class Run:
    def __init__(self, h: Harness) -> None:
        self.h = h
        self.accepted: list[str] = []
        self.refused: list[str] = []
        self.boundaries: list[int] = [len(h.log)]  # log lengths between two commands

    def __repr__(self) -> str:  # hypothesis prints this for a failing example
        decl = self.h.state.declaration
        return (
            f"Run(decl={msgspec.json.encode(decl).decode() if decl else None}, "
            f"accepted={self.accepted}, refused={self.refused})"
        )


@st.composite
def declarations(draw: st.DrawFn) -> tuple[object, int]:
    n_stages = draw(st.integers(1, 3))
    stages: dict[str, list[tuple[str, int, str]]] = {}
    auto: dict[str, str] = {}
    for i in range(n_stages):
        n_actions = draw(st.integers(1, 3))
        stages[f"S{i}"] = [
            (
                f"a{i}{j}",
                draw(st.integers(1, 3)),
                draw(st.sampled_from(["commands", "commands", "commands", "approval", "custom"])),
            )
            for j in range(n_actions)
        ]
        retry = draw(st.sampled_from([None, None, "FAILED_ACTIONS", "ALL_ACTIONS"]))
        if retry is not None:
            auto[f"S{i}"] = retry
    mode = draw(st.sampled_from([None, "SUPERSEDED", "QUEUED", "PARALLEL"]))
    decl = make_decl(stages, mode=mode, auto_retry=auto)
    if mode != "PARALLEL":  # onFailure ROLLBACK (not in PARALLEL mode: refused there)
        rolled = {f"S{i}" for i in range(n_stages) if f"S{i}" not in auto and draw(st.booleans())}
        decl = msgspec.structs.replace(
            decl,
            stages=[
                msgspec.structs.replace(s, onFailure=FailureConditions(result="ROLLBACK"))
                if s.name in rolled
                else s
                for s in decl.stages
            ],
        )
    return decl, draw(st.integers(1, 4))


def _in_progress(h: Harness, kind: str | None = None) -> list[tuple[str, str]]:
    return sorted(
        (eid, a.actionExecutionId)
        for eid, x in h.state.executions.items()
        for a in x.actions.values()
        if a.status == "InProgress" and (kind is None or a.kind == kind)
    )


def _stage_names(h: Harness) -> list[str]:
    decl = h.state.declaration
    return [s.name for s in decl.stages] if decl is not None else ["S0"]


def _command(h: Harness, op: str, data: st.DataObject) -> c.Command | None:
    draw = data.draw
    eids = sorted(h.state.executions)
    if op == "start":
        token = draw(st.sampled_from([None, None, "t1", "t2"]))
        return c.StartExecution(executionId=h.exec_ids(), clientRequestToken=token)
    if op in ("complete", "start_action", "lose"):
        running = _in_progress(h)
        if not running:
            return None
        eid, aid = draw(st.sampled_from(running))
        worker = draw(st.sampled_from([None, "w1", "w2"]))
        if op == "complete":
            return c.CompleteAction(
                executionId=eid,
                actionExecutionId=aid,
                succeeded=draw(st.sampled_from([True, True, False])),
                worker=worker,
                errorCode="E",
            )
        if op == "start_action":
            return c.StartAction(executionId=eid, actionExecutionId=aid, worker=worker or "w1")
        return c.LoseAction(executionId=eid, actionExecutionId=aid, worker=worker)
    if op == "retry":
        failed = sorted(
            (eid, name)
            for eid, x in h.state.executions.items()
            for name in x.stages
            if any(a.status in ("Failed", "Abandoned") for a in x.latest_actions(name))
        )
        if failed and draw(st.integers(0, 3)) > 0:
            eid, name = draw(st.sampled_from(failed))
        elif eids:
            eid = draw(st.sampled_from(eids))
            name = draw(st.sampled_from([*_stage_names(h), "Nope"]))
        else:
            return None
        return c.RetryStage(
            executionId=eid,
            stageName=name,
            retryMode=draw(st.sampled_from(sorted(RETRY_MODES))),
        )
    if op == "apply":
        pending = sorted(
            (eid, name)
            for eid, x in h.state.executions.items()
            for name, run in x.stages.items()
            if run.pendingRetry is not None
        )
        if pending and draw(st.integers(0, 9)) > 0:
            eid, name = draw(st.sampled_from(pending))
        elif eids:
            eid, name = draw(st.sampled_from(eids)), draw(st.sampled_from(_stage_names(h)))
        else:
            return None
        return c.ApplyStageRetry(executionId=eid, stageName=name)
    if op == "stop":
        if not eids:
            return None
        return c.StopExecution(executionId=draw(st.sampled_from(eids)), abandon=draw(st.booleans()))
    if op == "approve":
        approvals = _in_progress(h, "approval")
        if not approvals:
            return None
        eid, aid = draw(st.sampled_from(approvals))
        a = h.state.executions[eid].actions[aid]
        return c.PutApproval(
            stageName=a.stageName,
            actionName=a.actionName,
            token=a.token if draw(st.integers(0, 5)) else "bad-token",  # type: ignore[arg-type]
            status=draw(st.sampled_from(["Approved", "Rejected"])),
        )
    if op in ("ack", "job_result"):
        jobs = _in_progress(h, "custom")
        if not jobs:
            return None
        eid, aid = draw(st.sampled_from(jobs))
        a = h.state.executions[eid].actions[aid]
        assert a.jobId is not None and a.jobNonce is not None
        if op == "ack":
            nonce = a.jobNonce if draw(st.integers(0, 5)) else "bad-nonce"
            return c.AcknowledgeJob(
                executionId=eid, actionExecutionId=aid, jobId=a.jobId, nonce=nonce
            )
        return c.CompleteAction(
            executionId=eid, actionExecutionId=aid, succeeded=draw(st.booleans()), jobId=a.jobId
        )
    if op == "update":
        if h.state.declaration is None:
            decl, _ = draw(declarations())
            return c.CreatePipeline(declaration=decl)  # type: ignore[arg-type]
        if draw(st.integers(0, 3)):
            return None  # rare: an update makes every older execution non-retryable
        if draw(st.booleans()):  # same structure, new version
            return c.UpdatePipeline(
                declaration=msgspec.structs.replace(h.state.declaration, version=None)
            )
        decl, _ = draw(declarations())  # new structure, maybe a new mode
        return c.UpdatePipeline(declaration=decl)  # type: ignore[arg-type]
    if op == "delete":
        if draw(st.integers(0, 7)):
            return None
        return c.DeletePipeline()
    if op in ("disable", "enable"):
        names = _stage_names(h)
        name = "Nope" if not draw(st.integers(0, 9)) else draw(st.sampled_from(names))
        kind = draw(st.sampled_from(["Inbound", "Inbound", "Outbound"]))
        if name == names[0] and len(names) > 1 and draw(st.integers(0, 3)):
            kind = "Outbound"  # the first stage has no inbound transition
        if op == "disable":
            reason = draw(st.sampled_from(["hold", "freeze", ""]))
            return c.DisableStageTransition(stageName=name, transitionType=kind, reason=reason)  # type: ignore[arg-type]
        return c.EnableStageTransition(stageName=name, transitionType=kind)  # type: ignore[arg-type]
    if op == "rollback":
        name = draw(st.sampled_from(_stage_names(h)))
        good = sorted(
            eid
            for eid, x in h.state.executions.items()
            if (r := x.stages.get(name)) is not None and r.status == "Succeeded"
        )
        if good and draw(st.integers(0, 3)) > 0:
            target = draw(st.sampled_from(good))
        elif eids:
            target = draw(st.sampled_from(eids))
        else:
            return None
        return c.RollbackStage(
            rollbackExecutionId=h.exec_ids(), stageName=name, targetExecutionId=target
        )
    raise AssertionError(op)


@st.composite
def runs(draw: st.DrawFn) -> Run:
    decl, limit = draw(declarations())
    h = Harness()
    h.create(decl, limit=limit)  # type: ignore[arg-type]
    run = Run(h)
    data = draw(st.data())
    for _ in range(draw(st.integers(1, 45))):
        op = data.draw(st.sampled_from(OPS))
        cmd = _command(h, op, data)
        if cmd is None:
            continue
        try:
            h.run(cmd)
        except DomainError as e:
            check_error(e)
            run.refused.append(f"{type(cmd).__name__}:{e.type_name}")
            continue
        run.accepted.append(type(cmd).__name__)
        if len(h.log) != run.boundaries[-1]:
            run.boundaries.append(len(h.log))
    return run


def _head(s: PipelineState) -> dict[str, object]:
    return {
        f.name: msgspec.json.encode(getattr(s, f.name))
        for f in msgspec.structs.fields(PipelineState)
        if f.name not in ("executions", "partial")
    }


# --- (a) fold from scratch == incremental -----------------------------------------------------


@SETTINGS
@given(runs())
def test_fold_from_scratch_equals_incremental(run: Run) -> None:
    h = run.h
    folded = fold(h.name, h.log)
    assert msgspec.json.encode(folded) == msgspec.json.encode(h.state)
    # ... also after a trip through the stored payload format
    decoded = [ev.decode_payload(e.pipeline, e.version, ev.encode_payload(e)) for e in h.log]
    assert msgspec.json.encode(fold(h.name, decoded)) == msgspec.json.encode(h.state)
    # ... and after a trip of the state itself through JSON
    assert copy_state(h.state) == h.state


# --- (b) statuses are the service model's -----------------------------------------------------


@SETTINGS
@given(runs())
def test_statuses_within_service_model_enums(run: Run) -> None:
    for x in run.h.state.executions.values():
        assert x.status in PIPELINE_STATUSES
        for st_run in x.stages.values():
            assert st_run.status in STAGE_STATUSES
            assert st_run.latestTrigger is None or st_run.latestTrigger in RETRY_TRIGGERS
            assert st_run.pendingRetry is None or st_run.pendingRetry in RETRY_MODES
        for a in x.actions.values():
            assert a.status in ACTION_STATUSES
    for e in run.h.log:
        body = e.event
        for name in ("retryMode",):
            value = getattr(body, name, None)
            assert value is None or value in RETRY_MODES
        if isinstance(body, ev.StageRetryStarted | ev.StageRetryRequested):
            assert body.trigger in RETRY_TRIGGERS


# --- (c) partial state ------------------------------------------------------------------------


@SETTINGS
@given(runs(), st.data())
def test_partial_state_folds_like_full_state(run: Run, data: st.DataObject) -> None:
    h = run.h
    k = data.draw(st.integers(0, len(h.log)), label="k")
    full = fold(h.name, h.log[:k])
    eids = sorted(full.executions)
    keep = (
        set(data.draw(st.lists(st.sampled_from(eids), unique=True), label="keep"))
        if eids
        else set()
    )
    partial = copy_state(full)
    partial.partial = True
    partial.executions = {e: x for e, x in partial.executions.items() if e in keep}

    fold(h.name, h.log[k:], full)
    fold(h.name, h.log[k:], partial)

    assert msgspec.json.encode(full) == msgspec.json.encode(h.state)
    assert _head(partial) == _head(full)
    for eid, x in partial.executions.items():
        assert msgspec.json.encode(x) == msgspec.json.encode(full.executions[eid]), eid
    # the partial state holds the kept executions plus every one started after version k
    started_later = {
        e.event.executionId for e in h.log[k:] if isinstance(e.event, ev.ExecutionStarted)
    }
    recreated = any(isinstance(e.event, ev.PipelineCreated) for e in h.log[k:])
    if not recreated:
        assert set(partial.executions) == (keep | started_later) & set(full.executions)


# --- (d) versions, (e) payload round trip -----------------------------------------------------


@SETTINGS
@given(runs())
def test_versions_are_consecutive(run: Run) -> None:
    h = run.h
    assert [e.version for e in h.log] == list(range(1, len(h.log) + 1))
    assert h.state.version == len(h.log)
    assert len({e.id for e in h.log}) == len(h.log)
    assert all(e.pipeline == h.name for e in h.log)


@SETTINGS
@given(runs())
def test_events_round_trip_through_payload(run: Run) -> None:
    for e in run.h.log:
        data = ev.encode_payload(e)
        back = ev.decode_payload(e.pipeline, e.version, data)
        assert back == e
        assert ev.encode_payload(back) == data
        # version and pipeline are the stream's, not repeated in the payload
        assert b'"version"' not in data or isinstance(
            e.event, ev.PipelineCreated | ev.PipelineUpdated
        )


# --- (f) engine invariants --------------------------------------------------------------------


@settings(SETTINGS, max_examples=2 * EXAMPLES)
@given(runs())
def test_engine_invariants(run: Run) -> None:
    s = run.h.state
    if s.declaration is None:  # deleted: nothing is left but the stream version
        assert s == PipelineState(name=s.name, version=s.version, headVersion=s.version)
        return
    modes = {d.mode for d in s.declarations.values()}
    parallel = s.declaration.mode == "PARALLEL"

    active = {e for e, x in s.executions.items() if x.status in ACTIVE_STATUSES}
    assert len(s.active) == len(set(s.active))
    assert set(s.active) == active
    assert len(active) <= s.concurrencyLimit

    for stage, waiters in s.waiting.items():
        assert waiters, stage
        for eid in waiters:
            assert eid in active
            assert s.executions[eid].waitingFor == stage
    for eid, x in s.executions.items():
        if x.waitingFor is not None:
            assert eid in s.waiting.get(x.waitingFor, [])
            assert x.status == "InProgress"

    # one execution per stage at a time (SUPERSEDED / QUEUED; not across a mode change)
    if len(modes) > 1:
        pass
    elif not parallel:
        inside: dict[str, list[str]] = {}
        for eid in sorted(active):
            x = s.executions[eid]
            if x.waitingFor is None and x.currentStage is not None:
                inside.setdefault(x.currentStage, []).append(eid)
        for stage, eids in inside.items():
            assert len(eids) == 1, (stage, eids)
            assert s.occupant.get(stage) == eids[0], (stage, eids, s.occupant)
        for stage, eid in s.occupant.items():
            assert inside.get(stage) == [eid], (stage, eid)
    else:  # PARALLEL: executions wait only at a disabled transition
        assert s.occupant == {}
        for stage in s.waiting:
            assert transitions.closed(s, stage), (stage, s.waiting)
    if not parallel and len(s.declarations) == 1:
        # nobody waits for a free stage behind an open transition
        for stage in s.waiting:
            assert stage in s.occupant or transitions.closed(s, stage), (stage, s.waiting)

    for eid, x in s.executions.items():
        for run_ in x.stages.values():
            for name, aid in run_.latest.items():
                assert x.actions[aid].actionName == name
                assert x.actions[aid].stageName == run_.name
        # no action is left running in an execution that will never look at it again
        if x.status in ("Succeeded", "Stopped", "Superseded", "Cancelled"):
            assert all(a.status != "InProgress" for a in x.actions.values()), eid
        # nothing is stuck: a running execution inside a stage has a running action there
        if x.status in ACTIVE_STATUSES and x.waitingFor is None:
            assert x.currentStage is not None
            latest = x.latest_actions(x.currentStage)
            assert any(a.status == "InProgress" for a in latest), (eid, x.currentStage)
        if x.status == "Succeeded" and x.rollbackStage is not None:  # a rollback: one stage
            assert list(x.stages) == [x.rollbackStage]
            assert x.executionType == "ROLLBACK" and x.rollbackTarget is not None
        elif x.status == "Succeeded":
            decl = s.declaration_for(x)
            assert [r for r in x.stages] == [st_.name for st_ in decl.stages]
            assert all(r.status == "Succeeded" for r in x.stages.values())
        for run_ in x.stages.values():
            assert run_.autoRetries <= 1
