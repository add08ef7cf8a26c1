"""Operation inputs: msgspec mirrors of the CodePipeline ``<Operation>Input`` shapes.

Field names, required-ness and every constraint (length, pattern, enum, numeric range, list
and map sizes) are the botocore service model's; ``tests/test_shapes_vs_botocore.py`` walks
each Struct next to the model shape and proves it. Nested declaration shapes come from
:mod:`app.domain.model`. Patterns in the model are whole-string matches, so they are anchored
here. Unknown fields are ignored (``forbid_unknown_fields`` stays off), because newer SDKs may
send members this service does not know yet.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from app.domain.model import (
    ActionName,
    ActionTypeId,
    ConfigKey,
    PipelineDeclaration,
    PipelineExecutionId,
    PipelineName,
    PipelineVersion,
    StageName,
    StageRetryMode,
)

__all__ = [
    "OPERATIONS",
    "AcknowledgeJobInput",
    "ActionExecutionFilter",
    "ApprovalResult",
    "CreatePipelineInput",
    "CurrentRevision",
    "DeletePipelineInput",
    "ExecutionDetails",
    "FailureDetails",
    "GetJobDetailsInput",
    "GetPipelineExecutionInput",
    "GetPipelineInput",
    "GetPipelineStateInput",
    "LatestInPipelineExecutionFilter",
    "ListActionExecutionsInput",
    "ListPipelineExecutionsInput",
    "ListPipelinesInput",
    "PipelineExecutionFilter",
    "PipelineVariable",
    "PollForJobsInput",
    "PutApprovalResultInput",
    "PutJobFailureResultInput",
    "PutJobSuccessResultInput",
    "RetryStageExecutionInput",
    "SourceRevisionOverride",
    "StartPipelineExecutionInput",
    "StopPipelineExecutionInput",
    "SucceededInStageFilter",
    "Tag",
    "UpdatePipelineInput",
]

# Scalars the domain model does not define (names as in the service model).
JobId = PipelineExecutionId  # same UUID pattern in the model
ApprovalToken = PipelineExecutionId  # same UUID pattern in the model
NextToken = Annotated[str, Meta(min_length=1, max_length=2048)]
MaxResults = Annotated[int, Meta(ge=1, le=100)]
MaxPipelines = Annotated[int, Meta(ge=1, le=1000)]
MaxBatchSize = Annotated[int, Meta(ge=1)]
Nonce = Annotated[str, Meta(min_length=1, max_length=50)]
TagKey = Annotated[str, Meta(min_length=1, max_length=128)]
TagValue = Annotated[str, Meta(min_length=0, max_length=256)]
PipelineVariableName = Annotated[
    str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9@\-_]+\Z")
]
# The model's pattern for this one is ``.*`` (any single line); it is not repeated here.
PipelineVariableValue = Annotated[str, Meta(min_length=1, max_length=1000)]
ClientRequestToken = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[a-zA-Z0-9-]+\Z")]
SourceRevisionType = Literal["COMMIT_ID", "IMAGE_DIGEST", "S3_OBJECT_VERSION_ID", "S3_OBJECT_KEY"]
Revision = Annotated[str, Meta(min_length=1, max_length=1500)]
RevisionChangeIdentifier = Annotated[str, Meta(min_length=1, max_length=100)]
RevisionSummary = Annotated[str, Meta(min_length=1, max_length=2048)]
ContinuationToken = Annotated[str, Meta(min_length=1, max_length=2048)]
ExecutionSummary = Annotated[str, Meta(min_length=1, max_length=2048)]
ExecutionId = Annotated[str, Meta(min_length=1, max_length=1500)]
Percentage = Annotated[int, Meta(ge=0, le=100)]
OutputVariablesKey = Annotated[str, Meta(pattern=r"^[A-Za-z0-9@\-_]+\Z")]
FailureType = Literal[
    "JobFailed",
    "ConfigurationError",
    "PermissionError",
    "RevisionOutOfSync",
    "RevisionUnavailable",
    "SystemUnavailable",
]
Message = Annotated[str, Meta(min_length=1, max_length=5000)]
ApprovalSummary = Annotated[str, Meta(min_length=0, max_length=512)]
ApprovalStatus = Literal["Approved", "Rejected"]
StopReason = Annotated[str, Meta(max_length=200)]
StartTimeRange = Literal["Latest", "All"]
QueryableValue = Annotated[str, Meta(min_length=1, max_length=50, pattern=r"^[a-zA-Z0-9_-]+\Z")]
# Epoch seconds (JSON 1.1 timestamps are numbers); msgspec accepts ints here too.
Time = float


# --- nested shapes ------------------------------------------------------------------------


class Tag(msgspec.Struct, frozen=True, omit_defaults=True):
    key: TagKey
    value: TagValue


class PipelineVariable(msgspec.Struct, frozen=True, omit_defaults=True):
    name: PipelineVariableName
    value: PipelineVariableValue


class SourceRevisionOverride(msgspec.Struct, frozen=True, omit_defaults=True):
    actionName: ActionName
    revisionType: SourceRevisionType
    revisionValue: Revision


class SucceededInStageFilter(msgspec.Struct, frozen=True, omit_defaults=True):
    stageName: StageName | None = None


class PipelineExecutionFilter(msgspec.Struct, frozen=True, omit_defaults=True):
    succeededInStage: SucceededInStageFilter | None = None


class LatestInPipelineExecutionFilter(msgspec.Struct, frozen=True, omit_defaults=True):
    pipelineExecutionId: PipelineExecutionId
    startTimeRange: StartTimeRange


class ActionExecutionFilter(msgspec.Struct, frozen=True, omit_defaults=True):
    pipelineExecutionId: PipelineExecutionId | None = None
    latestInPipelineExecution: LatestInPipelineExecutionFilter | None = None


class CurrentRevision(msgspec.Struct, frozen=True, omit_defaults=True):
    revision: Revision
    changeIdentifier: RevisionChangeIdentifier
    created: Time | None = None
    revisionSummary: RevisionSummary | None = None


class ExecutionDetails(msgspec.Struct, frozen=True, omit_defaults=True):
    summary: ExecutionSummary | None = None
    externalExecutionId: ExecutionId | None = None
    percentComplete: Percentage | None = None


class FailureDetails(msgspec.Struct, frozen=True, omit_defaults=True):
    type: FailureType
    message: Message
    externalExecutionId: ExecutionId | None = None


class ApprovalResult(msgspec.Struct, frozen=True, omit_defaults=True):
    summary: ApprovalSummary
    status: ApprovalStatus


# --- operation inputs ---------------------------------------------------------------------


class RetryStageExecutionInput(msgspec.Struct, frozen=True, omit_defaults=True):
    pipelineName: PipelineName
    stageName: StageName
    pipelineExecutionId: PipelineExecutionId
    retryMode: StageRetryMode


class CreatePipelineInput(msgspec.Struct, frozen=True, omit_defaults=True):
    pipeline: PipelineDeclaration
    tags: list[Tag] | None = None


class GetPipelineInput(msgspec.Struct, frozen=True, omit_defaults=True):
    name: PipelineName
    version: PipelineVersion | None = None


class UpdatePipelineInput(msgspec.Struct, frozen=True, omit_defaults=True):
    pipeline: PipelineDeclaration


class DeletePipelineInput(msgspec.Struct, frozen=True, omit_defaults=True):
    name: PipelineName


class ListPipelinesInput(msgspec.Struct, frozen=True, omit_defaults=True):
    nextToken: NextToken | None = None
    maxResults: MaxPipelines | None = None


class StartPipelineExecutionInput(msgspec.Struct, frozen=True, omit_defaults=True):
    name: PipelineName
    variables: Annotated[list[PipelineVariable], Meta(min_length=1, max_length=50)] | None = None
    clientRequestToken: ClientRequestToken | None = None
    sourceRevisions: (
        Annotated[list[SourceRevisionOverride], Meta(min_length=0, max_length=50)] | None
    ) = None


class StopPipelineExecutionInput(msgspec.Struct, frozen=True, omit_defaults=True):
    pipelineName: PipelineName
    pipelineExecutionId: PipelineExecutionId
    abandon: bool | None = None
    reason: StopReason | None = None


class GetPipelineExecutionInput(msgspec.Struct, frozen=True, omit_defaults=True):
    pipelineName: PipelineName
    pipelineExecutionId: PipelineExecutionId


class ListPipelineExecutionsInput(msgspec.Struct, frozen=True, omit_defaults=True):
    pipelineName: PipelineName
    maxResults: MaxResults | None = None
    filter: PipelineExecutionFilter | None = None
    nextToken: NextToken | None = None


class GetPipelineStateInput(msgspec.Struct, frozen=True, omit_defaults=True):
    name: PipelineName


class ListActionExecutionsInput(msgspec.Struct, frozen=True, omit_defaults=True):
    pipelineName: PipelineName
    filter: ActionExecutionFilter | None = None
    maxResults: MaxResults | None = None
    nextToken: NextToken | None = None


class PollForJobsInput(msgspec.Struct, frozen=True, omit_defaults=True):
    actionTypeId: ActionTypeId
    maxBatchSize: MaxBatchSize | None = None
    queryParam: (
        Annotated[dict[ConfigKey, QueryableValue], Meta(min_length=0, max_length=1)] | None
    ) = None


class AcknowledgeJobInput(msgspec.Struct, frozen=True, omit_defaults=True):
    jobId: JobId
    nonce: Nonce


class GetJobDetailsInput(msgspec.Struct, frozen=True, omit_defaults=True):
    jobId: JobId


class PutJobSuccessResultInput(msgspec.Struct, frozen=True, omit_defaults=True):
    jobId: JobId
    currentRevision: CurrentRevision | None = None
    continuationToken: ContinuationToken | None = None
    executionDetails: ExecutionDetails | None = None
    outputVariables: dict[OutputVariablesKey, str] | None = None


class PutJobFailureResultInput(msgspec.Struct, frozen=True, omit_defaults=True):
    jobId: JobId
    failureDetails: FailureDetails


class PutApprovalResultInput(msgspec.Struct, frozen=True, omit_defaults=True):
    pipelineName: PipelineName
    stageName: StageName
    actionName: ActionName
    result: ApprovalResult
    token: ApprovalToken


OPERATIONS: dict[str, type[msgspec.Struct]] = {
    "RetryStageExecution": RetryStageExecutionInput,
    "CreatePipeline": CreatePipelineInput,
    "GetPipeline": GetPipelineInput,
    "UpdatePipeline": UpdatePipelineInput,
    "DeletePipeline": DeletePipelineInput,
    "ListPipelines": ListPipelinesInput,
    "StartPipelineExecution": StartPipelineExecutionInput,
    "StopPipelineExecution": StopPipelineExecutionInput,
    "GetPipelineExecution": GetPipelineExecutionInput,
    "ListPipelineExecutions": ListPipelineExecutionsInput,
    "GetPipelineState": GetPipelineStateInput,
    "ListActionExecutions": ListActionExecutionsInput,
    "PollForJobs": PollForJobsInput,
    "AcknowledgeJob": AcknowledgeJobInput,
    "GetJobDetails": GetJobDetailsInput,
    "PutJobSuccessResult": PutJobSuccessResultInput,
    "PutJobFailureResult": PutJobFailureResultInput,
    "PutApprovalResult": PutApprovalResultInput,
}
"""Operation name (the part after ``CodePipeline_20150709.``) -> its input Struct."""


def _generated() -> None:
    """The remaining operations of the model decode into Structs built from the model."""
    from app.api.modelshapes import input_struct, service_model

    for op in service_model().operation_names:
        if op not in OPERATIONS:
            OPERATIONS[op] = input_struct(op)


_generated()
