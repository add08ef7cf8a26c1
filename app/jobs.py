"""Where custom-action jobs are found: an index next to the log (derived, rebuildable).

Scheduling a ``Custom`` action appends an event; an orchestrator then publishes the job here
so that ``PollForJobs`` can find it by action type. The log stays the truth: a job's state
(acknowledged, succeeded ...) is always read from the pipeline's events, and an index entry
whose action has ended is dropped when a poll meets it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from app.store.keys import Keys


@dataclass(frozen=True)
class JobRef:
    jobId: str
    actionType: str
    pipeline: str
    executionId: str
    actionExecutionId: str


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class JobIndex:
    def __init__(self, redis: Redis, keys: Keys, retention_s: float = 86_400.0) -> None:
        self.redis = redis
        self.keys = keys
        self.retention_s = retention_s  # a finished job's record is kept this long

    async def publish(self, job: JobRef, created: float) -> None:
        """Record where the job lives, then list it as open: two idempotent writes in that
        order, no transaction (the two keys live in different cluster slots). Should the
        second be lost, the owner publishes again (its event is re-read); a listed job whose
        record is missing is never handed out (``open_jobs`` skips it)."""
        await self.redis.hset(
            self.keys.job(job.jobId),
            mapping={
                "t": job.actionType,
                "p": job.pipeline,
                "x": job.executionId,
                "a": job.actionExecutionId,
            },
        )
        await self.redis.zadd(self.keys.jobs(job.actionType), {job.jobId: created}, nx=True)

    async def locate(self, job_id: str) -> JobRef | None:
        raw: Any = await self.redis.hgetall(self.keys.job(job_id))
        if not raw:
            return None
        f = {_s(k): _s(v) for k, v in raw.items()}
        return JobRef(job_id, f["t"], f["p"], f["x"], f["a"])

    async def open_jobs(self, action_type: str, limit: int) -> list[JobRef]:
        ids: Any = await self.redis.zrange(self.keys.jobs(action_type), 0, max(limit, 1) - 1)
        refs = []
        for raw_id in ids:
            ref = await self.locate(_s(raw_id))
            if ref is not None:
                refs.append(ref)
        return refs

    async def close(self, job: JobRef, *, finished: bool = False) -> None:
        """The job left the open list (acknowledged, or its action ended). ``finished``: its
        action ended, so its record expires after ``retention_s`` (until then a late
        PutJob*Result still gets InvalidJobStateException, as from AWS; afterwards
        JobNotFoundException)."""
        await self.redis.zrem(self.keys.jobs(job.actionType), job.jobId)
        if finished:
            await self.redis.expire(self.keys.job(job.jobId), max(int(self.retention_s), 1))
