"""PutWebhook, ListWebhooks, DeleteWebhook, Register/DeregisterWebhookWithThirdParty.

Validation and error names follow the botocore model; docs/pipelines.md ("Webhooks and
triggers") tells where stageline differs from AWS.
"""

from __future__ import annotations

import base64
import ipaddress
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from app import catalog as cat
from app.api.errors import AwsError
from app.api.wire import RequestContext
from app.domain import triggers
from app.webhooks.store import (
    Webhook,
    WebhookConflict,
    WebhookDeleted,
    WebhookEvent,
    WebhookPut,
    WebhookRegistration,
    Webhooks,
    WebhookStore,
    now,
)

if TYPE_CHECKING:
    from app.api.operations import Operations

JSON = dict[str, Any]
MAX_WEBHOOKS = 300  # webhooks per account and region (AWS quota)
REDACTED = "****"
PATH_PREFIX = "/webhooks/"


def webhook_arn(name: str, *, region: str, account: str) -> str:
    return f"arn:aws:codepipeline:{region}:{account}:webhook:{name}"


def tag_resource(arn: str, webhook_id: str) -> str:
    """Tags are keyed by ARN and URL id: a re-created webhook starts without the old tags."""
    return f"{arn}@{webhook_id}"


def redacted(definition: JSON) -> JSON:
    out = dict(definition)
    conf = dict(out.get("authenticationConfiguration") or {})
    if conf.get("SecretToken"):
        conf["SecretToken"] = REDACTED
    out["authenticationConfiguration"] = conf
    return out


def check_authentication(kind: str, conf: JSON) -> None:
    """The properties each authentication type needs, and only those (the model's docs)."""
    token, cidr = conf.get("SecretToken"), conf.get("AllowedIPRange")

    def bad(message: str) -> AwsError:
        return AwsError("InvalidWebhookAuthenticationParametersException", message)

    if kind == "GITHUB_HMAC":
        if not token:
            raise bad("GITHUB_HMAC authentication needs the SecretToken property")
        if cidr is not None:
            raise bad("GITHUB_HMAC authentication takes only the SecretToken property")
    elif kind == "IP":
        if not cidr:
            raise bad("IP authentication needs the AllowedIPRange property (a CIDR range)")
        if token is not None:
            raise bad("IP authentication takes only the AllowedIPRange property")
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise bad(f"AllowedIPRange '{cidr}' is not a valid CIDR range") from None
    elif token is not None or cidr is not None:  # UNAUTHENTICATED
        raise bad("UNAUTHENTICATED authentication takes no properties")


class WebhookOps:
    def __init__(self, ops: Operations, base_url: str | None = None) -> None:
        self.ops = ops
        self.engine = ops.engine
        self.store = WebhookStore(ops.engine.redis, ops.engine.keys.namespace)
        self.base_url = base_url.rstrip("/") if base_url else None

    def arn(self, name: str) -> str:
        return webhook_arn(name, region=self.ops.region, account=self.ops.account)

    def url(self, hook: Webhook, ctx: RequestContext) -> str:
        base = self.base_url or f"http://{ctx.host or 'localhost'}"
        return f"{base}{PATH_PREFIX}{hook.webhook_id}"

    async def _item(self, hook: Webhook, ctx: RequestContext, catalog: cat.Catalog) -> JSON:
        arn = self.arn(hook.name)
        item: JSON = {
            "definition": redacted(hook.definition),
            "url": self.url(hook, ctx),
            "arn": arn,
        }
        last = await self.store.last_started(hook.webhook_id)
        if last is not None:
            item["lastTriggered"] = last
        deliveries = await self.store.deliveries(hook.webhook_id, count=1)
        latest = deliveries[0] if deliveries else None
        if latest is not None and latest.result == "refused":
            item["errorCode"] = latest.errorCode or "Refused"
            item["errorMessage"] = latest.message or ""
        tags = catalog.tags.get(tag_resource(arn, hook.webhook_id), {})
        if tags:
            item["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
        return item

    async def _change(self, decide: Callable[[Webhooks], list[WebhookEvent]]) -> Webhooks:
        try:
            return await self.store.change(decide)
        except WebhookConflict:
            raise AwsError(
                "ConcurrentModificationException",
                "the webhooks kept changing while this request was decided; retry",
            ) from None

    # --- operations ---------------------------------------------------------------------------

    async def put_webhook(self, inp: Any, ctx: RequestContext) -> JSON:
        from app.api.operations import check_tags

        d = inp.webhook
        definition: JSON = msgspec.to_builtins(d)
        tags = check_tags(inp.tags)
        if len(tags) > cat.MAX_TAGS:
            raise AwsError(
                "TooManyTagsException",
                f"The webhook would have {len(tags)} tags; the limit is {cat.MAX_TAGS}",
            )
        check_authentication(d.authentication, definition.get("authenticationConfiguration") or {})
        for f in d.filters:
            why = triggers.filter_problem(f.jsonPath, f.matchEquals)
            if why is not None:
                raise AwsError("InvalidWebhookFilterPatternException", why)
        decl = (await self.engine.head(d.targetPipeline)).require_declaration()
        if triggers.action_configuration(decl, d.targetAction) is None:
            raise AwsError(
                "ValidationException",
                f"Action '{d.targetAction}' is not an action of the first (source) stage of "
                f"pipeline '{d.targetPipeline}'",
            )
        origin = self.ops.origin(ctx)
        fresh_id = secrets.token_hex(16)

        def decide(hooks: Webhooks) -> list[WebhookEvent]:
            old = hooks.by_name.get(d.name)
            if old is None and len(hooks.by_name) >= MAX_WEBHOOKS:
                raise AwsError(
                    "LimitExceededException",
                    f"The account has {len(hooks.by_name)} webhooks; the limit is "
                    f"{MAX_WEBHOOKS}",
                )
            return [
                WebhookPut(
                    name=d.name,
                    webhookId=old.webhook_id if old is not None else fresh_id,
                    definition=definition,
                    at=now(),
                    actor=origin.actor,
                    source=origin.source,
                    requestId=origin.requestId,
                )
            ]

        hooks = await self._change(decide)
        hook = hooks.by_name[d.name]
        if tags:
            resource = tag_resource(self.arn(d.name), hook.webhook_id)

            def tag(c: cat.Catalog) -> list[cat.CatalogEvent]:
                total = len(set(c.tags.get(resource, {})) | set(tags))
                if total > cat.MAX_TAGS:
                    raise AwsError(
                        "TooManyTagsException",
                        f"The webhook would have {total} tags; the limit is {cat.MAX_TAGS}",
                    )
                return [cat.TagsSet(resource=resource, tags=tags)]

            await self.ops.catalog.change(tag)
        catalog = await self.ops.catalog.load()
        return {"webhook": await self._item(hook, ctx, catalog)}

    async def list_webhooks(self, inp: Any, ctx: RequestContext) -> JSON:
        hooks = await self.store.load()
        names = sorted(hooks.by_name)
        start = 0
        if inp.NextToken is not None:
            try:
                after = base64.urlsafe_b64decode(inp.NextToken.encode()).decode()
            except (ValueError, UnicodeDecodeError):
                raise AwsError("InvalidNextTokenException", "The NextToken is not valid") from None
            start = next((i for i, n in enumerate(names) if n > after), len(names))
        limit = inp.MaxResults or 100
        page = names[start : start + limit]
        catalog = await self.ops.catalog.load()
        out: JSON = {"webhooks": [await self._item(hooks.by_name[n], ctx, catalog) for n in page]}
        if start + limit < len(names) and page:
            out["NextToken"] = base64.urlsafe_b64encode(page[-1].encode()).decode()
        return out

    async def delete_webhook(self, inp: Any, ctx: RequestContext) -> JSON:
        origin = self.ops.origin(ctx)
        gone: list[Webhook] = []

        def decide(hooks: Webhooks) -> list[WebhookEvent]:
            gone.clear()
            hook = hooks.by_name.get(inp.name)
            if hook is None:
                return []  # AWS answers a webhook already deleted with success
            gone.append(hook)
            return [
                WebhookDeleted(
                    name=hook.name,
                    webhookId=hook.webhook_id,
                    at=now(),
                    actor=origin.actor,
                    source=origin.source,
                    requestId=origin.requestId,
                )
            ]

        await self._change(decide)
        for hook in gone:
            resource = tag_resource(self.arn(hook.name), hook.webhook_id)

            def untag(c: cat.Catalog, resource: str = resource) -> list[cat.CatalogEvent]:
                keys = sorted(c.tags.get(resource, {}))
                return [cat.TagsRemoved(resource=resource, keys=keys)] if keys else []

            await self.ops.catalog.change(untag)
            await self.store.forget(hook.webhook_id)
        return {}

    async def _registration(self, inp: Any, ctx: RequestContext, registered: bool) -> JSON:
        name = inp.webhookName
        if name is None:
            raise AwsError("ValidationException", "webhookName is required")
        origin = self.ops.origin(ctx)

        def decide(hooks: Webhooks) -> list[WebhookEvent]:
            hook = hooks.by_name.get(name)
            if hook is None:
                raise AwsError("WebhookNotFoundException", f"Webhook '{name}' does not exist")
            if hook.registered == registered:
                return []  # already so: nothing to record
            return [
                WebhookRegistration(
                    name=name,
                    webhookId=hook.webhook_id,
                    registered=registered,
                    at=now(),
                    actor=origin.actor,
                    source=origin.source,
                    requestId=origin.requestId,
                )
            ]

        await self._change(decide)
        return {}

    async def register_webhook_with_third_party(self, inp: Any, ctx: RequestContext) -> JSON:
        return await self._registration(inp, ctx, True)

    async def deregister_webhook_with_third_party(self, inp: Any, ctx: RequestContext) -> JSON:
        return await self._registration(inp, ctx, False)

    async def tag_resource_of(self, name: str) -> str | None:
        """The tag resource of the webhook ``name`` as it exists now, None when it does not."""
        hook = (await self.store.load()).by_name.get(name)
        return None if hook is None else tag_resource(self.arn(name), hook.webhook_id)
