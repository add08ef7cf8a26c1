"""The catalog: custom action types and resource tags, event-sourced in one small stream.

Neither belongs to a pipeline's aggregate: a custom action type is account-wide, and tags
are metadata about a resource (a pipeline, an action type, a webhook) that the engine never
acts on. So they live in their own stream, ``<ns>:{<ns>.catalog}:catalog`` (its own hash
tag, one slot in a cluster), as :data:`CatalogEvent` entries, folded in memory on every read
into a :class:`Catalog`. The fold is small by construction: at most
:data:`MAX_CUSTOM_ACTION_TYPES` live action types and :data:`MAX_TAGS` tags per resource (AWS's
quotas); the stream itself grows by one entry per change (a handful in practice; it is never
trimmed, so it doubles as the audit trail of those changes).

Writes are optimistic: an append names the id of the last entry its decision was folded
from, and a Lua script refuses it when another entry came first
(:class:`CatalogConflict`, retried by :meth:`CatalogStore.change`).

Pipeline tags are keyed by the pipeline's ARN *and* its creation time, so a deleted and
re-created pipeline of the same name starts without the old one's tags.
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
    "MAX_CUSTOM_ACTION_TYPES",
    "MAX_TAGS",
    "ActionTypeCreated",
    "ActionTypeDeleted",
    "ActionTypeUpdated",
    "Catalog",
    "CatalogConflict",
    "CatalogEvent",
    "CatalogStore",
    "TagsRemoved",
    "TagsSet",
    "catalog_key",
]

MAX_TAGS = 50  # tags per resource (AWS quota)
MAX_CUSTOM_ACTION_TYPES = 50  # custom action types per account and region (AWS quota)
_RETRIES = 20


class TagsSet(msgspec.Struct, tag=True, frozen=True):
    resource: str
    tags: dict[str, str]  # added or overwritten


class TagsRemoved(msgspec.Struct, tag=True, frozen=True):
    resource: str
    keys: list[str]  # None of them need exist; an empty resource is dropped


class ActionTypeCreated(msgspec.Struct, tag=True, frozen=True):
    key: str  # Owner/Category/Provider/Version
    declaration: dict[str, Any]  # ActionType (CreateCustomActionType's members + id)
    at: float


class ActionTypeUpdated(msgspec.Struct, tag=True, frozen=True):
    key: str
    declaration: dict[str, Any]
    at: float


class ActionTypeDeleted(msgspec.Struct, tag=True, frozen=True):
    key: str
    at: float


CatalogEvent = TagsSet | TagsRemoved | ActionTypeCreated | ActionTypeUpdated | ActionTypeDeleted
_decoder = msgspec.msgpack.Decoder(CatalogEvent)
_encoder = msgspec.msgpack.Encoder()


@dataclass
class Catalog:
    """The folded catalog: live action types, deleted type keys, tags per resource."""

    action_types: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted_types: set[str] = field(default_factory=set)
    tags: dict[str, dict[str, str]] = field(default_factory=dict)
    last_id: str = "0-0"

    def apply(self, e: CatalogEvent) -> None:
        if isinstance(e, TagsSet):
            self.tags.setdefault(e.resource, {}).update(e.tags)
        elif isinstance(e, TagsRemoved):
            current = self.tags.get(e.resource, {})
            for k in e.keys:
                current.pop(k, None)
            if not current:
                self.tags.pop(e.resource, None)
        elif isinstance(e, ActionTypeCreated | ActionTypeUpdated):
            self.action_types[e.key] = e.declaration
        elif isinstance(e, ActionTypeDeleted):
            self.action_types.pop(e.key, None)
            self.deleted_types.add(e.key)


class CatalogConflict(Exception):
    """Another change was appended after the state a decision was made on."""


# KEYS[1] the stream; ARGV[1] the last id the caller saw; ARGV[2..] the entries' payloads.
_APPEND_LUA = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local seen = '0-0'
if #last > 0 then seen = last[1][1] end
if seen ~= ARGV[1] then return redis.error_reply('CATALOG_CONFLICT ' .. seen) end
for i = 2, #ARGV do redis.call('XADD', KEYS[1], '*', 'e', ARGV[i]) end
return #ARGV - 1
"""


def catalog_key(namespace: str = "sl") -> str:
    return f"{namespace}:{{{namespace}.catalog}}:catalog"


class CatalogStore:
    def __init__(self, redis: Redis, namespace: str = "sl") -> None:
        self.redis = redis
        self.key = catalog_key(namespace)
        self._append = redis.register_script(_APPEND_LUA)

    async def load(self) -> Catalog:
        cat = Catalog()
        entries: Any = await self.redis.xrange(self.key, "-", "+")
        for entry_id, fields in entries or []:
            payload: bytes = fields[b"e"]
            cat.apply(_decoder.decode(payload))
            cat.last_id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        return cat

    async def append(self, seen: str, events: list[CatalogEvent]) -> None:
        if not events:
            return
        try:
            await self._append(keys=[self.key], args=[seen, *(_encoder.encode(e) for e in events)])
        except ResponseError as exc:
            if "CATALOG_CONFLICT" in str(exc):
                raise CatalogConflict(str(exc)) from None
            raise

    async def change(self, decide: Callable[[Catalog], list[CatalogEvent]]) -> Catalog:
        """Fold, decide (may raise to refuse), append; retried on a concurrent change.
        Returns the catalog with the new events applied."""
        for _ in range(_RETRIES):
            cat = await self.load()
            events = decide(cat)
            try:
                await self.append(cat.last_id, events)
            except CatalogConflict:
                continue
            for e in events:
                cat.apply(e)
            return cat
        raise CatalogConflict("the catalog kept changing; retry")


def now() -> float:
    return time.time()
