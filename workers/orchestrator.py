"""Orchestrator role: reacts to the partition event logs.

- applies accepted stage retries (``StageRetryRequested`` -> ``ApplyStageRetry``),
- publishes custom-action jobs for job workers, fails actions no one can run,
- reaps expired leases (the runner died): the action fails as WorkerLost,
- keeps projection snapshots fresh for pipelines whose events it saw.

Every reaction is a command through the repository (decide + optimistic append), so a
redelivered entry or two orchestrators reacting to the same event change nothing twice.
"""

from __future__ import annotations

import logging

from app.domain import commands as c
from app.domain import events as ev
from app.domain.errors import DomainError
from app.engine import Engine
from app.jobs import JobRef
from app.repository import Origin
from workers import persist
from workers.config import WorkerConfig
from workers.consumer import Entry
from workers.leases import Leases

log = logging.getLogger("stageline.orchestrator")


def _prev(entry: Entry, name: str) -> int | None:
    raw = entry.fields.get(name)
    return int(raw) if raw else None


def observe(engine: Engine, entry: Entry, env: ev.Envelope) -> None:
    """Fold a dispatch entry's event into the process's cached state (where contiguous)."""
    engine.repo.observe(env, _prev(entry, "hp"), _prev(entry, "xp"))


class Orchestrator:
    def __init__(self, engine: Engine, leases: Leases, config: WorkerConfig) -> None:
        self.engine = engine
        self.leases = leases
        self.config = config
        self.dirty: set[str] = set()

    def origin(self, env: ev.Envelope) -> Origin:
        return persist.caused_by(self.config.name, env)

    async def handle(self, entry: Entry) -> None:
        pipeline = entry.text("p")
        self.dirty.add(pipeline)
        kind = entry.text("t")
        if kind not in ("StageRetryRequested", "ActionExecutionScheduled"):
            return
        env = ev.decode_payload(pipeline, int(entry.text("v")), entry.fields["e"])
        observe(self.engine, entry, env)  # saves reading it back from the log
        e = env.event
        if isinstance(e, ev.StageRetryRequested):
            await persist.execute(
                self.engine.repo,
                pipeline,
                c.ApplyStageRetry(executionId=e.executionId, stageName=e.stageName),
                self.origin(env),
                retry_redis_down=False,
            )
        elif isinstance(e, ev.ActionExecutionScheduled):
            await self._scheduled(env, e)

    async def _scheduled(self, env: ev.Envelope, e: ev.ActionExecutionScheduled) -> None:
        if e.kind in ("commands", "approval"):
            return  # runners take commands; approvals wait for PutApprovalResult
        s = await self.engine.repo.load(env.pipeline, [e.executionId])
        x = s.executions.get(e.executionId)
        a = x.actions.get(e.actionExecutionId) if x is not None else None
        if x is None or a is None or a.status != "InProgress":
            return
        adecl = s.action_declaration(x, e.stageName, e.actionName)
        if adecl is None:
            return
        if e.kind == "custom" and e.jobId is not None:
            ref = JobRef(
                e.jobId,
                adecl.actionTypeId.key,
                env.pipeline,
                e.executionId,
                e.actionExecutionId,
            )
            await self.engine.jobs.publish(ref, env.time)
            return
        t = adecl.actionTypeId
        await persist.execute(
            self.engine.repo,
            env.pipeline,
            c.CompleteAction(
                executionId=e.executionId,
                actionExecutionId=e.actionExecutionId,
                succeeded=False,
                errorCode="ActionTypeNotSupported",
                message=(
                    f"stageline does not run {t.owner}/{t.category}/{t.provider} actions; "
                    "use AWS/Compute/Commands, AWS/Approval/Manual or a Custom action "
                    "with a job worker"
                ),
            ),
            self.origin(env),
            retry_redis_down=False,
        )

    async def reap(self) -> int:
        """Fail the actions whose runner's lease expired. Returns how many were reaped."""
        reaped = 0
        for part in range(self.engine.keys.partitions):
            for lease in await self.leases.expired(part):
                try:
                    await persist.execute(
                        self.engine.repo,
                        lease.pipeline,
                        c.LoseAction(
                            executionId=lease.executionId,
                            actionExecutionId=lease.actionExecutionId,
                            worker=lease.worker,
                            message=f"worker {lease.worker} stopped renewing its lease",
                        ),
                        Origin(actor=f"worker:{self.config.name}"),
                        retry_redis_down=False,
                    )
                except DomainError as err:
                    log.warning("reaping %s: %s", lease.member, err)
                await self.leases.release(lease)
                reaped += 1
                log.warning(
                    "action %s of %s: worker %s lost, recorded as %s",
                    lease.actionExecutionId,
                    lease.pipeline,
                    lease.worker,
                    ev.WORKER_LOST,
                )
        return reaped

    async def flush_snapshots(self) -> None:
        dirty, self.dirty = self.dirty, set()
        for name in dirty:
            s = await self.engine.repo.load(name)
            await self.engine.store.save_snapshot(s)
