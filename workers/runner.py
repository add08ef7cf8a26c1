"""Runner role: runs the actions the engine runs itself, under a lease.

For each entry of a partition's run queue: take the lease, record ``ActionExecutionStarted``
(refused if anyone already took the action: it never runs twice), run it while renewing the
lease, record the result. Runners keep no state: the start and the result are decided on
the scheduled action itself and appended against that action's last event, so runners of
sibling actions never conflict; the partition's owner then decides what follows. A runner
that dies stops renewing; the partition owner's reaper then fails the action as
WorkerLost. An action this same worker name had started before a restart is recorded as
lost too, not run again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import anyio
import msgspec

from app.artifacts.store import ArtifactStore, store_for
from app.domain import commands as c
from app.domain import events as ev
from app.domain.artifacts import ArtifactLocation
from app.domain.errors import DomainError
from app.domain.model import ActionDeclaration
from app.domain.state import ActionExec, ExecutionState, PipelineState, StageRun
from app.engine import Engine
from app.repository import Leasing, Origin, Outcome, new_uuid
from workers import persist, rules
from workers.config import WorkerConfig
from workers.consumer import REDIS_DOWN, Entry
from workers.leases import Lease, Leases
from workers.runners.commands_action import ActionSettings, action_watch, run_commands_job

log = logging.getLogger("stageline.runner")


@dataclass(frozen=True)
class ActionJob:
    """What an action runner gets: the action's declaration and where it runs."""

    pipeline: str
    stage: str
    executionId: str
    actionExecutionId: str
    declaration: ActionDeclaration
    tail_bytes: int
    attempt: int | None = None  # 1 for the first run of this action in its execution
    engine: Engine | None = None  # where the action's log goes (none: no log)
    config: WorkerConfig | None = None
    # name -> location, in declaration order (resolved when the action was scheduled)
    inputArtifacts: Mapping[str, ArtifactLocation] | None = None
    store: ArtifactStore | None = None  # where its output artifacts go


@dataclass(frozen=True)
class ActionResult:
    succeeded: bool
    summary: str | None = None
    errorCode: str | None = None
    message: str | None = None
    outputVariables: dict[str, str] | None = None
    outputArtifacts: dict[str, ArtifactLocation] | None = None


ActionRunner = Callable[[ActionJob], Awaitable[ActionResult]]


async def run_commands_action(job: ActionJob) -> ActionResult:
    """``AWS/Compute/Commands/1``: one shell session, isolated, its output logged
    (:mod:`workers.runners.commands_action`)."""
    settings = job.config.actions if job.config is not None else ActionSettings()
    out = await run_commands_job(
        pipeline=job.pipeline,
        stage=job.stage,
        execution_id=job.executionId,
        action_execution_id=job.actionExecutionId,
        attempt=job.attempt,
        declaration=job.declaration,
        tail_bytes=job.tail_bytes,
        settings=settings,
        redis=job.engine.redis if job.engine is not None else None,
        keys=job.engine.keys if job.engine is not None else None,
        still_wanted=action_watch(job.engine, job.pipeline, job.executionId, job.actionExecutionId)
        if job.engine is not None
        else None,
        input_artifacts=job.inputArtifacts,
        store=job.store,
    )
    return ActionResult(
        out.succeeded,
        out.summary,
        out.error_code,
        out.message,
        outputVariables=out.output_variables,
        outputArtifacts=out.output_artifacts,
    )


DEFAULT_RUNNERS: Mapping[str, ActionRunner] = {"commands": run_commands_action}


def resolved_declaration(a: ActionDeclaration, e: ev.ActionExecutionScheduled) -> ActionDeclaration:
    """The action's declaration with the values resolved when it was scheduled (the event
    holds each part only when a variable reference changed it)."""
    changes: dict[str, object] = {}
    if e.resolvedConfiguration is not None:
        changes["configuration"] = dict(e.resolvedConfiguration)
    if e.resolvedCommands is not None:
        changes["commands"] = list(e.resolvedCommands)
    if e.resolvedEnvironment is not None and a.environmentVariables:
        env = e.resolvedEnvironment
        changes["environmentVariables"] = [
            msgspec.structs.replace(v, value=env[v.name]) if v.name in env else v
            for v in a.environmentVariables
        ]
    return msgspec.structs.replace(a, **changes) if changes else a


class Runner:
    def __init__(
        self,
        engine: Engine,
        leases: Leases,
        config: WorkerConfig,
        runners: Mapping[str, ActionRunner] | None = None,
    ) -> None:
        self.engine = engine
        self.leases = leases
        self.config = config
        self.runners = dict(runners or DEFAULT_RUNNERS)
        self.running: dict[str, Lease] = {}
        self.ack: Callable[[Entry], Awaitable[None]] | None = None
        self.acked: set[tuple[str, str]] = set()  # acknowledged early by ``handle``

    def acked_early(self, entry: Entry) -> bool:
        """Whether ``handle`` acknowledged the entry itself (forgets it: asked once)."""
        key = (entry.stream, entry.id)
        if key in self.acked:
            self.acked.discard(key)
            return True
        return False

    @property
    def name(self) -> str:
        return self.config.name

    def origin(self, env: ev.Envelope) -> Origin:
        return persist.caused_by(self.name, env)

    async def handle(self, entry: Entry) -> None:
        pipeline = entry.text("p")
        env = ev.decode_payload(pipeline, int(entry.text("v")), entry.fields["e"])
        e = env.event
        if isinstance(e, ev.RuleExecutionScheduled):  # a stage condition's Commands rule
            await rules.run_rule(self, entry, env)
            return
        if not isinstance(e, ev.ActionExecutionScheduled) or e.actionExecutionId in self.running:
            return
        lease = Lease(pipeline, e.executionId, e.actionExecutionId, self.name)
        taken = anyio.current_time()
        # A command id tells "my own attempt got through before the connection dropped"
        # apart from "this worker name started it before a restart".
        start_id = f"start:{e.actionExecutionId}:{new_uuid()}"
        start = c.StartAction(
            executionId=e.executionId, actionExecutionId=e.actionExecutionId, worker=self.name
        )
        try:
            # the lease is taken in the same atomic append that records the start
            out = await self._attempt(env, start, start_id, leases=([self.leases.entry(lease)], []))
        except DomainError as err:
            await self.leases.release(lease)
            if err.type_name == persist.CONFLICT:
                raise  # nothing decided: the entry stays pending and is delivered again
            log.debug("not running %s: %s", e.actionExecutionId, err.message)
            return
        if not out.events and not await self.engine.store.command_seen(pipeline, start_id):
            # This worker name had started it before (a restart): it may have half run.
            await self._lose(env, lease, "worker restarted while the action was running")
            return
        if self.ack is not None:
            # recorded as started: from now on the lease protects it (should the ack not
            # reach Redis, a redelivery is refused: the action is taken)
            with contextlib.suppress(*REDIS_DOWN):
                await self.ack(entry)
                self.acked.add((entry.stream, entry.id))
        self.running[e.actionExecutionId] = lease
        try:
            await self._run_leased(env, e, lease, out.state, taken)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._lose(env, lease, "worker shut down before the action finished")
            raise
        finally:
            self.running.pop(e.actionExecutionId, None)

    async def _minimal(self, env: ev.Envelope) -> PipelineState | None:
        """The action as it was scheduled (the run entry), with its declaration: all a
        runner's own start and result depend on. None when that is not enough to go on
        (an event of an older release without the pipeline version)."""
        e = env.event
        assert isinstance(e, ev.ActionExecutionScheduled)
        version = e.pipelineVersion
        if version is None:
            return None
        repo = self.engine.repo
        head = repo.cached(env.pipeline)
        if head is None or version not in head.declarations:
            head = await repo.load(env.pipeline)
        decl = head.declarations.get(version)
        if decl is None:
            return None
        x = ExecutionState(
            executionId=e.executionId,
            pipelineVersion=version,
            startTime=env.time,
            lastUpdateTime=env.time,
        )
        x.stages[e.stageName] = StageRun(
            name=e.stageName, group=e.runOrder, latest={e.actionName: e.actionExecutionId}
        )
        x.actions[e.actionExecutionId] = ActionExec(
            actionExecutionId=e.actionExecutionId,
            stageName=e.stageName,
            actionName=e.actionName,
            runOrder=e.runOrder,
            pipelineVersion=version,
            startTime=env.time,
            lastUpdateTime=env.time,
            kind=e.kind,
            seq=env.version,
        )
        return PipelineState(
            name=env.pipeline,
            declaration=decl,
            declarations={version: decl},
            partial=True,
            absent=[],
            executions={e.executionId: x},
        )

    async def _attempt(
        self,
        env: ev.Envelope,
        cmd: c.Command,
        command_id: str | None = None,
        state: PipelineState | None = None,
        leases: Leasing | None = None,
    ) -> Outcome:
        """A runner's own start or result, appended at execution level against the action's
        last event (siblings never conflict). Decided first on what the runner knows (the
        scheduled action, or its state after the start); when the action changed meanwhile,
        on a fresh read through the repository."""
        s = state if state is not None else await self._minimal(env)
        return await persist.execute(
            self.engine.repo,
            env.pipeline,
            cmd,
            self.origin(env),
            command_id=command_id,
            assume=s,
            leases=leases,
        )

    async def _run_leased(
        self,
        env: ev.Envelope,
        e: ev.ActionExecutionScheduled,
        lease: Lease,
        s: PipelineState,
        taken: float | None = None,
    ) -> None:
        x = s.executions[e.executionId]
        job = self._job(env.pipeline, s, x, e)
        runner = self.runners.get(e.kind)
        lost = False
        result: ActionResult | None = None
        recorded: Outcome | None = None
        # a start quicker than a third of the lease cannot have outlived it: no round trip;
        # one slower than the whole lease wrote a lease already expired: never run on it
        took = anyio.current_time() - taken if taken is not None else self.leases.ttl_s
        quick = took < self.leases.ttl_s / 3
        try:
            alive = quick or (took < self.leases.ttl_s and await self.leases.renew(lease))
        except REDIS_DOWN:
            alive = True  # the heartbeat checks again
        if not alive:
            # starting took longer than the lease: the reaper may have declared it lost
            await self._lose(env, lease, "the lease expired before the action started")
            return
        async with anyio.create_task_group() as tg:

            async def heartbeat() -> None:
                nonlocal lost
                while True:
                    await anyio.sleep(self.leases.ttl_s / 3)
                    try:
                        alive = await self.leases.renew(lease)
                    except REDIS_DOWN as err:  # keep running; renew when Redis is back
                        log.warning("renewing the lease of %s: %s", e.actionExecutionId, err)
                        continue
                    if not alive:
                        lost = True
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(heartbeat)
            if job is None or runner is None:
                result = ActionResult(
                    False, errorCode="ActionTypeNotSupported", message="no runner for this action"
                )
            else:
                try:
                    result = await runner(job)
                except Exception as err:  # a runner bug must not kill the worker
                    log.exception("runner for %s crashed", e.actionExecutionId)
                    result = ActionResult(
                        False, errorCode="RunnerError", message=f"{type(err).__name__}: {err}"
                    )
            # recorded while the heartbeat still renews the lease (the append may have to
            # wait for Redis to come back); the partition's owner decides what follows
            recorded = await self._attempt(
                env,
                c.CompleteAction(
                    executionId=e.executionId,
                    actionExecutionId=e.actionExecutionId,
                    succeeded=result.succeeded,
                    summary=result.summary,
                    errorCode=result.errorCode,
                    message=result.message,
                    worker=self.name,
                    consequences=False,
                    outputVariables=result.outputVariables if result.succeeded else None,
                    outputArtifacts=result.outputArtifacts if result.succeeded else None,
                ),
                state=s,
                leases=([], [lease.member]),  # released with the result, atomically
            )
            tg.cancel_scope.cancel()
        if lost:
            log.warning("lease of %s was lost; its result is not recorded", e.actionExecutionId)
            # normally the reaper recorded it already; if not, nothing else ever would
            await self._lose(env, lease, "the action's lease was lost while it ran")
            return
        if recorded is None or not recorded.events:
            await self.leases.release(lease)  # not released by a recorded result

    def _job(
        self, pipeline: str, s: PipelineState, x: ExecutionState, e: ev.ActionExecutionScheduled
    ) -> ActionJob | None:
        adecl = s.action_declaration(x, e.stageName, e.actionName)
        if adecl is None:
            return None
        return ActionJob(
            pipeline,
            e.stageName,
            e.executionId,
            e.actionExecutionId,
            resolved_declaration(adecl, e),
            self.config.output_tail_bytes,
            attempt=e.attempt
            or sum(
                a.stageName == e.stageName and a.actionName == e.actionName
                for a in x.actions.values()
            ),
            engine=self.engine,
            config=self.config,
            inputArtifacts=e.inputArtifacts,
            store=store_for(s.declaration_for(x), self.config.actions.artifacts),
        )

    async def _lose(self, env: ev.Envelope, lease: Lease, why: str) -> None:
        e = env.event
        assert isinstance(e, ev.ActionExecutionScheduled)
        try:
            out = await persist.execute(
                self.engine.repo,
                env.pipeline,
                c.LoseAction(
                    executionId=e.executionId,
                    actionExecutionId=e.actionExecutionId,
                    worker=self.name,
                    message=why,
                    consequences=False,
                ),
                self.origin(env),
                patience_s=10.0,
            )
        finally:
            await self.leases.release(lease)
        if out.events:  # else it had ended already (e.g. the reaper recorded it)
            log.warning("action %s recorded as %s: %s", e.actionExecutionId, ev.WORKER_LOST, why)
