"""The console's read models: JSON documents built from the engine's read side.

Everything here goes through :class:`app.engine.Engine` (``pipeline``, ``execution``,
``pipeline_names``), :mod:`app.queries` (the API's own output documents) and the pure
domain check :func:`app.domain.decide.retry_problem`, so a Retry button is enabled exactly
when ``RetryStageExecution`` would accept the call, and disabled with the service's reason
otherwise. The audit timeline is the execution's event log (:func:`app.audit.log.audit_log`).
"""

from __future__ import annotations

from typing import Any

from app import queries as q
from app.audit.log import audit_log
from app.domain.decide import retry_problem
from app.domain.errors import DomainError
from app.domain.state import ExecutionState, PipelineState
from app.engine import Engine

JSON = dict[str, Any]
MODES = ("FAILED_ACTIONS", "ALL_ACTIONS")
HISTORY = 25  # executions listed on the pipeline page


def retry_options(s: PipelineState, eid: str, stage: str) -> JSON:
    """``{mode: {"allowed": bool, "reason": str | None, "error": type | None}}``."""
    out: JSON = {}
    for mode in MODES:
        problem = retry_problem(s, eid, stage, mode)  # type: ignore[arg-type]
        out[mode] = {
            "allowed": problem is None,
            "reason": problem.message if problem is not None else None,
            "error": problem.type_name if problem is not None else None,
        }
    return out


def _approvals(x: ExecutionState, stage: str) -> list[JSON]:
    out = []
    for a in x.latest_actions(stage):
        if a.kind == "approval" and a.status == "InProgress" and a.token:
            out.append({"actionName": a.actionName, "token": a.token})
    return out


def _attempt(a: Any) -> JSON:
    return {
        "actionExecutionId": a.actionExecutionId,
        "status": a.status,
        "kind": a.kind,
        "startTime": a.startTime,
        "lastUpdateTime": a.lastUpdateTime,
        "summary": a.summary,
        "errorCode": a.errorCode,
        "errorMessage": a.errorMessage,
        "worker": a.worker,
        "externalExecutionId": a.externalExecutionId,
        "outputVariables": a.outputVariables,
        "updatedBy": a.updatedBy,
    }


def _attempts_by_action(x: ExecutionState, stage: str) -> dict[str, list[JSON]]:
    found: dict[str, list[Any]] = {}
    for a in x.actions.values():
        if a.stageName == stage:
            found.setdefault(a.actionName, []).append(a)
    return {
        name: [_attempt(a) for a in sorted(items, key=lambda a: a.startTime)]
        for name, items in found.items()
    }


async def pipelines(engine: Engine) -> JSON:
    rows = []
    for name in await engine.pipeline_names():
        try:
            s = await engine.pipeline(name)
        except DomainError:
            continue  # deleted meanwhile
        latest = None
        page = await engine.list_pipeline_executions(name, max_results=1)
        listed = page["pipelineExecutionSummaries"]
        if listed:
            latest = listed[0]
        rows.append(
            {
                "name": name,
                "version": (s.declaration.version if s.declaration else None) or 1,
                "updated": s.updated,
                "latest": latest,
                "stages": [st.name for st in s.declaration.stages] if s.declaration else [],
            }
        )
    return {"pipelines": rows}


async def pipeline(engine: Engine, name: str) -> JSON:
    s = await engine.pipeline(name)
    decl = s.require_declaration()
    state = q.get_pipeline_state(s)
    stages: list[JSON] = []
    for st_doc in state["stageStates"]:
        stage = st_doc["stageName"]
        latest = st_doc.get("latestExecution")
        extra: JSON = {"stageName": stage, "retry": None, "approvals": [], "attempts": {}}
        if latest is not None:
            eid = latest["pipelineExecutionId"]
            extra["retry"] = retry_options(s, eid, stage)
            x = s.executions.get(eid)
            if x is not None:
                extra["approvals"] = _approvals(x, stage)
                extra["attempts"] = {n: len(v) for n, v in _attempts_by_action(x, stage).items()}
        stages.append(extra)
    page = await engine.list_pipeline_executions(name, max_results=HISTORY)
    history = page["pipelineExecutionSummaries"]
    return {
        "name": name,
        "version": decl.version or 1,
        "executionMode": decl.mode or "SUPERSEDED",
        "streamVersion": s.version,
        "state": state,
        "console": stages,
        "executions": history,
    }


async def execution(engine: Engine, name: str, eid: str) -> JSON:
    s, x = await engine.execution(name, eid)
    decl = s.declaration_for(x)
    stages: list[JSON] = []
    for st in decl.stages:
        run = x.stages.get(st.name)
        attempts = _attempts_by_action(x, st.name)
        stages.append(
            {
                "stageName": st.name,
                "status": run.status if run is not None else None,
                "retryStageMetadata": (
                    {
                        "manualStageRetryAttempt": run.manualRetries,
                        "autoStageRetryAttempt": run.autoRetries,
                        "latestRetryTrigger": run.latestTrigger,
                        "pendingRetry": run.pendingRetry,
                    }
                    if run is not None
                    else None
                ),
                "retry": retry_options(s, eid, st.name) if run is not None else None,
                "approvals": _approvals(x, st.name),
                "actions": [
                    {"actionName": a.name, "attempts": attempts.get(a.name, [])} for a in st.actions
                ],
            }
        )
    doc = q.get_pipeline_execution(s, eid)["pipelineExecution"]
    return {
        "pipeline": name,
        "executionId": eid,
        "execution": doc,
        "status": x.status,
        "startTime": x.startTime,
        "lastUpdateTime": x.lastUpdateTime,
        "canStop": x.status == "InProgress",
        "stages": stages,
        "streamVersion": s.version,
    }


async def timeline(engine: Engine, name: str, eid: str) -> JSON:
    await engine.execution(name, eid)  # not found -> PipelineExecutionNotFoundException
    rows = []
    async for row in audit_log(engine.store, name, execution=eid):
        env = row.envelope
        rows.append(
            {
                "version": env.version,
                "time": env.time,
                "actor": env.actor,
                "claimed": env.claimed,
                "source": env.source,
                "requestId": env.requestId,
                "type": row.type,
                "stage": row.stage,
                "action": row.action,
                "attempt": row.attempt_label() or None,
                "status": row.status,
                "mode": row.mode,
                "detail": row.detail,
            }
        )
    return {"pipeline": name, "executionId": eid, "events": rows}
