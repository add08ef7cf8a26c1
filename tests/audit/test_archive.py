"""``audit export`` / ``import``: a portable archive that reproduces the log byte for byte
in an empty Redis, with identical hashes and projections; altered archives are refused."""

from __future__ import annotations

import io
import json
from pathlib import Path

import anyio
import msgspec
import pytest
from redis.asyncio import Redis

from app import queries
from app.audit import (
    AuditError,
    check_archive,
    export_archive,
    import_archive,
    projection,
    replay_pipeline,
    verify,
)
from app.audit.archive import FORMAT
from app.engine import Engine
from app.store.keys import Keys
from tests.audit.conftest import rows_of, store_of
from tests.audit.scenario import PARTITIONS, Scenario, declaration


async def export_to(sc: Scenario, path: Path) -> None:
    buf = io.StringIO()
    await export_archive(sc.engine.store, buf, batch=10)
    await anyio.Path(path).write_text(buf.getvalue())


async def test_export_import_verify_and_identical_projections(
    scenario: Scenario, empty_redis: Redis, tmp_path: Path
) -> None:
    sc = scenario
    await sc.engine.create_pipeline(declaration("second"))
    await sc.engine.start_execution("second")
    archive = tmp_path / "log.jsonl"
    await export_to(sc, archive)

    lines = [json.loads(x) for x in archive.read_text().splitlines()]
    assert lines[0]["kind"] == "header" and lines[0]["format"] == FORMAT
    assert lines[-1]["kind"] == "end"
    assert lines[-1]["entries"] == len(lines) - 2
    first = lines[1]
    assert (first["pipeline"], first["version"], first["type"]) == ("audited", 1, "PipelineCreated")

    target = store_of(empty_redis)
    stats = await import_archive(target, archive, batch=4)
    assert (stats.pipelines, stats.entries) == (2, len(lines) - 2)

    report = await verify(target)
    assert report.ok, report.all_problems()
    for name in ("audited", "second"):
        # the streams are identical: ids, payload bytes and hashes
        assert await rows_of(empty_redis, target.keys.log(name)) == await rows_of(
            sc.engine.redis, sc.engine.keys.log(name)
        )
        a = await replay_pipeline(sc.engine.store, name)
        b = await replay_pipeline(target, name)
        assert projection(a, full=True) == projection(b, full=True)
        # and what the engine on the restored Redis serves
        restored = Engine(empty_redis, Keys(partitions=PARTITIONS))
        live = await sc.engine.pipeline(name)
        assert queries.get_pipeline_state(await restored.pipeline(name)) == (
            queries.get_pipeline_state(live)
        )
    # command ids (idempotency) came along; the import left no work for workers
    assert await empty_redis.hgetall(target.keys.commands("audited")) == (
        await sc.engine.redis.hgetall(sc.engine.keys.commands("audited"))
    )
    assert await empty_redis.hlen(target.keys.commands("audited")) > 0
    part = target.keys.partition("audited")
    assert await empty_redis.xlen(target.keys.run(part)) == 0
    assert await empty_redis.xlen(target.keys.events(part)) == 0


async def test_import_can_keep_dispatch(
    scenario: Scenario, empty_redis: Redis, tmp_path: Path
) -> None:
    archive = tmp_path / "log.jsonl"
    await export_to(scenario, archive)
    target = store_of(empty_redis)
    await import_archive(target, archive, keep_dispatch=True)
    part = target.keys.partition(scenario.name)
    assert await empty_redis.xlen(target.keys.events(part)) == scenario.captures[-1].version


async def test_import_refuses_a_target_that_is_not_empty(
    scenario: Scenario, tmp_path: Path
) -> None:
    archive = tmp_path / "log.jsonl"
    await export_to(scenario, archive)
    with pytest.raises(AuditError, match="refused: the target Redis is not empty"):
        await import_archive(scenario.engine.store, archive)


async def test_import_refuses_an_altered_archive(
    scenario: Scenario, empty_redis: Redis, tmp_path: Path
) -> None:
    archive = tmp_path / "log.jsonl"
    await export_to(scenario, archive)
    text = archive.read_text()
    assert text.count("AKIABOB") == 1
    altered = tmp_path / "altered.jsonl"
    altered.write_text(text.replace("AKIABOB", "AKIAEVIL"))
    with pytest.raises(AuditError, match=r"pipeline 'audited' version 17: hash mismatch"):
        await import_archive(store_of(empty_redis), altered)
    assert await empty_redis.dbsize() == 0  # refused before writing anything

    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(text.splitlines()[:-3]) + "\n")
    with pytest.raises(AuditError, match="no end line"):
        check_archive(cut)

    lines = text.splitlines()
    dropped = tmp_path / "dropped.jsonl"
    dropped.write_text("\n".join(lines[:10] + lines[11:]) + "\n")
    with pytest.raises(AuditError, match="expected version 10"):
        check_archive(dropped)

    with pytest.raises(AuditError, match="not a stageline audit archive"):
        check_archive(Path(__file__))
    with pytest.raises(AuditError, match="No such file"):
        check_archive(tmp_path / "missing.jsonl")


async def test_payload_bytes_are_kept_exactly(
    scenario: Scenario, empty_redis: Redis, tmp_path: Path
) -> None:
    """A payload that msgspec would encode differently today (an explicit default, an
    unknown field, odd spacing) still imports with the same bytes and hash."""
    sc = scenario
    store = sc.engine.store
    raw = (
        b'{"id":"odd", "time":1700000999.0,"actor":"old-version","event":'
        b'{"type":"ExecutionStarted","executionId":"x-1","pipelineVersion":1,'
        b'"triggerType":"StartPipelineExecution","fromTheFuture":true}}'
    )
    from app.store.eventstore import chain_hash

    last = sc.captures[-1].version
    head = (await store.read_raw(sc.name, after=last - 1))[0].hash
    await sc.engine.redis.xadd(
        store.keys.log(sc.name),
        {"e": raw, "h": chain_hash(head, last + 1, raw)},
        id=f"{last + 1}-0",
    )
    assert (await verify(store)).ok
    archive = tmp_path / "log.jsonl"
    await export_to(sc, archive)
    target = store_of(empty_redis)
    await import_archive(target, archive)
    got = await target.read_raw(sc.name, after=last)
    assert got[0].payload == raw
    assert (await verify(target)).ok
    a = await replay_pipeline(store, sc.name)
    b = await replay_pipeline(target, sc.name)
    assert msgspec.json.encode(a.state) == msgspec.json.encode(b.state)
