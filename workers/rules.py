"""Runner side of ``Commands`` rules (stage conditions): run like a Commands action.

A ``RuleExecutionScheduled`` with kind ``commands`` reaches the partition's run queue like a
Commands action. The runner takes a lease (the reaper fails a rule whose runner died as
WorkerLost, the same way as an action), records ``RuleExecutionStarted``, runs the rule's
``commands`` in one shell session through the Commands action runtime (isolation, timeout,
log under the rule execution's id), and records the result alone
(``CompleteRule(consequences=False)``); the partition's owner then settles the condition.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from app.domain import commands as c
from app.domain import conditions
from app.domain import events as ev
from app.domain.errors import DomainError
from app.domain.model import ActionDeclaration, ActionTypeId
from app.engine import Engine
from app.repository import new_uuid
from workers import persist
from workers.consumer import REDIS_DOWN, Entry
from workers.leases import Lease
from workers.runners.commands_action import ActionSettings, run_commands_job

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from workers.runner import Runner

log = logging.getLogger("stageline.rules")

COMMANDS_TYPE = ActionTypeId(category="Compute", owner="AWS", provider="Commands", version="1")


def rule_watch(
    engine: Engine, pipeline: str, execution_id: str, rule_id: str
) -> Callable[[], Awaitable[bool]]:
    """``still_wanted`` for the rule's session: is the rule still InProgress?"""

    async def still_wanted() -> bool:
        s = await engine.repo.load(pipeline, [execution_id])
        x = s.executions.get(execution_id)
        r = x.rules.get(rule_id) if x is not None else None
        return r is None or r.status == "InProgress"

    return still_wanted


async def run_rule(runner: Runner, entry: Entry, env: ev.Envelope) -> None:
    e = env.event
    assert isinstance(e, ev.RuleExecutionScheduled)
    rid, eid, pipeline = e.ruleExecutionId, e.executionId, env.pipeline
    if rid in runner.running:
        return
    engine = runner.engine
    lease = Lease(pipeline, eid, rid, runner.name)
    start_id = f"start:{rid}:{new_uuid()}"
    try:
        out = await persist.execute(
            engine.repo,
            pipeline,
            c.StartRule(executionId=eid, ruleExecutionId=rid, worker=runner.name),
            runner.origin(env),
            command_id=start_id,
            leases=([runner.leases.entry(lease)], []),
        )
    except DomainError as err:
        await runner.leases.release(lease)
        if err.type_name == persist.CONFLICT:
            raise
        log.debug("not running rule %s: %s", rid, err.message)
        return
    if not out.events and not await engine.store.command_seen(pipeline, start_id):
        await _record(runner, env, lease, False, "the worker restarted while the rule ran")
        return
    if runner.ack is not None:
        try:
            await runner.ack(entry)
            runner.acked.add((entry.stream, entry.id))
        except REDIS_DOWN:
            pass
    runner.running[rid] = lease
    try:
        await _run_leased(runner, env, e, lease)
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True):
            await _record(runner, env, lease, False, "worker shut down before the rule finished")
        raise
    finally:
        runner.running.pop(rid, None)


async def _run_leased(
    runner: Runner, env: ev.Envelope, e: ev.RuleExecutionScheduled, lease: Lease
) -> None:
    engine = runner.engine
    s = await engine.repo.load(env.pipeline, [e.executionId])
    x = s.executions.get(e.executionId)
    r = x.rules.get(e.ruleExecutionId) if x is not None else None
    rdecl = conditions.rule_declaration(s, x, r) if x is not None and r is not None else None
    lost = False
    ok, summary = False, None
    code: str | None = "RuleNotFound"
    message: str | None = "the rule's declaration is gone"
    async with anyio.create_task_group() as tg:

        async def heartbeat() -> None:
            nonlocal lost
            while True:
                await anyio.sleep(runner.leases.ttl_s / 3)
                try:
                    alive = await runner.leases.renew(lease)
                except REDIS_DOWN:
                    continue
                if not alive:
                    lost = True
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(heartbeat)
        if rdecl is not None and rdecl.commands:
            settings = runner.config.actions if runner.config is not None else ActionSettings()
            try:
                res = await run_commands_job(
                    pipeline=env.pipeline,
                    stage=e.stageName,
                    execution_id=e.executionId,
                    action_execution_id=e.ruleExecutionId,
                    attempt=1,
                    declaration=ActionDeclaration(
                        name=rdecl.name,
                        actionTypeId=COMMANDS_TYPE,
                        commands=list(rdecl.commands),
                        timeoutInMinutes=rdecl.timeoutInMinutes,
                    ),
                    tail_bytes=runner.config.output_tail_bytes,
                    settings=settings,
                    redis=engine.redis,
                    keys=engine.keys,
                    still_wanted=rule_watch(engine, env.pipeline, e.executionId, e.ruleExecutionId),
                )
                ok, summary, code, message = res.succeeded, res.summary, res.error_code, res.message
            except Exception as err:  # a runtime bug must not kill the worker
                log.exception("rule %s crashed", e.ruleExecutionId)
                ok, code, message = False, "RunnerError", f"{type(err).__name__}: {err}"
        await persist.execute(
            engine.repo,
            env.pipeline,
            c.CompleteRule(
                executionId=e.executionId,
                ruleExecutionId=e.ruleExecutionId,
                succeeded=ok,
                summary=summary,
                errorCode=code,
                message=message,
                worker=runner.name,
                consequences=False,
            ),
            runner.origin(env),
            leases=([], [lease.member]),
        )
        tg.cancel_scope.cancel()
    if lost:
        await _record(runner, env, lease, False, "the rule's lease was lost while it ran")
    else:
        await runner.leases.release(lease)


async def _record(runner: Runner, env: ev.Envelope, lease: Lease, ok: bool, why: str) -> None:
    e = env.event
    assert isinstance(e, ev.RuleExecutionScheduled)
    try:
        await persist.execute(
            runner.engine.repo,
            env.pipeline,
            c.CompleteRule(
                executionId=e.executionId,
                ruleExecutionId=e.ruleExecutionId,
                succeeded=ok,
                errorCode=ev.WORKER_LOST,
                message=why,
                worker=runner.name,
                consequences=False,
            ),
            runner.origin(env),
            patience_s=10.0,
        )
    finally:
        await runner.leases.release(lease)
