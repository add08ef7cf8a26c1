"""``audit export`` / ``import``: a portable archive of every stream that reproduces the
store byte for byte in an empty Redis (entry ids, payloads, hashes), with the derived
indexes rebuilt from the events and identical projections; altered archives are refused."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from redis.asyncio import Redis

from app import queries
from app.audit import AuditError, check_archive, export_archive, import_archive, verify
from app.audit.archive import FORMAT
from app.engine import Engine
from app.store.eventstore import HEAD, EventStore, RawEntry, chain_hash
from app.store.keys import Keys
from tests.audit.conftest import rows_of, store_of
from tests.audit.scenario import ALICE, PARTITIONS, Scenario, declaration


async def export_to(sc: Scenario, path: Path) -> None:
    buf = io.StringIO()
    await export_archive(sc.engine.store, buf, batch=10)
    await anyio.Path(path).write_text(buf.getvalue())


def _dec(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, dict):
        return {_dec(a): _dec(b) for a, b in v.items()}
    if isinstance(v, list | tuple):
        return [_dec(x) for x in v]
    return v


async def everything(store: EventStore, name: str) -> dict[str, Any]:
    """Every key of a pipeline as stored: streams (ids, fields), indexes, seq, commands."""
    r, k = store.redis, store.keys
    out: dict[str, Any] = {}
    for stream, key in await store.stream_keys(name):
        out[f"stream {stream}"] = _dec(await rows_of(r, key))
        if stream != HEAD:
            out[f"xa {stream}"] = _dec(await r.hgetall(k.attempts(name, stream)))
    out["seq"] = _dec(await r.get(k.sequence(name)))
    out["xs"] = _dec(await r.zrange(k.executions(name), 0, -1, withscores=True))
    out["as"] = _dec(await r.zrange(k.actions(name), 0, -1, withscores=True))
    out["tok"] = _dec(await r.hgetall(k.request_tokens(name)))
    out["apv"] = _dec(await r.hgetall(k.approvals(name)))
    out["cmd"] = _dec(await r.hgetall(k.commands(name)))
    out["named"] = bool(await r.sismember(k.names(k.partition(name)), name))
    return out


def chains_ok(entries: list[RawEntry]) -> bool:
    prev: dict[str, str] = {}
    for e in entries:
        if chain_hash(prev.get(e.stream, ""), e.version, e.payload) != e.hash:
            return False
        prev[e.stream] = e.hash
    return True


async def test_export_import_identical_streams_indexes_and_projections(
    scenario: Scenario, empty_redis: Redis, tmp_path: Path
) -> None:
    sc = scenario
    await sc.engine.create_pipeline(declaration("second"))
    await sc.engine.start_execution("second", ALICE)
    archive = tmp_path / "log.jsonl"
    await export_to(sc, archive)

    lines = [json.loads(x) for x in archive.read_text().splitlines()]
    assert lines[0]["kind"] == "header" and lines[0]["format"] == FORMAT
    assert lines[0]["layout"] == 2
    assert lines[-1]["kind"] == "end"
    entries = [x for x in lines if x["kind"] == "event"]
    assert lines[-1]["entries"] == len(entries)
    assert lines[1] == {"kind": "pipeline", "pipeline": "audited", "seq": sc.captures[-1].version}
    first = entries[0]
    assert (first["pipeline"], first["stream"], first["version"], first["type"]) == (
        "audited",
        "-",
        1,
        "PipelineCreated",
    )
    refs = [x for x in entries if "ref" in x]
    assert refs and all(x["stream"] == "-" for x in refs)
    assert {x["stream"] for x in entries if x["pipeline"] == "audited"} == {
        "-",
        sc.exec1,
        sc.exec2,
    }

    target = store_of(empty_redis)
    stats = await import_archive(target, archive, batch=4)
    assert (stats.pipelines, stats.entries) == (2, len(entries))

    source = sc.engine.store
    source_report = await verify(source)
    target_report = await verify(target)
    assert [str(p) for p in target_report.all_problems()] == [
        str(p) for p in source_report.all_problems()
    ]
    restored = Engine(empty_redis, Keys(partitions=PARTITIONS))
    for name in ("audited", "second"):
        # every stream identical (ids, payload bytes, hashes), every index rebuilt alike
        assert await everything(target, name) == await everything(source, name)
        assert chains_ok(await target.read_raw(name))
        assert msgspec.json.encode(await restored.full_state(name)) == msgspec.json.encode(
            await sc.engine.full_state(name)
        )
        assert queries.get_pipeline_state(await restored.pipeline(name)) == (
            queries.get_pipeline_state(await sc.engine.pipeline(name))
        )
        assert await restored.list_pipeline_executions(name) == (
            await sc.engine.list_pipeline_executions(name)
        )
        assert await restored.list_action_executions(name, max_results=5) == (
            await sc.engine.list_action_executions(name, max_results=5)
        )
    assert await empty_redis.hlen(target.keys.commands("audited")) > 0
    # the import left no work for workers
    part = target.keys.partition("audited")
    assert await empty_redis.xlen(target.keys.run(part)) == 0
    assert await empty_redis.xlen(target.keys.events(part)) == 0
    # and the restored store takes new commands
    await restored.start()
    eid = await restored.start_execution("audited", ALICE)
    assert (await restored.full_state("audited")).executions[eid].status == "InProgress"


async def test_import_can_keep_dispatch(
    scenario: Scenario, empty_redis: Redis, tmp_path: Path
) -> None:
    """With --keep-dispatch the dispatch entries are those the appends wrote (fields and
    order), so workers on the restored Redis see what they would have seen."""
    archive = tmp_path / "log.jsonl"
    await export_to(scenario, archive)
    target = store_of(empty_redis)
    await import_archive(target, archive, keep_dispatch=True)
    k = target.keys
    part = k.partition(scenario.name)
    assert await empty_redis.xlen(k.events(part)) == scenario.captures[-1].version
    for key in (k.events(part), k.run(part)):
        got = [f for _, f in await rows_of(empty_redis, key)]
        want = [f for _, f in await rows_of(scenario.engine.redis, key)]
        assert got == want and got


async def test_import_refuses_a_target_that_is_not_empty(
    scenario: Scenario, tmp_path: Path
) -> None:
    archive = tmp_path / "log.jsonl"
    await export_to(scenario, archive)
    with pytest.raises(AuditError, match="refused: the target Redis is not empty"):
        await import_archive(scenario.engine.store, archive)


def _rewrite(path: Path, out: Path, change: Any) -> Path:
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    out.write_text("\n".join(json.dumps(x) for x in change(lines)) + "\n")
    return out


async def test_import_refuses_an_altered_archive(
    scenario: Scenario, empty_redis: Redis, tmp_path: Path
) -> None:
    sc = scenario
    archive = tmp_path / "log.jsonl"
    await export_to(sc, archive)
    text = archive.read_text()
    assert text.count("AKIABOB") == 1
    bob = next(
        json.loads(x) for x in text.splitlines() if "AKIABOB" in x
    )  # the retry request, in exec1's stream
    altered = tmp_path / "altered.jsonl"
    altered.write_text(text.replace("AKIABOB", "AKIAEVIL"))
    spot = rf"pipeline 'audited' stream {sc.exec1} version {bob['version']}: hash mismatch"
    with pytest.raises(AuditError, match=spot):
        await import_archive(store_of(empty_redis), altered)
    assert await empty_redis.dbsize() == 0  # refused before writing anything

    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(text.splitlines()[:-3]) + "\n")
    with pytest.raises(AuditError, match="no end line"):
        check_archive(cut)

    def events(lines: list[dict[str, Any]]) -> list[int]:
        return [i for i, x in enumerate(lines) if x["kind"] == "event"]

    def drop_middle(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        i = next(i for i in events(lines) if lines[i]["stream"] == sc.exec1)
        return lines[: i + 3] + lines[i + 4 :]

    with pytest.raises(AuditError, match=f"stream {sc.exec1} version .*: hash mismatch"):
        check_archive(_rewrite(archive, tmp_path / "dropped.jsonl", drop_middle))

    def drop_last_of_stream(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        i = max(i for i in events(lines) if lines[i]["stream"] == sc.exec2)
        return lines[:i] + lines[i + 1 :]

    with pytest.raises(AuditError, match=r"no event stored for seq \d+"):
        check_archive(_rewrite(archive, tmp_path / "last.jsonl", drop_last_of_stream))

    def drop_stream(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [x for x in lines if x.get("stream") != sc.exec2]

    with pytest.raises(AuditError, match=r"no event stored for seq \d+"):
        check_archive(_rewrite(archive, tmp_path / "nostream.jsonl", drop_stream))

    def bad_command(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for x in lines:
            if x["kind"] == "commands":
                cid = next(iter(x["ids"]))
                x["ids"][cid] = "1:99999"
        return lines

    with pytest.raises(AuditError, match="outside the pipeline's events"):
        check_archive(_rewrite(archive, tmp_path / "cmd.jsonl", bad_command))

    def huge_seq(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        lines[1]["seq"] = 10**12
        return lines

    with pytest.raises(AuditError, match="seq 1000000000000 is not a count of events"):
        check_archive(_rewrite(archive, tmp_path / "huge.jsonl", huge_seq))

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
        b'{"type":"StageRetryRejected","executionId":"' + sc.exec2.encode() + b'",'
        b'"stageName":"Source","errorType":"StageNotRetryableException","fromTheFuture":true}}'
    )
    key = store.keys.execution_log(sc.name, sc.exec2)
    head = (await store.read_raw_stream(key))[-1].hash
    seq = int(await sc.engine.redis.incr(store.keys.sequence(sc.name)))
    await sc.engine.redis.xadd(key, {"e": raw, "h": chain_hash(head, seq, raw)}, id=f"{seq}-0")
    archive = tmp_path / "log.jsonl"
    await export_to(sc, archive)
    target = store_of(empty_redis)
    await import_archive(target, archive)
    got = await target.read_raw_stream(key, after=seq - 1)
    assert got[0].payload == raw
    assert await everything(target, sc.name) == await everything(store, sc.name)
    restored = Engine(empty_redis, Keys(partitions=PARTITIONS))
    assert msgspec.json.encode(await restored.full_state(sc.name)) == msgspec.json.encode(
        await sc.engine.full_state(sc.name)
    )


async def test_restore_refuses_entries_that_do_not_chain(scenario: Scenario) -> None:
    """EventStore.restore writes nothing when an entry does not chain onto its stream."""
    store = scenario.engine.store
    name = scenario.name
    before = await everything(store, name)
    last = await store.version(name)
    key = store.keys.execution_log(name, scenario.exec2)
    tail = (await store.read_raw_stream(key))[-1]
    ok = RawEntry(
        last + 1, tail.payload, chain_hash(tail.hash, last + 1, tail.payload), stream=scenario.exec2
    )
    bad = RawEntry(last + 2, tail.payload, "0" * 40, stream=scenario.exec2)
    with pytest.raises(ValueError, match=rf"execution {scenario.exec2}\) seq {last + 2}: the hash"):
        await store.restore(name, [ok, bad])
    with pytest.raises(ValueError, match="a head reference given for the stream of execution"):
        await store.restore(
            name, [RawEntry(last + 1, b'["x"]', "", ref=True, stream=scenario.exec2)]
        )
    misplaced = RawEntry(last + 1, tail.payload, ok.hash, stream=scenario.exec1)
    with pytest.raises(ValueError, match=f"an event of {scenario.exec2} given for the stream"):
        await store.restore(name, [misplaced])
    created = (await store.read_raw_stream(store.keys.log(name), count=1))[0]
    stale = RawEntry(1, created.payload, "0" * 40)
    with pytest.raises(ValueError, match=r"pipeline stream\) seq 1: not after"):
        await store.restore(name, [stale])
    assert await everything(store, name) == before
    assert await store.restore(name, [ok]) == 1
    assert await store.version(name) == last + 1


async def test_export_takes_streams_the_index_lacks(scenario: Scenario, tmp_path: Path) -> None:
    """An execution stream missing from the executions index (damaged or tampered) is
    exported all the same, as stored: the archive holds what Redis holds."""
    sc = scenario
    await sc.engine.redis.zrem(sc.engine.keys.executions(sc.name), sc.exec1)
    archive = tmp_path / "log.jsonl"
    await export_to(sc, archive)
    lines = [json.loads(x) for x in archive.read_text().splitlines()]
    streams = [x["stream"] for x in lines if x["kind"] == "event"]
    assert list(dict.fromkeys(streams)) == ["-", sc.exec2, sc.exec1]
    assert check_archive(archive).entries == len(streams)
