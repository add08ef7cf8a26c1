"""A minimal valid request (botocore's parameters) for every CodePipeline operation.

``minimal_requests(pipeline, ...)`` fills in the names the caller has; used by the shape
tests (botocore serializes each one and our Structs decode it) and by the end-to-end test
that sends all 44 through boto3.
"""

from __future__ import annotations

from typing import Any

UUID = "0f4a1b2c-3d4e-4f50-8a6b-7c8d9e0f1a2b"
ROLE = "arn:aws:iam::123456789012:role/r"


def minimal_requests(
    pipeline: str = "p",
    stage: str = "S",
    action: str = "A",
    *,
    execution_id: str = UUID,
    action_type: dict[str, str] | None = None,
    account: str = "000000000000",
    region: str = "us-east-1",
) -> dict[str, dict[str, Any]]:
    atid = action_type or {
        "category": "Build",
        "owner": "Custom",
        "provider": "MyProv",
        "version": "1",
    }
    third = {**atid, "owner": "ThirdParty"}
    decl = {
        "name": pipeline,
        "roleArn": ROLE,
        "stages": [
            {
                "name": stage,
                "actions": [
                    {
                        "name": action,
                        "actionTypeId": {
                            "category": "Compute",
                            "owner": "AWS",
                            "provider": "Commands",
                            "version": "1",
                        },
                        "commands": ["true"],
                    }
                ],
            }
        ],
    }
    arn = f"arn:aws:codepipeline:{region}:{account}:{pipeline}"
    artifacts = {"minimumCount": 0, "maximumCount": 1}
    return {
        "AcknowledgeJob": {"jobId": UUID, "nonce": "1"},
        "AcknowledgeThirdPartyJob": {"jobId": UUID, "nonce": "1", "clientToken": "c"},
        "CreateCustomActionType": {
            "category": atid["category"],
            "provider": atid["provider"],
            "version": atid["version"],
            "inputArtifactDetails": artifacts,
            "outputArtifactDetails": artifacts,
        },
        "CreatePipeline": {"pipeline": decl},
        "DeleteCustomActionType": {
            "category": atid["category"],
            "provider": atid["provider"],
            "version": atid["version"],
        },
        "DeletePipeline": {"name": pipeline},
        "DeleteWebhook": {"name": "hook"},
        "DeregisterWebhookWithThirdParty": {"webhookName": "hook"},
        "DisableStageTransition": {
            "pipelineName": pipeline,
            "stageName": stage,
            "transitionType": "Inbound",
            "reason": "because",
        },
        "EnableStageTransition": {
            "pipelineName": pipeline,
            "stageName": stage,
            "transitionType": "Inbound",
        },
        "GetActionType": {
            "category": "Compute",
            "owner": "AWS",
            "provider": "Commands",
            "version": "1",
        },
        "GetJobDetails": {"jobId": UUID},
        "GetPipeline": {"name": pipeline},
        "GetPipelineExecution": {"pipelineName": pipeline, "pipelineExecutionId": execution_id},
        "GetPipelineState": {"name": pipeline},
        "GetThirdPartyJobDetails": {"jobId": UUID, "clientToken": "c"},
        "ListActionExecutions": {"pipelineName": pipeline},
        "ListActionTypes": {},
        "ListDeployActionExecutionTargets": {"pipelineName": pipeline, "actionExecutionId": UUID},
        "ListPipelineExecutions": {"pipelineName": pipeline},
        "ListPipelines": {},
        "ListRuleExecutions": {"pipelineName": pipeline},
        "ListRuleTypes": {},
        "ListTagsForResource": {"resourceArn": arn},
        "ListWebhooks": {},
        "OverrideStageCondition": {
            "pipelineName": pipeline,
            "stageName": stage,
            "pipelineExecutionId": execution_id,
            "conditionType": "BEFORE_ENTRY",
        },
        "PollForJobs": {"actionTypeId": atid},
        "PollForThirdPartyJobs": {"actionTypeId": third},
        "PutActionRevision": {
            "pipelineName": pipeline,
            "stageName": stage,
            "actionName": action,
            "actionRevision": {
                "revisionId": "r1",
                "revisionChangeId": "c1",
                "created": 1700000000,
            },
        },
        "PutApprovalResult": {
            "pipelineName": pipeline,
            "stageName": stage,
            "actionName": action,
            "result": {"summary": "", "status": "Approved"},
            "token": UUID,
        },
        "PutJobFailureResult": {
            "jobId": UUID,
            "failureDetails": {"type": "JobFailed", "message": "boom"},
        },
        "PutJobSuccessResult": {"jobId": UUID},
        "PutThirdPartyJobFailureResult": {
            "jobId": UUID,
            "clientToken": "c",
            "failureDetails": {"type": "JobFailed", "message": "boom"},
        },
        "PutThirdPartyJobSuccessResult": {"jobId": UUID, "clientToken": "c"},
        "PutWebhook": {
            "webhook": {
                "name": "hook",
                "targetPipeline": pipeline,
                "targetAction": action,
                "filters": [{"jsonPath": "$.ref"}],
                "authentication": "UNAUTHENTICATED",
                "authenticationConfiguration": {},
            }
        },
        "RegisterWebhookWithThirdParty": {"webhookName": "hook"},
        "RetryStageExecution": {
            "pipelineName": pipeline,
            "stageName": stage,
            "pipelineExecutionId": execution_id,
            "retryMode": "FAILED_ACTIONS",
        },
        "RollbackStage": {
            "pipelineName": pipeline,
            "stageName": stage,
            "targetPipelineExecutionId": execution_id,
        },
        "StartPipelineExecution": {"name": pipeline},
        "StopPipelineExecution": {"pipelineName": pipeline, "pipelineExecutionId": execution_id},
        "TagResource": {"resourceArn": arn, "tags": [{"key": "team", "value": "ci"}]},
        "UntagResource": {"resourceArn": arn, "tagKeys": ["team"]},
        "UpdateActionType": {
            "actionType": {
                "executor": {"configuration": {}, "type": "JobWorker"},
                "id": {"category": "Build", "owner": "ThirdParty", "provider": "X", "version": "1"},
                "inputArtifactDetails": artifacts,
                "outputArtifactDetails": artifacts,
            }
        },
        "UpdatePipeline": {"pipeline": decl},
    }
