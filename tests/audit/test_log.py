"""``audit log``: every retry with its actor and mode, the attempts it created, their outcomes."""

from __future__ import annotations

import json

import pytest

from app.audit import AuditError, LogRow, audit_log, format_jsonl, format_table
from app.domain import events as ev
from tests.audit.scenario import Scenario


async def rows(sc: Scenario, **kw: object) -> list[LogRow]:
    return [r async for r in audit_log(sc.engine.store, sc.name, **kw)]  # type: ignore[arg-type]


async def test_every_event_in_order(scenario: Scenario) -> None:
    got = await rows(scenario)
    assert [r.version for r in got] == list(range(1, scenario.captures[-1].version + 1))
    assert got[0].type == "PipelineCreated" and got[0].actor == "AKIAALICE"


async def test_each_retry_shows_actor_mode_attempts_and_outcomes(scenario: Scenario) -> None:
    sc = scenario
    got = [r for r in await rows(sc, execution=sc.exec1) if r.stage == "Build"]

    requested = [r for r in got if r.type == "StageRetryRequested"]
    assert [(r.retry, r.actor, r.mode, r.envelope.requestId) for r in requested] == [
        (1, "AKIABOB", "FAILED_ACTIONS", "req-retry-failed"),
        (2, "cli:carol", "ALL_ACTIONS", "req-retry-all"),
    ]
    started = [r for r in got if r.type == "StageRetryStarted"]
    assert [(r.retry, r.actor, r.mode) for r in started] == [
        (1, "worker:orch1", "FAILED_ACTIONS"),
        (2, "worker:orch1", "ALL_ACTIONS"),
    ]

    def attempts(retry: int | None) -> list[tuple[str | None, int | None]]:
        return [
            (r.action, r.attempt)
            for r in got
            if r.type == "ActionExecutionScheduled" and r.retry == retry
        ]

    assert attempts(None) == [("b1", 1), ("b2", 1)]
    assert attempts(1) == [("b1", 2)]  # FAILED_ACTIONS: only the failed action
    assert attempts(2) == [("b1", 3), ("b2", 2), ("b3", 1)]  # ALL_ACTIONS: all, then group 2

    outcomes = [
        (r.action, r.attempt, r.retry, r.status)
        for r in got
        if r.type in ("ActionExecutionSucceeded", "ActionExecutionFailed")
    ]
    assert outcomes == [
        ("b2", 1, None, "Succeeded"),
        ("b1", 1, None, "Failed"),
        ("b1", 2, 1, "Failed"),
        ("b1", 3, 2, "Succeeded"),
        ("b2", 2, 2, "Succeeded"),
        ("b3", 1, 2, "Succeeded"),
    ]
    failed = next(r for r in got if r.type == "ActionExecutionFailed" and r.attempt == 2)
    assert failed.detail == "JobFailed: tests failed again"


async def test_automatic_retry_approval_and_stop(scenario: Scenario) -> None:
    sc = scenario
    got = await rows(sc)
    auto = next(r for r in got if r.type == "StageRetryStarted" and r.stage == "Deploy")
    assert (auto.retry, auto.mode, auto.detail) == (1, "FAILED_ACTIONS", "AutomatedStageRetry")
    d1 = [
        (r.attempt, r.status)
        for r in got
        if r.action == "d1" and r.type != "ActionExecutionStarted"
    ]
    assert d1 == [(1, "InProgress"), (1, "Failed"), (2, "InProgress"), (2, "Succeeded")]
    approval = next(r for r in got if r.type == "ApprovalRecorded")
    assert (approval.actor, approval.status, approval.detail) == ("AKIADAVE", "Approved", "lgtm")
    x2 = [(r.type, r.actor, r.status, r.mode) for r in got if r.execution == sc.exec2]
    stopping = next(x for x in x2 if x[0] == "ExecutionStopping")
    assert stopping == ("ExecutionStopping", "AKIAERIN", "Stopping", "STOP_AND_WAIT")
    assert x2[-2][:3] == ("ActionExecutionSucceeded", "worker:w1", "Succeeded")  # waited for
    assert x2[-1][0] == "ExecutionStopped" and x2[-1][2] == "Stopped"


async def test_filters_keep_numbers(scenario: Scenario) -> None:
    sc = scenario
    only2 = await rows(sc, execution=sc.exec2)
    assert only2 and all(r.execution == sc.exec2 for r in only2)
    since = sc.captures[1].time  # after the first retry was requested
    late = await rows(sc, since=since)
    assert late and all(r.envelope.time >= since for r in late)
    # numbering does not depend on the filter
    b1 = [r for r in late if r.action == "b1" and r.type == "ActionExecutionSucceeded"]
    assert [(r.attempt, r.retry) for r in b1] == [(3, 2)]
    assert late[0].version == sc.captures[1].version + 1


async def test_one_execution_is_read_from_its_stream_alone(scenario: Scenario) -> None:
    """``execution=`` reads that execution's stream and nothing else (no other stream is
    touched), and gives the same rows, numbers included, as the merged log filtered."""
    sc = scenario
    store = sc.engine.store
    everything = await rows(sc)
    read: list[str] = []
    real = store.read_execution

    async def no_head(*a: object, **kw: object) -> object:
        raise AssertionError("the pipeline's stream was read")

    async def execution(p: str, eid: str, *a: object, **kw: object) -> object:
        read.append(eid)
        return await real(p, eid, *a, **kw)  # type: ignore[arg-type]

    store.read_head, store.read_execution = no_head, execution  # type: ignore[assignment]
    try:
        for eid in (sc.exec1, sc.exec2):
            read.clear()
            got = await rows(sc, execution=eid)
            assert set(read) == {eid}
            want = [r for r in everything if r.execution == eid]
            assert got == want and got[0].type == "ExecutionStarted"
    finally:
        del store.read_head, store.read_execution


async def test_unknown_pipeline_and_execution(scenario: Scenario) -> None:
    with pytest.raises(AuditError, match="no event log"):
        await rows(Scenario(scenario.engine, "nope"))
    with pytest.raises(AuditError, match="has no execution 'nope'"):
        await rows(scenario, execution="nope")


async def test_formats(scenario: Scenario) -> None:
    got = await rows(scenario)
    retry = next(r for r in got if r.type == "StageRetryRequested")
    line = format_table(retry)
    for text in ("AKIABOB", "StageRetryRequested", "Build", "retry 1", "FAILED_ACTIONS"):
        assert text in line
    doc = json.loads(format_jsonl(retry))
    assert doc["actor"] == "AKIABOB" and doc["version"] == retry.version
    assert doc["event"] == {
        "type": "StageRetryRequested",
        "executionId": scenario.exec1,
        "stageName": "Build",
        "retryMode": "FAILED_ACTIONS",
    }
    assert doc["audit"]["retry"] == 1 and doc["audit"]["time"].endswith("Z")
    # the JSONL line is the envelope: it decodes back to the stored one
    import msgspec

    assert msgspec.json.decode(format_jsonl(retry), type=ev.Envelope) == retry.envelope
