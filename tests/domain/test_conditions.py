"""Stage conditions and rules in the domain: every result, status transition and retry
interaction, without Redis (app/domain/conditions.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain import commands as c
from app.domain import conditions as cond
from app.domain import events as ev
from app.domain.decide import decide
from app.domain.errors import DomainError
from app.domain.model import FailureConditions, PipelineDeclaration, RetryConfiguration
from app.domain.state import copy_state, fold
from tests.domain.helpers import ROLE, Harness, IdGen, make_ctx, of_type, stage, types

# 2026-12-01 (a Tuesday) 20:00:00 UTC
TUESDAY_20H = datetime(2026, 12, 1, 20, 0, tzinfo=UTC).timestamp()


def vcheck(name: str, variable: str, value: str, op: str = "EQ") -> dict[str, Any]:
    return {
        "name": name,
        "ruleTypeId": {
            "category": "Rule",
            "owner": "AWS",
            "provider": "VariableCheck",
            "version": "1",
        },
        "configuration": {"Variable": variable, "Value": value, "Operator": op},
    }


def window(name: str, cron: str, tz: str | None = None) -> dict[str, Any]:
    cfg = {"Cron": cron}
    if tz is not None:
        cfg["TimeZone"] = tz
    return {
        "name": name,
        "ruleTypeId": {
            "category": "Rule",
            "owner": "AWS",
            "provider": "DeploymentWindow",
            "version": "1",
        },
        "configuration": cfg,
    }


def shell(name: str, *commands: str) -> dict[str, Any]:
    return {
        "name": name,
        "ruleTypeId": {"category": "Rule", "owner": "AWS", "provider": "Commands", "version": "1"},
        "commands": list(commands) or ["true"],
    }


def conds(result: str | None, *rules: dict[str, Any]) -> dict[str, Any]:
    one: dict[str, Any] = {"rules": list(rules)}
    if result is not None:
        one["result"] = result
    return {"conditions": [one]}


def decl(
    *,
    before: dict[str, Any] | None = None,
    success: dict[str, Any] | None = None,
    failure: FailureConditions | None = None,
    variables: list[dict[str, Any]] | None = None,
    mode: str | None = None,
) -> PipelineDeclaration:
    """Source (src) -> Deploy (d1, d2 in runOrder 2) -> Post (post), conditions on Deploy."""
    dep = msgspec.structs.replace(
        stage("Deploy", [("d1", 1), ("d2", 2)]),
        beforeEntry=before,
        onSuccess=success,
        onFailure=failure,
    )
    return PipelineDeclaration(
        name="p",
        roleArn=ROLE,
        stages=[stage("Source", ["src"]), dep, stage("Post", ["post"])],
        variables=variables,
        executionMode=mode,  # type: ignore[arg-type]
    )


VARS = [{"name": "Env", "defaultValue": "prod"}]


def harness(d: PipelineDeclaration, now: float = TUESDAY_20H) -> Harness:
    h = Harness()
    h.now = now
    h.create(d)
    return h


def start(h: Harness, variables: dict[str, str] | None = None) -> str:
    eid = h.exec_ids()
    h.run(c.StartExecution(executionId=eid, variables=variables))
    if variables is not None:  # the variables work resolves them at start; fold them here
        h.state.executions[eid].variables = variables
    return eid


def to_deploy(h: Harness, variables: dict[str, str] | None = None) -> str:
    eid = start(h, variables)
    h.succeed(eid, "src")
    return eid


def latest_cond(h: Harness, eid: str, stage_name: str, ctype: str) -> Any:
    x = h.x(eid)
    return x.conditions[x.stages[stage_name].conditions[ctype]]


def rules_of(h: Harness, eid: str, stage_name: str, ctype: str) -> list[Any]:
    x = h.x(eid)
    return [x.rules[r] for r in latest_cond(h, eid, stage_name, ctype).rules]


# --- VariableCheck (pure) --------------------------------------------------------------------


def _lookup(values: dict[str, str]) -> Any:
    return lambda ns, name: values.get(f"{ns}.{name}")


@pytest.mark.parametrize(
    ("op", "actual", "value", "ok"),
    [
        ("EQ", "prod", "prod", True),
        ("EQ", "prod", "pro", False),
        ("NE", "prod", "dev", True),
        ("NE", "prod", "prod", False),
        ("CONTAINS", "production", "duct", True),
        ("CONTAINS", "prod", "production", False),
        ("MATCHES", "release-12", r"release-\d+", True),
        ("MATCHES", "release-12x", r"release-\d+", False),  # the whole value must match
        ("MATCHES", "xrelease-12", r"release-\d+", False),
    ],
)
def test_variable_check_operators(op: str, actual: str, value: str, ok: bool) -> None:
    cfg = {"Variable": "#{variables.Env}", "Value": value, "Operator": op}
    passed, summary = cond.variable_check(cfg, _lookup({"variables.Env": actual}))
    assert passed is ok
    assert ("passed" if ok else "failed") in summary and repr(actual) in summary


def test_variable_check_resolves_the_value_too_and_fails_on_unresolved() -> None:
    look = _lookup({"variables.Env": "prod", "variables.Want": "prod"})
    cfg = {"Variable": "#{variables.Env}", "Value": "#{variables.Want}", "Operator": "EQ"}
    assert cond.variable_check(cfg, look)[0] is True
    cfg["Variable"] = "#{variables.Missing}"
    ok, summary = cond.variable_check(cfg, look)
    assert ok is False and "#{variables.Missing}" in summary


def test_variable_check_bad_regex_and_operator_fail() -> None:
    look = _lookup({"variables.Env": "prod"})
    assert (
        cond.variable_check(
            {"Variable": "#{variables.Env}", "Value": "(", "Operator": "MATCHES"}, look
        )[0]
        is False
    )
    assert (
        cond.variable_check({"Variable": "#{variables.Env}", "Value": "p", "Operator": "GT"}, look)[
            0
        ]
        is False
    )


# --- DeploymentWindow (pure) -----------------------------------------------------------------


def test_window_open_inside_its_hours_and_days() -> None:
    # every minute 18:00-21:59, Monday to Friday (AWS day numbers: 2-6 = MON-FRI)
    w = cond.Window.parse("* * 18-21 ? * 2-6 *", None)
    assert w.evaluate(TUESDAY_20H) == (True, None)
    saturday = datetime(2026, 12, 5, 20, 0, tzinfo=UTC).timestamp()
    open_now, nxt = w.evaluate(saturday)
    assert open_now is False
    assert nxt == datetime(2026, 12, 7, 18, 0, tzinfo=UTC).timestamp()  # Monday 18:00


def test_window_day_names_and_numbers_agree() -> None:
    named = cond.Window.parse("* * 9-17 ? * MON-FRI", None)
    numbered = cond.Window.parse("* * 9-17 ? * 2-6", None)
    sunday = datetime(2026, 12, 6, 10, 0, tzinfo=UTC).timestamp()
    monday = datetime(2026, 12, 7, 10, 0, tzinfo=UTC).timestamp()
    for w in (named, numbered):
        assert w.evaluate(sunday)[0] is False
        assert w.evaluate(monday)[0] is True
    assert cond.Window.parse("* * * ? * 1", None).evaluate(sunday)[0] is True  # 1 = SUN


def test_window_closed_until_next_opening_and_time_zone() -> None:
    # 09:00-09:59 in Tokyo is 00:00-00:59 UTC
    w = cond.Window.parse("* * 9 * * ?", "Asia/Tokyo")
    assert w.evaluate(datetime(2026, 12, 2, 0, 30, tzinfo=UTC).timestamp())[0] is True
    open_now, nxt = w.evaluate(TUESDAY_20H)
    assert open_now is False
    assert nxt == datetime(2026, 12, 2, 0, 0, tzinfo=UTC).timestamp()


def test_window_year_field() -> None:
    w = cond.Window.parse("* * * * * ? 2027", None)
    open_now, nxt = w.evaluate(TUESDAY_20H)
    assert open_now is False and nxt == datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    assert cond.Window.parse("* * * * * ? 2026-2027", None).evaluate(TUESDAY_20H)[0]
    assert cond.Window.parse("* * * * * ? 2020/2", None).evaluate(TUESDAY_20H)[0]
    assert not cond.Window.parse("* * * * * ? 2021/2", None).evaluate(TUESDAY_20H)[0]
    assert cond.deployment_window({"Cron": "* * * * * ? 2020"}, TUESDAY_20H)[0] == "Failed"


@pytest.mark.parametrize(
    ("cron", "tz"),
    [("* * * * *", None), ("a b c d e f", None), ("* * 25 * * ?", None), ("* * * * * ?", "Mars/X")],
)
def test_window_invalid(cron: str, tz: str | None) -> None:
    with pytest.raises(ValueError):
        cond.Window.parse(cron, tz)


# --- create / update checks ------------------------------------------------------------------


def test_create_accepts_the_three_rule_types() -> None:
    h = harness(
        decl(
            before=conds("FAIL", window("w", "* * * * * ?"), shell("s", "true")),
            success=conds("ROLLBACK", vcheck("v", "#{variables.Env}", "prod")),
            failure=FailureConditions(
                result="RETRY", conditions=[conds(None, shell("t"))["conditions"][0]]
            ),
        )
    )
    assert h.state.declaration is not None


@pytest.mark.parametrize("provider", ["CloudWatchAlarm", "LambdaInvoke", "CodeBuild", "Other"])
def test_aws_only_rule_types_are_refused_naming_the_rule(provider: str) -> None:
    rule = {
        "name": "alarm-1",
        "ruleTypeId": {"category": "Rule", "owner": "AWS", "provider": provider, "version": "1"},
    }
    h = Harness()
    err = h.error(c.CreatePipeline(declaration=decl(before=conds("FAIL", rule))))
    assert err.type_name == "InvalidStageDeclarationException"
    assert "alarm-1" in err.message and provider in err.message and "Deploy" in err.message


def test_update_checks_conditions_too() -> None:
    h = harness(decl())
    bad = {
        "name": "r",
        "ruleTypeId": {"category": "Rule", "provider": "VariableCheck", "version": "2"},
    }
    err = h.error(c.UpdatePipeline(declaration=decl(success=conds("FAIL", bad))))
    assert err.type_name == "InvalidStageDeclarationException" and "'r'" in err.message


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"before": conds("ROLLBACK", vcheck("v", "a", "b"))}, "cannot have result ROLLBACK"),
        ({"before": conds("RETRY", vcheck("v", "a", "b"))}, "cannot have result RETRY"),
        ({"success": conds("SKIP", vcheck("v", "a", "b"))}, "cannot have result SKIP"),
        ({"success": conds(None, vcheck("v", "a", "b", "GT"))}, "Operator 'GT'"),
        ({"success": conds(None, vcheck("v", "a", "(", "MATCHES"))}, "regular expression"),
        ({"before": conds(None, window("w", "* * *"))}, "6 fields"),
        ({"before": conds(None, window("w", "* * * * * ?", "No/Where"))}, "time zone"),
        ({"before": conds(None, vcheck("v", "a", "b"), vcheck("v", "a", "c"))}, "duplicate"),
        (
            {
                "before": conds(
                    None, {"name": "s", "ruleTypeId": {"category": "Rule", "provider": "Commands"}}
                )
            },
            "non-empty 'commands'",
        ),
        (
            {
                "failure": FailureConditions(
                    result="FAIL", conditions=[{"rules": [vcheck("v", "a", "b")]}]
                )
            },
            "cannot have result FAIL",
        ),
    ],
)
def test_invalid_conditions_are_refused(kwargs: dict[str, Any], needle: str) -> None:
    err = Harness().error(c.CreatePipeline(declaration=decl(**kwargs)))
    assert err.type_name == "InvalidStageDeclarationException"
    assert needle in err.message


def test_malformed_condition_shape_is_invalid_structure() -> None:
    for bad in (
        {"conditions": []},
        {"conditions": [{"rules": []}]},
        {"nope": 1},
        {"conditions": [{"rules": [vcheck("v", "a", "b")]}, {"rules": [vcheck("w", "a", "b")]}]},
    ):
        err = Harness().error(c.CreatePipeline(declaration=decl(before=bad)))
        assert err.type_name == "InvalidStructureException", bad


def test_a_stored_malformed_condition_is_not_evaluated() -> None:
    """A declaration stored before conditions were checked keeps running without them."""
    h = Harness()
    d = decl(before={"nope": 1})
    env_decl = msgspec.structs.replace(d, version=1, executionMode="SUPERSEDED", pipelineType="V2")
    h.state = fold(
        "p",
        [
            ev.Envelope(
                id="x",
                pipeline="p",
                version=1,
                time=1.0,
                actor="t",
                event=ev.PipelineCreated(declaration=env_decl),
            )
        ],
    )
    eid = to_deploy(h)
    assert h.x(eid).conditions == {}
    assert h.action(eid, "d1").status == "InProgress"


# --- beforeEntry -----------------------------------------------------------------------------


def test_before_entry_met_enters_the_stage() -> None:
    h = harness(decl(before=conds("FAIL", vcheck("v", "#{variables.Env}", "prod")), variables=VARS))
    eid = start(h, {"Env": "prod"})
    envs = h.succeed(eid, "src")
    t = types(envs)
    assert (
        t.index("StageEntered")
        < t.index("ConditionStarted")
        < t.index("RuleExecutionScheduled")
        < t.index("RuleExecutionSucceeded")
        < t.index("ConditionEnded")
        < t.index("ActionExecutionScheduled")
    )
    c0 = latest_cond(h, eid, "Deploy", "BEFORE_ENTRY")
    assert (c0.status, c0.conditionType, c0.result) == ("Succeeded", "BEFORE_ENTRY", "FAIL")
    r = rules_of(h, eid, "Deploy", "BEFORE_ENTRY")[0]
    assert r.status == "Succeeded" and r.resolvedConfiguration["Variable"] == "prod"
    assert h.action(eid, "d1").status == "InProgress"
    assert h.state.occupant["Deploy"] == eid


def test_before_entry_not_met_fail_fails_stage_and_execution() -> None:
    h = harness(decl(before=conds("FAIL", vcheck("v", "#{variables.Env}", "prod")), variables=VARS))
    eid = to_deploy(h, {"Env": "dev"})
    x = h.x(eid)
    assert x.status == "Failed" and x.stages["Deploy"].status == "Failed"
    assert "beforeEntry condition was not met" in (x.statusSummary or "")
    assert "Rule 'v' failed" in (x.statusSummary or "")
    assert latest_cond(h, eid, "Deploy", "BEFORE_ENTRY").status == "Failed"
    assert not [a for a in x.actions.values() if a.stageName == "Deploy"]
    assert "Deploy" not in h.state.occupant and eid not in h.state.active


def test_before_entry_default_result_is_fail() -> None:
    h = harness(decl(before=conds(None, vcheck("v", "a", "b"))))
    eid = to_deploy(h)
    assert h.x(eid).status == "Failed"


def test_before_entry_not_met_skip_skips_to_the_next_stage() -> None:
    h = harness(decl(before=conds("SKIP", vcheck("v", "a", "b"))))
    eid = to_deploy(h)
    x = h.x(eid)
    assert x.stages["Deploy"].status == "Skipped"
    assert x.currentStage == "Post" and x.status == "InProgress"
    assert of_type(h.log, ev.StageSucceeded)[-1].skipped is True
    assert "Deploy" not in h.state.occupant
    h.succeed(eid, "post")
    assert h.x(eid).status == "Succeeded"


def test_before_entry_rules_all_must_pass() -> None:
    h = harness(
        decl(
            before=conds(
                "FAIL", vcheck("a", "x", "x"), vcheck("b", "x", "y"), vcheck("c", "y", "y")
            )
        )
    )
    eid = to_deploy(h)
    assert h.x(eid).status == "Failed"
    assert [r.status for r in rules_of(h, eid, "Deploy", "BEFORE_ENTRY")] == [
        "Succeeded",
        "Failed",
        "Succeeded",
    ]


def test_before_entry_commands_rule_waits_for_its_result() -> None:
    h = harness(decl(before=conds("FAIL", shell("gate", "exit 0"))))
    eid = to_deploy(h)
    c0 = latest_cond(h, eid, "Deploy", "BEFORE_ENTRY")
    assert c0.status == "InProgress"
    (sched,) = [e for e in of_type(h.log, ev.RuleExecutionScheduled) if e.executionId == eid]
    assert sched.kind == "commands" and sched.provider == "Commands"
    assert not [a for a in h.x(eid).actions.values() if a.stageName == "Deploy"]
    rid = sched.ruleExecutionId
    h.run(c.StartRule(executionId=eid, ruleExecutionId=rid, worker="w1"))
    assert h.x(eid).rules[rid].worker == "w1"
    # another runner cannot take it; the same one again changes nothing
    assert h.error(c.StartRule(executionId=eid, ruleExecutionId=rid, worker="w2")).type_name == (
        "ActionNotRunnableException"
    )
    assert h.run(c.StartRule(executionId=eid, ruleExecutionId=rid, worker="w1")) == []
    # a runner's result recorded alone, then settled by the owner
    envs = h.run(
        c.CompleteRule(
            executionId=eid,
            ruleExecutionId=rid,
            succeeded=True,
            summary="ok",
            worker="w1",
            consequences=False,
        )
    )
    assert types(envs) == ["RuleExecutionSucceeded"]
    assert latest_cond(h, eid, "Deploy", "BEFORE_ENTRY").status == "InProgress"
    envs = h.run(c.SettleCondition(executionId=eid, ruleExecutionId=rid))
    assert types(envs)[:1] == ["ConditionEnded"]
    assert h.action(eid, "d1").status == "InProgress"
    assert h.run(c.SettleCondition(executionId=eid, ruleExecutionId=rid)) == []  # idempotent
    # a late or repeated result changes nothing
    assert h.run(c.CompleteRule(executionId=eid, ruleExecutionId=rid, succeeded=False)) == []


def test_commands_rule_result_from_another_worker_is_ignored() -> None:
    h = harness(decl(before=conds("FAIL", shell("gate"))))
    eid = to_deploy(h)
    rid = rules_of(h, eid, "Deploy", "BEFORE_ENTRY")[0].ruleExecutionId
    h.run(c.StartRule(executionId=eid, ruleExecutionId=rid, worker="w1"))
    assert (
        h.run(c.CompleteRule(executionId=eid, ruleExecutionId=rid, succeeded=True, worker="w2"))
        == []
    )


def test_commands_rule_failing_fails_the_stage_and_a_lost_worker_fails_the_rule() -> None:
    h = harness(decl(before=conds("FAIL", shell("gate"))))
    eid = to_deploy(h)
    rid = rules_of(h, eid, "Deploy", "BEFORE_ENTRY")[0].ruleExecutionId
    h.run(c.StartRule(executionId=eid, ruleExecutionId=rid, worker="w1"))
    assert h.run(c.LoseAction(executionId=eid, actionExecutionId=rid, worker="other")) == []
    envs = h.run(c.LoseAction(executionId=eid, actionExecutionId=rid, worker="w1"))
    failed = of_type(envs, ev.RuleExecutionFailed)
    assert failed and failed[0].errorCode == ev.WORKER_LOST
    assert h.x(eid).status == "Failed"


def test_start_rule_refused_when_not_running() -> None:
    h = harness(decl(before=conds("FAIL", vcheck("v", "a", "a"), shell("gate"))))
    eid = start(h)
    assert h.error(c.StartRule(executionId=eid, ruleExecutionId="nope", worker="w")).type_name == (
        "ActionNotRunnableException"
    )
    h.succeed(eid, "src")
    rid = rules_of(h, eid, "Deploy", "BEFORE_ENTRY")[1].ruleExecutionId
    h.stop(eid)
    assert h.x(eid).rules[rid].status == "Abandoned"
    assert latest_cond(h, eid, "Deploy", "BEFORE_ENTRY").status == "Abandoned"
    err = h.error(c.StartRule(executionId=eid, ruleExecutionId=rid, worker="w"))
    assert "Abandoned" in err.message


def test_first_failed_rule_ends_the_condition_and_abandons_the_rest() -> None:
    h = harness(decl(before=conds("FAIL", shell("gate"), vcheck("v", "a", "b"))))
    eid = to_deploy(h)
    shell_rule, v = rules_of(h, eid, "Deploy", "BEFORE_ENTRY")
    assert v.status == "Failed" and shell_rule.status == "Abandoned"
    assert h.x(eid).status == "Failed"
    assert (
        h.run(
            c.CompleteRule(
                executionId=eid, ruleExecutionId=shell_rule.ruleExecutionId, succeeded=True
            )
        )
        == []
    )


# --- DeploymentWindow in an execution ---------------------------------------------------------


def test_deployment_window_blocks_then_opens() -> None:
    saturday = datetime(2026, 12, 5, 12, 0, tzinfo=UTC).timestamp()
    monday = datetime(2026, 12, 7, 9, 0, tzinfo=UTC).timestamp()
    h = harness(decl(before=conds("FAIL", window("hours", "* * 9-17 ? * MON-FRI"))), saturday)
    eid = to_deploy(h)
    (r,) = rules_of(h, eid, "Deploy", "BEFORE_ENTRY")
    assert r.status == "InProgress" and r.until == monday
    deferred = of_type(h.log, ev.RuleExecutionDeferred)
    assert deferred[-1].until == monday and "Waiting for the deployment window" in (
        deferred[-1].summary
    )
    assert latest_cond(h, eid, "Deploy", "BEFORE_ENTRY").status == "InProgress"
    # woken too early (a clock behind): nothing happens
    h.now = monday - 60
    assert h.run(c.EvaluateRule(executionId=eid, ruleExecutionId=r.ruleExecutionId)) == []
    # a retry while the condition is evaluated is refused like one of a running stage
    err = h.retry_error(eid, "Deploy", "FAILED_ACTIONS")
    assert err.type_name == "StageNotRetryableException" and "beforeEntry" in err.message
    h.now = monday - 1  # ctx() adds one second
    envs = h.run(c.EvaluateRule(executionId=eid, ruleExecutionId=r.ruleExecutionId))
    assert "RuleExecutionSucceeded" in types(envs)
    assert h.action(eid, "d1").status == "InProgress"
    # evaluating again later changes nothing
    assert h.run(c.EvaluateRule(executionId=eid, ruleExecutionId=r.ruleExecutionId)) == []


def test_deployment_window_open_passes_at_once() -> None:
    h = harness(decl(before=conds("FAIL", window("any", "* * * * * ?"))))
    eid = to_deploy(h)
    assert h.action(eid, "d1").status == "InProgress"
    assert not of_type(h.log, ev.RuleExecutionDeferred)


# --- onSuccess -------------------------------------------------------------------------------


def test_on_success_met_succeeds_the_stage() -> None:
    h = harness(
        decl(success=conds("FAIL", vcheck("v", "#{variables.Env}", "prod")), variables=VARS)
    )
    eid = to_deploy(h, {"Env": "prod"})
    assert not h.x(eid).stages["Deploy"].conditions
    h.succeed(eid, "d1")
    assert not h.x(eid).stages["Deploy"].conditions  # only after the last group
    envs = h.succeed(eid, "d2")
    t = types(envs)
    assert t.index("ConditionStarted") < t.index("ConditionEnded") < t.index("StageSucceeded")
    assert h.x(eid).currentStage == "Post"
    assert latest_cond(h, eid, "Deploy", "ON_SUCCESS").status == "Succeeded"


def test_on_success_not_met_fails_the_stage_and_retry_runs_it_again() -> None:
    h = harness(
        decl(success=conds("FAIL", vcheck("v", "#{variables.Env}", "prod")), variables=VARS)
    )
    eid = to_deploy(h, {"Env": "dev"})
    h.succeed(eid, "d1", "d2")
    x = h.x(eid)
    assert x.status == "Failed" and x.stages["Deploy"].status == "Failed"
    assert "onSuccess condition was not met" in (x.statusSummary or "")
    assert "Deploy" not in h.state.occupant
    # FAILED_ACTIONS: no action failed, so only the condition is evaluated again
    h.state.executions[eid].variables = {"Env": "prod"}
    h.retry_now(eid, "Deploy", "FAILED_ACTIONS")
    x = h.x(eid)
    assert x.stages["Deploy"].status == "Succeeded" and x.currentStage == "Post"
    assert len(h.attempts(eid, "d1")) == 1
    assert len([k for k in x.conditions.values() if k.conditionType == "ON_SUCCESS"]) == 2


def test_on_success_failed_all_actions_retry_reruns_actions_then_condition() -> None:
    h = harness(decl(success=conds("FAIL", vcheck("v", "a", "b"))))
    eid = to_deploy(h)
    h.succeed(eid, "d1", "d2")
    h.retry_now(eid, "Deploy", "ALL_ACTIONS")
    assert len(h.attempts(eid, "d1")) == 2
    assert latest_cond(h, eid, "Deploy", "ON_SUCCESS").status == "Failed"  # still the old one
    h.succeed(eid, "d1", "d2")
    assert h.x(eid).status == "Failed"
    assert len([k for k in h.x(eid).conditions.values()]) == 2


def test_on_success_rollback_without_a_good_execution_just_fails() -> None:
    h = harness(decl(success=conds("ROLLBACK", vcheck("v", "a", "b"))))
    eid = to_deploy(h)
    h.succeed(eid, "d1", "d2")
    x = h.x(eid)
    assert x.status == "Failed"
    assert (x.statusSummary or "").startswith("The onSuccess condition was not met")
    assert h.state.rollbacks == {} and "Deploy" not in h.state.occupant


def test_on_success_rollback_rolls_back_to_the_last_good_execution() -> None:
    # met for the first execution only: its id is the value checked
    first = "0000000e-0000-4000-8000-000000000001"
    check = vcheck("v", "#{codepipeline.PipelineExecutionId}", first)
    h = harness(decl(success=conds("ROLLBACK", check)))
    eid = to_deploy(h)
    assert eid == first
    h.succeed(eid, "d1", "d2", "post")
    assert h.x(eid).status == "Succeeded"
    bad = to_deploy(h)
    envs = h.succeed(bad, "d1", "d2")
    assert h.x(bad).status == "Failed"
    rolled = of_type(envs, ev.RollbackStarted)
    assert [(r.targetExecutionId, r.failedExecutionId) for r in rolled] == [(first, bad)]
    assert h.state.occupant == {"Deploy": rolled[0].executionId}


def test_on_success_failed_then_on_failure_retry_evaluates_again() -> None:
    h = harness(
        decl(
            success=conds("FAIL", vcheck("v", "a", "b")), failure=FailureConditions(result="RETRY")
        )
    )
    eid = to_deploy(h)
    h.succeed(eid, "d1", "d2")
    x = h.x(eid)
    # the automatic retry (FAILED_ACTIONS: nothing to re-run) evaluated the condition again
    assert x.stages["Deploy"].autoRetries == 1
    assert len([k for k in x.conditions.values() if k.conditionType == "ON_SUCCESS"]) == 2
    assert x.status == "Failed"


# --- onFailure -------------------------------------------------------------------------------


def _on_failure(result: str, *rules: dict[str, Any], mode: str | None = None) -> FailureConditions:
    return FailureConditions(
        result=result,  # type: ignore[arg-type]
        retryConfiguration=RetryConfiguration(retryMode=mode) if mode else None,  # type: ignore[arg-type]
        conditions=[{"rules": list(rules)}],
    )


def test_on_failure_condition_met_retry_applies() -> None:
    h = harness(decl(failure=_on_failure("RETRY", vcheck("v", "x", "x"))))
    eid = to_deploy(h)
    envs = h.fail(eid, "d1")
    t = types(envs)
    assert t.index("StageFailed") < t.index("ConditionStarted") < t.index("StageRetryStarted")
    assert of_type(envs, ev.StageFailed)[0].autoRetry is True
    assert len(h.attempts(eid, "d1")) == 2
    assert h.x(eid).status == "InProgress"
    # the retried action fails again: a retry happens once, the stage fails for good
    envs = h.fail(eid, "d1")
    assert "ConditionStarted" not in types(envs)
    assert h.x(eid).status == "Failed" and "Deploy" not in h.state.occupant


def test_on_failure_condition_not_met_fails_the_execution() -> None:
    h = harness(decl(failure=_on_failure("RETRY", vcheck("v", "x", "y"))))
    eid = to_deploy(h)
    envs = h.fail(eid, "d1")
    x = h.x(eid)
    assert x.status == "Failed" and len(h.attempts(eid, "d1")) == 1
    assert "onFailure condition was not met" in (x.statusSummary or "")
    stage_failed = of_type(envs, ev.StageFailed)
    assert [f.autoRetry for f in stage_failed] == [True, False]
    assert "Deploy" not in h.state.occupant and eid not in h.state.active


def test_on_failure_condition_keeps_the_stage_while_evaluated_and_refuses_retries() -> None:
    h = harness(decl(failure=_on_failure("RETRY", shell("check"))))
    eid = to_deploy(h)
    h.fail(eid, "d1")
    assert h.state.occupant["Deploy"] == eid and h.x(eid).status == "InProgress"
    err = h.retry_error(eid, "Deploy", "FAILED_ACTIONS")
    assert err.type_name == "StageNotRetryableException" and "onFailure" in err.message
    rid = rules_of(h, eid, "Deploy", "ON_FAILURE")[0].ruleExecutionId
    h.run(c.CompleteRule(executionId=eid, ruleExecutionId=rid, succeeded=True))
    assert len(h.attempts(eid, "d1")) == 2


def test_on_failure_all_actions_waits_for_running_siblings() -> None:
    d = decl(failure=_on_failure("RETRY", vcheck("v", "x", "x"), mode="ALL_ACTIONS"))
    dep = msgspec.structs.replace(
        d.stages[1],
        actions=[
            d.stages[1].actions[0],
            msgspec.structs.replace(d.stages[1].actions[1], runOrder=1),
        ],
    )
    d = msgspec.structs.replace(d, stages=[d.stages[0], dep, d.stages[2]])
    h = harness(d)
    eid = to_deploy(h)
    h.fail(eid, "d1")
    assert latest_cond(h, eid, "Deploy", "ON_FAILURE").status == "Succeeded"
    assert len(h.attempts(eid, "d1")) == 1  # d2 still runs
    h.succeed(eid, "d2")
    assert len(h.attempts(eid, "d1")) == 2 and len(h.attempts(eid, "d2")) == 2


def test_on_failure_waiting_siblings_do_not_bypass_a_pending_condition() -> None:
    d = decl(failure=_on_failure("RETRY", shell("check"), mode="ALL_ACTIONS"))
    dep = msgspec.structs.replace(
        d.stages[1],
        actions=[
            d.stages[1].actions[0],
            msgspec.structs.replace(d.stages[1].actions[1], runOrder=1),
        ],
    )
    h = harness(msgspec.structs.replace(d, stages=[d.stages[0], dep, d.stages[2]]))
    eid = to_deploy(h)
    h.fail(eid, "d1")
    h.succeed(eid, "d2")
    assert len(h.attempts(eid, "d1")) == 1  # the condition has not passed yet
    rid = rules_of(h, eid, "Deploy", "ON_FAILURE")[0].ruleExecutionId
    h.run(c.CompleteRule(executionId=eid, ruleExecutionId=rid, succeeded=True))
    assert len(h.attempts(eid, "d1")) == 2


def test_on_failure_rollback_met() -> None:
    h = harness(decl(failure=_on_failure("ROLLBACK", vcheck("v", "x", "x"))))
    eid = to_deploy(h)
    h.fail(eid, "d1")
    x = h.x(eid)
    assert x.status == "Failed"
    assert x.statusSummary == "Stage 'Deploy' failed and its onFailure condition was met"
    assert "Deploy" not in h.state.occupant  # no good execution yet: nothing to roll back to


def test_on_failure_rollback_met_rolls_back_to_the_last_good_execution() -> None:
    h = harness(decl(failure=_on_failure("ROLLBACK", vcheck("v", "x", "x"))))
    good = to_deploy(h)
    h.succeed(good, "d1", "d2", "post")
    bad = to_deploy(h)
    envs = h.fail(bad, "d1")
    assert h.x(bad).status == "Failed"
    rolled = of_type(envs, ev.RollbackStarted)
    assert [(r.targetExecutionId, r.trigger) for r in rolled] == [(good, "AutomatedRollback")]
    rid = rolled[0].executionId
    assert h.state.occupant == {"Deploy": rid}
    h.succeed(rid, "d1", "d2")
    assert h.x(rid).status == "Succeeded" and list(h.x(rid).stages) == ["Deploy"]


def test_on_failure_condition_during_stop_is_abandoned() -> None:
    h = harness(decl(failure=_on_failure("RETRY", shell("check"))))
    eid = to_deploy(h)
    h.fail(eid, "d1")
    h.stop(eid)
    assert h.x(eid).status == "Stopped"
    assert latest_cond(h, eid, "Deploy", "ON_FAILURE").status == "Abandoned"
    assert "Deploy" not in h.state.occupant


# --- retries of conditions -------------------------------------------------------------------


def test_retry_of_a_stage_failed_at_entry_evaluates_the_entry_again() -> None:
    h = harness(decl(before=conds("FAIL", vcheck("v", "#{variables.Env}", "prod")), variables=VARS))
    eid = to_deploy(h, {"Env": "dev"})
    h.state.executions[eid].variables = {"Env": "prod"}
    for mode in ("ALL_ACTIONS",):
        h.retry_now(eid, "Deploy", mode)  # type: ignore[arg-type]
    x = h.x(eid)
    assert x.status == "InProgress" and h.action(eid, "d1").status == "InProgress"
    assert latest_cond(h, eid, "Deploy", "BEFORE_ENTRY").status == "Succeeded"
    assert h.state.occupant["Deploy"] == eid


def test_retry_of_a_stage_not_failed_by_a_condition_still_needs_a_failed_action() -> None:
    h = harness(decl(before=conds("FAIL", vcheck("v", "x", "x"))))
    eid = to_deploy(h)
    err = h.retry_error(eid, "Deploy", "FAILED_ACTIONS")
    assert err.type_name == "StageNotRetryableException" and "no failed" in err.message


# --- OverrideStageCondition ------------------------------------------------------------------


def test_override_failed_before_entry_goes_on_and_records_the_principal() -> None:
    h = harness(decl(before=conds("FAIL", vcheck("v", "a", "b"))))
    eid = to_deploy(h)
    assert h.x(eid).status == "Failed" and eid not in h.state.active
    h.actor = "arn:aws:iam::123456789012:user/ops"
    envs = h.run(
        c.OverrideCondition(executionId=eid, stageName="Deploy", conditionType="BEFORE_ENTRY")
    )
    assert types(envs)[:2] == ["StageConditionOverridden", "ActionExecutionScheduled"]
    assert envs[0].actor == "arn:aws:iam::123456789012:user/ops"
    x = h.x(eid)
    k = latest_cond(h, eid, "Deploy", "BEFORE_ENTRY")
    assert (k.status, k.overriddenBy) == ("Overridden", "arn:aws:iam::123456789012:user/ops")
    assert x.status == "InProgress" and x.stages["Deploy"].status == "InProgress"
    assert eid in h.state.active and h.state.occupant["Deploy"] == eid
    h.succeed(eid, "d1", "d2", "post")
    assert h.x(eid).status == "Succeeded"
    # once overridden, it is not overridable again
    err = h.error(
        c.OverrideCondition(executionId=eid, stageName="Deploy", conditionType="BEFORE_ENTRY")
    )
    assert err.type_name == "ConditionNotOverridableException"


def test_override_waiting_window_goes_on() -> None:
    saturday = datetime(2026, 12, 5, 12, 0, tzinfo=UTC).timestamp()
    h = harness(decl(before=conds("FAIL", window("hours", "* * 9-17 ? * MON-FRI"))), saturday)
    eid = to_deploy(h)
    rid = rules_of(h, eid, "Deploy", "BEFORE_ENTRY")[0].ruleExecutionId
    h.run(c.OverrideCondition(executionId=eid, stageName="Deploy", conditionType="BEFORE_ENTRY"))
    assert h.x(eid).rules[rid].status == "Abandoned"
    assert h.action(eid, "d1").status == "InProgress"
    h.now = datetime(2026, 12, 7, 9, 0, tzinfo=UTC).timestamp()
    assert h.run(c.EvaluateRule(executionId=eid, ruleExecutionId=rid)) == []


def test_override_failed_on_success_succeeds_the_stage() -> None:
    h = harness(decl(success=conds("FAIL", vcheck("v", "a", "b"))))
    eid = to_deploy(h)
    h.succeed(eid, "d1", "d2")
    h.run(c.OverrideCondition(executionId=eid, stageName="Deploy", conditionType="ON_SUCCESS"))
    x = h.x(eid)
    assert x.stages["Deploy"].status == "Succeeded" and x.currentStage == "Post"
    assert x.status == "InProgress"


def test_override_refusals() -> None:
    h = harness(
        decl(
            before=conds("FAIL", vcheck("v", "a", "a")),
            success=conds("FAIL", vcheck("v", "a", "b")),
        )
    )

    def refuse(eid: str, stage_name: str, ctype: str) -> DomainError:
        return h.error(
            c.OverrideCondition(executionId=eid, stageName=stage_name, conditionType=ctype)
        )  # type: ignore[arg-type]

    eid = to_deploy(h)
    assert refuse(eid, "Nope", "BEFORE_ENTRY").type_name == "StageNotFoundException"
    assert refuse("ffffffff-ffff-4fff-8fff-ffffffffffff", "Deploy", "BEFORE_ENTRY").type_name == (
        "ConditionNotOverridableException"
    )
    # passed already
    assert refuse(eid, "Deploy", "BEFORE_ENTRY").type_name == "ConditionNotOverridableException"
    # not evaluated yet
    assert refuse(eid, "Deploy", "ON_SUCCESS").type_name == "ConditionNotOverridableException"
    assert refuse(eid, "Source", "BEFORE_ENTRY").type_name == "ConditionNotOverridableException"
    h.succeed(eid, "d1", "d2")
    assert h.x(eid).status == "Failed"
    # a newer execution entered the stage since
    other = to_deploy(h)
    assert refuse(eid, "Deploy", "ON_SUCCESS").type_name == "NotLatestPipelineExecutionException"
    assert other


def test_override_refused_after_update_and_over_the_limit() -> None:
    h = harness(decl(before=conds("FAIL", vcheck("v", "a", "b")), mode="PARALLEL"))
    eid = to_deploy(h)
    h.update()
    err = h.error(
        c.OverrideCondition(executionId=eid, stageName="Deploy", conditionType="BEFORE_ENTRY")
    )
    assert err.type_name == "ConditionNotOverridableException" and "updated" in err.message

    h2 = Harness()
    h2.create(decl(before=conds("FAIL", vcheck("v", "a", "b")), mode="PARALLEL"), limit=1)
    e1 = to_deploy(h2)
    start(h2)  # takes the only slot
    err = h2.error(
        c.OverrideCondition(executionId=e1, stageName="Deploy", conditionType="BEFORE_ENTRY")
    )
    assert err.type_name == "ConcurrentPipelineExecutionsLimitExceededException"


# --- folding and purity ----------------------------------------------------------------------


def test_fold_of_the_log_equals_the_decided_state_and_old_events_decode() -> None:
    saturday = datetime(2026, 12, 5, 12, 0, tzinfo=UTC).timestamp()
    h = harness(
        decl(
            before=conds("FAIL", window("hours", "* * 9-17 ? * MON-FRI"), shell("s")),
            success=conds("FAIL", vcheck("v", "a", "a")),
        ),
        saturday,
    )
    eid = to_deploy(h)
    h.run(c.OverrideCondition(executionId=eid, stageName="Deploy", conditionType="BEFORE_ENTRY"))
    h.succeed(eid, "d1", "d2")
    again = fold("p", h.log)
    assert msgspec.json.encode(again.executions[eid]) == msgspec.json.encode(h.x(eid))
    assert again.occupant == h.state.occupant and again.active == h.state.active
    for env in h.log:
        payload = ev.encode_payload(env)
        assert ev.decode_payload("p", env.version, payload) == env
    # a StageSucceeded of an older release (no skipped field) decodes as not skipped
    old = ev.decode_payload(
        "p",
        9,
        b'{"id":"i","time":1.0,"actor":"a","event":{"type":'
        b'"StageSucceeded","executionId":"e","stageName":"S"}}',
    )
    assert isinstance(old.event, ev.StageSucceeded) and old.event.skipped is False


def test_decide_on_conditions_is_pure_and_deterministic() -> None:
    saturday = datetime(2026, 12, 5, 12, 0, tzinfo=UTC).timestamp()
    h = harness(decl(before=conds("FAIL", window("hours", "* * 9-17 ? * MON-FRI"))), saturday)
    eid = to_deploy(h)
    rid = rules_of(h, eid, "Deploy", "BEFORE_ENTRY")[0].ruleExecutionId
    cmds: list[c.Command] = [
        c.EvaluateRule(executionId=eid, ruleExecutionId=rid),
        c.OverrideCondition(executionId=eid, stageName="Deploy", conditionType="BEFORE_ENTRY"),
        c.SettleCondition(executionId=eid, ruleExecutionId=rid),
    ]
    for cmd in cmds:
        before = copy_state(h.state)
        monday = datetime(2026, 12, 7, 10, 0, tzinfo=UTC).timestamp()
        one = decide(h.state, cmd, make_ctx(IdGen(prefix=0xA), now=monday))
        two = decide(h.state, cmd, make_ctx(IdGen(prefix=0xA), now=monday))
        assert one == two and (one or isinstance(cmd, c.SettleCondition))
        assert h.state == before


# --- properties ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    passes=st.lists(st.booleans(), min_size=1, max_size=5),
    result=st.sampled_from(["FAIL", "SKIP"]),
)
def test_before_entry_is_met_exactly_when_every_rule_passes(
    passes: list[bool], result: str
) -> None:
    rules = [vcheck(f"r{i}", "x", "x" if ok else "y") for i, ok in enumerate(passes)]
    h = harness(decl(before=conds(result, *rules)))
    eid = to_deploy(h)
    x = h.x(eid)
    k = latest_cond(h, eid, "Deploy", "BEFORE_ENTRY")
    met = all(passes)
    assert k.status == ("Succeeded" if met else "Failed")
    assert [r.status for r in rules_of(h, eid, "Deploy", "BEFORE_ENTRY")] == [
        "Succeeded" if ok else "Failed" for ok in passes
    ]
    if met:
        assert x.stages["Deploy"].status == "InProgress" and x.status == "InProgress"
    elif result == "SKIP":
        assert x.stages["Deploy"].status == "Skipped" and x.currentStage == "Post"
    else:
        assert x.stages["Deploy"].status == "Failed" and x.status == "Failed"
    # the log folds to the same state
    assert msgspec.json.encode(fold("p", h.log).executions[eid]) == msgspec.json.encode(x)


@settings(max_examples=40, deadline=None)
@given(
    outcomes=st.lists(st.sampled_from(["ok", "fail", "lost"]), min_size=1, max_size=4),
    order=st.randoms(use_true_random=False),
)
def test_commands_rules_in_any_order(outcomes: list[str], order: Any) -> None:
    h = harness(decl(success=conds("FAIL", *[shell(f"s{i}") for i in range(len(outcomes))])))
    eid = to_deploy(h)
    h.succeed(eid, "d1", "d2")
    rules = rules_of(h, eid, "Deploy", "ON_SUCCESS")
    pairs = list(zip(rules, outcomes, strict=True))
    order.shuffle(pairs)
    for r, outcome in pairs:
        rid = r.ruleExecutionId
        if outcome == "lost":
            h.run(c.LoseAction(executionId=eid, actionExecutionId=rid))
        else:
            h.run(c.CompleteRule(executionId=eid, ruleExecutionId=rid, succeeded=outcome == "ok"))
    x = h.x(eid)
    k = latest_cond(h, eid, "Deploy", "ON_SUCCESS")
    if all(o == "ok" for o in outcomes):
        assert k.status == "Succeeded" and x.currentStage == "Post"
    else:
        assert k.status == "Failed" and x.status == "Failed"
        first_bad = next(r for r, o in pairs if o != "ok")
        assert f"Rule '{first_bad.ruleName}' failed" in (k.summary or "")
    assert len(of_type(h.log, ev.ConditionEnded)) == 1


# --- constants and defaults -----------------------------------------------------------------


def test_results_allowed_per_condition_type() -> None:
    assert cond.RESULTS == {
        "BEFORE_ENTRY": ("FAIL", "SKIP"),
        "ON_SUCCESS": ("FAIL", "ROLLBACK"),
        "ON_FAILURE": ("RETRY", "ROLLBACK"),
    }
    assert cond.PROVIDERS == ("VariableCheck", "DeploymentWindow", "Commands")
    assert (cond.RULE_CATEGORY, cond.RULE_OWNER, cond.RULE_VERSION) == ("Rule", "AWS", "1")


def test_on_success_default_result_is_fail_and_on_failure_defaults_to_its_result() -> None:
    h = harness(decl(success=conds(None, vcheck("v", "a", "b"))))
    eid = to_deploy(h)
    h.succeed(eid, "d1", "d2")
    assert "ROLLBACK" not in (h.x(eid).statusSummary or "")
    assert "onSuccess condition was not met" in (h.x(eid).statusSummary or "")
    sdecl = decl(failure=FailureConditions(conditions=[{"rules": [vcheck("v", "a", "a")]}]))
    d0 = sdecl.stages[1]
    c0 = cond.parse(d0, "ON_FAILURE")
    assert c0 is not None and cond.result_of(d0, "ON_FAILURE", c0) == "ROLLBACK"
    d1 = decl(failure=_on_failure("RETRY", vcheck("v", "a", "a"))).stages[1]
    c1 = cond.parse(d1, "ON_FAILURE")
    assert c1 is not None and cond.result_of(d1, "ON_FAILURE", c1) == "RETRY"


def test_rule_defaults_owner_and_version() -> None:
    r = {
        "name": "v",
        "ruleTypeId": {"category": "Rule", "provider": "VariableCheck"},
        "configuration": {"Variable": "a", "Value": "a", "Operator": "EQ"},
    }
    h = harness(decl(before=conds("FAIL", r)))
    eid = to_deploy(h)
    assert h.action(eid, "d1").status == "InProgress"
    for bad in (
        {"category": "Action", "provider": "VariableCheck"},
        {"category": "Rule", "owner": "Custom", "provider": "VariableCheck"},
    ):
        rr = dict(r, ruleTypeId=bad)
        err = Harness().error(c.CreatePipeline(declaration=decl(before=conds("FAIL", rr))))
        assert err.type_name == "InvalidStageDeclarationException"


def test_window_search_finds_a_distant_opening() -> None:
    # 29 February 09:00, a leap day: more than a year away
    w = cond.Window.parse("0 0 9 29 2 ?", None)
    open_now, nxt = w.evaluate(TUESDAY_20H)
    assert open_now is False
    assert nxt == datetime(2028, 2, 29, 9, 0, tzinfo=UTC).timestamp()
    assert cond.WINDOW_SEARCH >= 1000


def test_deferred_until_changes_emit_once() -> None:
    saturday = datetime(2026, 12, 5, 12, 0, tzinfo=UTC).timestamp()
    h = harness(decl(before=conds("FAIL", window("hours", "* * 9-17 ? * MON-FRI"))), saturday)
    eid = to_deploy(h)
    (r,) = rules_of(h, eid, "Deploy", "BEFORE_ENTRY")
    # due and still closed (e.g. a daylight-saving shift): deferred again, to a later time
    h.state.executions[eid].rules[r.ruleExecutionId].until = saturday
    envs = h.run(c.EvaluateRule(executionId=eid, ruleExecutionId=r.ruleExecutionId))
    assert types(envs) == ["RuleExecutionDeferred"]
    assert h.run(c.EvaluateRule(executionId=eid, ruleExecutionId=r.ruleExecutionId)) == []


def test_stopping_execution_abandons_a_condition_when_its_rule_ends() -> None:
    d = decl(failure=_on_failure("RETRY", shell("check"), mode="ALL_ACTIONS"))
    dep = msgspec.structs.replace(
        d.stages[1],
        actions=[
            d.stages[1].actions[0],
            msgspec.structs.replace(d.stages[1].actions[1], runOrder=1),
        ],
    )
    h = harness(msgspec.structs.replace(d, stages=[d.stages[0], dep, d.stages[2]]))
    eid = to_deploy(h)
    h.fail(eid, "d1")
    h.stop(eid)  # d2 still runs: Stopping
    assert h.x(eid).status == "Stopping"
    rid = rules_of(h, eid, "Deploy", "ON_FAILURE")[0].ruleExecutionId
    h.run(c.CompleteRule(executionId=eid, ruleExecutionId=rid, succeeded=True))
    assert latest_cond(h, eid, "Deploy", "ON_FAILURE").status == "Abandoned"
    assert len(h.attempts(eid, "d1")) == 1
    h.succeed(eid, "d2")
    assert h.x(eid).status == "Stopped"


def _stored(d: PipelineDeclaration) -> Harness:
    """A pipeline whose declaration was stored without today's checks (an older release)."""
    h = Harness()
    h.now = TUESDAY_20H
    stored = msgspec.structs.replace(d, version=1, executionMode="SUPERSEDED", pipelineType="V2")
    h.state = fold(
        "p",
        [
            ev.Envelope(
                id="x",
                pipeline="p",
                version=1,
                time=1.0,
                actor="t",
                event=ev.PipelineCreated(declaration=stored),
            )
        ],
    )
    return h


def test_a_stored_unsupported_rule_fails_when_evaluated() -> None:
    alarm = {"name": "alarm", "ruleTypeId": {"category": "Rule", "provider": "CloudWatchAlarm"}}
    h = _stored(decl(before=conds("FAIL", alarm)))
    eid = to_deploy(h)
    (r,) = rules_of(h, eid, "Deploy", "BEFORE_ENTRY")
    assert (r.status, r.errorCode) == ("Failed", "RuleTypeNotSupported")
    assert h.x(eid).status == "Failed"


def test_a_stored_invalid_window_fails_when_evaluated() -> None:
    h = _stored(decl(before=conds("FAIL", window("w", "* * * *"))))
    eid = to_deploy(h)
    (r,) = rules_of(h, eid, "Deploy", "BEFORE_ENTRY")
    assert (r.status, r.errorCode) == ("Failed", "DeploymentWindowInvalid")


def test_resolved_configuration_keeps_an_unresolvable_reference() -> None:
    h = harness(
        decl(
            before=conds(
                "FAIL", vcheck("v", "#{variables.Missing}", "#{codepipeline.PipelineName}")
            )
        )
    )
    eid = to_deploy(h)
    (r,) = rules_of(h, eid, "Deploy", "BEFORE_ENTRY")
    assert r.resolvedConfiguration == {
        "Variable": "#{variables.Missing}",
        "Value": "p",
        "Operator": "EQ",
    }
    assert r.status == "Failed" and "#{variables.Missing}" in (r.errorMessage or "")


@pytest.mark.parametrize("years", ["20x", "2026-", "*/", "1999,abc"])
def test_window_invalid_year_field(years: str) -> None:
    with pytest.raises(ValueError):
        cond.Window.parse(f"* * * * * ? {years}", None)


def test_a_long_rule_failure_message_is_cut() -> None:
    h = harness(decl(before=conds("FAIL", shell("gate"))))
    eid = to_deploy(h)
    (r,) = rules_of(h, eid, "Deploy", "BEFORE_ENTRY")
    h.run(
        c.CompleteRule(
            executionId=eid, ruleExecutionId=r.ruleExecutionId, succeeded=False, message="x" * 9000
        )
    )
    assert len(h.x(eid).rules[r.ruleExecutionId].errorMessage or "") == 5000
    assert len(latest_cond(h, eid, "Deploy", "BEFORE_ENTRY").summary or "") == 2000
