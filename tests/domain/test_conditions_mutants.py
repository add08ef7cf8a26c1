"""Stage conditions, the exact behaviour: messages, summaries, boundaries and defaults that
the mutation run of app/domain/conditions.py showed untested (docs/testing.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from app.domain import commands as c
from app.domain import conditions as cond
from app.domain import events as ev
from app.domain.model import FailureConditions
from tests.domain.helpers import Harness, of_type
from tests.domain.test_conditions import (
    TUESDAY_20H,
    VARS,
    _on_failure,
    _stored,
    conds,
    decl,
    harness,
    latest_cond,
    rules_of,
    shell,
    start,
    to_deploy,
    vcheck,
    window,
)

WHERE_BE = "the beforeEntry condition of stage 'Deploy'"
WHERE_OS = "the onSuccess condition of stage 'Deploy'"
WHERE_OF = "the onFailure condition of stage 'Deploy'"
FIELDS = (
    "needs 6 fields (seconds minutes hours day-of-month month day-of-week) and an optional year"
)


def refused(**kwargs: Any) -> tuple[str, str]:
    err = Harness().error(c.CreatePipeline(declaration=decl(**kwargs)))
    return err.type_name, err.message


def rule(name: str, provider: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "ruleTypeId": {"category": "Rule", "provider": provider}, **kw}


# --- create / update checks: the exact messages ----------------------------------------------


def test_unavailable_rule_type_message_shows_the_defaults() -> None:
    assert refused(before=conds("FAIL", rule("a", "CloudWatchAlarm"))) == (
        "InvalidStageDeclarationException",
        f"Rule declaration for rule 'a' in {WHERE_BE} is invalid: RuleType (Category: 'Rule', "
        "Provider: 'CloudWatchAlarm', Owner: 'AWS', Version: '1') is not available: stageline "
        "evaluates the AWS rules VariableCheck, DeploymentWindow and Commands (version 1)",
    )
    bad = {
        "name": "b",
        "ruleTypeId": {"category": "Action", "owner": "Custom", "provider": "X", "version": "7"},
    }
    _, msg = refused(success=conds("FAIL", bad))
    assert (
        f"Rule declaration for rule 'b' in {WHERE_OS} is invalid: RuleType (Category: 'Action', "
        "Provider: 'X', Owner: 'Custom', Version: '7') is not available"
    ) in msg


@pytest.mark.parametrize(
    "type_id",
    [
        {"category": "Action", "provider": "VariableCheck"},
        {"category": "Rule", "owner": "Custom", "provider": "VariableCheck"},
        {"category": "Rule", "provider": "VariableCheck", "version": "2"},
        {"category": "Rule", "owner": "AWS", "provider": "Lambda", "version": "1"},
    ],
)
def test_each_part_of_the_rule_type_is_checked(type_id: dict[str, str]) -> None:
    r = vcheck("v", "a", "a")
    r["ruleTypeId"] = type_id
    name, msg = refused(before=conds("FAIL", r))
    assert name == "InvalidStageDeclarationException"
    assert msg.startswith(f"Rule declaration for rule 'v' in {WHERE_BE} is invalid")


def test_explicit_owner_and_version_are_accepted() -> None:
    r = vcheck("v", "a", "a")  # owner AWS, version 1 written out
    h = harness(decl(before=conds("FAIL", r)))
    eid = to_deploy(h)
    assert h.action(eid, "d1").status == "InProgress"


def test_variable_check_config_messages() -> None:
    assert refused(success=conds(None, rule("v", "VariableCheck"))) == (
        "InvalidStageDeclarationException",
        f"Rule 'v' in {WHERE_OS}: VariableCheck needs Variable, Value, Operator",
    )
    only_var = rule("v", "VariableCheck", configuration={"Variable": "a"})
    assert refused(success=conds(None, only_var))[1] == (
        f"Rule 'v' in {WHERE_OS}: VariableCheck needs Value, Operator"
    )
    no_op = rule("v", "VariableCheck", configuration={"Variable": "a", "Value": "b"})
    assert refused(success=conds(None, no_op))[1] == (
        f"Rule 'v' in {WHERE_OS}: VariableCheck needs Operator"
    )
    assert refused(before=conds(None, vcheck("v", "a", "b", "GT"))) == (
        "InvalidStageDeclarationException",
        f"Rule 'v' in {WHERE_BE}: Operator 'GT' is not one of EQ, NE, CONTAINS, MATCHES",
    )
    _, msg = refused(before=conds(None, vcheck("v", "a", "(", "MATCHES")))
    assert msg.startswith(f"Rule 'v' in {WHERE_BE}: Value is not a regular expression: missing )")


@pytest.mark.parametrize("op", ["EQ", "NE", "CONTAINS", "MATCHES"])
def test_every_operator_is_accepted(op: str) -> None:
    h = harness(decl(success=conds("FAIL", vcheck("v", "a", "a", op))))
    assert h.state.declaration is not None


def test_a_value_is_compiled_only_for_matches_and_not_with_a_reference() -> None:
    for r in (vcheck("v", "a", "(", "EQ"), vcheck("v", "a", "#{variables.Env}(", "MATCHES")):
        h = harness(decl(before=conds("FAIL", r), variables=VARS))
        assert h.state.declaration is not None


def test_deployment_window_config_messages() -> None:
    assert refused(before=conds(None, rule("w", "DeploymentWindow"))) == (
        "InvalidStageDeclarationException",
        f"Rule 'w' in {WHERE_BE}: DeploymentWindow needs Cron",
    )
    assert refused(before=conds(None, window("w", "* * *")))[1] == (
        f"Rule 'w' in {WHERE_BE}: Cron '* * *' {FIELDS}"
    )
    assert refused(before=conds(None, window("w", "* * 25 * * ?")))[1] == (
        f"Rule 'w' in {WHERE_BE}: Cron '* * 25 * * ?' is not a valid cron expression"
    )
    assert refused(before=conds(None, window("w", "* * * * * ?", "No/Where")))[1] == (
        f"Rule 'w' in {WHERE_BE}: TimeZone 'No/Where' is not a known time zone"
    )


def test_commands_rule_message() -> None:
    assert refused(success=conds(None, rule("s", "Commands"))) == (
        "InvalidStageDeclarationException",
        f"Rule 's' in {WHERE_OS}: Commands needs a non-empty 'commands'",
    )


def test_result_and_duplicate_messages_and_every_problem_joined() -> None:
    name, msg = refused(
        before=conds("ROLLBACK", vcheck("v", "a", "b"), vcheck("v", "a", "c")),
        success=conds("SKIP", rule("s", "Commands")),
        failure=FailureConditions(result="FAIL", conditions=[{"rules": [vcheck("f", "a", "b")]}]),
    )
    assert name == "InvalidStageDeclarationException"
    assert msg.split("; ") == [
        "The beforeEntry condition of stage 'Deploy' cannot have result ROLLBACK "
        "(allowed: FAIL, SKIP)",
        "The beforeEntry condition of stage 'Deploy' has duplicate rule names",
        "The onSuccess condition of stage 'Deploy' cannot have result SKIP (allowed: FAIL, "
        "ROLLBACK)",
        f"Rule 's' in {WHERE_OS}: Commands needs a non-empty 'commands'",
        "The onFailure condition of stage 'Deploy' cannot have result FAIL (allowed: RETRY, "
        "ROLLBACK)",
    ]


def test_malformed_shapes_are_all_reported_before_rule_problems() -> None:
    name, msg = refused(
        before={"nope": 1},
        success={"conditions": []},
        failure=FailureConditions(result="FAIL", conditions=[{"rules": [vcheck("f", "a", "b")]}]),
    )
    assert name == "InvalidStructureException"
    parts = msg.split("; ")
    assert len(parts) == 2
    assert parts[0].startswith(f"{WHERE_BE} is malformed: ")
    assert parts[1].startswith(f"{WHERE_OS} is malformed: ")


def test_conditions_of_every_stage_are_checked() -> None:
    d = decl(success=conds("FAIL", vcheck("v", "a", "a")))
    post = d.stages[2]
    import msgspec

    bad_post = msgspec.structs.replace(post, beforeEntry=conds("ROLLBACK", vcheck("w", "a", "b")))
    d = msgspec.structs.replace(d, stages=[d.stages[0], d.stages[1], bad_post])
    err = Harness().error(c.CreatePipeline(declaration=d))
    assert err.message == (
        "The beforeEntry condition of stage 'Post' cannot have result ROLLBACK "
        "(allowed: FAIL, SKIP)"
    )


def test_a_valid_on_failure_condition_after_no_other_conditions() -> None:
    h = harness(decl(failure=_on_failure("ROLLBACK", vcheck("v", "a", "a"))))
    assert h.state.declaration is not None
    _, msg = refused(failure=_on_failure("RETRY", rule("s", "Commands")))
    assert msg == f"Rule 's' in {WHERE_OF}: Commands needs a non-empty 'commands'"


# --- VariableCheck and DeploymentWindow (pure) -----------------------------------------------


def _look(values: dict[str, str]) -> Any:
    return lambda ns, name: values.get(f"{ns}.{name}")


def test_variable_check_summaries() -> None:
    look = _look({"variables.Env": "prod"})
    cfg = {"Variable": "#{variables.Env}", "Value": "prod", "Operator": "EQ"}
    assert cond.variable_check(cfg, look) == (True, "#{variables.Env} is 'prod': EQ 'prod' passed")
    cfg["Operator"] = "NE"
    assert cond.variable_check(cfg, look) == (False, "#{variables.Env} is 'prod': NE 'prod' failed")
    assert cond.variable_check({}, look) == (
        False,
        "Operator '' is not one of EQ, NE, CONTAINS, MATCHES",
    )
    assert cond.variable_check({"Operator": "EQ"}, look) == (True, " is '': EQ '' passed")
    ok, summary = cond.variable_check({"Variable": "a", "Value": "(", "Operator": "MATCHES"}, look)
    assert ok is False
    assert summary.startswith("Value '(' is not a regular expression: missing )")
    ok, summary = cond.variable_check(
        {"Variable": "a", "Value": "#{variables.Nope}", "Operator": "EQ"}, look
    )
    assert ok is False and "#{variables.Nope}" in summary


def test_contains_is_value_in_variable() -> None:
    look = _look({})
    assert cond.variable_check({"Variable": "abc", "Value": "b", "Operator": "CONTAINS"}, look)[0]
    assert not cond.variable_check({"Variable": "b", "Value": "abc", "Operator": "CONTAINS"}, look)[
        0
    ]


def test_window_parse_fields() -> None:
    w = cond.Window.parse("0 30 9 ? * 1,7", None)
    assert (w.expr, w.years, w.zone) == ("30 9 ? * 0,6", "*", "UTC")
    w = cond.Window.parse("0 * * ? * 6#1 2027", "Europe/Paris")
    assert (w.expr, w.years, w.zone) == ("* * ? * 5#1", "2027", "Europe/Paris")
    assert cond.Window.parse("* * * ? * */2", None).expr == "* * ? * */2"
    assert cond.Window.parse("* * * ? * 2-6/2", None).expr == "* * ? * 1-5/2"
    assert cond.Window.parse("* * * ? * 1", "").zone == "UTC"


def test_window_parse_messages() -> None:
    for cron in ("* * * * *", "* * * * * * * *"):
        with pytest.raises(ValueError) as info:
            cond.Window.parse(cron, None)
        assert str(info.value) == f"Cron '{cron}' {FIELDS}"
    for cron in ("* * 25 * * ?", "* * * * * ? 20x"):
        with pytest.raises(ValueError) as info:
            cond.Window.parse(cron, None)
        assert str(info.value) == f"Cron '{cron}' is not a valid cron expression"
    with pytest.raises(ValueError) as info:
        cond.Window.parse("* * * * * ?", "Mars/X")
    assert str(info.value) == "TimeZone 'Mars/X' is not a known time zone"
    with pytest.raises(ValueError) as info:
        cond.Window.parse("* * * * * ?", "../etc")
    assert str(info.value) == "TimeZone '../etc' is not a known time zone"


@pytest.mark.parametrize(
    "years", ["*", "2026", "2026-2027", "2026/2", "2026-2030/2", "*/3", "2026,2028", "*,2026"]
)
def test_window_year_fields_accepted(years: str) -> None:
    assert cond.Window.parse(f"* * * * * ? {years}", None).years == years


@pytest.mark.parametrize("years", ["x2026", "2026x", "202", "2026-27", "2026/", "*/x", "**"])
def test_window_year_fields_refused(years: str) -> None:
    with pytest.raises(ValueError):
        cond.Window.parse(f"* * * * * ? {years}", None)


def _years(field: str) -> cond.Window:
    return cond.Window("* * * * *", field, "UTC")


def test_year_matching_bounds_and_steps() -> None:
    w = _years("*")
    assert [w.year_ok(y) for y in (1969, 1970, 2199, 2200)] == [False, True, True, False]
    w = _years("*/5")
    assert w.year_ok(2025) and not w.year_ok(2026) and w.year_ok(1970)
    w = _years("2026-2028")
    assert [w.year_ok(y) for y in (2025, 2026, 2027, 2028, 2029)] == [
        False,
        True,
        True,
        True,
        False,
    ]
    w = _years("2026-2030/2")
    assert [w.year_ok(y) for y in (2026, 2027, 2028, 2030, 2032)] == [
        True,
        False,
        True,
        True,
        False,
    ]
    w = _years("2026")
    assert [w.year_ok(y) for y in (2025, 2026, 2027)] == [False, True, False]
    w = _years("2026/3")
    assert [w.year_ok(y) for y in (2025, 2026, 2028, 2029, 2199, 2200)] == [
        False,
        True,
        False,
        True,
        False,
        False,
    ]
    assert _years("2026/1").year_ok(2199)
    w = _years("2025,2027")
    assert [w.year_ok(y) for y in (2025, 2026, 2027)] == [True, False, True]


def test_window_open_and_next_opening_exactly() -> None:
    # seconds are dropped: inside the minute 20:00 whatever the second
    w = cond.Window.parse("0 0 20 * * ?", None)
    assert w.evaluate(TUESDAY_20H + 59.5) == (True, None)
    assert w.evaluate(TUESDAY_20H + 60) == (
        False,
        datetime(2026, 12, 2, 20, 0, tzinfo=UTC).timestamp(),
    )
    # the year field: the first allowed minute of an allowed year, as far as 2199
    w = cond.Window.parse("0 0 9 * * ? 2199", None)
    assert w.evaluate(TUESDAY_20H) == (False, datetime(2199, 1, 1, 9, 0, tzinfo=UTC).timestamp())
    w = cond.Window.parse("* * * * * ? 2028", None)
    assert w.evaluate(TUESDAY_20H) == (False, datetime(2028, 1, 1, tzinfo=UTC).timestamp())
    # open now in a year it allows; a cron minute in a year it does not is not open
    assert cond.Window.parse("* * * * * ? 2026", None).evaluate(TUESDAY_20H) == (True, None)
    assert cond.Window.parse("* * * * * ? 2027/1", None).evaluate(TUESDAY_20H)[0] is False
    # never again
    assert cond.Window.parse("* * * * * ? 2025", None).evaluate(TUESDAY_20H) == (False, None)


def test_deployment_window_verdicts_and_summaries() -> None:
    assert cond.deployment_window({}, TUESDAY_20H) == ("Failed", f"Cron '' {FIELDS}", None)
    assert cond.deployment_window({"Cron": "* * * * * ?"}, TUESDAY_20H) == (
        "Succeeded",
        "Inside the deployment window '* * * * * ?' (UTC)",
        None,
    )
    assert cond.deployment_window({"Cron": "* * * * * ? 2020"}, TUESDAY_20H) == (
        "Failed",
        "The deployment window '* * * * * ? 2020' never opens",
        None,
    )
    nine_tokyo = datetime(2026, 12, 2, 0, 0, tzinfo=UTC).timestamp()
    assert cond.deployment_window(
        {"Cron": "* * 9 * * ?", "TimeZone": "Asia/Tokyo"}, TUESDAY_20H
    ) == (
        "Deferred",
        "Waiting for the deployment window '* * 9 * * ?': opens 2026-12-02T09:00:00+09:00",
        nine_tokyo,
    )
    assert cond.deployment_window(
        {"Cron": "* * 9 * * ?", "TimeZone": "Asia/Tokyo"}, nine_tokyo
    ) == ("Succeeded", "Inside the deployment window '* * 9 * * ?' (Asia/Tokyo)", None)


# --- evaluation in an execution --------------------------------------------------------------


def test_rule_events_carry_exact_fields() -> None:
    h = harness(
        decl(
            before=conds(
                "SKIP",
                vcheck("v", "#{variables.Env}", "prod"),
                window("w", "* * * * * ?"),
                shell("s", "make check"),
            ),
            variables=VARS,
        )
    )
    eid = to_deploy(h, {"Env": "prod"})
    started = of_type(h.log, ev.ConditionStarted)[-1]
    assert (started.executionId, started.stageName, started.conditionType, started.result) == (
        eid,
        "Deploy",
        "BEFORE_ENTRY",
        "SKIP",
    )
    sched = of_type(h.log, ev.RuleExecutionScheduled)
    assert [(s.ruleName, s.provider, s.kind, s.stageName) for s in sched] == [
        ("v", "VariableCheck", "engine", "Deploy"),
        ("w", "DeploymentWindow", "engine", "Deploy"),
        ("s", "Commands", "commands", "Deploy"),
    ]
    assert {s.conditionExecutionId for s in sched} == {started.conditionExecutionId}
    assert [s.pipelineVersion for s in sched] == [1, 1, 1]
    assert sched[0].resolvedConfiguration == {
        "Variable": "prod",
        "Value": "prod",
        "Operator": "EQ",
    }
    assert sched[2].resolvedConfiguration is None
    ok = of_type(h.log, ev.RuleExecutionSucceeded)
    assert [(o.ruleExecutionId, o.summary) for o in ok] == [
        (sched[0].ruleExecutionId, "#{variables.Env} is 'prod': EQ 'prod' passed"),
        (sched[1].ruleExecutionId, "Inside the deployment window '* * * * * ?' (UTC)"),
    ]
    assert latest_cond(h, eid, "Deploy", "BEFORE_ENTRY").status == "InProgress"
    envs = h.run(
        c.CompleteRule(executionId=eid, ruleExecutionId=sched[2].ruleExecutionId, succeeded=True)
    )
    ended = of_type(envs, ev.ConditionEnded)
    assert [(e.status, e.summary, e.stageName) for e in ended] == [
        ("Succeeded", "All 3 rule(s) passed", "Deploy")
    ]


def test_a_failed_variable_check_event() -> None:
    h = harness(decl(before=conds("FAIL", vcheck("v", "a", "b"))))
    eid = to_deploy(h)
    (f,) = of_type(h.log, ev.RuleExecutionFailed)
    assert (f.errorCode, f.message) == ("VariableCheckFailed", "a is 'a': EQ 'b' failed")
    (e,) = of_type(h.log, ev.ConditionEnded)
    assert (e.status, e.summary) == ("Failed", "Rule 'v' failed: a is 'a': EQ 'b' failed")
    x = h.x(eid)
    assert x.statusSummary == (
        "The beforeEntry condition was not met: Rule 'v' failed: a is 'a': EQ 'b' failed"
    )


def test_the_rule_evaluated_is_the_one_of_its_name() -> None:
    h = harness(decl(before=conds("FAIL", vcheck("a", "x", "x"), vcheck("b", "x", "y"))))
    eid = to_deploy(h)
    a, b = rules_of(h, eid, "Deploy", "BEFORE_ENTRY")
    assert (a.ruleName, a.status, b.ruleName, b.status) == ("a", "Succeeded", "b", "Failed")
    assert b.errorMessage == "x is 'x': EQ 'y' failed"


def test_stored_unsupported_and_invalid_rules_fail_with_their_messages() -> None:
    alarm = {"name": "alarm", "ruleTypeId": {"category": "Rule", "provider": "CloudWatchAlarm"}}
    h = _stored(decl(before=conds("FAIL", alarm)))
    eid = to_deploy(h)
    (r,) = rules_of(h, eid, "Deploy", "BEFORE_ENTRY")
    assert r.errorMessage == "stageline does not evaluate CloudWatchAlarm rules"
    h = _stored(decl(before=conds("FAIL", window("w", "* * * *"))))
    eid = to_deploy(h)
    (r,) = rules_of(h, eid, "Deploy", "BEFORE_ENTRY")
    assert r.errorMessage == f"Cron '* * * *' {FIELDS}"
    h = _stored(decl(before=conds("FAIL", window("w", "* * * * * ? 2020"))))
    eid = to_deploy(h)
    (r,) = rules_of(h, eid, "Deploy", "BEFORE_ENTRY")
    assert (r.status, r.errorCode) == ("Failed", "DeploymentWindowInvalid")
    assert r.errorMessage == "The deployment window '* * * * * ? 2020' never opens"
    # a stored VariableCheck without configuration: checked with nothing, Operator ''
    h = _stored(decl(before=conds("FAIL", rule("v", "VariableCheck"))))
    eid = to_deploy(h)
    (r,) = rules_of(h, eid, "Deploy", "BEFORE_ENTRY")
    assert (r.errorCode, r.errorMessage) == (
        "VariableCheckFailed",
        "Operator '' is not one of EQ, NE, CONTAINS, MATCHES",
    )


def test_deferred_rule_event_and_evaluate_guards() -> None:
    saturday = datetime(2026, 12, 5, 12, 0, tzinfo=UTC).timestamp()
    monday = datetime(2026, 12, 7, 9, 0, tzinfo=UTC).timestamp()
    h = harness(decl(before=conds("FAIL", window("hours", "* * 9-17 ? * MON-FRI"))), saturday)
    eid = to_deploy(h)
    (d,) = of_type(h.log, ev.RuleExecutionDeferred)
    assert (d.executionId, d.until) == (eid, monday)
    assert d.summary == (
        "Waiting for the deployment window '* * 9-17 ? * MON-FRI': opens 2026-12-07T09:00:00+00:00"
    )
    rid = d.ruleExecutionId
    # exactly due: evaluated (now == until)
    h.now = monday - 1
    envs = h.run(c.EvaluateRule(executionId=eid, ruleExecutionId=rid))
    assert of_type(envs, ev.RuleExecutionSucceeded)[0].ruleExecutionId == rid
    assert h.run(c.EvaluateRule(executionId=eid, ruleExecutionId="nope")) == []


def test_evaluate_rule_of_a_stopped_execution_or_a_commands_rule_does_nothing() -> None:
    saturday = datetime(2026, 12, 5, 12, 0, tzinfo=UTC).timestamp()
    h = harness(
        decl(before=conds("FAIL", window("hours", "* * 9-17 ? * MON-FRI"), shell("s"))), saturday
    )
    eid = to_deploy(h)
    w, s = rules_of(h, eid, "Deploy", "BEFORE_ENTRY")
    h.now = datetime(2026, 12, 7, 10, 0, tzinfo=UTC).timestamp()
    assert h.run(c.EvaluateRule(executionId=eid, ruleExecutionId=s.ruleExecutionId)) == []
    h.stop(eid)
    assert h.run(c.EvaluateRule(executionId=eid, ruleExecutionId=w.ruleExecutionId)) == []


# --- settle, results and their summaries ----------------------------------------------------


def test_commands_rule_failure_defaults() -> None:
    h = harness(decl(before=conds("FAIL", shell("gate"))))
    eid = to_deploy(h)
    (r,) = rules_of(h, eid, "Deploy", "BEFORE_ENTRY")
    envs = h.run(
        c.CompleteRule(executionId=eid, ruleExecutionId=r.ruleExecutionId, succeeded=False)
    )
    (f,) = of_type(envs, ev.RuleExecutionFailed)
    assert (f.errorCode, f.message) == ("RuleFailed", "")
    (e,) = of_type(envs, ev.ConditionEnded)
    assert e.summary == "Rule 'gate' failed: RuleFailed"
    h = harness(decl(before=conds("FAIL", shell("gate"))))
    eid = to_deploy(h)
    (r,) = rules_of(h, eid, "Deploy", "BEFORE_ENTRY")
    envs = h.run(
        c.CompleteRule(
            executionId=eid,
            ruleExecutionId=r.ruleExecutionId,
            succeeded=False,
            errorCode="ExitCode2",
            summary="exit 2",
        )
    )
    (f,) = of_type(envs, ev.RuleExecutionFailed)
    assert (f.errorCode, f.message) == ("ExitCode2", "exit 2")
    envs2 = h.run(
        c.CompleteRule(executionId=eid, ruleExecutionId=r.ruleExecutionId, succeeded=True)
    )
    assert envs2 == []


def test_commands_rule_success_summary_and_same_worker() -> None:
    h = harness(decl(before=conds("FAIL", shell("gate"))))
    eid = to_deploy(h)
    (r,) = rules_of(h, eid, "Deploy", "BEFORE_ENTRY")
    rid = r.ruleExecutionId
    envs = h.run(c.StartRule(executionId=eid, ruleExecutionId=rid, worker="w1"))
    (st_,) = of_type(envs, ev.RuleExecutionStarted)
    assert (st_.executionId, st_.ruleExecutionId, st_.worker) == (eid, rid, "w1")
    envs = h.run(
        c.CompleteRule(
            executionId=eid, ruleExecutionId=rid, succeeded=True, summary="all good", worker="w1"
        )
    )
    (ok,) = of_type(envs, ev.RuleExecutionSucceeded)
    assert ok.summary == "all good"
    assert h.action(eid, "d1").status == "InProgress"


def test_start_rule_messages() -> None:
    h = harness(decl(before=conds("FAIL", shell("gate"))))
    eid = to_deploy(h)
    err = h.error(c.StartRule(executionId=eid, ruleExecutionId="nope", worker="w"))
    assert err.message == "No rule execution nope"
    err = h.error(c.StartRule(executionId="nobody", ruleExecutionId="nope", worker="w"))
    assert (err.type_name, err.message) == ("ActionNotRunnableException", "No rule execution nope")
    (r,) = rules_of(h, eid, "Deploy", "BEFORE_ENTRY")
    rid = r.ruleExecutionId
    h.run(c.StartRule(executionId=eid, ruleExecutionId=rid, worker="w1"))
    err = h.error(c.StartRule(executionId=eid, ruleExecutionId=rid, worker="w2"))
    assert err.message == "Rule execution taken by w1"
    h.stop(eid)
    err = h.error(c.StartRule(executionId=eid, ruleExecutionId=rid, worker="w1"))
    assert err.message == "Rule execution is Abandoned (execution Stopped)"


def test_start_rule_refused_while_the_execution_stops() -> None:
    d = decl(failure=_on_failure("RETRY", shell("check"), mode="ALL_ACTIONS"))
    import msgspec

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
    h.stop(eid)
    rid = rules_of(h, eid, "Deploy", "ON_FAILURE")[0].ruleExecutionId
    assert h.x(eid).rules[rid].status == "InProgress"
    err = h.error(c.StartRule(executionId=eid, ruleExecutionId=rid, worker="w1"))
    assert err.message == "Rule execution is InProgress (execution Stopping)"
    envs = h.run(c.CompleteRule(executionId=eid, ruleExecutionId=rid, succeeded=True))
    (e,) = of_type(envs, ev.ConditionEnded)
    assert (e.status, e.summary, e.stageName) == (
        "Abandoned",
        "The execution is Stopping",
        "Deploy",
    )


def test_lost_rule_message_and_unknown_ids() -> None:
    h = harness(decl(before=conds("FAIL", shell("gate"))))
    eid = to_deploy(h)
    (r,) = rules_of(h, eid, "Deploy", "BEFORE_ENTRY")
    rid = r.ruleExecutionId
    envs = h.run(c.LoseAction(executionId=eid, actionExecutionId=rid, message="lease expired"))
    (f,) = of_type(envs, ev.RuleExecutionFailed)
    assert (f.errorCode, f.message) == (ev.WORKER_LOST, "lease expired")
    assert h.x(eid).status == "Failed"
    # lost again once ended: nothing more
    assert h.run(c.LoseAction(executionId=eid, actionExecutionId=rid)) == []


def test_lost_rule_without_consequences_waits_for_settle() -> None:
    h = harness(decl(before=conds("FAIL", shell("gate"))))
    eid = to_deploy(h)
    (r,) = rules_of(h, eid, "Deploy", "BEFORE_ENTRY")
    envs = h.run(
        c.LoseAction(executionId=eid, actionExecutionId=r.ruleExecutionId, consequences=False)
    )
    assert [type(e.event).__name__ for e in envs] == ["RuleExecutionFailed"]
    assert latest_cond(h, eid, "Deploy", "BEFORE_ENTRY").status == "InProgress"
    envs = h.run(c.SettleCondition(executionId=eid, ruleExecutionId=r.ruleExecutionId))
    assert of_type(envs, ev.ConditionEnded)[0].status == "Failed"
    assert h.run(c.SettleCondition(executionId=eid, ruleExecutionId="nope")) == []


def test_on_success_and_on_failure_summaries() -> None:
    h = harness(decl(success=conds("FAIL", vcheck("v", "a", "b"))))
    eid = to_deploy(h)
    h.succeed(eid, "d1", "d2")
    assert h.x(eid).statusSummary == (
        "The onSuccess condition was not met: Rule 'v' failed: a is 'a': EQ 'b' failed"
    )
    h = harness(decl(success=conds("ROLLBACK", vcheck("v", "a", "b"))))
    eid = to_deploy(h)
    h.succeed(eid, "d1", "d2")
    assert h.x(eid).statusSummary == (
        "The onSuccess condition was not met: Rule 'v' failed: a is 'a': EQ 'b' failed"
    )
    h = harness(decl(failure=_on_failure("RETRY", vcheck("v", "x", "y"))))
    eid = to_deploy(h)
    h.fail(eid, "d1")
    assert h.x(eid).statusSummary == (
        "Stage 'Deploy' failed; its onFailure condition was not met: "
        "Rule 'v' failed: x is 'x': EQ 'y' failed"
    )
    failed = [f for f in of_type(h.log, ev.StageFailed) if f.executionId == eid]
    assert [f.stageName for f in failed] == ["Deploy", "Deploy"]
    (xf,) = [f for f in of_type(h.log, ev.ExecutionFailed) if f.executionId == eid]
    assert xf.stageName == "Deploy" and xf.reason == h.x(eid).statusSummary


def test_on_failure_retry_default_mode_is_failed_actions() -> None:
    h = harness(decl(failure=_on_failure("RETRY", vcheck("v", "x", "x"))))
    eid = to_deploy(h)
    h.succeed(eid, "d1")
    envs = h.fail(eid, "d2")
    (r,) = of_type(envs, ev.StageRetryStarted)
    assert (r.retryMode, r.trigger) == ("FAILED_ACTIONS", "AutomatedStageRetry")
    assert len(h.attempts(eid, "d1")) == 1 and len(h.attempts(eid, "d2")) == 2


def test_on_failure_all_actions_retries_at_once_when_nothing_runs() -> None:
    h = harness(decl(failure=_on_failure("RETRY", vcheck("v", "x", "x"), mode="ALL_ACTIONS")))
    eid = to_deploy(h)
    h.succeed(eid, "d1")
    envs = h.fail(eid, "d2")
    (r,) = of_type(envs, ev.StageRetryStarted)
    assert r.retryMode == "ALL_ACTIONS"
    assert len(h.attempts(eid, "d1")) == 2


def test_on_failure_rollback_is_not_limited_to_one_auto_retry() -> None:
    h = harness(decl(failure=_on_failure("ROLLBACK", vcheck("v", "x", "x"))))
    eid = to_deploy(h)
    envs = h.fail(eid, "d1")
    assert len(of_type(envs, ev.ConditionStarted)) == 1


def test_override_of_a_pending_on_success_condition_succeeds_the_stage() -> None:
    h = harness(decl(success=conds("FAIL", shell("s"))))
    eid = to_deploy(h)
    h.succeed(eid, "d1", "d2")
    assert latest_cond(h, eid, "Deploy", "ON_SUCCESS").status == "InProgress"
    envs = h.run(
        c.OverrideCondition(executionId=eid, stageName="Deploy", conditionType="ON_SUCCESS")
    )
    assert [type(e.event).__name__ for e in envs][:2] == [
        "StageConditionOverridden",
        "StageSucceeded",
    ]
    assert h.x(eid).currentStage == "Post"
    assert len(of_type(h.log, ev.ConditionStarted)) == 1


def test_a_retried_entry_that_fails_again_fails_the_stage_again() -> None:
    h = harness(decl(before=conds("FAIL", vcheck("v", "a", "b")), mode="PARALLEL"))
    eid = to_deploy(h)
    assert h.x(eid).status == "Failed"
    # a stage whose entry failed is retried by evaluating its entry condition again
    envs = h.retry_now(eid, "Deploy", "FAILED_ACTIONS")
    assert len(of_type(envs, ev.ConditionStarted)) == 1
    assert h.x(eid).status == "Failed"


# --- OverrideStageCondition: the exact refusals ----------------------------------------------


def test_override_refusal_messages() -> None:
    h = harness(
        decl(
            before=conds("FAIL", vcheck("v", "a", "a")),
            success=conds("FAIL", vcheck("v", "a", "b")),
        )
    )

    def refuse(eid: str, stage_name: str, ctype: str) -> tuple[str, str]:
        err = h.error(
            c.OverrideCondition(executionId=eid, stageName=stage_name, conditionType=ctype)  # type: ignore[arg-type]
        )
        return err.type_name, err.message

    eid = to_deploy(h)
    assert refuse(eid, "Nope", "BEFORE_ENTRY") == (
        "StageNotFoundException",
        "Stage 'Nope' not found in pipeline 'p'",
    )
    assert refuse("gone", "Deploy", "BEFORE_ENTRY") == (
        "ConditionNotOverridableException",
        "Pipeline execution 'gone' not found in pipeline 'p'",
    )
    assert refuse(eid, "Deploy", "ON_SUCCESS") == (
        "ConditionNotOverridableException",
        f"Stage 'Deploy' of execution {eid} has evaluated no onSuccess condition",
    )
    assert refuse(eid, "Post", "BEFORE_ENTRY") == (
        "ConditionNotOverridableException",
        f"Stage 'Post' of execution {eid} has evaluated no beforeEntry condition",
    )
    assert refuse(eid, "Deploy", "BEFORE_ENTRY") == (
        "ConditionNotOverridableException",
        f"The beforeEntry condition of stage 'Deploy' in execution {eid} is Succeeded "
        "(execution InProgress): only a condition in progress or one that failed the stage "
        "can be overridden",
    )
    h.succeed(eid, "d1", "d2")
    other = to_deploy(h)
    assert refuse(eid, "Deploy", "ON_SUCCESS") == (
        "NotLatestPipelineExecutionException",
        f"Stage 'Deploy' has since been entered by execution {other}",
    )


def test_override_in_parallel_mode_ignores_later_executions() -> None:
    h = harness(decl(before=conds("FAIL", vcheck("v", "a", "b")), mode="PARALLEL"))
    eid = to_deploy(h)
    to_deploy(h)
    envs = h.run(
        c.OverrideCondition(executionId=eid, stageName="Deploy", conditionType="BEFORE_ENTRY")
    )
    (o,) = of_type(envs, ev.StageConditionOverridden)
    assert (o.executionId, o.stageName, o.conditionType) == (eid, "Deploy", "BEFORE_ENTRY")
    assert o.conditionExecutionId == h.x(eid).stages["Deploy"].conditions["BEFORE_ENTRY"]
    assert h.action(eid, "d1").status == "InProgress"


def test_override_refused_when_the_condition_failed_but_the_execution_goes_on() -> None:
    # onSuccess failed -> the stage failed; onFailure RETRY: the execution goes on retrying
    h = harness(
        decl(
            success=conds("FAIL", vcheck("v", "a", "b")),
            failure=_on_failure("RETRY", shell("check")),
        )
    )
    eid = to_deploy(h)
    h.succeed(eid, "d1", "d2")
    x = h.x(eid)
    assert x.status == "InProgress" and x.stages["Deploy"].status == "Failed"
    err = h.error(
        c.OverrideCondition(executionId=eid, stageName="Deploy", conditionType="ON_SUCCESS")
    )
    assert err.message == (
        f"The onSuccess condition of stage 'Deploy' in execution {eid} is Failed "
        "(execution InProgress): only a condition in progress or one that failed the stage "
        "can be overridden"
    )


def test_override_messages_after_update_and_over_the_limit() -> None:
    h = harness(decl(before=conds("FAIL", vcheck("v", "a", "b")), mode="PARALLEL"))
    eid = to_deploy(h)
    h.update()
    err = h.error(
        c.OverrideCondition(executionId=eid, stageName="Deploy", conditionType="BEFORE_ENTRY")
    )
    assert err.message == f"The pipeline was updated since execution {eid} started"

    h2 = Harness()
    h2.now = TUESDAY_20H
    h2.create(decl(before=conds("FAIL", vcheck("v", "a", "b")), mode="PARALLEL"), limit=2)
    e1 = to_deploy(h2)
    start(h2)
    # one slot left of two: the failed execution may take it back
    h2.run(c.OverrideCondition(executionId=e1, stageName="Deploy", conditionType="BEFORE_ENTRY"))
    assert e1 in h2.state.active
    h3 = Harness()
    h3.now = TUESDAY_20H
    h3.create(decl(before=conds("FAIL", vcheck("v", "a", "b")), mode="PARALLEL"), limit=1)
    e3 = to_deploy(h3)
    start(h3)
    err = h3.error(
        c.OverrideCondition(executionId=e3, stageName="Deploy", conditionType="BEFORE_ENTRY")
    )
    assert err.message == "Pipeline 'p' already has 1 active executions (limit 1)"


def test_override_of_a_condition_in_progress_abandons_its_rules() -> None:
    h = harness(decl(success=conds("FAIL", shell("s"), shell("t"))))
    eid = to_deploy(h)
    h.succeed(eid, "d1", "d2")
    s, t = rules_of(h, eid, "Deploy", "ON_SUCCESS")
    h.run(c.CompleteRule(executionId=eid, ruleExecutionId=s.ruleExecutionId, succeeded=True))
    h.run(c.OverrideCondition(executionId=eid, stageName="Deploy", conditionType="ON_SUCCESS"))
    x = h.x(eid)
    assert x.rules[t.ruleExecutionId].status == "Abandoned"
    assert x.rules[s.ruleExecutionId].status == "Succeeded"
    assert x.stages["Deploy"].status == "Succeeded"
    # the other rule's late result changes nothing
    assert (
        h.run(c.CompleteRule(executionId=eid, ruleExecutionId=t.ruleExecutionId, succeeded=False))
        == []
    )


# --- queries over the execution state --------------------------------------------------------


def test_evaluating_and_failed_by_condition() -> None:
    h = harness(
        decl(before=conds("FAIL", shell("gate")), success=conds("FAIL", vcheck("v", "a", "b")))
    )
    eid = start(h)
    x = h.x(eid)
    assert cond.evaluating(x, "Deploy") is None and not cond.failed_by_condition(x, "Deploy")
    h.succeed(eid, "src")
    x = h.x(eid)
    assert cond.evaluating(x, "Deploy") == "BEFORE_ENTRY"
    assert cond.evaluating(x, "Source") is None
    assert not cond.failed_by_condition(x, "Deploy")
    (r,) = rules_of(h, eid, "Deploy", "BEFORE_ENTRY")
    h.run(c.CompleteRule(executionId=eid, ruleExecutionId=r.ruleExecutionId, succeeded=True))
    x = h.x(eid)
    assert cond.evaluating(x, "Deploy") is None
    assert not cond.failed_by_condition(x, "Deploy")
    h.succeed(eid, "d1", "d2")
    x = h.x(eid)
    assert x.stages["Deploy"].status == "Failed"
    assert cond.failed_by_condition(x, "Deploy")
    assert cond.evaluating(x, "Deploy") is None


def test_a_stage_failed_by_an_action_is_not_failed_by_a_condition() -> None:
    h = harness(decl(failure=_on_failure("RETRY", vcheck("v", "x", "y"))))
    eid = to_deploy(h)
    h.fail(eid, "d1")
    x = h.x(eid)
    assert x.stages["Deploy"].status == "Failed"
    assert latest_cond(h, eid, "Deploy", "ON_FAILURE").status == "Failed"
    assert not cond.failed_by_condition(x, "Deploy")


def test_failure_result_applies() -> None:
    plain = decl()
    h = harness(plain)
    eid = to_deploy(h)
    assert cond.failure_result_applies(h.x(eid), plain.stages[1], "Deploy") is True
    d = decl(failure=_on_failure("RETRY", shell("check")))
    h = harness(d)
    eid = to_deploy(h)
    assert cond.failure_result_applies(h.x(eid), d.stages[1], "Deploy") is False
    h.fail(eid, "d1")
    assert cond.failure_result_applies(h.x(eid), d.stages[1], "Deploy") is False
    rid = rules_of(h, eid, "Deploy", "ON_FAILURE")[0].ruleExecutionId
    h.run(c.CompleteRule(executionId=eid, ruleExecutionId=rid, succeeded=True))
    assert cond.failure_result_applies(h.x(eid), d.stages[1], "Deploy") is True


def test_result_of_and_condition_of() -> None:
    d = decl(
        before=conds(None, vcheck("v", "a", "a")),
        success=conds("ROLLBACK", vcheck("v", "a", "a")),
        failure=FailureConditions(
            conditions=[{"rules": [vcheck("v", "a", "a")], "result": "RETRY"}]
        ),
    )
    s = d.stages[1]
    for ctype, want in (
        ("BEFORE_ENTRY", "FAIL"),
        ("ON_SUCCESS", "ROLLBACK"),
        ("ON_FAILURE", "RETRY"),
    ):
        k = cond.condition_of(s, ctype)
        assert k is not None and k.rules[0].name == "v"
        assert cond.result_of(s, ctype, k) == want
    assert cond.condition_of(d.stages[0], "BEFORE_ENTRY") is None
    assert cond.condition_of(d.stages[0], "ON_FAILURE") is None
    assert (
        cond.condition_of(decl(failure=FailureConditions(result="RETRY")).stages[1], "ON_FAILURE")
        is None
    )
    assert cond.condition_of(decl(before={"nope": 1}).stages[1], "BEFORE_ENTRY") is None
    k = cond.condition_of(decl(success=conds(None, vcheck("v", "a", "a"))).stages[1], "ON_SUCCESS")
    assert k is not None and cond.result_of(s, "ON_SUCCESS", k) == "FAIL"


# --- more edges: window search, admitting the next execution, evaluation guards ----------------


def test_window_search_edges() -> None:
    # the next allowed year after this one, never an earlier one; in the window's zone
    w = cond.Window.parse("* * * * * ? 2025,2027", "Asia/Tokyo")
    assert w.evaluate(TUESDAY_20H) == (
        False,
        datetime(2026, 12, 31, 15, 0, tzinfo=UTC).timestamp(),  # 2027-01-01 00:00 in Tokyo
    )
    # years after 2199 are never reached
    assert cond.Window.parse("* * * * * ? 2200", None).evaluate(TUESDAY_20H) == (False, None)
    # a day that does not exist: never open
    assert cond.Window.parse("0 0 0 30 2 ?", None).evaluate(TUESDAY_20H) == (False, None)
    assert cond.deployment_window({"Cron": "0 0 0 30 2 ?"}, TUESDAY_20H) == (
        "Failed",
        "The deployment window '0 0 0 30 2 ?' never opens",
        None,
    )


def test_a_stage_failed_at_entry_admits_the_next_waiting_execution() -> None:
    h = harness(decl(before=conds("FAIL", shell("gate")), mode="QUEUED"))
    first = to_deploy(h)
    second = to_deploy(h)
    assert h.state.occupant["Deploy"] == first
    assert h.state.waiting.get("Deploy") == [second]
    (r,) = rules_of(h, first, "Deploy", "BEFORE_ENTRY")
    envs = h.run(
        c.CompleteRule(
            executionId=first, ruleExecutionId=r.ruleExecutionId, succeeded=False, message="no"
        )
    )
    reason = "The beforeEntry condition was not met: Rule 'gate' failed: no"
    (sf,) = [f for f in of_type(envs, ev.StageFailed) if f.executionId == first]
    assert (sf.stageName, sf.reason) == ("Deploy", reason)
    (xf,) = of_type(envs, ev.ExecutionFailed)
    assert (xf.executionId, xf.stageName, xf.reason) == (first, "Deploy", reason)
    assert h.state.occupant["Deploy"] == second
    assert not h.state.waiting.get("Deploy")


def test_variable_check_sees_the_pipeline_name() -> None:
    h = harness(decl(before=conds("FAIL", vcheck("v", "#{codepipeline.PipelineName}", "p"))))
    eid = to_deploy(h)
    (r,) = rules_of(h, eid, "Deploy", "BEFORE_ENTRY")
    assert r.status == "Succeeded"
    assert h.action(eid, "d1").status == "InProgress"


def test_evaluating_a_decided_rule_again_changes_nothing() -> None:
    h = harness(decl(before=conds("FAIL", window("any", "* * * * * ?"), shell("s"))))
    eid = to_deploy(h)
    w, s = rules_of(h, eid, "Deploy", "BEFORE_ENTRY")
    assert (w.status, s.status) == ("Succeeded", "InProgress")
    assert h.run(c.EvaluateRule(executionId=eid, ruleExecutionId=w.ruleExecutionId)) == []
    assert len(of_type(h.log, ev.RuleExecutionSucceeded)) == 1


def _two_at_once(failure: FailureConditions) -> Any:
    import msgspec

    d = decl(failure=failure)
    dep = msgspec.structs.replace(
        d.stages[1],
        actions=[
            d.stages[1].actions[0],
            msgspec.structs.replace(d.stages[1].actions[1], runOrder=1),
        ],
    )
    return msgspec.structs.replace(d, stages=[d.stages[0], dep, d.stages[2]])


def test_a_deferred_rule_of_a_stopping_execution_is_not_evaluated() -> None:
    saturday = datetime(2026, 12, 5, 12, 0, tzinfo=UTC).timestamp()
    d = _two_at_once(_on_failure("RETRY", window("hours", "* * 9-17 ? * MON-FRI")))
    h = harness(d, saturday)
    eid = to_deploy(h)
    h.fail(eid, "d1")
    (r,) = rules_of(h, eid, "Deploy", "ON_FAILURE")
    assert r.status == "InProgress" and r.until is not None
    h.stop(eid)
    assert h.x(eid).status == "Stopping"
    h.now = datetime(2026, 12, 7, 10, 0, tzinfo=UTC).timestamp()
    assert h.run(c.EvaluateRule(executionId=eid, ruleExecutionId=r.ruleExecutionId)) == []


def test_on_failure_failed_actions_retry_does_not_wait_for_running_siblings() -> None:
    h = harness(_two_at_once(_on_failure("RETRY", vcheck("v", "x", "x"))))
    eid = to_deploy(h)
    envs = h.fail(eid, "d1")
    (r,) = of_type(envs, ev.StageRetryStarted)
    assert r.retryMode == "FAILED_ACTIONS"
    assert len(h.attempts(eid, "d1")) == 2 and len(h.attempts(eid, "d2")) == 1


def test_override_refused_for_a_passed_entry_of_a_failed_stage() -> None:
    h = harness(decl(before=conds("FAIL", vcheck("v", "a", "a"))))
    eid = to_deploy(h)
    h.fail(eid, "d1")
    assert h.x(eid).status == "Failed"
    err = h.error(
        c.OverrideCondition(executionId=eid, stageName="Deploy", conditionType="BEFORE_ENTRY")
    )
    assert err.message == (
        f"The beforeEntry condition of stage 'Deploy' in execution {eid} is Succeeded "
        "(execution Failed): only a condition in progress or one that failed the stage "
        "can be overridden"
    )


def test_a_retry_result_of_the_condition_itself_retries_failed_actions() -> None:
    failure = FailureConditions(conditions=[{"result": "RETRY", "rules": [vcheck("v", "x", "x")]}])
    h = harness(decl(failure=failure))
    eid = to_deploy(h)
    h.succeed(eid, "d1")
    envs = h.fail(eid, "d2")
    (r,) = of_type(envs, ev.StageRetryStarted)
    assert (r.retryMode, r.trigger) == ("FAILED_ACTIONS", "AutomatedStageRetry")
    assert len(h.attempts(eid, "d1")) == 1 and len(h.attempts(eid, "d2")) == 2


def test_override_problem_gives_the_condition_id_only_when_allowed() -> None:
    h = harness(decl(before=conds("FAIL", vcheck("v", "a", "b")), mode="PARALLEL"), TUESDAY_20H)
    eid = to_deploy(h)
    cid = h.x(eid).stages["Deploy"].conditions["BEFORE_ENTRY"]
    assert cond.override_problem(h.state, eid, "Deploy", "BEFORE_ENTRY") == (None, cid)
    for e, stage_name, ctype in (
        ("gone", "Deploy", "BEFORE_ENTRY"),
        (eid, "Deploy", "ON_SUCCESS"),
        (eid, "Post", "BEFORE_ENTRY"),
    ):
        problem, got = cond.override_problem(h.state, e, stage_name, ctype)
        assert problem is not None and got == ""
    h.update()
    problem, got = cond.override_problem(h.state, eid, "Deploy", "BEFORE_ENTRY")
    assert problem is not None and "updated" in problem.message and got == ""
    h2 = Harness()
    h2.now = TUESDAY_20H
    h2.create(decl(before=conds("FAIL", vcheck("v", "a", "b")), mode="PARALLEL"), limit=1)
    e1 = to_deploy(h2)
    start(h2)
    problem, got = cond.override_problem(h2.state, e1, "Deploy", "BEFORE_ENTRY")
    assert problem is not None and problem.type_name.startswith("Concurrent") and got == ""
    h3 = harness(decl(before=conds("FAIL", vcheck("v", "a", "b"))))
    e3 = to_deploy(h3)
    to_deploy(h3)
    problem, got = cond.override_problem(h3.state, e3, "Deploy", "BEFORE_ENTRY")
    assert problem is not None and problem.type_name.startswith("NotLatest") and got == ""
    h4 = harness(decl(before=conds("FAIL", vcheck("v", "a", "a"))))
    e4 = to_deploy(h4)
    problem, got = cond.override_problem(h4.state, e4, "Deploy", "BEFORE_ENTRY")
    assert problem is not None and "is Succeeded" in problem.message and got == ""


def test_all_actions_retry_of_a_stage_failed_at_entry_waits_for_the_entry_again() -> None:
    h = harness(decl(before=conds("FAIL", vcheck("v", "#{variables.Env}", "prod")), variables=VARS))
    eid = to_deploy(h, {"Env": "dev"})
    assert h.x(eid).status == "Failed"
    h.retry_now(eid, "Deploy", "ALL_ACTIONS")  # still dev: not met again
    x = h.x(eid)
    assert x.status == "Failed" and x.stages["Deploy"].status == "Failed"
    assert not [a for a in x.actions.values() if a.stageName == "Deploy"]
    assert len(of_type(h.log, ev.ConditionStarted)) == 2
    h.state.executions[eid].variables = {"Env": "prod"}
    h.retry_now(eid, "Deploy", "ALL_ACTIONS")
    assert len(h.attempts(eid, "d1")) == 1 and h.action(eid, "d1").status == "InProgress"


def test_the_stage_failed_event_before_on_failure_carries_the_reason() -> None:
    h = harness(decl(failure=_on_failure("RETRY", shell("check"))))
    eid = to_deploy(h)
    envs = h.fail(eid, "d1")
    (sf,) = of_type(envs, ev.StageFailed)
    assert (sf.stageName, sf.autoRetry) == ("Deploy", True)
    assert sf.reason is not None and "boom" in sf.reason
