"""The CodePipeline operations beyond the engine's core: tags, action types, third-party jobs,
action revisions, and the pipeline features stageline does not have yet.

Every one answers with its model output shape or one of its modelled errors (never
``UnsupportedOperationException``); docs/api.md tells what each does here. Inputs decode into
the Structs :func:`app.api.modelshapes.input_struct` builds from the service model.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from app import catalog as cat
from app import queries as q
from app.api.errors import AwsError
from app.api.wire import RequestContext
from app.domain.errors import DomainError
from app.domain.model import NAME_PATTERN, ActionTypeId, PipelineDeclaration
from app.domain.sources import put_revision_override
from app.engine import Engine
from app.repository import Origin
from app.webhooks.ops import WebhookOps

JSON = dict[str, Any]
Op = Callable[[Any, RequestContext], Awaitable[JSON]]

# The action types the engine itself runs (ListActionTypes / GetActionType list them).
BUILTIN_TYPES: list[JSON] = [
    {
        "id": {"category": "Compute", "owner": "AWS", "provider": "Commands", "version": "1"},
        "inputArtifactDetails": {"minimumCount": 0, "maximumCount": 5},
        "outputArtifactDetails": {"minimumCount": 0, "maximumCount": 1},
        "description": "Runs the action's shell commands (stageline's runner)",
    },
    {
        "id": {"category": "Approval", "owner": "AWS", "provider": "Manual", "version": "1"},
        "inputArtifactDetails": {"minimumCount": 0, "maximumCount": 0},
        "outputArtifactDetails": {"minimumCount": 0, "maximumCount": 0},
        "description": "Waits for PutApprovalResult",
    },
    # source actions (docs/pipelines.md, "Sources"): one output artifact, no input
    {
        "id": {
            "category": "Source",
            "owner": "AWS",
            "provider": "CodeStarSourceConnection",
            "version": "1",
        },
        "inputArtifactDetails": {"minimumCount": 0, "maximumCount": 0},
        "outputArtifactDetails": {"minimumCount": 1, "maximumCount": 1},
        "description": "Fetches a git branch or commit (STAGELINE_GIT_ROOT / connections file)",
    },
    {
        "id": {"category": "Source", "owner": "AWS", "provider": "CodeCommit", "version": "1"},
        "inputArtifactDetails": {"minimumCount": 0, "maximumCount": 0},
        "outputArtifactDetails": {"minimumCount": 1, "maximumCount": 1},
        "description": "Fetches a git branch or commit (STAGELINE_GIT_ROOT)",
    },
    {
        "id": {"category": "Source", "owner": "AWS", "provider": "S3", "version": "1"},
        "inputArtifactDetails": {"minimumCount": 0, "maximumCount": 0},
        "outputArtifactDetails": {"minimumCount": 1, "maximumCount": 1},
        "description": "Fetches a zip object from the deployment's S3 endpoint",
    },
]
_ARN_RE = re.compile(r"^arn:aws:codepipeline:(?P<region>[^:]+):(?P<account>\d{12}):(?P<rest>.+)$")
_PIPELINE_NAME_RE = re.compile(NAME_PATTERN)


def type_key(t: JSON | ActionTypeId) -> str:
    if isinstance(t, ActionTypeId):
        return t.key
    return f"{t['owner']}/{t['category']}/{t['provider']}/{t['version']}"


def _type_text(t: ActionTypeId) -> str:
    return (
        f"ActionType (Category: '{t.category}', Provider: '{t.provider}', "
        f"Owner: '{t.owner}', Version: '{t.version}')"
    )


def check_tags(tags: list[Any] | None) -> dict[str, str]:
    """Tags of a request as a dict, InvalidTagsException for AWS's refusals."""
    out: dict[str, str] = {}
    for t in tags or []:
        if t.key.lower().startswith("aws:"):
            raise AwsError(
                "InvalidTagsException",
                f"Tag key '{t.key}' is not valid: the prefix 'aws:' is reserved for AWS use",
            )
        if t.key in out:
            raise AwsError("InvalidTagsException", f"Tag key '{t.key}' appears more than once")
        out[t.key] = t.value
    return out


def _too_many(resource_arn: str, total: int) -> AwsError:
    return AwsError(
        "TooManyTagsException",
        f"Resource '{resource_arn}' would have {total} tags; the limit is {cat.MAX_TAGS}",
    )


def _client_id(job_id: str, nonce: str | None) -> str:
    """The clientId of a third-party job: derived from its id and nonce (which only the
    engine and the job's poller know), UUID-shaped as the model wants."""
    h = hashlib.blake2b(f"{job_id}:{nonce}".encode(), digest_size=16, person=b"sl-3p-client")
    x = h.hexdigest()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:32]}"


class Operations:
    def __init__(
        self,
        engine: Engine,
        *,
        region: str,
        account: str,
        origin: Callable[[RequestContext], Origin],
        webhook_base_url: str | None = None,
    ) -> None:
        self.engine = engine
        self.region = region
        self.account = account
        self.origin = origin
        self.catalog = cat.CatalogStore(engine.redis, engine.keys.namespace)
        self.webhooks = WebhookOps(self, webhook_base_url)

    # --- resources ------------------------------------------------------------------------

    def pipeline_arn(self, name: str) -> str:
        return q.pipeline_arn(name, region=self.region, account=self.account)

    def type_arn(self, key: str) -> str:
        return f"arn:aws:codepipeline:{self.region}:{self.account}:actiontype:{key}"

    async def pipeline_resource(self, name: str) -> str:
        """The tag resource id of the pipeline ``name`` as it exists now (its ARN and creation
        time: a re-created pipeline has fresh tags)."""
        head = await self.engine.head(name)
        return f"{self.pipeline_arn(name)}@{head.created}"

    async def resource(self, arn: str, catalog: cat.Catalog) -> str:
        m = _ARN_RE.match(arn)
        if m is None:
            raise AwsError("InvalidArnException", f"The ARN '{arn}' is not valid")
        missing = AwsError("ResourceNotFoundException", f"The resource '{arn}' does not exist")
        if m["region"] != self.region or m["account"] != self.account:
            raise missing
        rest = m["rest"]
        if rest.startswith("actiontype:"):
            key = rest.removeprefix("actiontype:")
            if key not in catalog.action_types:
                raise missing
            return arn
        if rest.startswith("webhook:"):
            found = await self.webhooks.tag_resource_of(rest.removeprefix("webhook:"))
            if found is None:
                raise missing
            return found
        if _PIPELINE_NAME_RE.match(rest) is None or len(rest) > 100:
            raise AwsError("InvalidArnException", f"The ARN '{arn}' is not valid")
        try:
            return await self.pipeline_resource(rest)
        except DomainError:
            raise missing from None

    # --- pipelines' tags and custom actions -------------------------------------------------

    async def check_action_types(self, decl: PipelineDeclaration) -> None:
        """A Custom action needs its type created (CreateCustomActionType), as in AWS."""
        customs = [a for st in decl.stages for a in st.actions if a.actionTypeId.owner == "Custom"]
        if not customs:
            return
        known = (await self.catalog.load()).action_types
        for a in customs:
            if a.actionTypeId.key not in known:
                raise AwsError(
                    "InvalidActionDeclarationException",
                    f"{_type_text(a.actionTypeId)} in action '{a.name}' is not available "
                    f"in region '{self.region.upper().replace('-', '_')}'",
                )

    async def check_custom_type(self, t: ActionTypeId) -> None:
        """PollForJobs of a Custom type that was never created: ActionTypeNotFoundException."""
        if t.owner == "Custom" and t.key not in (await self.catalog.load()).action_types:
            raise AwsError(
                "ActionTypeNotFoundException",
                f"{_type_text(t)} does not exist: create it with CreateCustomActionType",
            )

    async def tag_new_pipeline(self, name: str, tags: dict[str, str]) -> None:
        if not tags:
            return
        resource = await self.pipeline_resource(name)
        await self.catalog.change(lambda c: [cat.TagsSet(resource=resource, tags=tags)])

    async def pipeline_tags(self, name: str) -> dict[str, str]:
        resource = await self.pipeline_resource(name)
        return dict((await self.catalog.load()).tags.get(resource, {}))

    async def forget_pipeline(self, resource: str) -> None:
        def decide(c: cat.Catalog) -> list[cat.CatalogEvent]:
            keys = sorted(c.tags.get(resource, {}))
            return [cat.TagsRemoved(resource=resource, keys=keys)] if keys else []

        await self.catalog.change(decide)

    # --- tags ------------------------------------------------------------------------------

    async def tag_resource(self, inp: Any, ctx: RequestContext) -> JSON:
        tags = check_tags(inp.tags)
        resource = await self.resource(inp.resourceArn, await self.catalog.load())

        def decide(c: cat.Catalog) -> list[cat.CatalogEvent]:
            total = len(set(c.tags.get(resource, {})) | set(tags))
            if total > cat.MAX_TAGS:
                raise _too_many(inp.resourceArn, total)
            return [cat.TagsSet(resource=resource, tags=tags)]

        await self.catalog.change(decide)
        return {}

    async def untag_resource(self, inp: Any, ctx: RequestContext) -> JSON:
        for k in inp.tagKeys:
            if k.lower().startswith("aws:"):
                raise AwsError("InvalidTagsException", f"Tag key '{k}' is reserved for AWS use")
        resource = await self.resource(inp.resourceArn, await self.catalog.load())
        keys = list(inp.tagKeys)
        await self.catalog.change(lambda c: [cat.TagsRemoved(resource=resource, keys=keys)])
        return {}

    async def list_tags_for_resource(self, inp: Any, ctx: RequestContext) -> JSON:
        catalog = await self.catalog.load()
        resource = await self.resource(inp.resourceArn, catalog)
        items = sorted(catalog.tags.get(resource, {}).items())
        start = 0
        if inp.nextToken is not None:
            try:
                after = base64.urlsafe_b64decode(inp.nextToken.encode()).decode()
            except (ValueError, UnicodeDecodeError):
                raise AwsError("InvalidNextTokenException", "The nextToken is not valid") from None
            start = next((i for i, (k, _) in enumerate(items) if k > after), len(items))
        limit = inp.maxResults or 100
        page = items[start : start + limit]
        out: JSON = {"tags": [{"key": k, "value": v} for k, v in page]}
        if start + limit < len(items) and page:
            out["nextToken"] = base64.urlsafe_b64encode(page[-1][0].encode()).decode()
        return out

    # --- action types ----------------------------------------------------------------------

    async def create_custom_action_type(self, inp: Any, ctx: RequestContext) -> JSON:
        tags = check_tags(inp.tags)
        if len(tags) > cat.MAX_TAGS:
            raise _too_many("the new action type", len(tags))
        tid = {
            "category": inp.category,
            "owner": "Custom",
            "provider": inp.provider,
            "version": inp.version,
        }
        key = type_key(tid)
        doc = q._obj(
            id=tid,
            settings=msgspec.to_builtins(inp.settings) if inp.settings is not None else None,
            actionConfigurationProperties=msgspec.to_builtins(inp.configurationProperties or []),
            inputArtifactDetails=msgspec.to_builtins(inp.inputArtifactDetails),
            outputArtifactDetails=msgspec.to_builtins(inp.outputArtifactDetails),
        )
        arn = self.type_arn(key)

        def decide(c: cat.Catalog) -> list[cat.CatalogEvent]:
            if key in c.action_types:
                raise AwsError("ValidationException", f"ActionType '{key}' already exists")
            if key in c.deleted_types:
                raise AwsError(
                    "ValidationException",
                    f"ActionType '{key}' was deleted; a deleted custom action type cannot "
                    "be created again: use another version",
                )
            if len(c.action_types) >= cat.MAX_CUSTOM_ACTION_TYPES:
                raise AwsError(
                    "LimitExceededException",
                    f"The account has {len(c.action_types)} custom action types; "
                    f"the limit is {cat.MAX_CUSTOM_ACTION_TYPES}",
                )
            events: list[cat.CatalogEvent] = [
                cat.ActionTypeCreated(key=key, declaration=doc, at=cat.now())
            ]
            if tags:
                events.append(cat.TagsSet(resource=arn, tags=tags))
            return events

        await self.catalog.change(decide)
        out: JSON = {"actionType": doc}
        if tags:
            out["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
        return out

    async def delete_custom_action_type(self, inp: Any, ctx: RequestContext) -> JSON:
        key = type_key({**msgspec.to_builtins(inp), "owner": "Custom"})
        arn = self.type_arn(key)

        def decide(c: cat.Catalog) -> list[cat.CatalogEvent]:
            if key not in c.action_types:
                raise AwsError("ValidationException", f"ActionType '{key}' does not exist")
            events: list[cat.CatalogEvent] = [cat.ActionTypeDeleted(key=key, at=cat.now())]
            if c.tags.get(arn):
                events.append(cat.TagsRemoved(resource=arn, keys=sorted(c.tags[arn])))
            return events

        await self.catalog.change(decide)
        return {}

    async def list_action_types(self, inp: Any, ctx: RequestContext) -> JSON:
        catalog = await self.catalog.load()
        types = [*BUILTIN_TYPES, *(catalog.action_types[k] for k in sorted(catalog.action_types))]
        if inp.actionOwnerFilter is not None:
            types = [t for t in types if t["id"]["owner"] == inp.actionOwnerFilter]
        if inp.regionFilter is not None and inp.regionFilter != self.region:
            types = []
        if inp.nextToken is not None:
            raise AwsError(
                "InvalidNextTokenException",
                "The nextToken is not valid: ListActionTypes answers in one page",
            )
        return {"actionTypes": [{k: v for k, v in t.items() if k != "description"} for t in types]}

    async def get_action_type(self, inp: Any, ctx: RequestContext) -> JSON:
        key = type_key(msgspec.to_builtins(inp))
        for t in BUILTIN_TYPES:
            if type_key(t["id"]) == key:
                return {
                    "actionType": {
                        "id": t["id"],
                        "description": t["description"],
                        "executor": {"configuration": {}, "type": "JobWorker"},
                        "inputArtifactDetails": t["inputArtifactDetails"],
                        "outputArtifactDetails": t["outputArtifactDetails"],
                    }
                }
        raise AwsError(
            "ActionTypeNotFoundException",
            f"ActionType '{key}' does not exist (stageline knows no third-party types; "
            "custom types are listed by ListActionTypes)",
        )

    async def update_action_type(self, inp: Any, ctx: RequestContext) -> JSON:
        key = type_key(msgspec.to_builtins(inp.actionType.id))
        if any(type_key(t["id"]) == key for t in BUILTIN_TYPES):
            raise AwsError(
                "RequestFailedException",
                f"ActionType '{key}' is run by stageline itself and cannot be updated",
            )
        raise AwsError(
            "ActionTypeNotFoundException",
            f"ActionType '{key}' does not exist (stageline knows no third-party types)",
        )

    # --- third-party jobs ------------------------------------------------------------------

    async def _third_party_job(self, job_id: str, client_token: str) -> Any:
        try:
            j = await self.engine.job(job_id)
        except DomainError:
            raise AwsError("JobNotFoundException", f"Job {job_id} not found") from None
        decl = j.state.action_declaration(j.execution, j.action.stageName, j.action.actionName)
        if decl is None or decl.actionTypeId.owner != "ThirdParty":
            raise AwsError("JobNotFoundException", f"Job {job_id} is not a third-party job")
        if client_token != _client_id(job_id, j.action.jobNonce):
            raise AwsError(
                "InvalidClientTokenException",
                f"The client token was not valid for job {job_id}: use the clientId "
                "PollForThirdPartyJobs returned",
            )
        return j

    async def poll_for_third_party_jobs(self, inp: Any, ctx: RequestContext) -> JSON:
        t = msgspec.convert(msgspec.to_builtins(inp.actionTypeId), ActionTypeId)
        if t.owner != "ThirdParty":
            raise AwsError(
                "ActionTypeNotFoundException",
                f"{_type_text(t)} is not a third-party action type: poll it with PollForJobs",
            )
        found = await self.engine.poll_for_jobs(t, inp.maxBatchSize or 1, {})
        return {
            "jobs": [
                {"clientId": _client_id(j.ref.jobId, j.action.jobNonce), "jobId": j.ref.jobId}
                for j in found
            ]
        }

    async def acknowledge_third_party_job(self, inp: Any, ctx: RequestContext) -> JSON:
        await self._third_party_job(inp.jobId, inp.clientToken)
        status = await self.engine.acknowledge_job(inp.jobId, inp.nonce, self.origin(ctx))
        return {"status": status}

    async def get_third_party_job_details(self, inp: Any, ctx: RequestContext) -> JSON:
        j = await self._third_party_job(inp.jobId, inp.clientToken)
        doc = q.get_job_details(
            j.state,
            j.ref.executionId,
            j.ref.actionExecutionId,
            account=self.account,
            region=self.region,
        )["jobDetails"]
        return {"jobDetails": q._obj(id=doc["id"], data=doc["data"], nonce=j.action.jobNonce)}

    async def put_third_party_job_success_result(self, inp: Any, ctx: RequestContext) -> JSON:
        await self._third_party_job(inp.jobId, inp.clientToken)
        d = inp.executionDetails
        await self.engine.put_job_result(
            inp.jobId,
            succeeded=True,
            summary=d.summary if d is not None else None,
            external_execution_id=d.externalExecutionId if d is not None else None,
            origin=self.origin(ctx),
        )
        return {}

    async def put_third_party_job_failure_result(self, inp: Any, ctx: RequestContext) -> JSON:
        await self._third_party_job(inp.jobId, inp.clientToken)
        f = inp.failureDetails
        await self.engine.put_job_result(
            inp.jobId,
            succeeded=False,
            error_code=f.type,
            message=f.message,
            summary=f.message,
            external_execution_id=f.externalExecutionId,
            origin=self.origin(ctx),
        )
        return {}

    # --- revisions, deploy targets ---------------------------------------------------------

    async def _stage(self, pipeline: str, stage: str) -> PipelineDeclaration:
        decl = (await self.engine.head(pipeline)).require_declaration()
        if decl.stage(stage) is None:
            raise AwsError(
                "StageNotFoundException", f"Stage '{stage}' not found in pipeline '{pipeline}'"
            )
        return decl

    async def put_action_revision(self, inp: Any, ctx: RequestContext) -> JSON:
        decl = await self._stage(inp.pipelineName, inp.stageName)
        stage = decl.stage(inp.stageName)
        assert stage is not None
        action = stage.action(inp.actionName)
        if action is None:
            raise AwsError(
                "ActionNotFoundException",
                f"Action '{inp.actionName}' not found in stage '{inp.stageName}'",
            )
        # every revision put is new and starts a run; a source stageline runs fetches it
        eid = await self.engine.start_execution(
            inp.pipelineName,
            self.origin(ctx),
            trigger_detail=ctx.actor,
            source_revisions=put_revision_override(action, inp.actionRevision.revisionId),
        )
        return {"newRevision": True, "pipelineExecutionId": eid}

    async def list_deploy_action_execution_targets(self, inp: Any, ctx: RequestContext) -> JSON:
        if inp.pipelineName is None:
            raise AwsError(
                "ValidationException",
                "stageline needs 'pipelineName' to find an action execution",
            )
        token: str | None = None
        while True:
            page = await self.engine.list_action_executions(
                inp.pipelineName, max_results=100, next_token=token
            )
            for d in page.get("actionExecutionDetails", []):
                if d["actionExecutionId"] == inp.actionExecutionId:
                    return {"targets": []}  # stageline's actions deploy to no targets
            token = page.get("nextToken")
            if token is None:
                raise AwsError(
                    "ActionExecutionNotFoundException",
                    f"Action execution '{inp.actionExecutionId}' not found in pipeline "
                    f"'{inp.pipelineName}'",
                )

    # --- features stageline does not have (yet) -------------------------------------------

    async def enable_stage_transition(self, inp: Any, ctx: RequestContext) -> JSON:
        await self.engine.enable_stage_transition(
            inp.pipelineName, inp.stageName, inp.transitionType, self.origin(ctx)
        )
        return {}

    async def disable_stage_transition(self, inp: Any, ctx: RequestContext) -> JSON:
        await self.engine.disable_stage_transition(
            inp.pipelineName, inp.stageName, inp.transitionType, inp.reason, self.origin(ctx)
        )
        return {}

    async def override_stage_condition(self, inp: Any, ctx: RequestContext) -> JSON:
        await self.engine.override_stage_condition(
            inp.pipelineName,
            inp.stageName,
            inp.pipelineExecutionId,
            inp.conditionType,
            self.origin(ctx),
        )
        return {}

    async def rollback_stage(self, inp: Any, ctx: RequestContext) -> JSON:
        eid = await self.engine.rollback_stage(
            inp.pipelineName, inp.stageName, inp.targetPipelineExecutionId, self.origin(ctx)
        )
        return {"pipelineExecutionId": eid}

    async def list_rule_executions(self, inp: Any, ctx: RequestContext) -> JSON:
        f = inp.filter
        eid = f.pipelineExecutionId if f is not None else None
        latest = f.latestInPipelineExecution if f is not None else None
        if latest is not None:
            if eid is not None and eid != latest.pipelineExecutionId:
                raise AwsError(
                    "ValidationException",
                    "filter.pipelineExecutionId and filter.latestInPipelineExecution."
                    "pipelineExecutionId name different executions",
                )
            eid = latest.pipelineExecutionId
        return await self.engine.list_rule_executions(
            inp.pipelineName, execution_id=eid, max_results=inp.maxResults, next_token=inp.nextToken
        )

    async def list_rule_types(self, inp: Any, ctx: RequestContext) -> JSON:
        from app import condition_queries as cq

        return cq.list_rule_types(inp.ruleOwnerFilter, inp.regionFilter)

    def handlers(self) -> dict[str, Op]:
        return {
            "TagResource": self.tag_resource,
            "UntagResource": self.untag_resource,
            "ListTagsForResource": self.list_tags_for_resource,
            "CreateCustomActionType": self.create_custom_action_type,
            "DeleteCustomActionType": self.delete_custom_action_type,
            "ListActionTypes": self.list_action_types,
            "GetActionType": self.get_action_type,
            "UpdateActionType": self.update_action_type,
            "PollForThirdPartyJobs": self.poll_for_third_party_jobs,
            "AcknowledgeThirdPartyJob": self.acknowledge_third_party_job,
            "GetThirdPartyJobDetails": self.get_third_party_job_details,
            "PutThirdPartyJobSuccessResult": self.put_third_party_job_success_result,
            "PutThirdPartyJobFailureResult": self.put_third_party_job_failure_result,
            "PutActionRevision": self.put_action_revision,
            "ListDeployActionExecutionTargets": self.list_deploy_action_execution_targets,
            "EnableStageTransition": self.enable_stage_transition,
            "DisableStageTransition": self.disable_stage_transition,
            "OverrideStageCondition": self.override_stage_condition,
            "RollbackStage": self.rollback_stage,
            "ListRuleExecutions": self.list_rule_executions,
            "ListRuleTypes": self.list_rule_types,
            "ListWebhooks": self.webhooks.list_webhooks,
            "PutWebhook": self.webhooks.put_webhook,
            "DeleteWebhook": self.webhooks.delete_webhook,
            "RegisterWebhookWithThirdParty": self.webhooks.register_webhook_with_third_party,
            "DeregisterWebhookWithThirdParty": self.webhooks.deregister_webhook_with_third_party,
        }
