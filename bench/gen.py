"""Synthetic but realistic histories, produced by the real domain and stored by the real store.

A :class:`Sim` keeps one pipeline's state in memory, runs the domain's ``decide`` for each
command with origins like the API's and the workers' (request ids, peer addresses,
correlation and causation ids), folds the events, and appends them to Redis in large
batches through :meth:`EventStore.append` (the same Lua script, hash chain and dispatch
copies as in production). It is much faster than driving the same history through the API
and a worker, and produces the same events.
"""

from __future__ import annotations

import itertools
import random
import uuid

from app.domain import commands as c
from app.domain import events as ev
from app.domain.decide import Ctx, decide
from app.domain.model import (
    ActionDeclaration,
    ActionTypeId,
    ExecutionMode,
    PipelineDeclaration,
    StageDeclaration,
)
from app.domain.state import evolve, new_state
from app.store.eventstore import Batch, EventStore

COMMANDS = ActionTypeId(category="Compute", owner="AWS", provider="Commands", version="1")
ROLE = "arn:aws:iam::123456789012:role/stageline-bench"
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
WORKER = "worker:bench-host-4242"


def _action(name: str, run_order: int = 1) -> ActionDeclaration:
    return ActionDeclaration(
        name=name,
        actionTypeId=COMMANDS,
        runOrder=run_order,
        commands=[f"make {name}"],
    )


def typical_declaration(name: str, mode: ExecutionMode = "SUPERSEDED") -> PipelineDeclaration:
    """Build (compile + unit-test in parallel, then package), Test, Deploy."""
    return PipelineDeclaration(
        name=name,
        roleArn=ROLE,
        executionMode=mode,
        stages=[
            StageDeclaration(
                name="Build",
                actions=[_action("compile"), _action("unit-test"), _action("package", 2)],
            ),
            StageDeclaration(name="Test", actions=[_action("integration")]),
            StageDeclaration(name="Deploy", actions=[_action("deploy")]),
        ],
    )


def one_stage_declaration(
    name: str, actions: int = 1, mode: ExecutionMode = "PARALLEL"
) -> PipelineDeclaration:
    """One stage ``Build`` with ``actions`` parallel Commands actions."""
    return PipelineDeclaration(
        name=name,
        roleArn=ROLE,
        executionMode=mode,
        stages=[
            StageDeclaration(name="Build", actions=[_action(f"a{i}") for i in range(actions)])
        ],
    )


class Sim:
    """One pipeline's history, decided in memory, appended in batches."""

    def __init__(self, store: EventStore, decl: PipelineDeclaration, *, seed: int = 1) -> None:
        self.store = store
        self.name = decl.name
        self.state = new_state(decl.name)
        self.pending: list[ev.Envelope] = []
        self.appended = 0
        self.rng = random.Random(seed)
        self.clock = itertools.count(1_700_000_000_000)  # ms
        self.port = itertools.cycle(range(40_000, 60_000))
        self.do(c.CreatePipeline(declaration=decl, concurrencyLimit=1000), api=True)

    def _ctx(self, api: bool, cause: str | None) -> Ctx:
        now = next(self.clock) / 1000
        if api:
            rid = str(uuid.uuid4())
            return Ctx(
                now=now,
                new_id=lambda: str(uuid.uuid4()),
                actor=ACCESS_KEY,
                correlationId=rid,
                requestId=rid,
                source=f"127.0.0.1:{next(self.port)}",
            )
        return Ctx(
            now=now,
            new_id=lambda: str(uuid.uuid4()),
            actor=WORKER,
            correlationId=str(uuid.uuid4()),
            causationId=cause or str(uuid.uuid4()),
        )

    def do(
        self, cmd: c.Command, *, api: bool = False, cause: str | None = None
    ) -> list[ev.Envelope]:
        out = decide(self.state, cmd, self._ctx(api, cause))
        for env in out:
            evolve(self.state, env)
        self.pending.extend(out)
        return out

    def scheduled(self, events: list[ev.Envelope]) -> list[ev.ActionExecutionScheduled]:
        return [e.event for e in events if isinstance(e.event, ev.ActionExecutionScheduled)]

    def run_actions(
        self, events: list[ev.Envelope], *, fail: set[str] | frozenset[str] = frozenset()
    ) -> list[ev.Envelope]:
        """Start and complete every action scheduled in ``events`` (and what that schedules)."""
        produced: list[ev.Envelope] = []
        todo = self.scheduled(events)
        while todo:
            nxt: list[ev.ActionExecutionScheduled] = []
            for a in todo:
                self.do(
                    c.StartAction(
                        executionId=a.executionId,
                        actionExecutionId=a.actionExecutionId,
                        worker="bench-host-4242",
                    )
                )
            for a in todo:
                failed = a.actionName in fail
                out = self.do(
                    c.CompleteAction(
                        executionId=a.executionId,
                        actionExecutionId=a.actionExecutionId,
                        succeeded=not failed,
                        summary="1 command succeeded" if not failed else "command failed",
                        errorCode="CommandFailed" if failed else None,
                        message="'make' exited with code 2" if failed else None,
                        worker="bench-host-4242",
                    )
                )
                produced.extend(out)
                nxt.extend(self.scheduled(out))
            todo = nxt
        return produced

    def execution(self, *, fail: str | None = None, retry: bool = True) -> str:
        """One whole execution; ``fail`` makes that action fail once (then, with ``retry``,
        a manual FAILED_ACTIONS retry that succeeds). Returns the execution id."""
        eid = str(uuid.uuid4())
        first = self.do(c.StartExecution(executionId=eid, triggerDetail=ACCESS_KEY), api=True)
        self.run_actions(first, fail={fail} if fail else frozenset())
        if fail and retry:
            x = self.state.executions[eid]
            stage = x.currentStage
            assert stage is not None
            self.do(
                c.RetryStage(executionId=eid, stageName=stage, retryMode="FAILED_ACTIONS"), api=True
            )
            out = self.do(c.ApplyStageRetry(executionId=eid, stageName=stage))
            self.run_actions(out)
        return eid

    async def flush(self, batch: int = 400) -> int:
        """Append what is pending, ``batch`` events per append. Returns how many."""
        n = 0
        pending, self.pending = self.pending, []
        for i in range(0, len(pending), batch):
            chunk = pending[i : i + batch]
            # the Sim is the only writer of its pipeline: the store's numbering is the Sim's
            res = await self.store.append(Batch(self.name, chunk))
            assert res.first == chunk[0].version, (res.first, chunk[0].version)
            n += len(chunk)
        self.appended += n
        return n


async def typical_history(
    store: EventStore, name: str, events: int, *, fail_every: int = 10, seed: int = 1
) -> Sim:
    """A SUPERSEDED pipeline with executions one after the other until ``events`` events;
    every ``fail_every``-th execution fails in unit-test once and is retried manually."""
    sim = Sim(store, typical_declaration(name), seed=seed)
    i = 0
    while sim.state.version < events:
        i += 1
        sim.execution(fail="unit-test" if fail_every and i % fail_every == 0 else None)
        if len(sim.pending) >= 4000:
            await sim.flush()
    await sim.flush()
    return sim
