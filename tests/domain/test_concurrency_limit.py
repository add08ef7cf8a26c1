"""The pipeline's limit of concurrent executions: StartExecution and check 8."""

from __future__ import annotations

import pytest

from app.domain import commands as c
from tests.domain.helpers import Harness, make_decl, types

TWO = {"Source": ["src"], "Build": [("b1", 1), ("b2", 1)]}


@pytest.mark.parametrize("mode", ["QUEUED", "PARALLEL"])
@pytest.mark.parametrize("limit", [1, 2, 3])
def test_start_over_limit_refused(mode: str, limit: int) -> None:
    h = Harness()
    h.create(make_decl(TWO, mode=mode), limit=limit)
    for _ in range(limit):
        h.start()
    assert len(h.state.active) == limit
    err = h.error(c.StartExecution(executionId="ffffffff-ffff-4fff-8fff-ffffffffffff"))
    assert err.type_name == "ConcurrentPipelineExecutionsLimitExceededException"
    assert err.status == 400
    assert h.state.executionCount == limit


def test_start_over_limit_refused_superseded() -> None:
    h = Harness()
    h.create(make_decl(TWO), limit=2)
    h.to_build()
    h.start()
    err = h.error(c.StartExecution(executionId="ffffffff-ffff-4fff-8fff-ffffffffffff"))
    assert err.type_name == "ConcurrentPipelineExecutionsLimitExceededException"


def test_waiting_executions_count_as_active() -> None:
    h = Harness()
    h.create(make_decl(TWO, mode="QUEUED"), limit=2)
    h.start()
    b = h.start()
    assert h.x(b).waitingFor == "Source"
    err = h.error(c.StartExecution(executionId="ffffffff-ffff-4fff-8fff-ffffffffffff"))
    assert err.type_name == "ConcurrentPipelineExecutionsLimitExceededException"


def test_ended_execution_frees_a_slot() -> None:
    h = Harness()
    h.create(make_decl(TWO), limit=1)
    a = h.start()
    err = h.error(c.StartExecution(executionId="ffffffff-ffff-4fff-8fff-ffffffffffff"))
    assert err.type_name == "ConcurrentPipelineExecutionsLimitExceededException"
    h.fail(a, "src")
    assert h.state.active == []
    h.start()


def test_superseded_execution_frees_a_slot() -> None:
    h = Harness()
    h.create(make_decl(TWO), limit=3)
    h.start()
    b = h.start()
    h.start()
    assert h.x(b).status == "Superseded"
    assert len(h.state.active) == 2
    h.start()  # the superseded one no longer counts
    assert h.state.executionCount == 4


def test_reviving_failed_execution_over_limit_refused() -> None:
    h = Harness()
    h.create(make_decl(TWO), limit=2)
    a = h.to_build()
    h.fail(a, "b1")
    b = h.start()
    h.start()  # in SUPERSEDED this waits for Source: still active
    assert len(h.state.active) == 2
    err = h.retry_error(a, "Build", "FAILED_ACTIONS")
    assert err.type_name == "ConcurrentPipelineExecutionsLimitExceededException"
    h.stop(b, abandon=True)  # one slot frees up
    assert types(h.retry(a, "Build", "FAILED_ACTIONS")) == ["StageRetryRequested"]


def test_reviving_stopped_execution_over_limit_refused() -> None:
    h = Harness()
    h.create(make_decl(TWO), limit=1)
    a = h.to_build()
    h.stop(a, abandon=True)
    h.start()
    err = h.retry_error(a, "Build", "ALL_ACTIONS")
    assert err.type_name == "ConcurrentPipelineExecutionsLimitExceededException"


def test_retry_of_an_active_execution_does_not_count_itself() -> None:
    """An ALL_ACTIONS automatic retry waits (execution still InProgress); limit is 1."""
    h = Harness()
    h.create(make_decl(TWO, auto_retry={"Build": "ALL_ACTIONS"}), limit=1)
    a = h.to_build()
    h.fail(a, "b1")
    assert h.x(a).status == "InProgress"
    assert h.state.active == [a]
    assert types(h.retry(a, "Build", "FAILED_ACTIONS")) == ["StageRetryRequested"]
    assert "StageRetryStarted" in types(h.apply(a, "Build"))


def test_default_limit_is_fifty() -> None:
    h = Harness()
    h.create(make_decl(TWO, mode="PARALLEL"))
    assert h.state.concurrencyLimit == 50
    for _ in range(50):
        h.start()
    err = h.error(c.StartExecution(executionId="ffffffff-ffff-4fff-8fff-ffffffffffff"))
    assert err.type_name == "ConcurrentPipelineExecutionsLimitExceededException"
