"""Read documents of stage conditions: GetPipelineState's condition states,
ListRuleExecutions and ListRuleTypes (shapes of the botocore model: StageConditionState,
ConditionState, RuleState, RuleExecution, RuleExecutionDetail, RuleType)."""

from __future__ import annotations

from typing import Any

from app import queries as q
from app.domain import conditions
from app.domain.errors import DomainError
from app.domain.state import ConditionRun, ExecutionState, PipelineState, RuleRun, StageRun

JSON = dict[str, Any]

_SUMMARY_MAX = 2048
_STATE_KEYS = {
    "BEFORE_ENTRY": "beforeEntryConditionState",
    "ON_SUCCESS": "onSuccessConditionState",
    "ON_FAILURE": "onFailureConditionState",
}


def _cut(text: str | None) -> str | None:
    return text[:_SUMMARY_MAX] if text else None


def _obj(**members: Any) -> JSON:
    return {k: v for k, v in members.items() if v is not None}


def _identity(actor: str | None) -> str | None:
    return actor if actor and actor.startswith("arn:") else None


def _rule_execution(r: RuleRun) -> JSON:
    errors = None
    if r.status == "Failed":
        errors = _obj(code=r.errorCode, message=_cut(r.errorMessage)) or None
    return _obj(
        ruleExecutionId=r.ruleExecutionId,
        status=r.status,
        summary=_cut(r.summary or (r.errorMessage if r.status == "Failed" else None)),
        lastStatusChange=r.lastUpdateTime,
        lastUpdatedBy=_identity(r.updatedBy),
        errorDetails=errors,
    )


def _condition_state(x: ExecutionState, cond: ConditionRun) -> JSON:
    return {
        "latestExecution": _obj(
            status=cond.status, summary=_cut(cond.summary), lastStatusChange=cond.lastUpdateTime
        ),
        "ruleStates": [
            {"ruleName": x.rules[rid].ruleName, "latestExecution": _rule_execution(x.rules[rid])}
            for rid in cond.rules
        ],
    }


def stage_condition_states(x: ExecutionState | None, run: StageRun | None) -> JSON:
    """The ``*ConditionState`` members of a StageState: the latest run of each condition
    type in the stage's latest execution."""
    if x is None or run is None:
        return {}
    out: JSON = {}
    for ctype, cid in run.conditions.items():
        cond = x.conditions.get(cid)
        if cond is None:
            continue
        out[_STATE_KEYS[ctype]] = {
            "latestExecution": _obj(status=cond.status, summary=_cut(cond.summary)),
            "conditionStates": [_condition_state(x, cond)],
        }
    return out


def _rule_detail(s: PipelineState, x: ExecutionState, r: RuleRun, region: str) -> JSON:
    rdecl = conditions.rule_declaration(s, x, r)
    type_id = (
        _obj(
            category=rdecl.ruleTypeId.category,
            owner=rdecl.ruleTypeId.owner or conditions.RULE_OWNER,
            provider=rdecl.ruleTypeId.provider,
            version=rdecl.ruleTypeId.version or conditions.RULE_VERSION,
        )
        if rdecl is not None
        else {"category": "Rule", "owner": "AWS", "provider": r.provider, "version": "1"}
    )
    decl = s.declaration_for(x)
    result = _obj(
        externalExecutionSummary=_cut(r.summary),
        errorDetails=_obj(code=r.errorCode, message=_cut(r.errorMessage)) or None,
    )
    return _obj(
        pipelineExecutionId=x.executionId,
        ruleExecutionId=r.ruleExecutionId,
        pipelineVersion=r.pipelineVersion,
        stageName=r.stageName,
        ruleName=r.ruleName,
        startTime=r.startTime,
        lastUpdateTime=r.lastUpdateTime,
        updatedBy=_identity(r.updatedBy),
        status=r.status,
        input=_obj(
            ruleTypeId=type_id,
            configuration=(rdecl.configuration if rdecl is not None else None) or {},
            resolvedConfiguration=r.resolvedConfiguration or {},
            roleArn=(rdecl.roleArn if rdecl is not None else None) or decl.roleArn,
            region=(rdecl.region if rdecl is not None else None) or region,
            inputArtifacts=[],
        ),
        output={"executionResult": result} if r.status != "InProgress" else None,
    )


def list_rule_executions(
    s: PipelineState,
    *,
    execution_id: str | None = None,
    max_results: int | None = None,
    next_token: str | None = None,
    region: str = q.DEFAULT_REGION,
) -> JSON:
    """ListRuleExecutionsOutput: every rule execution of the executions ``s`` holds (or of
    ``execution_id``), newest first, paged like ListActionExecutions."""
    s.require_declaration()
    limit = q.limit_of(max_results)
    if execution_id is not None:
        executions = [s.require_execution(execution_id)]
    else:
        executions = list(s.executions.values())
    pairs: list[tuple[float, tuple[ExecutionState, RuleRun]]] = [
        (r.startTime, (x, r)) for x in executions for r in x.rules.values()
    ]
    ordered = q._newest_first(pairs)
    page, token = q._paginate(
        s,
        "ListRuleExecutions",
        f"execution={execution_id or ''}",
        ordered,
        key=lambda xr: (f"{xr[0].executionId}/{xr[1].ruleExecutionId}", xr[1].startTime),
        limit=limit,
        next_token=next_token,
    )
    return _obj(
        ruleExecutionDetails=[_rule_detail(s, x, r, region) for x, r in page], nextToken=token
    )


def _prop(name: str, description: str, *, required: bool = True) -> JSON:
    return {
        "name": name,
        "required": required,
        "key": False,
        "secret": False,
        "queryable": False,
        "description": description,
        "type": "String",
    }


RULE_TYPES: list[JSON] = [
    {
        "id": {"category": "Rule", "owner": "AWS", "provider": provider, "version": "1"},
        "settings": {},
        "ruleConfigurationProperties": props,
        "inputArtifactDetails": {"minimumCount": 0, "maximumCount": maximum},
    }
    for provider, props, maximum in (
        (
            conditions.VARIABLE_CHECK,
            [
                _prop("Variable", "The variable (reference) to check, e.g. #{variables.Env}"),
                _prop("Value", "The value to compare it with (variable references allowed)"),
                _prop("Operator", "EQ, NE, CONTAINS or MATCHES (a regex matching the whole)"),
            ],
            0,
        ),
        (
            conditions.DEPLOYMENT_WINDOW,
            [
                _prop(
                    "Cron",
                    "When deployments are allowed: seconds minutes hours "
                    "day-of-month month day-of-week [year]",
                ),
                _prop(
                    "TimeZone", "The time zone of Cron (IANA name); UTC by default", required=False
                ),
            ],
            0,
        ),
        (conditions.COMMANDS, [], 1),
    )
]


def list_rule_types(owner: str | None = None, region: str | None = None) -> JSON:
    """ListRuleTypesOutput: the rule types stageline evaluates (all owned by AWS)."""
    if owner is not None and owner != conditions.RULE_OWNER:
        raise DomainError(
            "ValidationException",
            f"Value '{owner}' at 'ruleOwnerFilter' failed to satisfy constraint: Member must "
            "satisfy enum value set: [AWS]",
        )
    return {"ruleTypes": [dict(t) for t in RULE_TYPES]}
