"""Builders for the pure domain tests: declarations, a deterministic Ctx, and a Harness.

The Harness keeps one :class:`PipelineState`, runs ``decide`` on it, checks that ``decide``
left the state untouched, folds the produced events with ``evolve`` and keeps the log.
Nothing here touches Redis or any other I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import msgspec
import pytest

from app.domain import commands as c
from app.domain import events as ev
from app.domain.decide import Ctx, decide
from app.domain.errors import DomainError
from app.domain.model import (
    ActionDeclaration,
    ActionTypeId,
    ExecutionMode,
    FailureConditions,
    PipelineDeclaration,
    RetryConfiguration,
    StageDeclaration,
    StageRetryMode,
)
from app.domain.state import ActionExec, ExecutionState, PipelineState, StageRun, evolve, new_state

ROLE = "arn:aws:iam::123456789012:role/stageline"
T0 = 1_700_000_000.0

COMMANDS_TYPE = ActionTypeId(category="Compute", owner="AWS", provider="Commands", version="1")
APPROVAL_TYPE = ActionTypeId(category="Approval", owner="AWS", provider="Manual", version="1")
CUSTOM_TYPE = ActionTypeId(category="Build", owner="Custom", provider="MyBuilder", version="1")

KIND_TYPES = {"commands": COMMANDS_TYPE, "approval": APPROVAL_TYPE, "custom": CUSTOM_TYPE}


# --- declarations ----------------------------------------------------------------------------


def action(name: str, run_order: int = 1, kind: str = "commands") -> ActionDeclaration:
    return ActionDeclaration(
        name=name,
        actionTypeId=KIND_TYPES[kind],
        runOrder=run_order,
        commands=["echo hi"] if kind == "commands" else None,
    )


ActionSpec = str | tuple[str, int] | tuple[str, int, str] | ActionDeclaration


def _action_from(spec: ActionSpec) -> ActionDeclaration:
    if isinstance(spec, ActionDeclaration):
        return spec
    if isinstance(spec, str):
        return action(spec)
    if len(spec) == 2:
        return action(spec[0], spec[1])
    return action(spec[0], spec[1], spec[2])


def stage(
    name: str, actions: Sequence[ActionSpec], auto_retry: StageRetryMode | None = None
) -> StageDeclaration:
    on_failure = None
    if auto_retry is not None:
        on_failure = FailureConditions(
            result="RETRY", retryConfiguration=RetryConfiguration(retryMode=auto_retry)
        )
    return StageDeclaration(
        name=name, actions=[_action_from(a) for a in actions], onFailure=on_failure
    )


def make_decl(
    stages: Mapping[str, Any] | None = None,
    *,
    name: str = "p",
    mode: str | None = None,
    auto_retry: Mapping[str, str] | None = None,
) -> PipelineDeclaration:
    """A declaration from ``{"Stage": ["a", ("b", 2), ("c", 1, "approval")], ...}``.

    The default is two stages: ``Source`` (action ``src``) and ``Build`` (``b1``, ``b2`` in
    runOrder 1 and ``b3`` in runOrder 2).
    """
    if stages is None:
        stages = {"Source": ["src"], "Build": [("b1", 1), ("b2", 1), ("b3", 2)]}
    retry = cast(Mapping[str, StageRetryMode], auto_retry or {})
    return PipelineDeclaration(
        name=name,
        roleArn=ROLE,
        stages=[stage(s, acts, retry.get(s)) for s, acts in stages.items()],
        executionMode=cast(ExecutionMode | None, mode),
    )


# --- deterministic context -------------------------------------------------------------------


class IdGen:
    """Counter-based lowercase UUIDs (valid pipelineExecutionId values)."""

    def __init__(self, prefix: int = 0) -> None:
        self.n = 0
        self.prefix = prefix

    def __call__(self) -> str:
        self.n += 1
        return f"{self.prefix:08x}-0000-4000-8000-{self.n:012x}"


def make_ctx(ids: IdGen | None = None, now: float = T0, actor: str = "tester") -> Ctx:
    return Ctx(now=now, new_id=ids or IdGen(), actor=actor)


def encode(s: PipelineState) -> bytes:
    return msgspec.json.encode(s)


def types(envs: Iterable[ev.Envelope]) -> list[str]:
    return [ev.event_type(e.event) for e in envs]


def of_type(envs: Iterable[ev.Envelope], kind: type[Any]) -> list[Any]:
    return [e.event for e in envs if isinstance(e.event, kind)]


def check_error(err: DomainError) -> None:
    """A refusal is clear: an error name and a one-line human-readable message."""
    assert err.type_name.endswith("Exception"), err.type_name
    assert isinstance(err.message, str) and err.message.strip(), err.type_name
    assert "\n" not in err.message
    assert str(err) == f"{err.type_name}: {err.message}"
    assert err.status == (409 if err.type_name == "ConflictException" else 400)


# --- harness ---------------------------------------------------------------------------------


class Harness:
    def __init__(self, name: str = "p", exec_prefix: int = 0xE) -> None:
        self.name = name
        self.state: PipelineState = new_state(name)
        self.log: list[ev.Envelope] = []
        self.ids = IdGen()
        self.exec_ids = IdGen(prefix=exec_prefix)
        self.now = T0
        self.actor = "tester"

    # -- running commands --

    def ctx(self) -> Ctx:
        self.now += 1.0
        return Ctx(now=self.now, new_id=self.ids, actor=self.actor)

    def run(self, cmd: c.Command) -> list[ev.Envelope]:
        before = encode(self.state)
        try:
            envs = decide(self.state, cmd, self.ctx())
        finally:
            assert encode(self.state) == before, "decide mutated the state passed in"
        for i, env in enumerate(envs):
            assert env.version == self.state.version + 1, (i, env.version, self.state.version)
            evolve(self.state, env)
            self.log.append(env)
        return envs

    def error(self, cmd: c.Command) -> DomainError:
        before = encode(self.state)
        with pytest.raises(DomainError) as info:
            self.run(cmd)
        assert encode(self.state) == before
        check_error(info.value)
        return info.value

    # -- shortcuts --

    def create(self, decl: PipelineDeclaration | None = None, limit: int = 50) -> list[ev.Envelope]:
        decl = decl or make_decl(name=self.name)
        return self.run(c.CreatePipeline(declaration=decl, concurrencyLimit=limit))

    def update(self, decl: PipelineDeclaration | None = None) -> list[ev.Envelope]:
        assert self.state.declaration is not None
        decl = decl or msgspec.structs.replace(self.state.declaration, version=None)
        return self.run(c.UpdatePipeline(declaration=decl))

    def start(self, token: str | None = None) -> str:
        eid = self.exec_ids()
        self.run(c.StartExecution(executionId=eid, clientRequestToken=token))
        return eid

    def x(self, eid: str) -> ExecutionState:
        return self.state.executions[eid]

    def run_of(self, eid: str, stage: str) -> StageRun:
        return self.x(eid).stages[stage]

    def stage_of(self, eid: str, action_name: str) -> str:
        decl = self.state.declaration_for(self.x(eid))
        for s in decl.stages:
            if s.action(action_name) is not None:
                return s.name
        raise KeyError(action_name)

    def action(self, eid: str, action_name: str, stage: str | None = None) -> ActionExec:
        """The latest attempt of ``action_name`` in execution ``eid``."""
        stage = stage or self.stage_of(eid, action_name)
        x = self.x(eid)
        return x.actions[x.stages[stage].latest[action_name]]

    def aid(self, eid: str, action_name: str, stage: str | None = None) -> str:
        return self.action(eid, action_name, stage).actionExecutionId

    def attempts(self, eid: str, action_name: str) -> list[ActionExec]:
        return [a for a in self.x(eid).actions.values() if a.actionName == action_name]

    def complete(self, eid: str, action_name: str, ok: bool = True, **kw: Any) -> list[ev.Envelope]:
        return self.run(
            c.CompleteAction(
                executionId=eid, actionExecutionId=self.aid(eid, action_name), succeeded=ok, **kw
            )
        )

    def succeed(self, eid: str, *names: str) -> list[ev.Envelope]:
        out: list[ev.Envelope] = []
        for n in names:
            out += self.complete(eid, n, True)
        return out

    def fail(self, eid: str, *names: str) -> list[ev.Envelope]:
        out: list[ev.Envelope] = []
        for n in names:
            out += self.complete(eid, n, False, errorCode="ExitCode1", message="boom")
        return out

    def retry(self, eid: str, stage: str, mode: StageRetryMode) -> list[ev.Envelope]:
        return self.run(c.RetryStage(executionId=eid, stageName=stage, retryMode=mode))

    def apply(self, eid: str, stage: str) -> list[ev.Envelope]:
        return self.run(c.ApplyStageRetry(executionId=eid, stageName=stage))

    def retry_now(self, eid: str, stage: str, mode: StageRetryMode) -> list[ev.Envelope]:
        return self.retry(eid, stage, mode) + self.apply(eid, stage)

    def stop(self, eid: str, abandon: bool = False, reason: str | None = None) -> list[ev.Envelope]:
        return self.run(c.StopExecution(executionId=eid, abandon=abandon, reason=reason))

    def retry_error(self, eid: str, stage: str, mode: StageRetryMode) -> DomainError:
        return self.error(c.RetryStage(executionId=eid, stageName=stage, retryMode=mode))

    def to_build(self) -> str:
        """Start an execution with the default declaration and get it into stage Build."""
        eid = self.start()
        self.succeed(eid, "src")
        return eid
