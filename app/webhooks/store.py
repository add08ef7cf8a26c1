"""Webhooks, event-sourced in a small stream of their own, plus a capped delivery log each.

``<ns>:{<ns>.webhooks}:webhooks`` (its own hash tag: one cluster slot) holds one
:data:`WebhookEvent` per change — put, deleted, registered, deregistered — with who asked,
from where and under which request id (the audit trail of those changes). It is folded in
memory on every read into :class:`Webhooks`; it grows by one entry per change (a handful),
not per delivery. Appends are optimistic exactly like the catalog's (``app/catalog.py``): the
append names the last entry id its decision was folded from.

Deliveries (every POST to a webhook's URL: started, ignored by the filters, refused) go to
``<ns>:{<ns>.webhooks}:wh:<webhookId>:deliveries``, a stream capped at
:data:`DELIVERY_LOG_MAX` entries: operational history, not a source of truth (what a delivery
started is the execution's own ``ExecutionStarted``, whose triggerDetail is the webhook ARN).
ListWebhooks' ``lastTriggered`` / ``errorCode`` / ``errorMessage`` are read from it.

The webhook's secret token is part of its definition in the stream (the endpoint needs it to
check signatures); the operations redact it in every answer and nothing logs it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

__all__ = [
    "DELIVERY_LOG_MAX",
    "Delivery",
    "Webhook",
    "WebhookConflict",
    "WebhookDeleted",
    "WebhookEvent",
    "WebhookPut",
    "WebhookRegistration",
    "WebhookStore",
    "Webhooks",
    "webhooks_key",
]

DELIVERY_LOG_MAX = 1000  # deliveries kept per webhook (approximate MAXLEN)
_RETRIES = 20


class WebhookPut(msgspec.Struct, tag=True, frozen=True):
    name: str
    webhookId: str  # the URL's id: new when the name is new, kept by an update
    definition: dict[str, Any]  # WebhookDefinition, as put (secret token included)
    at: float
    actor: str
    source: str | None = None
    requestId: str | None = None


class WebhookDeleted(msgspec.Struct, tag=True, frozen=True):
    name: str
    webhookId: str
    at: float
    actor: str
    source: str | None = None
    requestId: str | None = None


class WebhookRegistration(msgspec.Struct, tag=True, frozen=True):
    """RegisterWebhookWithThirdParty (registered) / DeregisterWebhookWithThirdParty."""

    name: str
    webhookId: str
    registered: bool
    at: float
    actor: str
    source: str | None = None
    requestId: str | None = None


WebhookEvent = WebhookPut | WebhookDeleted | WebhookRegistration
_decoder = msgspec.json.Decoder(WebhookEvent)
_encoder = msgspec.json.Encoder()


class Delivery(msgspec.Struct, frozen=True, omit_defaults=True):
    at: float
    result: str  # "started" | "ignored" | "refused"
    status: int  # the HTTP status answered
    source: str | None = None  # the sender's address
    errorCode: str | None = None
    message: str | None = None
    executionId: str | None = None


_delivery_decoder = msgspec.json.Decoder(Delivery)


@dataclass
class Webhook:
    name: str
    webhook_id: str
    definition: dict[str, Any]
    created: float
    updated: float
    registered: bool = False


@dataclass
class Webhooks:
    """The folded webhooks by name, and the last entry id folded."""

    by_name: dict[str, Webhook] = field(default_factory=dict)
    last_id: str = "0-0"

    def apply(self, e: WebhookEvent) -> None:
        if isinstance(e, WebhookPut):
            old = self.by_name.get(e.name)
            if old is not None and old.webhook_id == e.webhookId:
                old.definition = e.definition
                old.updated = e.at
            else:
                self.by_name[e.name] = Webhook(e.name, e.webhookId, e.definition, e.at, e.at)
        elif isinstance(e, WebhookDeleted):
            hook = self.by_name.get(e.name)
            if hook is not None and hook.webhook_id == e.webhookId:
                del self.by_name[e.name]
        elif isinstance(e, WebhookRegistration):
            hook = self.by_name.get(e.name)
            if hook is not None and hook.webhook_id == e.webhookId:
                hook.registered = e.registered

    def find(self, id_or_name: str) -> Webhook | None:
        """By URL id, else by name."""
        for hook in self.by_name.values():
            if hook.webhook_id == id_or_name:
                return hook
        return self.by_name.get(id_or_name)


class WebhookConflict(Exception):
    """Another change was appended after the state a decision was made on."""


_APPEND_LUA = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local seen = '0-0'
if #last > 0 then seen = last[1][1] end
if seen ~= ARGV[1] then return redis.error_reply('WEBHOOK_CONFLICT ' .. seen) end
for i = 2, #ARGV do redis.call('XADD', KEYS[1], '*', 'e', ARGV[i]) end
return #ARGV - 1
"""


def webhooks_key(namespace: str = "sl") -> str:
    return f"{namespace}:{{{namespace}.webhooks}}:webhooks"


def deliveries_key(webhook_id: str, namespace: str = "sl") -> str:
    return f"{namespace}:{{{namespace}.webhooks}}:wh:{webhook_id}:deliveries"


def _last_key(webhook_id: str, namespace: str) -> str:
    return f"{namespace}:{{{namespace}.webhooks}}:wh:{webhook_id}:last"


def _id(entry_id: Any) -> str:
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


class WebhookStore:
    def __init__(self, redis: Redis, namespace: str = "sl") -> None:
        self.redis = redis
        self.namespace = namespace
        self.key = webhooks_key(namespace)
        self._append = redis.register_script(_APPEND_LUA)

    async def load(self) -> Webhooks:
        hooks = Webhooks()
        entries: Any = await self.redis.xrange(self.key, "-", "+")
        for entry_id, fields in entries or []:
            hooks.apply(_decoder.decode(fields[b"e"]))
            hooks.last_id = _id(entry_id)
        return hooks

    async def events(self) -> list[tuple[str, WebhookEvent]]:
        """Every change, oldest first (the audit trail)."""
        entries: Any = await self.redis.xrange(self.key, "-", "+")
        return [(_id(i), _decoder.decode(f[b"e"])) for i, f in entries or []]

    async def append(self, seen: str, events: list[WebhookEvent]) -> None:
        if not events:
            return
        try:
            await self._append(keys=[self.key], args=[seen, *(_encoder.encode(e) for e in events)])
        except ResponseError as exc:
            if "WEBHOOK_CONFLICT" in str(exc):
                raise WebhookConflict(str(exc)) from None
            raise

    async def change(self, decide: Callable[[Webhooks], list[WebhookEvent]]) -> Webhooks:
        """Fold, decide (may raise to refuse), append; retried on a concurrent change."""
        for _ in range(_RETRIES):
            hooks = await self.load()
            events = decide(hooks)
            try:
                await self.append(hooks.last_id, events)
            except WebhookConflict:
                continue
            for e in events:
                hooks.apply(e)
            return hooks
        raise WebhookConflict("the webhooks kept changing; retry")

    # --- deliveries ---------------------------------------------------------------------------

    async def record(self, webhook_id: str, delivery: Delivery) -> None:
        """Append a delivery; a started one is also the webhook's ``lastTriggered`` (kept
        apart, so no number of later ignored deliveries trims it away)."""
        key = deliveries_key(webhook_id, self.namespace)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(key, {"d": _encoder.encode(delivery)}, maxlen=DELIVERY_LOG_MAX,
                      approximate=True)  # fmt: skip
            if delivery.result == "started":
                pipe.hset(_last_key(webhook_id, self.namespace), "started", repr(delivery.at))
            await pipe.execute()

    async def last_started(self, webhook_id: str) -> float | None:
        value: Any = await self.redis.hget(_last_key(webhook_id, self.namespace), "started")
        return float(value) if value is not None else None

    async def deliveries(self, webhook_id: str, count: int = 100) -> list[Delivery]:
        """The latest ``count`` deliveries, newest first."""
        entries: Any = await self.redis.xrevrange(
            deliveries_key(webhook_id, self.namespace), "+", "-", count=count
        )
        return [_delivery_decoder.decode(f[b"d"]) for _, f in entries or []]

    async def forget(self, webhook_id: str) -> None:
        await self.redis.delete(
            deliveries_key(webhook_id, self.namespace), _last_key(webhook_id, self.namespace)
        )


def now() -> float:
    return time.time()
