"""Stage conditions end to end: the real ``stageline serve`` (uvicorn + engine + in-process
workers) on a private real Redis, driven by boto3.

- a beforeEntry ``Commands`` rule that fails (run by a runner), then OverrideStageCondition;
- onSuccess ``VariableCheck`` rules, met and not met;
- a ``DeploymentWindow`` that blocks and then opens, with the engine's clock injected
  (``ServeConfig.clock``: the partition owner wakes the deferred rule at that clock's time).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError

from app.api.server import ServeConfig
from tests.api_helpers import AKID, SECRET, Stageline, client, run_stageline, wait_for
from tests.conftest import no_redis
from tests.redis_server import RedisServer, redis_binary
from tests.workers.helpers import AS_TEST_USER
from workers.config import WorkerConfig

ROLE = "arn:aws:iam::123456789012:role/stageline-e2e"
COMMANDS = {"category": "Compute", "owner": "AWS", "provider": "Commands", "version": "1"}
SATURDAY_NOON = datetime(2026, 12, 5, 12, 0, tzinfo=UTC).timestamp()
MONDAY_9H = datetime(2026, 12, 7, 9, 0, tzinfo=UTC).timestamp()

pytestmark = pytest.mark.timeout(120)


class Clock:
    """The engine's clock: a fixed start plus the real time elapsed, moved by ``jump``."""

    def __init__(self, start: float) -> None:
        self.base = start
        self.t0 = time.time()

    def __call__(self) -> float:
        return self.base + (time.time() - self.t0)

    def jump(self, to: float) -> None:
        self.base, self.t0 = to, time.time()


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock(SATURDAY_NOON)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, clock: Clock) -> Iterator[Stageline]:
    if redis_binary() is None:
        no_redis("the conditions end-to-end tests need the redis-server binary")
    server = RedisServer(tmp_path_factory.mktemp("conditions-redis"))
    server.start()
    cfg = ServeConfig(
        port=0,
        redis_url=f"redis://127.0.0.1:{server.port}/0",
        credentials={AKID: SECRET},
        partitions=4,
        worker=WorkerConfig(
            name="conditions-e2e",
            concurrency=8,
            block_ms=200,
            shutdown_grace_s=2.0,
            reap_every_s=0.3,
            snapshot_every_s=1.0,
            actions=AS_TEST_USER,
        ),
        log_level="warning",
        clock=clock,
    )
    try:
        with run_stageline(cfg) as srv:
            yield srv
    finally:
        server.stop()


@pytest.fixture
def cp(live: Stageline) -> Any:
    return client(live.url)


def rule(name: str, provider: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "ruleTypeId": {"category": "Rule", "owner": "AWS", "provider": provider, "version": "1"},
        **extra,
    }


def action(name: str, *commands: str) -> dict[str, Any]:
    return {"name": name, "actionTypeId": COMMANDS, "commands": list(commands) or ["true"]}


def pipeline(name: str, deploy: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "roleArn": ROLE,
        "pipelineType": "V2",
        "stages": [
            {"name": "Source", "actions": [action("src")]},
            {"name": "Deploy", "actions": [action("dep")], **deploy},
        ],
    }


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def status(cp: Any, name: str, eid: str) -> str:
    out = cp.get_pipeline_execution(pipelineName=name, pipelineExecutionId=eid)
    return str(out["pipelineExecution"]["status"])


def wait_status(cp: Any, name: str, eid: str, want: str, timeout: float = 30) -> None:
    wait_for(lambda: status(cp, name, eid) == want, timeout=timeout, what=f"{eid} {want}")


def deploy_state(cp: Any, name: str) -> dict[str, Any]:
    states = cp.get_pipeline_state(name=name)["stageStates"]
    return next(s for s in states if s["stageName"] == "Deploy")


def test_before_entry_commands_rule_fails_then_is_overridden(cp: Any) -> None:
    name = unique("entry")
    cp.create_pipeline(
        pipeline=pipeline(
            name,
            {
                "beforeEntry": {
                    "conditions": [
                        {
                            "result": "FAIL",
                            "rules": [
                                rule("gate", "Commands", commands=["echo checking", "exit 3"])
                            ],
                        }
                    ]
                }
            },
        )
    )
    eid = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]
    wait_status(cp, name, eid, "Failed")
    st = deploy_state(cp, name)
    assert st["latestExecution"] == {"pipelineExecutionId": eid, "status": "Failed"}
    entry = st["beforeEntryConditionState"]
    assert entry["latestExecution"]["status"] == "Failed"
    (cond,) = entry["conditionStates"]
    (rs,) = cond["ruleStates"]
    assert rs["ruleName"] == "gate" and rs["latestExecution"]["status"] == "Failed"
    assert (
        "exit" in rs["latestExecution"]["errorDetails"]["message"].lower()
        or (rs["latestExecution"]["errorDetails"]["code"])
    )
    assert "actionStates" in st and "latestExecution" not in st["actionStates"][0]
    details = cp.list_rule_executions(pipelineName=name, filter={"pipelineExecutionId": eid})[
        "ruleExecutionDetails"
    ]
    assert [(d["ruleName"], d["status"], d["stageName"]) for d in details] == [
        ("gate", "Failed", "Deploy")
    ]
    assert details[0]["input"]["ruleTypeId"]["provider"] == "Commands"
    # ON_SUCCESS was never evaluated: not overridable
    with pytest.raises(ClientError) as info:
        cp.override_stage_condition(
            pipelineName=name,
            stageName="Deploy",
            pipelineExecutionId=eid,
            conditionType="ON_SUCCESS",
        )
    assert info.value.response["Error"]["Code"] == "ConditionNotOverridableException"
    cp.override_stage_condition(
        pipelineName=name,
        stageName="Deploy",
        pipelineExecutionId=eid,
        conditionType="BEFORE_ENTRY",
    )
    wait_status(cp, name, eid, "Succeeded")
    entry = deploy_state(cp, name)["beforeEntryConditionState"]
    assert entry["latestExecution"]["status"] == "Overridden"
    # twice is refused (in the next second: an identical signed request would be a replay)
    time.sleep(1.0 - time.time() % 1.0 + 0.01)
    with pytest.raises(ClientError) as info:
        cp.override_stage_condition(
            pipelineName=name,
            stageName="Deploy",
            pipelineExecutionId=eid,
            conditionType="BEFORE_ENTRY",
        )
    assert info.value.response["Error"]["Code"] == "ConditionNotOverridableException"


def test_on_success_variable_check(cp: Any) -> None:
    met, unmet = unique("ok"), unique("nok")
    for name, op in ((met, "EQ"), (unmet, "NE")):
        check = rule(
            "named",
            "VariableCheck",
            configuration={
                "Variable": "#{codepipeline.PipelineName}",
                "Value": name,
                "Operator": op,
            },
        )
        cp.create_pipeline(
            pipeline=pipeline(
                name, {"onSuccess": {"conditions": [{"result": "FAIL", "rules": [check]}]}}
            )
        )
    e1 = cp.start_pipeline_execution(name=met)["pipelineExecutionId"]
    e2 = cp.start_pipeline_execution(name=unmet)["pipelineExecutionId"]
    wait_status(cp, met, e1, "Succeeded")
    wait_status(cp, unmet, e2, "Failed")
    ok = deploy_state(cp, met)["onSuccessConditionState"]
    assert ok["latestExecution"]["status"] == "Succeeded"
    bad = deploy_state(cp, unmet)
    assert bad["onSuccessConditionState"]["latestExecution"]["status"] == "Failed"
    assert bad["actionStates"][0]["latestExecution"]["status"] == "Succeeded"
    details = cp.list_rule_executions(pipelineName=unmet)["ruleExecutionDetails"]
    assert details[0]["input"]["resolvedConfiguration"]["Variable"] == unmet
    # a stage failed by its onSuccess condition can be retried: the condition runs again
    cp.retry_stage_execution(
        pipelineName=unmet,
        stageName="Deploy",
        pipelineExecutionId=e2,
        retryMode="FAILED_ACTIONS",
    )
    wait_for(
        lambda: len(cp.list_rule_executions(pipelineName=unmet)["ruleExecutionDetails"]) == 2,
        what="the onSuccess condition evaluated again",
    )
    wait_status(cp, unmet, e2, "Failed")


def test_deployment_window_blocks_then_opens(cp: Any, clock: Clock) -> None:
    name = unique("window")
    hours = rule("weekdays", "DeploymentWindow", configuration={"Cron": "* * 9-17 ? * MON-FRI *"})
    cp.create_pipeline(
        pipeline=pipeline(
            name, {"beforeEntry": {"conditions": [{"result": "FAIL", "rules": [hours]}]}}
        )
    )
    clock.jump(SATURDAY_NOON)
    eid = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]

    def waiting() -> dict[str, Any] | None:
        st = deploy_state(cp, name).get("beforeEntryConditionState")
        return st if st is not None else None

    st = wait_for(waiting, what="the entry condition")
    assert st["latestExecution"]["status"] == "InProgress"
    rs = st["conditionStates"][0]["ruleStates"][0]["latestExecution"]
    assert rs["status"] == "InProgress" and "2026-12-07T09:00" in rs["summary"]
    time.sleep(1.0)  # several owner rounds: still closed
    assert status(cp, name, eid) == "InProgress"
    assert "latestExecution" not in deploy_state(cp, name)["actionStates"][0]
    # a retry while the condition is being evaluated is refused
    with pytest.raises(ClientError) as info:
        cp.retry_stage_execution(
            pipelineName=name,
            stageName="Deploy",
            pipelineExecutionId=eid,
            retryMode="FAILED_ACTIONS",
        )
    assert info.value.response["Error"]["Code"] == "StageNotRetryableException"
    clock.jump(MONDAY_9H)
    wait_status(cp, name, eid, "Succeeded")
    st = deploy_state(cp, name)["beforeEntryConditionState"]
    assert st["latestExecution"]["status"] == "Succeeded"


def test_list_rule_types_and_unsupported_rules(cp: Any) -> None:
    types = cp.list_rule_types()["ruleTypes"]
    assert sorted(t["id"]["provider"] for t in types) == [
        "Commands",
        "DeploymentWindow",
        "VariableCheck",
    ]
    assert all(t["id"]["owner"] == "AWS" and t["id"]["category"] == "Rule" for t in types)
    vc = next(t for t in types if t["id"]["provider"] == "VariableCheck")
    assert {p["name"] for p in vc["ruleConfigurationProperties"]} == {
        "Variable",
        "Value",
        "Operator",
    }
    assert cp.list_rule_types(ruleOwnerFilter="AWS")["ruleTypes"]
    alarm = rule("my-alarm", "CloudWatchAlarm", configuration={"AlarmName": "x"})
    with pytest.raises(ClientError) as info:
        cp.create_pipeline(
            pipeline=pipeline(
                unique("alarm"),
                {"beforeEntry": {"conditions": [{"result": "FAIL", "rules": [alarm]}]}},
            )
        )
    err = info.value.response["Error"]
    assert err["Code"] == "InvalidStageDeclarationException" and "my-alarm" in err["Message"]
    with pytest.raises(ClientError) as info:
        cp.list_rule_executions(pipelineName=unique("missing"))
    assert info.value.response["Error"]["Code"] == "PipelineNotFoundException"
