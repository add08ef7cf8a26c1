"""CodePipeline operations: decoded input Struct + request context -> engine -> output dict.

Each handler is thin: it calls the :class:`~app.engine.Engine` (commands) or
:mod:`app.queries` (read models). Domain refusals become AWS errors with the same name.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from app import catalog as cat
from app import queries as q
from app.api import shapes as s
from app.api.errors import AwsError
from app.api.operations import Operations, check_tags
from app.api.wire import DEFAULT_ACCOUNT, Handler, RequestContext
from app.domain.errors import DomainError
from app.domain.model import aws_strict_problems, declaration_problems
from app.domain.triggers import trigger_problems
from app.engine import Engine
from app.queries import DEFAULT_REGION
from app.repository import Origin

JSON = dict[str, Any]


def _start_variables(given: list[s.PipelineVariable] | None) -> dict[str, str] | None:
    """StartPipelineExecution's ``variables`` as a map; a name given twice is refused."""
    if not given:
        return None
    out: dict[str, str] = {}
    for v in given:
        if v.name in out:
            raise AwsError("ValidationException", f"Pipeline variable '{v.name}' is given twice")
        out[v.name] = v.value
    return out


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
        claimed=ctx.claimed_key if not ctx.authenticated else None,
    )


_NOT_FOUND = re.compile(r"^Pipeline '(?P<name>.*)' not found$", re.S)


def _milliseconds(value: Any) -> Any:
    """Timestamps (the only floats in CodePipeline outputs) cut to milliseconds, as AWS."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _milliseconds(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_milliseconds(v) for v in value]
    return value


def not_found_message(name: str, account: str = DEFAULT_ACCOUNT) -> str:
    return f"Account '{account}' does not have a pipeline with name '{name}'"


def _aws(fn: Callable[[Any, RequestContext], Awaitable[JSON]], account: str) -> Handler:
    @functools.wraps(fn)
    async def wrapper(inp: Any, ctx: RequestContext) -> JSON:
        try:
            out: JSON = _milliseconds(await fn(inp, ctx))
            return out
        except DomainError as err:
            message = err.message
            m = _NOT_FOUND.match(message)
            if err.type_name == "PipelineNotFoundException" and m is not None:
                message = not_found_message(m["name"], account)
            raise AwsError(err.type_name, message, err.status) from None

    return wrapper


def build_handlers(
    engine: Engine,
    *,
    region: str = DEFAULT_REGION,
    account: str = DEFAULT_ACCOUNT,
    aws_strict: bool = False,
    webhook_base_url: str | None = None,
) -> dict[str, Handler]:
    """Every CodePipeline operation's handler. ``aws_strict`` adds AWS's source-stage rules
    (:func:`app.domain.model.aws_strict_problems`) to CreatePipeline/UpdatePipeline."""
    h: dict[str, Callable[[Any, RequestContext], Awaitable[JSON]]] = {}
    ops = Operations(
        engine, region=region, account=account, origin=_origin, webhook_base_url=webhook_base_url
    )

    async def check_declaration(decl: Any) -> None:
        problems = declaration_problems(decl)  # limits first, in every mode (as the engine)
        if problems:
            raise AwsError("InvalidStructureException", "; ".join(problems))
        if aws_strict:
            problems = aws_strict_problems(decl)
            if problems:
                raise AwsError("InvalidStructureException", problems[0])
        problems = trigger_problems(decl)  # V2 triggers (app/domain/triggers.py)
        if problems:
            raise AwsError("InvalidStructureException", problems[0])
        await ops.check_action_types(decl)

    # --- the heart -----------------------------------------------------------------------

    async def retry_stage_execution(inp: s.RetryStageExecutionInput, ctx: RequestContext) -> JSON:
        eid = await engine.retry_stage(
            inp.pipelineName, inp.stageName, inp.pipelineExecutionId, inp.retryMode, _origin(ctx)
        )
        return {"pipelineExecutionId": eid}

    # --- pipelines -----------------------------------------------------------------------

    async def create_pipeline(inp: s.CreatePipelineInput, ctx: RequestContext) -> JSON:
        tags = check_tags(inp.tags)
        if len(tags) > cat.MAX_TAGS:
            raise AwsError(
                "TooManyTagsException",
                f"The pipeline would have {len(tags)} tags; the limit is {cat.MAX_TAGS}",
            )
        await check_declaration(inp.pipeline)
        st = await engine.create_pipeline(inp.pipeline, _origin(ctx))
        await ops.tag_new_pipeline(inp.pipeline.name, tags)
        out = q.get_pipeline(st, region=region, account=account)
        result: JSON = {"pipeline": out["pipeline"]}
        if tags:
            result["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
        return result

    async def get_pipeline(inp: s.GetPipelineInput, ctx: RequestContext) -> JSON:
        return q.get_pipeline(
            await engine.head(inp.name), version=inp.version, region=region, account=account
        )

    async def update_pipeline(inp: s.UpdatePipelineInput, ctx: RequestContext) -> JSON:
        try:
            await engine.head(inp.pipeline.name)
        except DomainError:  # PipelineNotFoundException is not among UpdatePipeline's errors
            raise AwsError(
                "ValidationException", not_found_message(inp.pipeline.name, account)
            ) from None
        await check_declaration(inp.pipeline)
        st = await engine.update_pipeline(inp.pipeline, _origin(ctx))
        return {"pipeline": q.get_pipeline(st, region=region, account=account)["pipeline"]}

    async def delete_pipeline(inp: s.DeletePipelineInput, ctx: RequestContext) -> JSON:
        try:
            resource: str | None = await ops.pipeline_resource(inp.name)
        except DomainError:
            resource = None  # DeletePipeline of a missing pipeline: the engine answers
        await engine.delete_pipeline(inp.name, _origin(ctx))
        if resource is not None:
            await ops.forget_pipeline(resource)
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
            variables=_start_variables(inp.variables),
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
        await ops.check_custom_type(inp.actionTypeId)
        found = await engine.poll_for_jobs(
            inp.actionTypeId, inp.maxBatchSize or 1, dict(inp.queryParam or {})
        )
        return {
            "jobs": [
                q.job_document(
                    j.state,
                    j.ref.executionId,
                    j.ref.actionExecutionId,
                    account=account,
                    region=region,
                )
                for j in found
            ]
        }

    async def acknowledge_job(inp: s.AcknowledgeJobInput, ctx: RequestContext) -> JSON:
        return {"status": await engine.acknowledge_job(inp.jobId, inp.nonce, _origin(ctx))}

    async def get_job_details(inp: s.GetJobDetailsInput, ctx: RequestContext) -> JSON:
        j = await engine.job(inp.jobId)
        return q.get_job_details(
            j.state, j.ref.executionId, j.ref.actionExecutionId, account=account, region=region
        )

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
    h.update(ops.handlers())
    return {name: _aws(fn, account) for name, fn in h.items()}
