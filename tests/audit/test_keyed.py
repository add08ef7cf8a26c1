"""Keyed audit: HMAC audit tags on every entry and signed checkpoints.

An attacker here has full Redis access and knows the scheme, but not the audit key: they
edit an event and recompute every sha1 of the stream (the attack that passes the unkeyed
verify), strip the tags, delete a pipeline, cut an execution stream, or roll the whole
store back to an older dump. Each is named by ``verify`` with the key (and ``--checkpoint``
where the log alone cannot tell); an untouched store verifies.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from app.audit import verify, verify_pipeline
from app.audit.archive import export_archive, import_archive
from app.audit.common import AuditError
from app.audit.keyed import make_checkpoint, read_checkpoint, write_checkpoint
from app.domain import events as ev
from app.engine import Engine
from app.store.eventstore import HEAD, chain_hash, event_tag, ref_tag
from app.store.keys import Keys
from tests.audit.conftest import Rows, rebuild, store_of
from tests.audit.scenario import ALICE, PARTITIONS, Scenario, build

KEY = b"k" * 16 + b"0123456789abcdef"  # 32 bytes
OTHER_KEY = b"x" * 32
NS = Keys().namespace


@pytest.fixture
async def keyed(redis: Redis) -> Scenario:
    return await build(redis, audit_key=KEY)


def exec_key(sc: Scenario, eid: str) -> str:
    return sc.engine.keys.execution_log(sc.name, eid)


def rechain_all(rows: Rows) -> Rows:
    """Recompute every sha1 of a stream over what is stored now (tags kept as they are)."""
    prev = ""
    for i, (rid, f) in enumerate(rows):
        body = f.get(b"e", f.get(b"r", b""))
        tag = f.get(b"m", b"").decode()
        h = chain_hash(prev, int(rid.split(b"-")[0]), body, tag)
        rows[i] = (rid, {**f, b"h": h.encode()})
        prev = h
    return rows


def set_actor(rows: Rows, seq: int, actor: str) -> Rows:
    for i, (rid, f) in enumerate(rows):
        if rid == f"{seq}-0".encode():
            doc = msgspec.json.decode(f[b"e"])
            doc["actor"] = actor
            rows[i] = (rid, {**f, b"e": msgspec.json.encode(doc)})
    return rows


async def pins_of(sc: Scenario) -> Any:
    """A checkpoint taken now (as ``audit checkpoint`` does), its signature verified."""
    report = await verify(sc.engine.store, None, key=KEY, heads=True)
    assert report.ok, report.all_problems()
    return {p.pipeline: (p.last_version, p.heads) for p in report.pipelines}


# --- tags --------------------------------------------------------------------------------


async def test_every_entry_carries_a_tag_and_an_untouched_store_verifies(keyed: Scenario) -> None:
    sc = keyed
    raw = await sc.engine.store.read_raw(sc.name)
    assert raw and all(len(r.tag) == 64 for r in raw)
    tags = {(r.version, r.ref): r.tag for r in raw}
    for r in raw:
        if r.ref:
            assert r.tag == ref_tag(KEY, sc.name, tags[(r.version, False)], r.payload)
        else:
            assert r.tag == event_tag(KEY, sc.name, r.stream, r.payload)
    p = await verify_pipeline(sc.engine.store, sc.name, key=KEY)
    assert p.ok, p.problem
    assert p.tagged == len(raw) and p.unkeyed == 0
    assert f"{len(raw)} audit tags valid" in p.summary()
    # without the key the chain still verifies (the tags are part of what it hashes)
    assert (await verify_pipeline(sc.engine.store, sc.name)).ok


async def test_the_key_never_reaches_redis(keyed: Scenario) -> None:
    redis = keyed.engine.redis
    async for name in redis.scan_iter(count=1000):
        dumped: Any = await redis.dump(name)
        assert KEY not in dumped and KEY.hex().encode() not in dumped, name


async def test_recomputed_sha1_chain_fails_with_the_key(keyed: Scenario) -> None:
    sc = keyed
    key = exec_key(sc, sc.exec1)
    await rebuild(sc.engine.redis, key, lambda rows: rechain_all(set_actor(rows, 12, "AKIAEVE")))
    # the unkeyed check is fooled: the chain was recomputed over the edited payload
    assert (await verify_pipeline(sc.engine.store, sc.name)).ok
    p = await verify_pipeline(sc.engine.store, sc.name, key=KEY)
    assert p.problem is not None and p.problem.kind == "tag"
    assert (p.problem.version, p.problem.stream) == (12, sc.exec1)
    assert "audit tag does not match" in p.problem.message


async def test_stripped_tags_with_a_recomputed_chain_fail(keyed: Scenario) -> None:
    sc = keyed

    def strip(rows: Rows) -> Rows:
        rows = set_actor(rows, 20, "AKIAEVE")
        out = []
        for rid, f in rows:
            if int(rid.split(b"-")[0]) >= 20:
                f = {k: v for k, v in f.items() if k != b"m"}
            out.append((rid, f))
        return rechain_all(out)

    await rebuild(sc.engine.redis, exec_key(sc, sc.exec1), strip)
    p = await verify_pipeline(sc.engine.store, sc.name, key=KEY)
    assert p.problem is not None and p.problem.kind == "unkeyed"
    assert (p.problem.version, p.problem.stream) == (20, sc.exec1)


async def test_wrong_key_fails_at_the_first_entry(keyed: Scenario) -> None:
    p = await verify_pipeline(keyed.engine.store, keyed.name, key=OTHER_KEY)
    assert p.problem is not None and p.problem.kind == "tag"
    assert (p.problem.version, p.problem.stream) == (1, HEAD)


async def test_an_unkeyed_store_verifies_as_unkeyed(redis: Redis) -> None:
    sc = await build(redis)  # written without a key: old sha1-only entries
    raw = await sc.engine.store.read_raw(sc.name)
    assert all(r.tag == "" for r in raw)
    p = await verify_pipeline(sc.engine.store, sc.name, key=KEY)
    assert p.ok, p.problem
    assert p.tagged == 0 and p.unkeyed == len(raw)
    assert "UNKEYED" in p.summary()
    # for a store written with the key from its start, untagged entries are all failures
    report = await verify(sc.engine.store, None, key=KEY, require_tags=True)
    (problem,) = report.all_problems()
    assert (problem.kind, problem.version, problem.stream) == ("unkeyed", 1, HEAD)


async def test_keyed_after_unkeyed_is_fine_unkeyed_after_keyed_is_flagged(redis: Redis) -> None:
    sc = await build(redis)  # unkeyed history, then a key is configured
    keys = Keys(partitions=PARTITIONS)
    with_key = Engine(redis, keys, audit_key=KEY)
    await with_key.start_execution(sc.name, ALICE)
    p = await verify_pipeline(sc.engine.store, sc.name, key=KEY)
    assert p.ok, p.problem
    assert p.tagged > 0 and p.unkeyed > 0
    # a writer without the key (or a forger) appends after keyed entries
    seq = await sc.engine.store.version(sc.name)
    await sc.engine.start_execution(sc.name, ALICE)
    p = await verify_pipeline(sc.engine.store, sc.name, key=KEY)
    assert p.problem is not None and p.problem.kind == "unkeyed"
    assert p.problem.version == seq + 1


async def test_restore_keeps_tags(keyed: Scenario, empty_redis: Redis) -> None:
    raw = await keyed.engine.store.read_raw(keyed.name)
    target = store_of(empty_redis)
    await target.restore(keyed.name, raw)
    again = await target.read_raw(keyed.name)
    assert [(r.version, r.hash, r.tag) for r in again] == [(r.version, r.hash, r.tag) for r in raw]
    assert (await verify_pipeline(target, keyed.name, key=KEY)).ok
    # a tag changed on the way in does not chain: refused
    bad = [dataclasses.replace(r, tag="0" * 64) if r.version == 1 else r for r in raw]
    await empty_redis.flushdb()
    with pytest.raises(ValueError, match="does not chain"):
        await target.restore(keyed.name, bad)


# --- checkpoints -------------------------------------------------------------------------


def test_checkpoint_signature(tmp_path: Path) -> None:
    pins = {"p": (9, {HEAD: (9, "a" * 40), "x1": (8, "b" * 40)})}
    path = tmp_path / "cp.json"
    write_checkpoint(str(path), make_checkpoint(KEY, NS, PARTITIONS, pins))
    got, _ = read_checkpoint(str(path), KEY, NS)
    assert got == pins and KEY.decode() not in path.read_text()
    with pytest.raises(AuditError, match="signed with another audit key"):
        read_checkpoint(str(path), OTHER_KEY, NS)
    with pytest.raises(AuditError, match="taken of namespace"):
        read_checkpoint(str(path), KEY, "other")
    path.write_text(path.read_text().replace('"seq": 9', '"seq": 1'))
    with pytest.raises(AuditError, match="altered since it was signed"):
        read_checkpoint(str(path), KEY, NS)
    path.write_text("{")
    with pytest.raises(AuditError, match="not JSON"):
        read_checkpoint(str(path), KEY, NS)


async def test_a_checkpoint_of_an_untouched_store_verifies(keyed: Scenario) -> None:
    pins = await pins_of(keyed)
    report = await verify(keyed.engine.store, None, key=KEY, checkpoint=pins)
    assert report.ok, report.all_problems()
    await keyed.engine.start_execution(keyed.name, ALICE)  # moving on is not tampering
    report = await verify(keyed.engine.store, None, key=KEY, checkpoint=pins)
    assert report.ok, report.all_problems()


async def test_deleted_pipeline_is_named_with_a_checkpoint(redis: Redis) -> None:
    sc = await build(redis, audit_key=KEY)
    other = await build(redis, "kept", audit_key=KEY)
    pins = await pins_of(sc)
    assert set(pins) == {sc.name, other.name}
    keys = sc.engine.keys
    async for name in redis.scan_iter(match=f"*{sc.name}*", count=1000):
        await redis.delete(name)
    await redis.srem(keys.names(keys.partition(sc.name)), sc.name)
    assert (await verify(sc.engine.store, None, key=KEY)).ok  # the log alone cannot tell
    report = await verify(sc.engine.store, None, key=KEY, checkpoint=pins)
    (problem,) = report.all_problems()
    assert problem.pipeline == sc.name and problem.kind == "checkpoint"
    assert "deleted" in problem.message
    # and verifying only that pipeline says the same
    report = await verify(sc.engine.store, [sc.name], key=KEY, checkpoint=pins)
    assert [p.pipeline for p in report.all_problems()] == [sc.name]


async def cut_tail(sc: Scenario, eid: str, keep: int) -> None:
    """Cut execution ``eid``'s stream after seq ``keep`` the way a careful attacker would:
    its entries and their head references, the counter, the command ids and the
    execution's actions index set back, so nothing in Redis points past the cut."""
    redis, k, p = sc.engine.redis, sc.engine.keys, sc.name
    for key in (k.execution_log(p, eid), k.log(p)):
        rows: Any = await redis.xrange(key, min=f"{keep + 1}-0")
        if rows:
            await redis.xdel(key, *[rid for rid, _ in rows])
    await redis.set(k.sequence(p), keep)
    table: Any = await redis.hgetall(k.commands(p))
    for cid, span in table.items():
        if int(span.decode().split(":")[1]) > keep:
            await redis.hdel(k.commands(p), cid)
    await redis.delete(k.attempts(p, eid))
    for e in await sc.engine.store.read_execution(p, eid):
        aid = ev.action_of(e.event)
        if aid:
            await redis.hset(k.attempts(p, eid), aid, e.version)
    await redis.delete(k.snapshot(p))


async def test_truncated_execution_stream_is_named(keyed: Scenario) -> None:
    sc = keyed
    pins = await pins_of(sc)
    last = pins[sc.name][1][sc.exec2][0]
    await cut_tail(sc, sc.exec2, last - 2)
    assert (await verify(sc.engine.store, None, key=KEY)).ok  # consistent, but shorter
    report = await verify(sc.engine.store, None, key=KEY, checkpoint=pins)
    (problem,) = report.all_problems()
    assert (problem.kind, problem.stream, problem.version) == ("checkpoint", sc.exec2, last)
    assert problem.message.startswith(
        f"the sequence counter is at {last - 2}, the checkpoint recorded seq {last}; execution "
        f"{sc.exec2}'s stream ends at seq {last - 2}, but the checkpoint recorded its entry "
        f"{last}-0"
    )


async def test_rollback_to_an_older_dump_is_named(keyed: Scenario) -> None:
    sc = keyed
    redis = sc.engine.redis
    older: dict[bytes, Any] = {}
    async for name in redis.scan_iter(count=1000):
        older[name] = await redis.dump(name)
    await sc.engine.start_execution(sc.name, ALICE)  # after the dump
    pins = await pins_of(sc)
    await redis.flushdb()  # the operator (or an attacker) restores the older dump
    for name, data in older.items():
        await redis.restore(name, 0, data)
    assert (await verify(sc.engine.store, None, key=KEY)).ok  # the older store is consistent
    report = await verify(sc.engine.store, None, key=KEY, checkpoint=pins)
    (problem,) = report.all_problems()
    assert problem.pipeline == sc.name and problem.kind == "checkpoint"
    assert "the checkpoint recorded seq" in problem.message and "rolled back" in problem.message
    assert problem.stream == HEAD and "(and 1 more streams)" in problem.message


async def test_rollback_then_new_appends_is_named(keyed: Scenario) -> None:
    """Rolled back, then written on: the streams are as long as before, the hashes not."""
    sc = keyed
    redis = sc.engine.redis
    older: dict[bytes, Any] = {}
    async for name in redis.scan_iter(count=1000):
        older[name] = await redis.dump(name)
    await sc.engine.start_execution(sc.name, ALICE)
    pins = await pins_of(sc)
    await redis.flushdb()
    for name, data in older.items():
        await redis.restore(name, 0, data)
    fresh = Engine(redis, Keys(partitions=PARTITIONS), audit_key=KEY)  # no cached state
    await fresh.start_execution(sc.name, ALICE)  # same seqs, another execution
    assert await sc.engine.store.version(sc.name) == pins[sc.name][0]
    assert (await verify(sc.engine.store, None, key=KEY)).ok
    report = await verify(sc.engine.store, None, key=KEY, checkpoint=pins)
    (problem,) = report.all_problems()
    assert problem.kind == "checkpoint" and "rewritten or rolled back" in problem.message


async def test_export_import_keeps_tags_and_an_older_export_is_named(
    keyed: Scenario, empty_redis: Redis, tmp_path: Path
) -> None:
    """An archive carries the tags: the imported store verifies with the key. Re-importing
    an export older than the checkpoint (a rollback by archive) is named."""
    sc = keyed
    older = tmp_path / "older.jsonl"
    with older.open("w") as out:
        await export_archive(sc.engine.store, out)
    assert '"tag":"' in older.read_text()
    await sc.engine.start_execution(sc.name, ALICE)
    pins = await pins_of(sc)
    target = store_of(empty_redis)
    await import_archive(target, older)
    raw = await target.read_raw(sc.name)
    assert raw and all(r.tag for r in raw)
    assert (await verify(target, None, key=KEY)).ok  # the archive on its own is intact
    report = await verify(target, None, key=KEY, checkpoint=pins)
    (problem,) = report.all_problems()
    assert problem.pipeline == sc.name and problem.kind == "checkpoint"
    assert f"the checkpoint recorded seq {pins[sc.name][0]}" in problem.message
