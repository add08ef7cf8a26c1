"""Deferred rules (a closed deployment window): woken by their partition's owner.

A ``RuleExecutionDeferred`` names when the rule is to be evaluated again. The partition's
owner, which reads every event of its partition in order, records it in the partition's
``due`` zset (``Keys.due``, scored by that time in ms); with its reaping round it takes the
rules whose time came (by the repository's clock, ``PipelineRepository.clock``, injectable
for tests) and decides ``EvaluateRule`` for them in one group commit. A rule that is no
longer deferred (it passed, its condition was overridden, the execution ended) makes
``EvaluateRule`` decide nothing. An owner that crashed before recording an entry reads it
again from its checkpoint, so none is lost; the zset survives takeovers.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from app.domain import commands as c
from app.domain import events as ev
from app.domain.state import ExecutionState
from app.engine import Engine
from app.repository import Origin

if TYPE_CHECKING:
    from workers.partition import PartitionOwner

SEP = "\x1f"
WAKE_BATCH = 100


async def defer(engine: Engine, partition: int, env: ev.Envelope) -> None:
    e = env.event
    assert isinstance(e, ev.RuleExecutionDeferred)
    member = SEP.join((env.pipeline, e.executionId, e.ruleExecutionId))
    # rounded up: the owner wakes it when its clock is at or past ``until`` (never before,
    # where EvaluateRule would decide nothing and the entry would be gone)
    await engine.redis.zadd(engine.keys.due(partition), {member: math.ceil(e.until * 1000)})


async def wake(owner: PartitionOwner) -> int:
    """Evaluate the rules of the owner's partition whose time came; how many were due."""
    from workers.partition import _Pending

    engine = owner.engine
    key = engine.keys.due(owner.partition)
    now_ms = int(engine.repo.clock() * 1000)
    rows: Any = await engine.redis.zrangebyscore(key, "-inf", now_ms, start=0, num=WAKE_BATCH)
    if not rows:
        return 0
    pending: dict[str, _Pending] = {}
    for raw in rows:
        member = raw.decode() if isinstance(raw, bytes) else str(raw)
        pipeline, eid, rid = member.split(SEP)
        p = pending.setdefault(pipeline, _Pending(pipeline))
        cmd = c.EvaluateRule(executionId=eid, ruleExecutionId=rid)
        p.items.append((cmd, Origin(actor=f"worker:{owner.name}")))
    await owner.commit(list(pending.values()), None)
    await engine.redis.zrem(key, *rows)
    return len(rows)


async def reconcile(
    engine: Engine, partition: int, pipeline: str, x: ExecutionState
) -> list[c.Command]:
    """A partition taken over without a checkpoint (``PartitionOwner._reconcile``): the
    conditions of ``x`` still being evaluated are settled when a rule ended, and its
    deferred rules are recorded in the ``due`` zset."""
    out: list[c.Command] = []
    for k in x.conditions.values():
        if k.status != "InProgress":
            continue
        for rid in k.rules:
            r = x.rules.get(rid)
            if r is None:
                continue
            if r.status != "InProgress":
                out.append(c.SettleCondition(executionId=x.executionId, ruleExecutionId=rid))
                break
            if r.until is not None:
                member = SEP.join((pipeline, x.executionId, rid))
                score = math.ceil(r.until * 1000)
                await engine.redis.zadd(engine.keys.due(partition), {member: score})
    return out
