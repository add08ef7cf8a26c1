"""The partition count: chosen at a store's first start, recorded, kept, checked.

``store_keys`` resolves it (explicit count, else the recorded one, else 128 for a new store
and 16 for the embedded Redis); ``EventStore.ensure_config`` records it and refuses a
different one. The CLI resolves ``--partitions`` the same way for every command.
"""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from app.cli import main as cli_main
from app.store.connection import DEFAULT_PARTITIONS, EMBEDDED_PARTITIONS, store_keys
from app.store.eventstore import EventStore


async def test_a_new_store_gets_the_default_and_keeps_it(any_redis: Any) -> None:
    keys = await store_keys(any_redis)
    assert keys.partitions == DEFAULT_PARTITIONS == 128
    await EventStore(any_redis, keys).ensure_config()
    assert int(await any_redis.hget(keys.config(), "partitions")) == 128
    assert (await store_keys(any_redis)).partitions == 128


async def test_an_existing_store_keeps_its_recorded_count(any_redis: Any) -> None:
    await EventStore(any_redis, await store_keys(any_redis, 8)).ensure_config()
    keys = await store_keys(any_redis)  # not given: the store's own count
    assert keys.partitions == 8
    await EventStore(any_redis, keys).ensure_config()
    refused = await store_keys(any_redis, 32)  # given explicitly: checked
    with pytest.raises(RuntimeError, match="laid out in 8 partitions, not 32"):
        await EventStore(any_redis, refused).ensure_config()


async def test_the_embedded_store_defaults_to_fewer(any_redis: Any) -> None:
    assert (await store_keys(any_redis, embedded=True)).partitions == EMBEDDED_PARTITIONS


async def test_an_unreachable_redis_gives_the_new_store_default() -> None:
    dead = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    try:
        assert (await store_keys(dead)).partitions == DEFAULT_PARTITIONS
    finally:
        await dead.aclose()


def test_cli_partitions_from_the_environment_is_checked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STAGELINE_PARTITIONS", "zero")
    assert cli_main(["status", "--redis-url", "redis://127.0.0.1:1"]) == 2
    assert "expected a whole number" in capsys.readouterr().err
