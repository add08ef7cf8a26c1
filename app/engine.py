"""The engine's Python API: every user-facing operation, on top of the repository.

HTTP handlers, the CLI, workers and tests all call these methods; they return domain
objects (states, ids) and raise :class:`DomainError` with the CodePipeline error name.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from redis.asyncio import Redis

from app import queries as q
from app.domain import commands as c
from app.domain import events as ev
from app.domain.errors import DomainError
from app.domain.model import (
    ActionTypeId,
    PipelineDeclaration,
    StageRetryMode,
)
from app.domain.state import ActionExec, ExecutionState, PipelineState, fold
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
        audit_key: bytes | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys or Keys()
        self.store = EventStore(redis, self.keys, audit_key=audit_key)
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
        """The pipeline's head with the latest execution of each stage (what
        GetPipelineState shows); other executions are loaded on demand."""
        s = await self.repo.latest_state(name)
        if s.declaration is None:
            raise DomainError("PipelineNotFoundException", f"Pipeline '{name}' not found")
        return s

    async def full_state(self, name: str) -> PipelineState:
        """Every execution, folded from every stream of the pipeline: what a fresh replay
        gives. Its cost grows with the history (audits and tests; no command uses it)."""
        return fold(name, await self.store.read(name))

    async def head(self, name: str) -> PipelineState:
        """The pipeline's head alone (declarations, stage occupancy): no execution read."""
        s = await self.repo.load(name)
        s.require_declaration()
        return s

    async def pipeline_names(self) -> list[str]:
        names = []
        for name in await self.store.pipelines():
            if (await self.repo.load(name)).declaration is not None:
                names.append(name)
        return names

    async def pipeline_page(
        self, after: str | None, limit: int
    ) -> tuple[list[PipelineState], bool]:
        """Up to ``limit`` existing pipelines named after ``after``, in name order, and
        whether more follow. Only the heads of the page (and of deleted names met on the
        way, plus one more to know whether the list goes on) are loaded, not every one."""
        names = await self.store.pipelines()  # sorted; the partitions' name sets only
        start = bisect.bisect_right(names, after) if after is not None else 0
        page: list[PipelineState] = []
        for name in names[start:]:
            head = await self.repo.load(name)
            if head.declaration is None:
                continue  # deleted
            if len(page) == limit:
                return page, True
            page.append(head)
        return page, False

    async def _view(self, name: str, ids: list[str]) -> PipelineState:
        """A read-only state: the head and exactly the executions ``ids`` (in this order),
        read from their streams; the cache is not changed."""
        head = await self.head(name)
        view = msgspec.structs.replace(head, executions={}, absent=[], partial=True)
        await self.repo.load_executions(view, ids)
        return view

    async def list_pipeline_executions(
        self,
        name: str,
        *,
        max_results: int | None = None,
        next_token: str | None = None,
        succeeded_in_stage: str | None = None,
    ) -> dict[str, Any]:
        """ListPipelineExecutions over a window of the executions index: the execution the
        token points after, and as many older ones as the page needs."""
        head = await self.head(name)
        limit = q.limit_of(max_results)
        start = 0
        if next_token is not None:
            rank = await self.store.execution_rank(name, q.cursor_item(next_token))
            start = rank or 0
        need = limit + 2
        chosen: list[str] = []
        view = msgspec.structs.replace(head, executions={}, absent=[], partial=True)
        matching = 0
        while matching < need:
            ids = await self.store.execution_ids(name, start=start, count=max(need, 16))
            if not ids:
                break
            start += len(ids)
            await self.repo.load_executions(view, ids)
            for eid in ids:
                x = view.executions.get(eid)
                if x is None:
                    continue
                chosen.append(eid)
                if succeeded_in_stage is None or (
                    (run := x.stages.get(succeeded_in_stage)) is not None
                    and run.status == "Succeeded"
                ):
                    matching += 1
        view.executions = {eid: view.executions[eid] for eid in reversed(chosen)}
        return q.list_pipeline_executions(
            view,
            max_results=limit,
            next_token=next_token,
            succeeded_in_stage=succeeded_in_stage,
        )

    async def list_action_executions(
        self,
        name: str,
        *,
        execution_id: str | None = None,
        latest_in_execution: Mapping[str, Any] | None = None,
        max_results: int | None = None,
        next_token: str | None = None,
    ) -> dict[str, Any]:
        """ListActionExecutions: of one execution (read from its stream), or of the whole
        pipeline over a window of the action index (the item the token points after and as
        many older ones as the page needs)."""
        limit = q.limit_of(max_results)
        one = execution_id
        if latest_in_execution is not None:
            lid = latest_in_execution.get("pipelineExecutionId")
            one = lid if isinstance(lid, str) else one
        if one is not None:
            view = await self._view(name, [one])
        else:
            start = 0
            if next_token is not None:
                eid, _, aid = q.cursor_item(next_token).partition("/")
                start = await self.store.action_rank(name, eid, aid) or 0
            pairs = await self.store.action_ids(name, start=start, count=limit + 2)
            ids = list(dict.fromkeys(eid for eid, _ in reversed(pairs)))
            view = await self._view(name, ids)
        return q.list_action_executions(
            view,
            execution_id=execution_id,
            latest_in_execution=latest_in_execution,
            max_results=limit,
            next_token=next_token,
        )

    # --- executions --------------------------------------------------------------------------

    async def start_execution(
        self,
        name: str,
        origin: Origin = SYSTEM,
        *,
        client_request_token: str | None = None,
        trigger_detail: str | None = None,
        trigger_type: str = "StartPipelineExecution",
        variables: dict[str, str] | None = None,
        source_revisions: list[dict[str, str]] | None = None,
    ) -> str:
        eid = self.repo.new_id()
        out = await self.repo.execute(
            name,
            c.StartExecution(
                executionId=eid,
                clientRequestToken=client_request_token,
                triggerType=trigger_type,
                triggerDetail=trigger_detail or origin.actor,
                variables=variables,
                sourceRevisions=source_revisions,
            ),
            origin,
        )
        if not out.events and client_request_token is not None:
            found = await self.store.token_execution(name, client_request_token)
            assert found is not None
            return found
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

    async def disable_stage_transition(
        self,
        name: str,
        stage: str,
        transition_type: Literal["Inbound", "Outbound"],
        reason: str,
        origin: Origin = SYSTEM,
    ) -> None:
        """DisableStageTransition: executions reaching it wait (app/domain/transitions.py)."""
        await self.repo.execute(
            name,
            c.DisableStageTransition(
                stageName=stage, transitionType=transition_type, reason=reason
            ),
            origin,
        )

    async def enable_stage_transition(
        self,
        name: str,
        stage: str,
        transition_type: Literal["Inbound", "Outbound"],
        origin: Origin = SYSTEM,
    ) -> None:
        """EnableStageTransition: the waiting execution(s) go on in the same decision."""
        await self.repo.execute(
            name, c.EnableStageTransition(stageName=stage, transitionType=transition_type), origin
        )

    async def rollback_stage(
        self, name: str, stage: str, target_execution_id: str, origin: Origin = SYSTEM
    ) -> str:
        """RollbackStage: the new ROLLBACK execution's id (app/domain/rollback.py)."""
        eid = self.repo.new_id()
        out = await self.repo.execute(
            name,
            c.RollbackStage(
                rollbackExecutionId=eid, stageName=stage, targetExecutionId=target_execution_id
            ),
            origin,
        )
        for env in out.events:  # a repeated command returns the first run's execution
            if isinstance(env.event, ev.RollbackStarted):
                return env.event.executionId
        return eid

    async def execution(self, name: str, execution_id: str) -> tuple[PipelineState, ExecutionState]:
        s = await self.repo.load(name, [execution_id])
        s.require_declaration()
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
            s = await self.repo.load(ref.pipeline, [ref.executionId])
            x = s.executions.get(ref.executionId)
            a = x.actions.get(ref.actionExecutionId) if x is not None else None
            if x is None or a is None or a.status != "InProgress" or a.acknowledged:
                ended = x is None or a is None or a.status != "InProgress"
                await self.jobs.close(ref, finished=ended)
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
        s = await self.repo.load(ref.pipeline, [ref.executionId])
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
        revision: ev.ArtifactRevision | None = None,
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
                revision=revision,
            ),
            origin,
        )
        await self.jobs.close(j.ref, finished=True)

    # --- stage conditions (app/domain/conditions.py) --------------------------------------

    async def override_stage_condition(
        self,
        name: str,
        stage: str,
        execution_id: str,
        condition_type: Literal["BEFORE_ENTRY", "ON_SUCCESS"],
        origin: Origin = SYSTEM,
    ) -> None:
        """OverrideStageCondition: the waiting or failed condition lets the stage go on."""
        await self.repo.execute(
            name,
            c.OverrideCondition(
                executionId=execution_id, stageName=stage, conditionType=condition_type
            ),
            origin,
        )

    async def list_rule_executions(
        self,
        name: str,
        *,
        execution_id: str | None = None,
        max_results: int | None = None,
        next_token: str | None = None,
    ) -> dict[str, Any]:
        """ListRuleExecutions: of one execution, or of the pipeline's latest executions (a
        window of the executions index: the token's execution and as many older ones as
        the page needs, at least the newest 100)."""
        from app import condition_queries as cq

        limit = q.limit_of(max_results)
        if execution_id is not None:
            view = await self._view(name, [execution_id])
        else:
            start = 0
            if next_token is not None:
                eid, _, _ = q.cursor_item(next_token).partition("/")
                start = await self.store.execution_rank(name, eid) or 0
            ids = await self.store.execution_ids(name, start=start, count=max(limit + 2, 100))
            view = await self._view(name, list(reversed(ids)))
        return cq.list_rule_executions(
            view, execution_id=execution_id, max_results=limit, next_token=next_token
        )
