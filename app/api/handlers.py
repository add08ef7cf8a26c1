"""CodePipeline operations: decoded input Struct + request context -> engine -> output dict.

Each handler is thin: it calls the :class:`~app.engine.Engine` (commands) or
:mod:`app.queries` (read models). Domain refusals become AWS errors with the same name.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from app import queries as q
from app.api import shapes as s
from app.api.errors import AwsError
from app.api.wire import Handler, RequestContext
from app.domain.errors import DomainError
from app.engine import Engine
from app.repository import Origin

JSON = dict[str, Any]


def _origin(ctx: RequestContext) -> Origin:
    """Who asked; an SDK retry of the same call (same invocation id) is the same command.

    The command id is namespaced by the verified actor. With auth off the actor is always
    ``anonymous``; the claimed (unverified) key id then only keeps two clients' invocation
    ids apart, which is all an idempotency key needs: it grants nothing.
    """
    command_id = None
    if ctx.invocation_id is not None:
        caller = ctx.actor
        if not ctx.authenticated and ctx.claimed_key is not None:
            caller = f"{ctx.actor}/{ctx.claimed_key}"
        command_id = f"sdk:{caller}:{ctx.invocation_id}"
    return Origin(
        actor=ctx.actor,
        requestId=ctx.request_id,
        correlationId=ctx.request_id,
        source=ctx.source,
        commandId=command_id,
    )


def _aws(fn: Callable[[Any, RequestContext], Awaitable[JSON]]) -> Handler:
    @functools.wraps(fn)
    async def wrapper(inp: Any, ctx: RequestContext) -> JSON:
        try:
            return await fn(inp, ctx)
        except DomainError as err:
            raise AwsError(err.type_name, err.message, err.status) from None

    return wrapper


def build_handlers(engine: Engine) -> dict[str, Handler]:
    h: dict[str, Callable[[Any, RequestContext], Awaitable[JSON]]] = {}

    # --- the heart -----------------------------------------------------------------------

    async def retry_stage_execution(inp: s.RetryStageExecutionInput, ctx: RequestContext) -> JSON:
        eid = await engine.retry_stage(
            inp.pipelineName, inp.stageName, inp.pipelineExecutionId, inp.retryMode, _origin(ctx)
        )
        return {"pipelineExecutionId": eid}

    # --- pipelines -----------------------------------------------------------------------

    async def create_pipeline(inp: s.CreatePipelineInput, ctx: RequestContext) -> JSON:
        st = await engine.create_pipeline(inp.pipeline, _origin(ctx))
        out = q.get_pipeline(st)
        return {"pipeline": out["pipeline"], "tags": msgspec.to_builtins(inp.tags or [])}

    async def get_pipeline(inp: s.GetPipelineInput, ctx: RequestContext) -> JSON:
        return q.get_pipeline(await engine.head(inp.name), version=inp.version)

    async def update_pipeline(inp: s.UpdatePipelineInput, ctx: RequestContext) -> JSON:
        await engine.head(inp.pipeline.name)
        st = await engine.update_pipeline(inp.pipeline, _origin(ctx))
        return {"pipeline": q.get_pipeline(st)["pipeline"]}

    async def delete_pipeline(inp: s.DeletePipelineInput, ctx: RequestContext) -> JSON:
        await engine.delete_pipeline(inp.name, _origin(ctx))
        return {}

    async def list_pipelines(inp: s.ListPipelinesInput, ctx: RequestContext) -> JSON:
        after: str | None = None
        if inp.nextToken is not None:
            try:
                after = base64.urlsafe_b64decode(inp.nextToken.encode()).decode()
            except (ValueError, UnicodeDecodeError):
                raise DomainError("InvalidNextTokenException", "invalid nextToken") from None
        limit = inp.maxResults or 1000
        page, more = await engine.pipeline_page(after, limit)
        out: JSON = {"pipelines": [q.pipeline_summary(st) for st in page]}
        if more and page:
            out["nextToken"] = base64.urlsafe_b64encode(page[-1].name.encode()).decode()
        return out

    # --- executions ----------------------------------------------------------------------

    async def start_pipeline_execution(
        inp: s.StartPipelineExecutionInput, ctx: RequestContext
    ) -> JSON:
        eid = await engine.start_execution(
            inp.name,
            _origin(ctx),
            client_request_token=inp.clientRequestToken,
            trigger_detail=ctx.actor,
        )
        return {"pipelineExecutionId": eid}

    async def stop_pipeline_execution(
        inp: s.StopPipelineExecutionInput, ctx: RequestContext
    ) -> JSON:
        await engine.stop_execution(
            inp.pipelineName,
            inp.pipelineExecutionId,
            abandon=bool(inp.abandon),
            reason=inp.reason,
            origin=_origin(ctx),
        )
        return {"pipelineExecutionId": inp.pipelineExecutionId}

    async def get_pipeline_execution(
        inp: s.GetPipelineExecutionInput, ctx: RequestContext
    ) -> JSON:
        st, _ = await engine.execution(inp.pipelineName, inp.pipelineExecutionId)
        return q.get_pipeline_execution(st, inp.pipelineExecutionId)

    async def list_pipeline_executions(
        inp: s.ListPipelineExecutionsInput, ctx: RequestContext
    ) -> JSON:
        succeeded_in = None
        if inp.filter is not None and inp.filter.succeededInStage is not None:
            succeeded_in = inp.filter.succeededInStage.stageName
        return await engine.list_pipeline_executions(
            inp.pipelineName,
            max_results=inp.maxResults,
            next_token=inp.nextToken,
            succeeded_in_stage=succeeded_in,
        )

    async def get_pipeline_state(inp: s.GetPipelineStateInput, ctx: RequestContext) -> JSON:
        return q.get_pipeline_state(await engine.pipeline(inp.name))

    async def list_action_executions(
        inp: s.ListActionExecutionsInput, ctx: RequestContext
    ) -> JSON:
        f = inp.filter
        return await engine.list_action_executions(
            inp.pipelineName,
            execution_id=f.pipelineExecutionId if f is not None else None,
            latest_in_execution=(
                msgspec.to_builtins(f.latestInPipelineExecution)
                if f is not None and f.latestInPipelineExecution is not None
                else None
            ),
            max_results=inp.maxResults,
            next_token=inp.nextToken,
        )

    # --- approvals -----------------------------------------------------------------------

    async def put_approval_result(inp: s.PutApprovalResultInput, ctx: RequestContext) -> JSON:
        out = await engine.put_approval(
            inp.pipelineName,
            inp.stageName,
            inp.actionName,
            inp.token,
            inp.result.status,
            inp.result.summary,
            _origin(ctx),
        )
        return {"approvedAt": out.events[0].time if out.events else ctx.received_at}

    # --- job workers ---------------------------------------------------------------------

    async def poll_for_jobs(inp: s.PollForJobsInput, ctx: RequestContext) -> JSON:
        found = await engine.poll_for_jobs(
            inp.actionTypeId, inp.maxBatchSize or 1, dict(inp.queryParam or {})
        )
        return {
            "jobs": [
                q.job_document(j.state, j.ref.executionId, j.ref.actionExecutionId) for j in found
            ]
        }

    async def acknowledge_job(inp: s.AcknowledgeJobInput, ctx: RequestContext) -> JSON:
        return {"status": await engine.acknowledge_job(inp.jobId, inp.nonce, _origin(ctx))}

    async def get_job_details(inp: s.GetJobDetailsInput, ctx: RequestContext) -> JSON:
        j = await engine.job(inp.jobId)
        return q.get_job_details(j.state, j.ref.executionId, j.ref.actionExecutionId)

    async def put_job_success_result(
        inp: s.PutJobSuccessResultInput, ctx: RequestContext
    ) -> JSON:
        d = inp.executionDetails
        await engine.put_job_result(
            inp.jobId,
            succeeded=True,
            summary=d.summary if d is not None else None,
            external_execution_id=d.externalExecutionId if d is not None else None,
            output_variables=dict(inp.outputVariables) if inp.outputVariables else None,
            origin=_origin(ctx),
        )
        return {}

    async def put_job_failure_result(
        inp: s.PutJobFailureResultInput, ctx: RequestContext
    ) -> JSON:
        f = inp.failureDetails
        await engine.put_job_result(
            inp.jobId,
            succeeded=False,
            error_code=f.type,
            message=f.message,
            summary=f.message,
            external_execution_id=f.externalExecutionId,
            origin=_origin(ctx),
        )
        return {}

    h.update(
        RetryStageExecution=retry_stage_execution,
        CreatePipeline=create_pipeline,
        GetPipeline=get_pipeline,
        UpdatePipeline=update_pipeline,
        DeletePipeline=delete_pipeline,
        ListPipelines=list_pipelines,
        StartPipelineExecution=start_pipeline_execution,
        StopPipelineExecution=stop_pipeline_execution,
        GetPipelineExecution=get_pipeline_execution,
        ListPipelineExecutions=list_pipeline_executions,
        GetPipelineState=get_pipeline_state,
        ListActionExecutions=list_action_executions,
        PutApprovalResult=put_approval_result,
        PollForJobs=poll_for_jobs,
        AcknowledgeJob=acknowledge_job,
        GetJobDetails=get_job_details,
        PutJobSuccessResult=put_job_success_result,
        PutJobFailureResult=put_job_failure_result,
    )
    return {name: _aws(fn) for name, fn in h.items()}
