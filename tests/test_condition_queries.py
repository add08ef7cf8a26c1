"""The read documents of stage conditions conform to the botocore model (GetPipelineState's
condition states, ListRuleExecutions with paging, ListRuleTypes)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from app import condition_queries as cq
from app import queries as q
from app.domain import commands as c
from app.domain.errors import DomainError
from tests.domain.test_conditions import (
    conds,
    decl,
    harness,
    rules_of,
    shell,
    to_deploy,
    vcheck,
    window,
)
from tests.shape_walk import walk

SATURDAY = datetime(2026, 12, 5, 12, 0, tzinfo=UTC).timestamp()


def _scenario(second: bool = True) -> tuple[Any, list[str]]:
    h = harness(
        decl(
            before=conds("FAIL", window("hours", "* * 9-17 ? * MON-FRI"), shell("gate")),
            success=conds("FAIL", vcheck("v", "#{codepipeline.PipelineName}", "p")),
        ),
        SATURDAY,
    )
    e1 = to_deploy(h)  # waits for the window; gate in progress
    e2 = to_deploy(h) if second else ""  # SUPERSEDED: waits for the stage, then enters
    h.actor = "arn:aws:iam::123456789012:user/ops"
    h.run(c.OverrideCondition(executionId=e1, stageName="Deploy", conditionType="BEFORE_ENTRY"))
    h.succeed(e1, "d1", "d2")
    return h, [e1, e2]


def test_get_pipeline_state_condition_states_conform() -> None:
    h, _ = _scenario(second=False)
    doc = q.get_pipeline_state(h.state)
    assert walk("GetPipelineState", doc) == []
    deploy = next(s for s in doc["stageStates"] if s["stageName"] == "Deploy")
    entry = deploy["beforeEntryConditionState"]
    assert entry["latestExecution"]["status"] == "Overridden"
    assert [r["ruleName"] for r in entry["conditionStates"][0]["ruleStates"]] == ["hours", "gate"]
    assert {r["latestExecution"]["status"] for r in entry["conditionStates"][0]["ruleStates"]} == {
        "Abandoned"
    }
    ok = deploy["onSuccessConditionState"]
    rule_exec = ok["conditionStates"][0]["ruleStates"][0]["latestExecution"]
    assert rule_exec["status"] == "Succeeded" and "passed" in rule_exec["summary"]
    assert "onFailureConditionState" not in deploy
    source = doc["stageStates"][0]
    assert not any(k.endswith("ConditionState") for k in source)
    # with a second execution admitted into Deploy, its entry condition is the latest
    h2, (_e1, e2) = _scenario()
    doc = q.get_pipeline_state(h2.state)
    assert walk("GetPipelineState", doc) == []
    deploy = next(s for s in doc["stageStates"] if s["stageName"] == "Deploy")
    assert deploy["latestExecution"]["pipelineExecutionId"] == e2
    assert deploy["beforeEntryConditionState"]["latestExecution"]["status"] == "InProgress"
    waiting = deploy["beforeEntryConditionState"]["conditionStates"][0]["ruleStates"][0]
    assert "Waiting for the deployment window" in waiting["latestExecution"]["summary"]
    assert "onSuccessConditionState" not in deploy


def test_list_rule_executions_pages_and_filters() -> None:
    h, (e1, e2) = _scenario()
    s = h.state
    full = cq.list_rule_executions(s)
    assert walk("ListRuleExecutions", full) == []
    ids = [d["ruleExecutionId"] for d in full["ruleExecutionDetails"]]
    assert len(ids) == 5 and "nextToken" not in full
    # newest first: e2's entry rules, then e1's onSuccess rule, then e1's entry rules
    got = [(x["pipelineExecutionId"], x["ruleName"]) for x in full["ruleExecutionDetails"]]
    assert got == [(e2, "gate"), (e2, "hours"), (e1, "v"), (e1, "gate"), (e1, "hours")]
    d = full["ruleExecutionDetails"][2]
    assert d["input"]["resolvedConfiguration"]["Variable"] == "p"
    assert d["input"]["ruleTypeId"] == {
        "category": "Rule",
        "owner": "AWS",
        "provider": "VariableCheck",
        "version": "1",
    }
    assert d["output"]["executionResult"]["externalExecutionSummary"]
    paged: list[str] = []
    token = None
    while True:
        page = cq.list_rule_executions(s, max_results=1, next_token=token)
        assert walk("ListRuleExecutions", page) == []
        paged += [x["ruleExecutionId"] for x in page["ruleExecutionDetails"]]
        token = page.get("nextToken")
        if token is None:
            break
    assert paged == ids
    mine = cq.list_rule_executions(s, execution_id=e2)["ruleExecutionDetails"]
    assert [x["ruleName"] for x in mine] == ["gate", "hours"]
    assert all("output" not in x for x in mine)  # still running
    with pytest.raises(DomainError) as info:
        cq.list_rule_executions(s, execution_id="ffffffff-ffff-4fff-8fff-ffffffffffff")
    assert info.value.type_name == "PipelineExecutionNotFoundException"
    with pytest.raises(DomainError) as info:
        cq.list_rule_executions(s, next_token="garbage")
    assert info.value.type_name == "InvalidNextTokenException"
    assert rules_of(h, e1, "Deploy", "ON_SUCCESS")


def test_list_rule_types_conform() -> None:
    doc = cq.list_rule_types()
    assert walk("ListRuleTypes", doc) == []
    assert [t["id"]["provider"] for t in doc["ruleTypes"]] == [
        "VariableCheck",
        "DeploymentWindow",
        "Commands",
    ]
    assert cq.list_rule_types("AWS") == doc
    with pytest.raises(DomainError):
        cq.list_rule_types("Custom")
