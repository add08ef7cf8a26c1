"""Worker commands are not given up on.

A worker's command (start, complete or lose an action, apply a retry) is idempotent in
``decide``: a repeat changes nothing. So when the repository gives up on an optimistic-
concurrency conflict (``ConflictException``: other writers kept winning the same pipeline,
which happens when many actions of one pipeline end at once) or Redis is briefly gone, the
worker simply tries again, with jittered exponential backoff, for up to ``patience_s``.
Giving up early would lose a finished action's result, or leave an action nobody runs.
"""

from __future__ import annotations

import random

import anyio

from app.domain import commands as c
from app.domain import events as ev
from app.domain.errors import DomainError
from app.domain.state import PipelineState
from app.repository import Leasing, Origin, Outcome, PipelineRepository
from workers.consumer import REDIS_DOWN

CONFLICT = "ConflictException"


def caused_by(worker: str, env: ev.Envelope) -> Origin:
    """The origin of a worker's reaction to ``env``: same correlation, caused by ``env``."""
    return Origin(
        actor=f"worker:{worker}",
        correlationId=env.correlationId or env.id,
        causationId=env.id,
    )


async def execute(
    repo: PipelineRepository,
    pipeline: str,
    cmd: c.Command,
    origin: Origin,
    *,
    command_id: str | None = None,
    patience_s: float = 120.0,
    retry_redis_down: bool = True,
    assume: PipelineState | None = None,
    leases: Leasing | None = None,
) -> Outcome:
    """``repo.execute``, retried on conflicts (and on Redis errors when asked)."""
    deadline = anyio.current_time() + patience_s
    delay = 0.005
    while True:
        try:
            return await repo.execute(
                pipeline, cmd, origin, command_id=command_id, assume=assume, leases=leases
            )
        except DomainError as err:
            if err.type_name != CONFLICT or anyio.current_time() > deadline:
                raise
        except REDIS_DOWN:
            if not retry_redis_down or anyio.current_time() > deadline:
                raise
            delay = max(delay, 0.1)
        await anyio.sleep(random.uniform(delay / 2, delay))
        delay = min(delay * 2, 0.5)
