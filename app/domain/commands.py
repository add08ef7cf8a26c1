"""Commands: what a caller (API, CLI, worker) asks the domain to decide on."""

from __future__ import annotations

from typing import Literal

import msgspec

from app.domain.artifacts import ArtifactLocation
from app.domain.events import ArtifactRevision
from app.domain.model import PipelineDeclaration, StageRetryMode


class Command(msgspec.Struct, frozen=True, kw_only=True):
    pass


class CreatePipeline(Command, frozen=True, kw_only=True):
    declaration: PipelineDeclaration
    concurrencyLimit: int = 50


class UpdatePipeline(Command, frozen=True, kw_only=True):
    declaration: PipelineDeclaration


class DeletePipeline(Command, frozen=True, kw_only=True):
    pass


class StartExecution(Command, frozen=True, kw_only=True):
    executionId: str
    clientRequestToken: str | None = None
    triggerType: str = "StartPipelineExecution"
    triggerDetail: str | None = None
    # StartPipelineExecution(variables=...): overrides of the declared pipeline variables
    variables: dict[str, str] | None = None
    # StartPipelineExecution(sourceRevisions=...) or a webhook's revision: each
    # {"actionName", "revisionType", "revisionValue"} as in the service model
    sourceRevisions: list[dict[str, str]] | None = None


class StopExecution(Command, frozen=True, kw_only=True):
    executionId: str
    abandon: bool = False
    reason: str | None = None


class RetryStage(Command, frozen=True, kw_only=True):
    """RetryStageExecution: checks and records the request (applied later by a worker)."""

    executionId: str
    stageName: str
    retryMode: StageRetryMode


class ApplyStageRetry(Command, frozen=True, kw_only=True):
    """A worker applies a pending retry: re-checks it, then schedules the new attempts."""

    executionId: str
    stageName: str


class StartAction(Command, frozen=True, kw_only=True):
    executionId: str
    actionExecutionId: str
    worker: str


class CompleteAction(Command, frozen=True, kw_only=True):
    executionId: str
    actionExecutionId: str
    succeeded: bool
    summary: str | None = None
    errorCode: str | None = None
    message: str | None = None
    externalExecutionId: str | None = None
    outputVariables: dict[str, str] | None = None
    # set by engine runners: a result from a runner that lost the action is ignored
    worker: str | None = None
    jobId: str | None = None  # set for job worker results (PutJob*Result)
    # False: record the result alone (a runner, at execution level); the partition's owner
    # then decides what follows with ``Advance``.
    consequences: bool = True
    outputArtifacts: dict[str, ArtifactLocation] | None = None  # name -> where it was stored
    revision: ArtifactRevision | None = None  # a source action's fetched revision


class LoseAction(Command, frozen=True, kw_only=True):
    """The runner of an action disappeared (lease expired): the action fails as WorkerLost."""

    executionId: str
    actionExecutionId: str
    worker: str | None = None
    message: str = "the worker running this action was lost"
    consequences: bool = True


class Advance(Command, frozen=True, kw_only=True):
    """Move an execution on after an action's result was recorded on its own."""

    executionId: str
    actionExecutionId: str


class AcknowledgeJob(Command, frozen=True, kw_only=True):
    executionId: str
    actionExecutionId: str
    jobId: str
    nonce: str


class PutApproval(Command, frozen=True, kw_only=True):
    stageName: str
    actionName: str
    token: str
    status: Literal["Approved", "Rejected"]
    summary: str = ""


# --- stage conditions (app/domain/conditions.py) ----------------------------------------------


class StartRule(Command, frozen=True, kw_only=True):
    """A runner takes a ``Commands`` rule (refused when it is no longer running or taken)."""

    executionId: str
    ruleExecutionId: str
    worker: str


class CompleteRule(Command, frozen=True, kw_only=True):
    """A rule's result (a runner's ``Commands`` rule, or a lost one)."""

    executionId: str
    ruleExecutionId: str
    succeeded: bool
    summary: str | None = None
    errorCode: str | None = None
    message: str | None = None
    worker: str | None = None
    # False: record the result alone; the partition's owner settles the condition
    # (``SettleCondition``)
    consequences: bool = True


class SettleCondition(Command, frozen=True, kw_only=True):
    """After a rule's result was recorded on its own: end its condition if it can be."""

    executionId: str
    ruleExecutionId: str


class EvaluateRule(Command, frozen=True, kw_only=True):
    """Evaluate a deferred rule again (its due time came: a deployment window may be open)."""

    executionId: str
    ruleExecutionId: str


class OverrideCondition(Command, frozen=True, kw_only=True):
    """OverrideStageCondition: the stage's waiting or failed condition lets it go on."""

    executionId: str
    stageName: str
    conditionType: Literal["BEFORE_ENTRY", "ON_SUCCESS"]


class DisableStageTransition(Command, frozen=True, kw_only=True):
    stageName: str
    transitionType: Literal["Inbound", "Outbound"]
    reason: str


class EnableStageTransition(Command, frozen=True, kw_only=True):
    stageName: str
    transitionType: Literal["Inbound", "Outbound"]


class RollbackStage(Command, frozen=True, kw_only=True):
    """RollbackStage: a new execution (``rollbackExecutionId``, type ROLLBACK) re-runs the
    stage with what ``targetExecutionId`` ran it with. (Not ``executionId``: the repository
    would look the new id up before deciding and mark it absent.)"""

    rollbackExecutionId: str
    stageName: str
    targetExecutionId: str
