"""The pipeline declaration: msgspec mirrors of the CodePipeline ``PipelineDeclaration`` shape.

Every constraint here (required, min/max length, pattern, enum, numeric range) is the one in
the botocore service model; ``tests/test_shapes_vs_botocore.py`` proves it. Patterns in the
model are whole-string matches, so they are anchored here (msgspec searches).

Parts of the shape the engine does not act on (artifact stores, triggers, variables,
conditions, blockers, artifacts) are kept as plain JSON values so that a declaration
round-trips through ``CreatePipeline`` / ``GetPipeline`` unchanged.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

NAME_PATTERN = r"^[A-Za-z0-9.@\-_]+\Z"

PipelineName = Annotated[str, Meta(min_length=1, max_length=100, pattern=NAME_PATTERN)]
StageName = Annotated[str, Meta(min_length=1, max_length=100, pattern=NAME_PATTERN)]
ActionName = Annotated[str, Meta(min_length=1, max_length=100, pattern=NAME_PATTERN)]
PipelineExecutionId = Annotated[
    str, Meta(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
]
RoleArn = Annotated[
    str, Meta(max_length=1024, pattern=r"^arn:aws(-[\w]+)*:iam::[0-9]{12}:role/.*\Z")
]
ActionCategory = Literal["Source", "Build", "Deploy", "Test", "Invoke", "Approval", "Compute"]
ActionOwner = Literal["AWS", "ThirdParty", "Custom"]
ActionProvider = Annotated[str, Meta(min_length=1, max_length=35, pattern=r"^[0-9A-Za-z_-]+\Z")]
Version = Annotated[str, Meta(min_length=1, max_length=9, pattern=r"^[0-9A-Za-z_-]+\Z")]
RunOrder = Annotated[int, Meta(ge=1, le=999)]
ActionTimeout = Annotated[int, Meta(ge=5, le=86400)]
Command = Annotated[str, Meta(min_length=1, max_length=1000)]
ConfigKey = Annotated[str, Meta(min_length=1, max_length=50)]
ConfigValue = Annotated[str, Meta(min_length=1, max_length=1000)]
ActionNamespace = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9@\-_]+\Z")]
RegionName = Annotated[str, Meta(min_length=4, max_length=30)]
OutputVariable = Annotated[str, Meta(min_length=1, max_length=128)]
EnvName = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_]+\Z")]
EnvValue = Annotated[str, Meta(min_length=1, max_length=2000)]
PipelineVersion = Annotated[int, Meta(ge=1)]

ExecutionMode = Literal["QUEUED", "SUPERSEDED", "PARALLEL"]
PipelineType = Literal["V1", "V2"]
StageRetryMode = Literal["FAILED_ACTIONS", "ALL_ACTIONS"]
FailureResult = Literal["ROLLBACK", "FAIL", "RETRY", "SKIP"]

# Statuses: the service model's enums, exactly (SPEC section 2).
PipelineExecutionStatus = Literal[
    "Cancelled", "InProgress", "Stopped", "Stopping", "Succeeded", "Superseded", "Failed"
]
StageExecutionStatus = Literal[
    "Cancelled", "InProgress", "Failed", "Stopped", "Stopping", "Succeeded", "Skipped"
]
ActionExecutionStatus = Literal["InProgress", "Abandoned", "Succeeded", "Failed"]
RetryTrigger = Literal["ManualStageRetry", "AutomatedStageRetry"]

JSONObject = dict[str, Any]


class ActionTypeId(msgspec.Struct, frozen=True, omit_defaults=True):
    category: ActionCategory
    owner: ActionOwner
    provider: ActionProvider
    version: Version

    @property
    def key(self) -> str:
        """A stable string form, used for job queues: ``Owner/Category/Provider/Version``."""
        return f"{self.owner}/{self.category}/{self.provider}/{self.version}"


class EnvironmentVariable(msgspec.Struct, frozen=True, omit_defaults=True):
    name: EnvName
    value: EnvValue
    type: Literal["PLAINTEXT", "SECRETS_MANAGER"] | None = None


class ActionDeclaration(msgspec.Struct, frozen=True, omit_defaults=True):
    name: ActionName
    actionTypeId: ActionTypeId
    runOrder: RunOrder | None = None
    configuration: dict[ConfigKey, ConfigValue] | None = None
    commands: Annotated[list[Command], Meta(min_length=1, max_length=50)] | None = None
    outputArtifacts: list[JSONObject] | None = None
    inputArtifacts: list[JSONObject] | None = None
    outputVariables: Annotated[list[OutputVariable], Meta(min_length=1, max_length=15)] | None = (
        None
    )
    roleArn: RoleArn | None = None
    region: RegionName | None = None
    namespace: ActionNamespace | None = None
    timeoutInMinutes: ActionTimeout | None = None
    environmentVariables: (
        Annotated[list[EnvironmentVariable], Meta(min_length=1, max_length=10)] | None
    ) = None

    @property
    def run_order(self) -> int:
        return self.runOrder if self.runOrder is not None else 1


class RetryConfiguration(msgspec.Struct, frozen=True, omit_defaults=True):
    retryMode: StageRetryMode | None = None


class FailureConditions(msgspec.Struct, frozen=True, omit_defaults=True):
    result: FailureResult | None = None
    retryConfiguration: RetryConfiguration | None = None
    conditions: Annotated[list[JSONObject], Meta(min_length=1, max_length=1)] | None = None


class StageDeclaration(msgspec.Struct, frozen=True, omit_defaults=True):
    name: StageName
    actions: list[ActionDeclaration]
    blockers: list[JSONObject] | None = None
    onFailure: FailureConditions | None = None
    onSuccess: JSONObject | None = None
    beforeEntry: JSONObject | None = None

    def action(self, name: str) -> ActionDeclaration | None:
        for a in self.actions:
            if a.name == name:
                return a
        return None

    def run_orders(self) -> list[int]:
        return sorted({a.run_order for a in self.actions})

    def auto_retry_mode(self) -> StageRetryMode | None:
        """The retry mode of an ``onFailure: RETRY`` stage, else None."""
        of = self.onFailure
        if of is None or of.result != "RETRY":
            return None
        if of.retryConfiguration is not None and of.retryConfiguration.retryMode is not None:
            return of.retryConfiguration.retryMode
        return "FAILED_ACTIONS"


class PipelineDeclaration(msgspec.Struct, frozen=True, omit_defaults=True):
    name: PipelineName
    roleArn: RoleArn
    stages: list[StageDeclaration]
    artifactStore: JSONObject | None = None
    artifactStores: dict[RegionName, JSONObject] | None = None
    version: PipelineVersion | None = None
    executionMode: ExecutionMode | None = None
    pipelineType: PipelineType | None = None
    variables: Annotated[list[JSONObject], Meta(max_length=50)] | None = None
    triggers: Annotated[list[JSONObject], Meta(max_length=50)] | None = None

    @property
    def mode(self) -> ExecutionMode:
        return self.executionMode or "SUPERSEDED"

    def stage(self, name: str) -> StageDeclaration | None:
        for s in self.stages:
            if s.name == name:
                return s
        return None

    def stage_index(self, name: str) -> int:
        for i, s in enumerate(self.stages):
            if s.name == name:
                return i
        raise KeyError(name)


# AWS's documented quotas (CodePipeline "Quotas" page), enforced in every mode.
MAX_STAGES = 50  # stages in a pipeline
MAX_ACTIONS_PER_STAGE = 50  # actions in a stage
MAX_PARALLEL_ACTIONS = 50  # actions with the same runOrder in a stage


def declaration_problems(decl: PipelineDeclaration) -> list[str]:
    """Structural rules the shape alone cannot express (unique names, non-empty stages) and
    AWS's limits (:data:`MAX_STAGES`, :data:`MAX_ACTIONS_PER_STAGE`; name lengths are in the
    shape).

    Returned as human-readable messages; an empty list means the declaration is valid.
    """
    problems: list[str] = []
    if not decl.stages:
        problems.append("pipeline must have at least one stage")
    if len(decl.stages) > MAX_STAGES:
        problems.append(
            f"Pipeline has {len(decl.stages)} stage(s). "
            f"There should be a maximum of {MAX_STAGES} stages in a pipeline"
        )
        return problems  # the rest would repeat per stage
    for stage in decl.stages:
        if len(stage.actions) > MAX_ACTIONS_PER_STAGE:
            problems.append(
                f"Stage '{stage.name}' has {len(stage.actions)} action(s). "
                f"There should be a maximum of {MAX_ACTIONS_PER_STAGE} actions in a stage"
            )
    if problems:
        return problems
    seen_stages: set[str] = set()
    for stage in decl.stages:
        if stage.name in seen_stages:
            problems.append(f"duplicate stage name {stage.name!r}")
        seen_stages.add(stage.name)
        if not stage.actions:
            problems.append(f"stage {stage.name!r} must have at least one action")
        seen_actions: set[str] = set()
        for action in stage.actions:
            if action.name in seen_actions:
                problems.append(f"duplicate action name {action.name!r} in stage {stage.name!r}")
            seen_actions.add(action.name)
            t = action.actionTypeId
            is_commands = t.owner == "AWS" and t.category == "Compute" and t.provider == "Commands"
            if is_commands and not action.commands:
                problems.append(
                    f"action {action.name!r}: Compute/Commands needs a non-empty 'commands'"
                )
    return problems


# Action types the engine itself runs (owner AWS); any Custom/ThirdParty type is run by a job
# worker polling for it, so those are always accepted.
ENGINE_ACTION_TYPES = frozenset(
    {
        ("Compute", "Commands", "1"),
        ("Approval", "Manual", "1"),
        # source actions (app/domain/sources.py, workers/runners/sources.py)
        ("Source", "CodeStarSourceConnection", "1"),
        ("Source", "CodeCommit", "1"),
        ("Source", "S3", "1"),
    }
)
JOB_WORKER_OWNERS = frozenset({"Custom", "ThirdParty"})


def action_type_problems(decl: PipelineDeclaration) -> list[str]:
    """Actions whose type nothing can run: AWS-owned types other than the engine's own.

    One message per such action, naming it (``InvalidActionDeclarationException``).
    """
    problems: list[str] = []
    for stage in decl.stages:
        for action in stage.actions:
            t = action.actionTypeId
            if t.owner in JOB_WORKER_OWNERS:
                continue
            if t.owner == "AWS" and (t.category, t.provider, t.version) in ENGINE_ACTION_TYPES:
                continue
            problems.append(
                f"Action declaration for action '{action.name}' in stage '{stage.name}' is "
                f"invalid: ActionType (Category: '{t.category}', Provider: '{t.provider}', "
                f"Owner: '{t.owner}', Version: '{t.version}') is not available: stageline "
                "runs AWS Compute/Commands/1, Approval/Manual/1 and "
                "Source/CodeStarSourceConnection, CodeCommit and S3 (version 1); other types "
                "need owner "
                "Custom or ThirdParty (run by a job worker)"
            )
    return problems


def aws_strict_problems(decl: PipelineDeclaration) -> list[str]:
    """AWS's source-stage rules, checked only under ``serve --aws-strict``: at least two
    stages, source actions in the first stage and only there, an artifact store.

    Messages are AWS's own wording where it is known.
    """
    problems: list[str] = []
    if len(decl.stages) < 2:
        problems.append(
            f"Pipeline has only {len(decl.stages)} stage(s). "
            "There should be a minimum of 2 stages in a pipeline"
        )
    if decl.artifactStore is None and not decl.artifactStores:
        problems.append("Pipeline must have an artifactStore or artifactStores")
    for i, stage in enumerate(decl.stages):
        for action in stage.actions:
            is_source = action.actionTypeId.category == "Source"
            if i == 0 and not is_source:
                problems.append(
                    f"Stage '{stage.name}' (the first stage) can only contain source actions, "
                    f"but action '{action.name}' is of category "
                    f"'{action.actionTypeId.category}'"
                )
            elif i > 0 and is_source:
                problems.append(
                    f"Action '{action.name}' in stage '{stage.name}' is a source action; "
                    "source actions can only be in the first stage"
                )
    return problems
