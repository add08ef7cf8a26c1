"""The catalog stream (custom action types, tags): fold, optimistic appends, its own slot."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from app import catalog as cat


async def test_fold_and_change(redis: Redis) -> None:
    store = cat.CatalogStore(redis, "t")
    assert (await store.load()).action_types == {}
    doc = {"id": {"owner": "Custom", "category": "Build", "provider": "P", "version": "1"}}
    await store.change(
        lambda c: [
            cat.ActionTypeCreated(key="Custom/Build/P/1", declaration=doc, at=1.0),
            cat.TagsSet(resource="r", tags={"a": "1", "b": "2"}),
        ]
    )
    await store.change(lambda c: [cat.TagsRemoved(resource="r", keys=["a", "missing"])])
    c = await store.load()
    assert c.action_types == {"Custom/Build/P/1": doc}
    assert c.tags == {"r": {"b": "2"}}
    await store.change(
        lambda c: [
            cat.ActionTypeDeleted(key="Custom/Build/P/1", at=2.0),
            cat.TagsRemoved(resource="r", keys=["b"]),
        ]
    )
    c = await store.load()
    assert c.action_types == {} and c.deleted_types == {"Custom/Build/P/1"}
    assert c.tags == {}  # an empty resource is dropped
    assert await redis.xlen(cat.catalog_key("t")) == 5  # every change kept


async def test_stale_append_is_refused_and_change_retries(redis: Redis) -> None:
    store = cat.CatalogStore(redis, "t")
    seen = await store.load()
    await store.append(seen.last_id, [cat.TagsSet(resource="r", tags={"a": "1"})])
    with pytest.raises(cat.CatalogConflict):  # decided on a state that is gone
        await store.append(seen.last_id, [cat.TagsSet(resource="r", tags={"a": "2"})])

    calls = 0

    def decide(c: cat.Catalog) -> list[cat.CatalogEvent]:
        nonlocal calls
        calls += 1
        return [cat.TagsSet(resource="r", tags={"n": str(len(c.tags.get("r", {})))})]

    original = store.append

    async def racing_append(last: str, events: list[cat.CatalogEvent]) -> None:
        if calls == 1:  # someone else appends between the first fold and its append
            await original(last, [cat.TagsSet(resource="r", tags={"b": "1"})])
        await original(last, events)

    store.append = racing_append  # type: ignore[method-assign]
    out = await store.change(decide)
    assert calls == 2  # refused once, decided again on the new state
    assert out.tags["r"] == {"a": "1", "b": "1", "n": "2"}
    assert (await cat.CatalogStore(redis, "t").load()).tags == out.tags


def test_key_has_its_own_hash_tag() -> None:
    assert cat.catalog_key("sl") == "sl:{sl.catalog}:catalog"
