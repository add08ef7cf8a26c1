"""Stage conditions and their rules: pure evaluation, called from a few places in decide.

A stage may declare one condition of each type (the service model's ``ConditionList`` holds
exactly one): ``beforeEntry`` (evaluated when an execution enters the stage, before its first
actions; not met: result ``FAIL`` or ``SKIP``), ``onSuccess`` (when every action of the stage
succeeded; not met: ``FAIL`` or ``ROLLBACK``) and ``onFailure.conditions`` (when the stage
failed; *met*: the onFailure result, ``RETRY`` or ``ROLLBACK``, applies, else the stage stays
failed). A condition is met when every one of its rules passes; it is not met as soon as one
fails. Each evaluation is event-sourced in the execution's stream: ``ConditionStarted``, one
``RuleExecutionScheduled`` per rule, each rule's result (``RuleExecutionSucceeded`` /
``RuleExecutionFailed``, or ``RuleExecutionDeferred`` while a deployment window is closed),
``ConditionEnded``; ``StageConditionOverridden`` when OverrideStageCondition lets the stage go.

Rule types the engine evaluates (owner ``AWS``, category ``Rule``, version ``1``):

- ``VariableCheck``: ``Variable`` and ``Value`` (variable references resolved with
  :mod:`app.domain.variables`) compared with ``Operator`` ``EQ`` / ``NE`` / ``CONTAINS`` /
  ``MATCHES`` (a regular expression matching the whole value); decided at once;
- ``DeploymentWindow``: ``Cron`` (AWS's 6 or 7 fields: seconds, minutes, hours, day of month,
  month, day of week 1-7 = SUN-SAT, optional year) in ``TimeZone`` (default UTC): passes when
  ``Ctx.now`` is inside a minute the expression names, else deferred to the next one;
- ``Commands``: shell ``commands`` run by a runner like a Commands action (``kind`` commands).

Every other rule type is refused when the pipeline is created or updated.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from croniter import CroniterBadCronError, croniter
from msgspec import Meta

from app.domain import commands as c
from app.domain import events as ev
from app.domain.errors import DomainError
from app.domain.model import JSONObject, PipelineDeclaration, StageDeclaration
from app.domain.state import ConditionRun, ExecutionState, PipelineState, RuleRun
from app.domain.variables import Lookup, UnresolvedVariable, execution_lookup, resolve

if TYPE_CHECKING:
    from collections.abc import Callable

    from app.domain.decide import Decision

ConditionType = ev.ConditionType

RULE_CATEGORY = "Rule"
RULE_OWNER = "AWS"
RULE_VERSION = "1"
VARIABLE_CHECK = "VariableCheck"
DEPLOYMENT_WINDOW = "DeploymentWindow"
COMMANDS = "Commands"
PROVIDERS = (VARIABLE_CHECK, DEPLOYMENT_WINDOW, COMMANDS)
OPERATORS = ("EQ", "NE", "CONTAINS", "MATCHES")

# the results each condition type allows (user guide, "Stage conditions")
RESULTS: dict[str, tuple[str, ...]] = {
    "BEFORE_ENTRY": ("FAIL", "SKIP"),
    "ON_SUCCESS": ("FAIL", "ROLLBACK"),
    "ON_FAILURE": ("RETRY", "ROLLBACK"),
}
DEFAULT_RESULT = {"BEFORE_ENTRY": "FAIL", "ON_SUCCESS": "FAIL"}
WHERE = {"BEFORE_ENTRY": "beforeEntry", "ON_SUCCESS": "onSuccess", "ON_FAILURE": "onFailure"}
WINDOW_SEARCH = 2000  # next cron times tried for one whose year the expression allows

RuleName = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9.@\-_]+\Z")]
RuleConfigKey = Annotated[str, Meta(min_length=1, max_length=50)]
RuleConfigValue = Annotated[str, Meta(min_length=1, max_length=10000)]
RuleCommand = Annotated[str, Meta(min_length=1, max_length=1000)]


class RuleTypeId(msgspec.Struct, frozen=True, omit_defaults=True):
    category: str
    provider: Annotated[str, Meta(min_length=1, max_length=35, pattern=r"^[0-9A-Za-z_-]+\Z")]
    owner: str | None = None
    version: Annotated[str, Meta(min_length=1, max_length=9)] | None = None


class RuleDeclaration(msgspec.Struct, frozen=True, omit_defaults=True):
    name: RuleName
    ruleTypeId: RuleTypeId
    configuration: Annotated[dict[RuleConfigKey, RuleConfigValue], Meta(max_length=200)] | None = (
        None
    )
    commands: Annotated[list[RuleCommand], Meta(min_length=1, max_length=50)] | None = None
    inputArtifacts: list[JSONObject] | None = None
    roleArn: str | None = None
    region: str | None = None
    timeoutInMinutes: Annotated[int, Meta(ge=5, le=86400)] | None = None


class Condition(msgspec.Struct, frozen=True, omit_defaults=True):
    rules: Annotated[list[RuleDeclaration], Meta(min_length=1, max_length=5)]
    result: Literal["ROLLBACK", "FAIL", "RETRY", "SKIP"] | None = None


class _Conditions(msgspec.Struct, frozen=True):
    conditions: Annotated[list[Condition], Meta(min_length=1, max_length=1)]


# --- declarations ----------------------------------------------------------------------------


def _raw(sdecl: StageDeclaration, ctype: str) -> object:
    if ctype == "BEFORE_ENTRY":
        return sdecl.beforeEntry
    if ctype == "ON_SUCCESS":
        return sdecl.onSuccess
    of = sdecl.onFailure
    if of is None or of.conditions is None:
        return None
    return {"conditions": of.conditions}


def parse(sdecl: StageDeclaration, ctype: str) -> Condition | None:
    """The stage's condition of that type; None when it declares none. Raises
    ``msgspec.ValidationError`` on a malformed one."""
    raw = _raw(sdecl, ctype)
    if raw is None:
        return None
    return msgspec.convert(raw, _Conditions).conditions[0]


def condition_of(sdecl: StageDeclaration, ctype: str) -> Condition | None:
    """The condition to evaluate (None: none, or one that does not parse: a declaration
    stored before conditions were checked, whose conditions were never evaluated)."""
    try:
        return parse(sdecl, ctype)
    except msgspec.ValidationError:
        return None


def result_of(sdecl: StageDeclaration, ctype: str, cond: Condition) -> str:
    """What engages: beforeEntry/onSuccess when the condition is not met, onFailure's when
    it is met (the condition's own result, else the onFailure result)."""
    if cond.result is not None:
        return cond.result
    if ctype == "ON_FAILURE":
        return (sdecl.onFailure.result if sdecl.onFailure else None) or "ROLLBACK"
    return DEFAULT_RESULT[ctype]


def _rule_problem(r: RuleDeclaration, where: str) -> str | None:
    t = r.ruleTypeId
    owner = t.owner or RULE_OWNER
    if (
        t.category != RULE_CATEGORY
        or owner != RULE_OWNER
        or t.provider not in PROVIDERS
        or (t.version or RULE_VERSION) != RULE_VERSION
    ):
        return (
            f"Rule declaration for rule '{r.name}' in {where} is invalid: RuleType "
            f"(Category: '{t.category}', Provider: '{t.provider}', Owner: '{owner}', Version: "
            f"'{t.version or RULE_VERSION}') is not available: stageline evaluates the AWS "
            "rules VariableCheck, DeploymentWindow and Commands (version 1)"
        )
    cfg = r.configuration or {}
    if t.provider == VARIABLE_CHECK:
        missing = [k for k in ("Variable", "Value", "Operator") if k not in cfg]
        if missing:
            return f"Rule '{r.name}' in {where}: VariableCheck needs {', '.join(missing)}"
        if cfg["Operator"] not in OPERATORS:
            return (
                f"Rule '{r.name}' in {where}: Operator '{cfg['Operator']}' is not one of "
                f"{', '.join(OPERATORS)}"
            )
        if cfg["Operator"] == "MATCHES" and "#{" not in cfg["Value"]:
            try:
                re.compile(cfg["Value"])
            except re.error as err:
                return f"Rule '{r.name}' in {where}: Value is not a regular expression: {err}"
    elif t.provider == DEPLOYMENT_WINDOW:
        if "Cron" not in cfg:
            return f"Rule '{r.name}' in {where}: DeploymentWindow needs Cron"
        try:
            Window.parse(cfg["Cron"], cfg.get("TimeZone"))
        except ValueError as err:
            return f"Rule '{r.name}' in {where}: {err}"
    elif not r.commands:
        return f"Rule '{r.name}' in {where}: Commands needs a non-empty 'commands'"
    return None


def check(decl: PipelineDeclaration) -> None:
    """Create/UpdatePipeline: every declared condition is well formed, allows its result, and
    has only rules stageline evaluates (``InvalidStageDeclarationException`` naming the rule)."""
    shape: list[str] = []
    rules: list[str] = []
    for sdecl in decl.stages:
        for ctype in RESULTS:
            where = f"the {WHERE[ctype]} condition of stage '{sdecl.name}'"
            try:
                cond = parse(sdecl, ctype)
            except msgspec.ValidationError as err:
                shape.append(f"{where} is malformed: {err}")
                continue
            if cond is None:
                continue
            result = result_of(sdecl, ctype, cond)
            if result not in RESULTS[ctype]:
                rules.append(
                    f"{where[0].upper()}{where[1:]} cannot have result {result} "
                    f"(allowed: {', '.join(RESULTS[ctype])})"
                )
            names = [r.name for r in cond.rules]
            if len(set(names)) != len(names):
                rules.append(f"{where[0].upper()}{where[1:]} has duplicate rule names")
            for r in cond.rules:
                problem = _rule_problem(r, where)
                if problem is not None:
                    rules.append(problem)
    if shape:
        raise DomainError("InvalidStructureException", "; ".join(shape))
    if rules:
        raise DomainError("InvalidStageDeclarationException", "; ".join(rules))


# --- rule evaluation (pure) ------------------------------------------------------------------


def variable_check(cfg: dict[str, str], lookup: Lookup) -> tuple[bool, str]:
    """``VariableCheck``: (passed, summary)."""
    op = cfg.get("Operator", "")
    try:
        actual = resolve(cfg.get("Variable", ""), lookup)
        expected = resolve(cfg.get("Value", ""), lookup)
    except UnresolvedVariable as err:
        return False, str(err)
    if op == "EQ":
        ok = actual == expected
    elif op == "NE":
        ok = actual != expected
    elif op == "CONTAINS":
        ok = expected in actual
    elif op == "MATCHES":
        try:
            ok = re.fullmatch(expected, actual) is not None
        except re.error as err:
            return False, f"Value {expected!r} is not a regular expression: {err}"
    else:
        return False, f"Operator {op!r} is not one of {', '.join(OPERATORS)}"
    verdict = "passed" if ok else "failed"
    return ok, f"{cfg.get('Variable', '')} is {actual!r}: {op} {expected!r} {verdict}"


_DOW_NUMBER = re.compile(r"(?<![#/\d])([1-7])(?!\d)")


class Window(msgspec.Struct, frozen=True):
    """A ``DeploymentWindow``: the cron expression as croniter reads it (minutes to day of
    week, days of week 0-6 from Sunday), the year field and the zone."""

    expr: str
    years: str
    zone: str

    @classmethod
    def parse(cls, cron: str, zone: str | None) -> Window:
        fields = cron.split()
        if len(fields) not in (6, 7):
            raise ValueError(
                f"Cron '{cron}' needs 6 fields (seconds minutes hours day-of-month month "
                "day-of-week) and an optional year"
            )
        _seconds, minute, hour, dom, month, dow = fields[:6]
        years = fields[6] if len(fields) == 7 else "*"
        dow = _DOW_NUMBER.sub(lambda m: str(int(m.group(1)) - 1), dow)
        expr = " ".join((minute, hour, dom, month, dow))
        if not croniter.is_valid(expr) or not _year_field_ok(years):
            raise ValueError(f"Cron '{cron}' is not a valid cron expression")
        tz = zone or "UTC"
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as err:
            raise ValueError(f"TimeZone '{tz}' is not a known time zone") from err
        return cls(expr, years, tz)

    def year_ok(self, year: int) -> bool:
        return _year_matches(self.years, year)

    def evaluate(self, now: float) -> tuple[bool, float | None]:
        """(open now, when it opens next: None when open or never)."""
        zone = ZoneInfo(self.zone)
        at = datetime.fromtimestamp(now, zone).replace(second=0, microsecond=0)
        try:
            if croniter.match(self.expr, at) and self.year_ok(at.year):
                return True, None
            it = croniter(self.expr, at)
            for _ in range(WINDOW_SEARCH):
                nxt: datetime = it.get_next(datetime)
                if self.year_ok(nxt.year):
                    return False, nxt.timestamp()
                year = next((y for y in range(nxt.year + 1, 2200) if self.year_ok(y)), None)
                if year is None:
                    return False, None
                # the first minute of the next allowed year, then on from there
                it = croniter(self.expr, datetime(year, 1, 1, tzinfo=zone) - timedelta(minutes=1))
        except (CroniterBadCronError, ValueError):
            return False, None
        return False, None


def _year_field_ok(field: str) -> bool:
    return all(re.fullmatch(r"\*|\d{4}(-\d{4})?(/\d+)?|\*/\d+", p) for p in field.split(","))


def _year_matches(field: str, year: int) -> bool:
    for part in field.split(","):
        rng, _, step_s = part.partition("/")
        step = int(step_s) if step_s else 1
        if rng == "*":
            lo, hi = 1970, 2199
        elif "-" in rng:
            a, b = rng.split("-")
            lo, hi = int(a), int(b)
        else:
            lo = int(rng)
            hi = lo if not step_s else 2199
        if lo <= year <= hi and (year - lo) % step == 0:
            return True
    return False


def deployment_window(cfg: dict[str, str], now: float) -> tuple[str, str, float | None]:
    """``DeploymentWindow`` at ``now``: ("Succeeded" | "Deferred" | "Failed", summary, until)."""
    try:
        w = Window.parse(cfg.get("Cron", ""), cfg.get("TimeZone"))
    except ValueError as err:
        return "Failed", str(err), None
    open_now, nxt = w.evaluate(now)
    if open_now:
        return "Succeeded", f"Inside the deployment window '{cfg['Cron']}' ({w.zone})", None
    if nxt is None:
        return "Failed", f"The deployment window '{cfg['Cron']}' never opens", None
    when = datetime.fromtimestamp(nxt, ZoneInfo(w.zone)).isoformat()
    return "Deferred", f"Waiting for the deployment window '{cfg['Cron']}': opens {when}", nxt


# --- the condition flow (inside a decision) --------------------------------------------------


def _sdecl(d: Decision, x: ExecutionState, stage: str) -> StageDeclaration:
    sdecl = d.decl(x).stage(stage)
    assert sdecl is not None
    return sdecl


def _resolved(d: Decision, x: ExecutionState, rule: RuleDeclaration) -> dict[str, str] | None:
    cfg = rule.configuration
    if cfg is None:
        return None
    lookup = execution_lookup(d.decl(x), x, d.s.name)
    out: dict[str, str] = {}
    for k, v in cfg.items():
        try:
            out[k] = resolve(v, lookup)
        except UnresolvedVariable:
            out[k] = v
    return out


def start(d: Decision, eid: str, stage: str, ctype: ConditionType) -> bool:
    """Evaluate the stage's condition of ``ctype`` if it declares one (True: the caller's
    flow stops here; what follows is decided when the condition ends)."""
    x = d.x(eid)
    sdecl = _sdecl(d, x, stage)
    cond = condition_of(sdecl, ctype)
    if cond is None:
        return False
    cid = d.ctx.new_id()
    d.emit(
        ev.ConditionStarted(
            executionId=eid,
            stageName=stage,
            conditionType=ctype,
            conditionExecutionId=cid,
            result=result_of(sdecl, ctype, cond),
        )
    )
    inline: list[str] = []
    for rule in cond.rules:
        rid = d.ctx.new_id()
        provider = rule.ruleTypeId.provider
        kind: Literal["engine", "commands"] = "commands" if provider == COMMANDS else "engine"
        x = d.x(eid)
        d.emit(
            ev.RuleExecutionScheduled(
                executionId=eid,
                stageName=stage,
                conditionExecutionId=cid,
                ruleName=rule.name,
                ruleExecutionId=rid,
                provider=provider,
                kind=kind,
                pipelineVersion=x.pipelineVersion,
                resolvedConfiguration=_resolved(d, x, rule),
            )
        )
        if kind == "engine":
            inline.append(rid)
    for rid in inline:
        evaluate(d, eid, rid)
    settle(d, eid, cid)
    return True


def rule_declaration(s: PipelineState, x: ExecutionState, r: RuleRun) -> RuleDeclaration | None:
    """The declaration a rule execution runs with (its execution's pipeline version)."""
    cond_run = x.conditions.get(r.conditionExecutionId)
    sdecl = s.declaration_for(x).stage(r.stageName)
    if cond_run is None or sdecl is None:
        return None
    cond = condition_of(sdecl, cond_run.conditionType)
    if cond is None:
        return None
    return next((rd for rd in cond.rules if rd.name == r.ruleName), None)


def evaluate(d: Decision, eid: str, rid: str) -> None:
    """An engine rule's verdict now (VariableCheck, DeploymentWindow)."""
    x = d.x(eid)
    r = x.rules[rid]
    rdecl = rule_declaration(d.s, x, r)
    cfg = (rdecl.configuration if rdecl is not None else None) or {}
    if rdecl is not None and r.provider == VARIABLE_CHECK:
        ok, summary = variable_check(cfg, execution_lookup(d.decl(x), x, d.s.name))
        if ok:
            d.emit(ev.RuleExecutionSucceeded(executionId=eid, ruleExecutionId=rid, summary=summary))
        else:
            d.emit(
                ev.RuleExecutionFailed(
                    executionId=eid,
                    ruleExecutionId=rid,
                    errorCode="VariableCheckFailed",
                    message=summary,
                )
            )
        return
    if rdecl is not None and r.provider == DEPLOYMENT_WINDOW:
        verdict, summary, until = deployment_window(cfg, d.ctx.now)
        if verdict == "Succeeded":
            d.emit(ev.RuleExecutionSucceeded(executionId=eid, ruleExecutionId=rid, summary=summary))
        elif verdict == "Deferred" and until is not None:
            if r.until != until:
                d.emit(
                    ev.RuleExecutionDeferred(
                        executionId=eid, ruleExecutionId=rid, until=until, summary=summary
                    )
                )
        else:
            d.emit(
                ev.RuleExecutionFailed(
                    executionId=eid,
                    ruleExecutionId=rid,
                    errorCode="DeploymentWindowInvalid",
                    message=summary,
                )
            )
        return
    d.emit(
        ev.RuleExecutionFailed(
            executionId=eid,
            ruleExecutionId=rid,
            errorCode="RuleTypeNotSupported",
            message=f"stageline does not evaluate {r.provider} rules",
        )
    )


def settle(d: Decision, eid: str, cid: str) -> None:
    """End the condition when its rules allow it (one failed, or all passed), then go on."""
    x = d.x(eid)
    cond = x.conditions.get(cid)
    if cond is None or cond.status != "InProgress":
        return
    run = x.stages.get(cond.stageName)
    if run is None or run.conditions.get(cond.conditionType) != cid:
        return
    if x.status != "InProgress":
        d.emit(
            ev.ConditionEnded(
                executionId=eid,
                stageName=cond.stageName,
                conditionExecutionId=cid,
                status="Abandoned",
                summary=f"The execution is {x.status}",
            )
        )
        d.progress(eid)
        return
    rules = [x.rules[r] for r in cond.rules]
    failed = next((r for r in rules if r.status in ("Failed", "Abandoned")), None)
    if failed is not None:
        status: ev.ConditionEndStatus = "Failed"
        summary = f"Rule '{failed.ruleName}' failed: {failed.errorMessage or failed.errorCode}"
    elif all(r.status == "Succeeded" for r in rules):
        status, summary = "Succeeded", f"All {len(rules)} rule(s) passed"
    else:
        return
    summary = summary[:2000]
    d.emit(
        ev.ConditionEnded(
            executionId=eid,
            stageName=cond.stageName,
            conditionExecutionId=cid,
            status=status,
            summary=summary,
        )
    )
    _after(d, eid, cond, status == "Succeeded", summary)


def _fail_for_good(d: Decision, eid: str, stage: str, reason: str) -> None:
    d.emit(ev.StageFailed(executionId=eid, stageName=stage, reason=reason))
    d.emit(ev.ExecutionFailed(executionId=eid, stageName=stage, reason=reason))
    d.admit(stage)


def rollback(d: Decision, eid: str, stage: str, why: str) -> None:
    """A condition's result is ROLLBACK: the execution fails in the stage and the stage is
    rolled back to the last execution that succeeded in it (app/domain/rollback.py)."""
    d.rollback_stage(eid, stage, reason=why)


def _after(d: Decision, eid: str, cond: ConditionRun, met: bool, summary: str) -> None:
    stage, ctype, result = cond.stageName, cond.conditionType, cond.result
    x = d.x(eid)
    if ctype == "BEFORE_ENTRY":
        if met:
            d.schedule_group(eid, stage, _sdecl(d, x, stage).run_orders()[0])
        elif result == "SKIP":
            d.succeed_stage(eid, stage, skipped=True)
        else:
            _fail_for_good(d, eid, stage, f"The beforeEntry condition was not met: {summary}")
        return
    if ctype == "ON_SUCCESS":
        if met:
            d.succeed_stage(eid, stage)
        elif result == "ROLLBACK":
            rollback(d, eid, stage, f"The onSuccess condition was not met: {summary}")
        else:
            d.fail_stage(eid, stage, f"The onSuccess condition was not met: {summary}")
        return
    # ON_FAILURE: met -> the onFailure result applies
    if not met:
        _fail_for_good(
            d, eid, stage, f"Stage '{stage}' failed; its onFailure condition was not met: {summary}"
        )
        return
    if result == "RETRY":
        mode = _sdecl(d, x, stage).auto_retry_mode() or "FAILED_ACTIONS"
        running = any(a.status == "InProgress" for a in x.latest_actions(stage))
        if mode == "FAILED_ACTIONS" or not running:
            d.start_retry(eid, stage, mode, "AutomatedStageRetry")
        return  # ALL_ACTIONS with actions still running: progress starts it when they end
    rollback(d, eid, stage, f"Stage '{stage}' failed and its onFailure condition was met")


def before_success(d: Decision, eid: str, stage: str) -> bool:
    """Every action of the stage succeeded: evaluate its onSuccess condition first (True:
    wait for it)."""
    x = d.x(eid)
    cid = x.stages[stage].conditions.get("ON_SUCCESS")
    if cid is not None:
        status = x.conditions[cid].status
        if status == "InProgress":
            return True
        if status in ("Succeeded", "Overridden"):
            return False
    return start(d, eid, stage, "ON_SUCCESS")


def on_failure(d: Decision, eid: str, stage: str, reason: str) -> bool:
    """The stage failed: its onFailure condition decides whether the onFailure result applies
    (True: being evaluated, the execution keeps the stage meanwhile)."""
    x = d.x(eid)
    sdecl = _sdecl(d, x, stage)
    cond = condition_of(sdecl, "ON_FAILURE")
    if cond is None or x.status != "InProgress":
        return False
    if result_of(sdecl, "ON_FAILURE", cond) == "RETRY" and x.stages[stage].autoRetries > 0:
        return False  # an automatic retry happens once per stage
    d.emit(ev.StageFailed(executionId=eid, stageName=stage, reason=reason, autoRetry=True))
    return start(d, eid, stage, "ON_FAILURE")


def failure_result_applies(x: ExecutionState, sdecl: StageDeclaration, stage: str) -> bool:
    """An automatic retry may start: no onFailure condition, or it was met."""
    if condition_of(sdecl, "ON_FAILURE") is None:
        return True
    cid = x.stages[stage].conditions.get("ON_FAILURE")
    return cid is not None and x.conditions[cid].status == "Succeeded"


def retry_entry(d: Decision, eid: str, stage: str) -> bool:
    """A retry of a stage its beforeEntry condition failed: evaluate that condition again."""
    x = d.x(eid)
    cid = x.stages[stage].conditions.get("BEFORE_ENTRY")
    if cid is None or x.conditions[cid].status != "Failed":
        return False
    # the condition that failed is declared in the execution's version (a retry after an
    # update is refused, declarations are kept): it starts again
    start(d, eid, stage, "BEFORE_ENTRY")
    return True


def evaluating(x: ExecutionState, stage: str) -> str | None:
    """The type of the stage's condition being evaluated now, if any."""
    run = x.stages.get(stage)
    if run is None:
        return None
    for ctype, cid in run.conditions.items():
        if x.conditions[cid].status == "InProgress":
            return ctype
    return None


def failed_by_condition(x: ExecutionState, stage: str) -> bool:
    """The stage failed because its beforeEntry or onSuccess condition was not met."""
    run = x.stages.get(stage)
    if run is None or run.status != "Failed":
        return False
    return any(
        x.conditions[cid].status == "Failed"
        for ctype, cid in run.conditions.items()
        if ctype != "ON_FAILURE"
    )


# --- commands --------------------------------------------------------------------------------


def _rule(d: Decision, eid: str, rid: str) -> tuple[ExecutionState, RuleRun] | None:
    x = d.s.lookup(eid)
    r = x.rules.get(rid) if x is not None else None
    if x is None or r is None:
        return None
    return x, r


def _start_rule(d: Decision, cmd: c.Command) -> None:
    assert isinstance(cmd, c.StartRule)
    found = _rule(d, cmd.executionId, cmd.ruleExecutionId)
    if found is None:
        raise DomainError("ActionNotRunnableException", f"No rule execution {cmd.ruleExecutionId}")
    x, r = found
    if r.status != "InProgress" or x.status != "InProgress":
        raise DomainError(
            "ActionNotRunnableException", f"Rule execution is {r.status} (execution {x.status})"
        )
    if r.worker is not None:
        if r.worker == cmd.worker:
            return
        raise DomainError("ActionNotRunnableException", f"Rule execution taken by {r.worker}")
    d.emit(
        ev.RuleExecutionStarted(
            executionId=cmd.executionId, ruleExecutionId=cmd.ruleExecutionId, worker=cmd.worker
        )
    )


def _complete_rule(d: Decision, cmd: c.Command) -> None:
    assert isinstance(cmd, c.CompleteRule)
    found = _rule(d, cmd.executionId, cmd.ruleExecutionId)
    if found is None:
        return
    _x, r = found
    if r.status != "InProgress":
        return  # ended already (or abandoned with its condition): a late result changes nothing
    if cmd.worker is not None and r.worker is not None and r.worker != cmd.worker:
        return
    eid, rid = cmd.executionId, cmd.ruleExecutionId
    if cmd.succeeded:
        d.emit(ev.RuleExecutionSucceeded(executionId=eid, ruleExecutionId=rid, summary=cmd.summary))
    else:
        d.emit(
            ev.RuleExecutionFailed(
                executionId=eid,
                ruleExecutionId=rid,
                errorCode=cmd.errorCode or "RuleFailed",
                message=(cmd.message or cmd.summary or "")[:5000],
            )
        )
    if cmd.consequences:
        settle(d, eid, r.conditionExecutionId)


def lose_rule(d: Decision, cmd: c.LoseAction) -> bool:
    """The reaper's LoseAction for a rule's lease (True when it was a rule)."""
    found = _rule(d, cmd.executionId, cmd.actionExecutionId)
    if found is None:
        return False
    _x, r = found
    if r.status == "InProgress" and (cmd.worker is None or r.worker == cmd.worker):
        _complete_rule(
            d,
            c.CompleteRule(
                executionId=cmd.executionId,
                ruleExecutionId=cmd.actionExecutionId,
                succeeded=False,
                errorCode=ev.WORKER_LOST,
                message=cmd.message,
                consequences=cmd.consequences,
            ),
        )
    return True


def _settle(d: Decision, cmd: c.Command) -> None:
    assert isinstance(cmd, c.SettleCondition)
    found = _rule(d, cmd.executionId, cmd.ruleExecutionId)
    if found is not None:
        settle(d, cmd.executionId, found[1].conditionExecutionId)


def _evaluate(d: Decision, cmd: c.Command) -> None:
    assert isinstance(cmd, c.EvaluateRule)
    found = _rule(d, cmd.executionId, cmd.ruleExecutionId)
    if found is None:
        return
    x, r = found
    cond = x.conditions.get(r.conditionExecutionId)
    if r.status != "InProgress" or r.kind != "engine" or cond is None:
        return
    if cond.status != "InProgress" or x.status != "InProgress":
        return
    if r.until is not None and d.ctx.now < r.until:
        return  # not due yet
    evaluate(d, cmd.executionId, cmd.ruleExecutionId)
    settle(d, cmd.executionId, r.conditionExecutionId)


def override_problem(
    s: PipelineState, eid: str, stage: str, ctype: str
) -> tuple[DomainError | None, str]:
    """OverrideStageCondition's checks, in order: (error or None, the condition's id)."""
    decl = s.require_declaration()
    if decl.stage(stage) is None:
        raise DomainError(
            "StageNotFoundException", f"Stage '{stage}' not found in pipeline '{s.name}'"
        )
    x = s.lookup(eid)
    if x is None:  # (PipelineExecutionNotFoundException is not among the operation's errors)
        return DomainError(
            "ConditionNotOverridableException",
            f"Pipeline execution '{eid}' not found in pipeline '{s.name}'",
        ), ""
    if decl.mode != "PARALLEL" and s.stageLatest.get(stage, eid) != eid:
        return DomainError(
            "NotLatestPipelineExecutionException",
            f"Stage '{stage}' has since been entered by execution {s.stageLatest[stage]}",
        ), ""
    run = x.stages.get(stage)
    cid = run.conditions.get(ctype) if run is not None else None
    cond = x.conditions.get(cid) if cid is not None else None
    if run is None or cond is None or cid is None:
        return DomainError(
            "ConditionNotOverridableException",
            f"Stage '{stage}' of execution {eid} has evaluated no {WHERE[ctype]} condition",
        ), ""
    if cond.status == "InProgress" and x.status == "InProgress":
        return None, cid
    if cond.status != "Failed" or run.status != "Failed" or x.status != "Failed":
        return DomainError(
            "ConditionNotOverridableException",
            f"The {WHERE[ctype]} condition of stage '{stage}' in execution {eid} is "
            f"{cond.status} (execution {x.status}): only a condition in progress or one that "
            "failed the stage can be overridden",
        ), ""
    if x.pipelineVersion != (decl.version or 1):
        return DomainError(
            "ConditionNotOverridableException",
            f"The pipeline was updated since execution {eid} started",
        ), ""
    if eid not in s.active and len(s.active) + 1 > s.concurrencyLimit:
        return DomainError(
            "ConcurrentPipelineExecutionsLimitExceededException",
            f"Pipeline '{s.name}' already has {len(s.active)} active executions "
            f"(limit {s.concurrencyLimit})",
        ), ""
    return None, cid


def _override(d: Decision, cmd: c.Command) -> None:
    assert isinstance(cmd, c.OverrideCondition)
    eid, stage, ctype = cmd.executionId, cmd.stageName, cmd.conditionType
    problem, cid = override_problem(d.s, eid, stage, ctype)
    if problem is not None:
        raise problem
    d.emit(
        ev.StageConditionOverridden(
            executionId=eid, stageName=stage, conditionType=ctype, conditionExecutionId=cid
        )
    )
    x = d.x(eid)
    if ctype == "BEFORE_ENTRY":
        d.schedule_group(eid, stage, _sdecl(d, x, stage).run_orders()[0])
    else:
        d.succeed_stage(eid, stage)


HANDLERS: dict[type[c.Command], Callable[[Decision, c.Command], None]] = {
    c.StartRule: _start_rule,
    c.CompleteRule: _complete_rule,
    c.SettleCondition: _settle,
    c.EvaluateRule: _evaluate,
    c.OverrideCondition: _override,
}
