"""The engine's Python API: every user-facing operation, on top of the repository.

HTTP handlers, the CLI, workers and tests all call these methods; they return domain
objects (states, ids) and raise :class:`DomainError` with the CodePipeline error name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from redis.asyncio import Redis

from app.domain import commands as c
from app.domain import events as ev
from app.domain.errors import DomainError
from app.domain.model import (
    ActionTypeId,
    PipelineDeclaration,
    StageRetryMode,
)
from app.domain.state import ActionExec, ExecutionState, PipelineState
from app.jobs import JobIndex, JobRef
from app.repository import SYSTEM, Origin, Outcome, PipelineRepository
from app.store.eventstore import EventStore
from app.store.keys import Keys

MAX_POLL_BATCH = 100  # jobs returned by one PollForJobs at most


@dataclass(frozen=True)
class OpenJob:
    ref: JobRef
    state: PipelineState
    execution: ExecutionState
    action: ActionExec


class Engine:
    def __init__(
        self,
        redis: Redis,
        keys: Keys | None = None,
        *,
        concurrency_limit: int = 50,
        repository: PipelineRepository | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys or Keys()
        self.store = EventStore(redis, self.keys)
        self.repo = repository or PipelineRepository(self.store)
        self.jobs = JobIndex(redis, self.keys)
        self.concurrency_limit = concurrency_limit

    async def start(self) -> None:
        await self.store.ensure_config()

    # --- pipelines ---------------------------------------------------------------------------

    async def create_pipeline(
        self, decl: PipelineDeclaration, origin: Origin = SYSTEM
    ) -> PipelineState:
        out = await self.repo.execute(
            decl.name,
            c.CreatePipeline(declaration=decl, concurrencyLimit=self.concurrency_limit),
            origin,
        )
        return out.state

    async def update_pipeline(
        self, decl: PipelineDeclaration, origin: Origin = SYSTEM
    ) -> PipelineState:
        return (
            await self.repo.execute(decl.name, c.UpdatePipeline(declaration=decl), origin)
        ).state

    async def delete_pipeline(self, name: str, origin: Origin = SYSTEM) -> None:
        await self.repo.execute(name, c.DeletePipeline(), origin)

    async def pipeline(self, name: str) -> PipelineState:
        s = await self.repo.load(name)
        if s.declaration is None:
            raise DomainError("PipelineNotFoundException", f"Pipeline '{name}' not found")
        return s

    async def pipeline_names(self) -> list[str]:
        names = []
        for name in await self.store.pipelines():
            if (await self.repo.load(name)).declaration is not None:
                names.append(name)
        return names

    # --- executions --------------------------------------------------------------------------

    async def start_execution(
        self,
        name: str,
        origin: Origin = SYSTEM,
        *,
        client_request_token: str | None = None,
        trigger_detail: str | None = None,
    ) -> str:
        eid = self.repo.new_id()
        out = await self.repo.execute(
            name,
            c.StartExecution(
                executionId=eid,
                clientRequestToken=client_request_token,
                triggerDetail=trigger_detail or origin.actor,
            ),
            origin,
        )
        if not out.events and client_request_token is not None:
            return out.state.tokens[client_request_token]
        for env in out.events:  # a repeated command returns the first run's execution
            if isinstance(env.event, ev.ExecutionStarted):
                return env.event.executionId
        return eid

    async def stop_execution(
        self,
        name: str,
        execution_id: str,
        *,
        abandon: bool = False,
        reason: str | None = None,
        origin: Origin = SYSTEM,
    ) -> Outcome:
        return await self.repo.execute(
            name, c.StopExecution(executionId=execution_id, abandon=abandon, reason=reason), origin
        )

    async def retry_stage(
        self,
        name: str,
        stage: str,
        execution_id: str,
        mode: StageRetryMode,
        origin: Origin = SYSTEM,
    ) -> str:
        """RetryStageExecution: checks 2-8 and, when accepted, records the request."""
        await self.repo.execute(
            name,
            c.RetryStage(executionId=execution_id, stageName=stage, retryMode=mode),
            origin,
        )
        return execution_id

    async def execution(self, name: str, execution_id: str) -> tuple[PipelineState, ExecutionState]:
        s = await self.pipeline(name)
        return s, s.require_execution(execution_id)

    # --- approvals ---------------------------------------------------------------------------

    async def put_approval(
        self,
        name: str,
        stage: str,
        action: str,
        token: str,
        status: Literal["Approved", "Rejected"],
        summary: str = "",
        origin: Origin = SYSTEM,
    ) -> Outcome:
        return await self.repo.execute(
            name,
            c.PutApproval(
                stageName=stage, actionName=action, token=token, status=status, summary=summary
            ),
            origin,
        )

    # --- jobs (custom actions) ---------------------------------------------------------------

    async def poll_for_jobs(
        self,
        action_type: ActionTypeId,
        max_batch: int = 1,
        query: dict[str, str] | None = None,
    ) -> list[OpenJob]:
        # The model gives maxBatchSize no maximum; the client's number must not reach Redis
        # unbounded (ZRANGE's stop is an int64): "up to maxBatchSize" jobs, at most 100.
        max_batch = min(max(max_batch, 1), MAX_POLL_BATCH)
        found: list[OpenJob] = []
        for ref in await self.jobs.open_jobs(action_type.key, max_batch * 4 + 16):
            s = await self.repo.load(ref.pipeline)
            x = s.executions.get(ref.executionId)
            a = x.actions.get(ref.actionExecutionId) if x is not None else None
            if x is None or a is None or a.status != "InProgress" or a.acknowledged:
                await self.jobs.close(ref)
                continue
            if query:
                adecl = s.action_declaration(x, a.stageName, a.actionName)
                config = (adecl.configuration or {}) if adecl is not None else {}
                if any(config.get(k) != v for k, v in query.items()):
                    continue
            found.append(OpenJob(ref, s, x, a))
            if len(found) >= max_batch:
                break
        return found

    async def job(self, job_id: str) -> OpenJob:
        ref = await self.jobs.locate(job_id)
        if ref is None:
            raise DomainError("JobNotFoundException", f"Job {job_id} not found")
        s = await self.repo.load(ref.pipeline)
        x = s.executions.get(ref.executionId)
        a = x.actions.get(ref.actionExecutionId) if x is not None else None
        if x is None or a is None:
            raise DomainError("JobNotFoundException", f"Job {job_id} not found")
        return OpenJob(ref, s, x, a)

    async def acknowledge_job(self, job_id: str, nonce: str, origin: Origin = SYSTEM) -> str:
        j = await self.job(job_id)
        await self.repo.execute(
            j.ref.pipeline,
            c.AcknowledgeJob(
                executionId=j.ref.executionId,
                actionExecutionId=j.ref.actionExecutionId,
                jobId=job_id,
                nonce=nonce,
            ),
            origin,
        )
        await self.jobs.close(j.ref)
        return "InProgress"

    async def put_job_result(
        self,
        job_id: str,
        *,
        succeeded: bool,
        summary: str | None = None,
        error_code: str | None = None,
        message: str | None = None,
        external_execution_id: str | None = None,
        output_variables: dict[str, str] | None = None,
        origin: Origin = SYSTEM,
    ) -> None:
        j = await self.job(job_id)
        await self.repo.execute(
            j.ref.pipeline,
            c.CompleteAction(
                executionId=j.ref.executionId,
                actionExecutionId=j.ref.actionExecutionId,
                succeeded=succeeded,
                summary=summary,
                errorCode=error_code,
                message=message,
                externalExecutionId=external_execution_id,
                outputVariables=output_variables,
                jobId=job_id,
            ),
            origin,
        )
        await self.jobs.close(j.ref)

