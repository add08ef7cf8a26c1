"""``audit verify``: passes on an honest log; every tampering of a stream (an edited,
deleted, swapped or copied entry, a cut tail, a deleted execution stream, a rewritten hash,
an altered head reference, a counter set back), a wrong snapshot or index, or a hidden
pipeline fails it, and the report names the stream, seq and entry.

The scenario's streams (tests/audit/scenario.py): seq 1 is PipelineCreated (the pipeline's
stream), seqs 2-51 execution 1 (its stream), 52-58 execution 2; the pipeline's stream also
holds the references of the head events (2, 3, 7, 8, 15, 16, ... 58).
"""

from __future__ import annotations

import importlib
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from app.audit import PipelineReport, verify, verify_pipeline
from app.audit.verify import heads_digest
from app.domain import events as ev
from app.domain.state import decode_head, encode_head
from app.store.eventstore import HEAD, chain_hash
from tests.audit.conftest import Rows, index_of, rebuild, rows_of, store_of
from tests.audit.scenario import Scenario

LAST = 58
verify_module = importlib.import_module("app.audit.verify")  # (app.audit.verify: the function)


async def check(sc: Scenario) -> PipelineReport:
    return await verify_pipeline(sc.engine.store, sc.name)


def head_key(sc: Scenario) -> str:
    return sc.engine.keys.log(sc.name)


def exec_key(sc: Scenario, eid: str) -> str:
    return sc.engine.keys.execution_log(sc.name, eid)


def problem_of(p: PipelineReport) -> Any:
    assert p.problem is not None, "verify passed"
    return p.problem


def rechain(rows: Rows, start: int) -> Rows:
    """Recompute the hashes of a stream from row ``start`` on (an attacker who knows the
    scheme): the chain holds again."""
    prev = rows[start - 1][1][b"h"].decode() if start > 0 else ""
    for i in range(start, len(rows)):
        rid, f = rows[i]
        body = f.get(b"e", f.get(b"r", b""))
        h = chain_hash(prev, int(rid.split(b"-")[0]), body)
        rows[i] = (rid, {**f, b"h": h.encode()})
        prev = h
    return rows


async def test_scenario_layout(scenario: Scenario) -> None:
    """The numbering the tamper tests below rely on."""
    sc = scenario
    assert await sc.engine.store.version(sc.name) == LAST == sc.captures[-1].version
    x1 = [int(r.split(b"-")[0]) for r, _ in await rows_of(sc.engine.redis, exec_key(sc, sc.exec1))]
    x2 = [int(r.split(b"-")[0]) for r, _ in await rows_of(sc.engine.redis, exec_key(sc, sc.exec2))]
    head = await rows_of(sc.engine.redis, head_key(sc))
    assert (x1, x2) == (list(range(2, 52)), list(range(52, 59)))
    assert set(head[0][1]) == {b"e", b"h"} and head[0][0] == b"1-0"
    refs = {int(r.split(b"-")[0]) for r, f in head if b"r" in f}
    assert {2, 8, 15, 16, 36, 58} <= refs and not {12, 17, 20, 21, 56, 57} & refs


async def test_honest_log_passes(scenario: Scenario) -> None:
    sc = scenario
    report = await verify(sc.engine.store, heads=True)
    assert report.ok, report.all_problems()
    (p,) = report.pipelines
    (lean,) = (await verify(sc.engine.store)).pipelines
    assert lean.heads == {} and lean.head == p.head
    assert (p.pipeline, p.events, p.last_version, p.streams) == (sc.name, LAST, LAST, 3)
    assert p.snapshot_version == sc.captures[2].live.headVersion == 36
    store = sc.engine.store
    for stream, key in await store.stream_keys(sc.name):
        last = (await store.read_raw_stream(key))[-1]
        assert p.heads[stream] == (last.version, last.hash)
    assert p.heads[HEAD][0] == LAST and p.heads[sc.exec1][0] == 51
    assert p.head == heads_digest(p.heads)
    assert "58 events in 3 streams, chains intact" in p.summary()


async def test_passes_without_a_snapshot_and_after_more_events(scenario: Scenario) -> None:
    sc = scenario
    await sc.engine.start_execution(sc.name)
    assert (await check(sc)).ok
    await sc.engine.store.drop_snapshot(sc.name)
    assert (await check(sc)).ok


async def test_edited_payload(scenario: Scenario) -> None:
    sc = scenario

    def edit(rows: Rows) -> Rows:
        i = index_of(rows, 17)  # Bob's retry request
        rid, f = rows[i]
        assert b"AKIABOB" in f[b"e"]
        rows[i] = (rid, {**f, b"e": f[b"e"].replace(b"AKIABOB", b"AKIAEVIL")})
        return rows

    await rebuild(sc.engine.redis, exec_key(sc, sc.exec1), edit)
    pr = problem_of(await check(sc))
    assert pr.kind == "hash" and (pr.version, pr.entry_id, pr.stream) == (17, "17-0", sc.exec1)
    assert pr.message.startswith(
        f"hash mismatch at seq 17 (entry 17-0 of execution {sc.exec1}'s stream): payload edited"
    )
    assert (await check(sc)).events == 16  # everything before the spot was checked


async def test_deleted_event(scenario: Scenario) -> None:
    sc = scenario
    await sc.engine.redis.xdel(exec_key(sc, sc.exec1), "12-0")
    pr = problem_of(await check(sc))
    assert pr.kind == "missing" and (pr.version, pr.entry_id, pr.stream) == (12, "12-0", sc.exec1)
    assert pr.message == (
        f"seq 12 missing (deleted event): execution {sc.exec1}'s stream goes from entry 11-0 "
        "to entry 13-0 and its chain breaks there"
    )


async def test_deleted_head_event_leaves_its_reference(scenario: Scenario) -> None:
    sc = scenario
    await sc.engine.redis.xdel(exec_key(sc, sc.exec1), "15-0")  # StageFailed
    pr = problem_of(await check(sc))
    assert pr.kind == "missing" and (pr.version, pr.stream) == (15, sc.exec1)
    assert pr.message == (
        "seq 15 missing (deleted event): the pipeline's stream holds its reference "
        f"(StageFailed of execution {sc.exec1}, entry 15-0) but execution {sc.exec1}'s stream "
        "has no entry 15-0"
    )


async def test_deleted_reference(scenario: Scenario) -> None:
    sc = scenario
    await sc.engine.redis.xdel(head_key(sc), "16-0")  # ExecutionFailed's reference
    pr = problem_of(await check(sc))
    assert pr.kind == "reference" and (pr.version, pr.entry_id, pr.stream) == (16, "16-0", HEAD)
    assert pr.message == (
        f"seq 16 (entry 16-0 of execution {sc.exec1}'s stream): ExecutionFailed is a head "
        "event but the pipeline's stream has no reference to it (entry 16-0 deleted from the "
        "pipeline's stream)"
    )


async def test_deleted_first_event(scenario: Scenario) -> None:
    sc = scenario
    await sc.engine.redis.xdel(head_key(sc), "1-0")
    pr = problem_of(await check(sc))
    assert pr.stream == HEAD and pr.version == 1
    assert pr.message == (
        "seq 1 missing (deleted event): the pipeline's stream goes from the start to entry "
        "2-0 and its chain breaks there"
    )


async def test_deleted_last_event(scenario: Scenario) -> None:
    """The last event and its reference both deleted: no gap, no orphan reference; the
    sequence counter knows there was a seq 58, and the stream's own counters where."""
    sc = scenario
    await sc.engine.redis.xdel(exec_key(sc, sc.exec2), f"{LAST}-0")
    pr = problem_of(await check(sc))
    assert pr.kind == "missing" and pr.stream == sc.exec2  # its reference is still there
    await sc.engine.redis.xdel(head_key(sc), f"{LAST}-0")
    pr = problem_of(await check(sc))
    assert pr.kind == "truncated" and pr.version == LAST
    assert pr.message.startswith(
        f"seq {LAST} missing (deleted event): the sequence counter is at {LAST} but the "
        f"streams end at seq {LAST - 1}; the pipeline's stream records deleted entries up to "
        f"{LAST}-0"
    )


async def test_swapped_events(scenario: Scenario) -> None:
    sc = scenario

    def swap(rows: Rows) -> Rows:
        a, b = index_of(rows, 20), index_of(rows, 21)
        (ra, fa), (rb, fb) = rows[a], rows[b]
        rows[a] = (ra, {**fa, b"e": fb[b"e"]})
        rows[b] = (rb, {**fb, b"e": fa[b"e"]})
        return rows

    await rebuild(sc.engine.redis, exec_key(sc, sc.exec1), swap)
    pr = problem_of(await check(sc))
    assert pr.kind == "hash" and (pr.entry_id, pr.stream) == ("20-0", sc.exec1)
    assert pr.message.startswith(
        f"hash mismatch at seq 20 (entry 20-0 of execution {sc.exec1}'s stream): events "
        "reordered (the payload stored at seq 20 was hashed as seq 21"
    )


async def test_swapped_far_apart(scenario: Scenario) -> None:
    sc = scenario

    def swap(rows: Rows) -> Rows:
        a, b = index_of(rows, 5), index_of(rows, 41)
        (ra, fa), (rb, fb) = rows[a], rows[b]
        rows[a] = (ra, {**fa, b"e": fb[b"e"]})
        rows[b] = (rb, {**fb, b"e": fa[b"e"]})
        return rows

    await rebuild(sc.engine.redis, exec_key(sc, sc.exec1), swap)
    pr = problem_of(await check(sc))
    assert pr.version == 5 and pr.stream == sc.exec1
    assert "events reordered" in pr.message and "seq 41" in pr.message


async def test_rewritten_hash(scenario: Scenario) -> None:
    """A hash replaced (the payload kept): neither it nor the next link holds."""
    sc = scenario

    def rewrite(rows: Rows) -> Rows:
        i = index_of(rows, 12)
        rid, f = rows[i]
        rows[i] = (rid, {**f, b"h": b"0" * 40})
        return rows

    await rebuild(sc.engine.redis, exec_key(sc, sc.exec1), rewrite)
    pr = problem_of(await check(sc))
    assert (pr.kind, pr.version, pr.stream) == ("hash", 12, sc.exec1)
    assert "hash mismatch at seq 12" in pr.message and "chain broken" in pr.message


async def test_edit_with_a_new_hash_breaks_the_next_link(scenario: Scenario) -> None:
    """Edit seq 17 and give it a correct new hash: the stream's next link (18) fails."""
    sc = scenario

    def edit(rows: Rows) -> Rows:
        i = index_of(rows, 17)
        rid, f = rows[i]
        prev = rows[i - 1][1][b"h"].decode()
        payload = f[b"e"].replace(b"AKIABOB", b"AKIAEVIL")
        rows[i] = (rid, {b"e": payload, b"h": chain_hash(prev, 17, payload).encode()})
        return rows

    await rebuild(sc.engine.redis, exec_key(sc, sc.exec1), edit)
    pr = problem_of(await check(sc))
    assert (pr.version, pr.stream) == (18, sc.exec1)
    assert pr.message.startswith(
        f"hash mismatch at seq 18 (entry 18-0 of execution {sc.exec1}'s stream)"
    )


async def test_altered_head_reference(scenario: Scenario) -> None:
    """A reference's stage changed: its hash fails; with the pipeline's chain recomputed
    from there on, the reference no longer matches its event."""
    sc = scenario
    good = await rows_of(sc.engine.redis, head_key(sc))

    def alter(rows: Rows) -> Rows:
        i = index_of(rows, 8)  # StageEntered Build
        rid, f = rows[i]
        assert ev.decode_ref(f[b"r"]).s == "Build"
        rows[i] = (rid, {**f, b"r": f[b"r"].replace(b"Build", b"Bogus")})
        return rows

    await rebuild(sc.engine.redis, head_key(sc), alter)
    pr = problem_of(await check(sc))
    assert (pr.kind, pr.version, pr.stream) == ("hash", 8, HEAD)
    assert pr.message.startswith(
        "hash mismatch at seq 8 (entry 8-0 of the pipeline's stream): payload edited"
    )

    await rebuild(sc.engine.redis, head_key(sc), lambda _: rechain(alter(list(good)), 0))
    pr = problem_of(await check(sc))
    assert (pr.kind, pr.version, pr.entry_id, pr.stream) == ("reference", 8, "8-0", HEAD)
    assert pr.message == (
        'head reference at seq 8 (entry 8-0 of the pipeline\'s stream) says ["StageEntered",'
        f'"{sc.exec1}","Bogus",false] but the event is ["StageEntered","{sc.exec1}",'
        '"Build",false] '
        f"(entry 8-0 of execution {sc.exec1}'s stream)"
    )


async def test_odd_entry_id(scenario: Scenario) -> None:
    sc = scenario

    def renumber(rows: Rows) -> Rows:
        i = index_of(rows, 54)
        rows[i] = (b"54-1", rows[i][1])
        return rows

    await rebuild(sc.engine.redis, exec_key(sc, sc.exec2), renumber)
    pr = problem_of(await check(sc))
    assert pr.kind == "entry-id" and (pr.entry_id, pr.stream) == ("54-1", sc.exec2)
    assert "entry id is not <seq>-0" in pr.message


async def test_event_copied_into_another_stream(scenario: Scenario) -> None:
    """Seq 3 of execution 1 added to execution 2's stream, with a hash that chains there."""
    sc = scenario
    x1 = await rows_of(sc.engine.redis, exec_key(sc, sc.exec1))
    _, f3 = x1[index_of(x1, 3)]

    def copy(rows: Rows) -> Rows:
        return rechain([(b"3-0", {b"e": f3[b"e"], b"h": b""}), *rows], 0)

    await rebuild(sc.engine.redis, exec_key(sc, sc.exec2), copy)
    pr = problem_of(await check(sc))
    assert (pr.kind, pr.version, pr.stream) == ("stream", 3, sc.exec2)
    assert pr.message == (
        f"seq 3 is stored twice: in execution {sc.exec1}'s stream and execution {sc.exec2}'s stream"
    )


async def test_event_moved_to_the_pipelines_stream(scenario: Scenario) -> None:
    """Seq 17 moved from execution 1's stream into the pipeline's, both chains recomputed:
    every seq is still stored once and every hash holds, but the event is not in its own
    stream."""
    sc = scenario
    redis = sc.engine.redis
    x1 = await rows_of(redis, exec_key(sc, sc.exec1))
    moved = x1.pop(index_of(x1, 17))
    await rebuild(redis, exec_key(sc, sc.exec1), lambda _: rechain(x1, 0))

    def insert(rows: Rows) -> Rows:
        at = next(i for i, (rid, _) in enumerate(rows) if int(rid.split(b"-")[0]) > 17)
        return rechain([*rows[:at], moved, *rows[at:]], 0)

    await rebuild(redis, head_key(sc), insert)
    pr = problem_of(await check(sc))
    assert (pr.kind, pr.version, pr.entry_id, pr.stream) == ("stream", 17, "17-0", HEAD)
    assert pr.message == (
        "seq 17 (entry 17-0 of the pipeline's stream): StageRetryRequested of execution "
        f"{sc.exec1} is in the pipeline's stream"
    )


async def test_cut_execution_stream(scenario: Scenario) -> None:
    """Execution 2's stream rebuilt with its first 4 entries (52-55, so the stream's own
    counters start afresh), then its traces removed one after the other: the orphan
    reference, the sequence counter (no command-id table needed), the command-id table,
    the actions index each tell; with every trace gone only a head kept elsewhere does."""
    sc = scenario
    redis, keys = sc.engine.redis, sc.engine.keys
    honest = await check(sc)
    commands = await redis.hgetall(keys.commands(sc.name))
    await rebuild(redis, exec_key(sc, sc.exec2), lambda rows: rows[:4])
    await redis.delete(keys.commands(sc.name))
    pr = problem_of(await check(sc))
    assert (pr.kind, pr.version, pr.stream) == ("missing", 56, sc.exec2)
    assert pr.message == (
        f"seq 56 missing (deleted event): execution {sc.exec2}'s actions index records seq 57 "
        "but its stream ends at entry 55-0 (the stream was cut)"
    )

    await rebuild(redis, head_key(sc), lambda rows: rows[:-1])  # the reference of 58 too
    pr = problem_of(await check(sc))
    assert (pr.kind, pr.version, pr.stream) == ("truncated", 56, sc.exec2)
    assert pr.message.startswith(
        "seq 56 missing (deleted event): the sequence counter is at 58 but the streams end "
        "at seq 55; "
    )

    await redis.set(keys.sequence(sc.name), 55)
    await redis.hset(keys.commands(sc.name), mapping=commands)
    pr = problem_of(await check(sc))
    assert pr.kind == "truncated" and pr.message.startswith(
        "seq 56 missing (deleted event): command ids record appends up to seq 58"
    )

    await redis.delete(keys.commands(sc.name))
    pr = problem_of(await check(sc))
    assert pr.kind == "index" and pr.stream == sc.exec2
    assert pr.message.startswith(f"execution {sc.exec2}'s actions (xa) index: ")

    # With every trace removed, only a head recorded elsewhere tells: verify passes but
    # reports a different head (docs/audit.md: keep the head of each verify run).
    xa = keys.attempts(sc.name, sc.exec2)
    for aid in await redis.hkeys(xa):
        await redis.hset(xa, aid, 54)
    p = await check(sc)
    assert p.ok, p.problem
    assert p.last_version == 55 and p.head != honest.head
    assert p.heads[sc.exec2][0] == 55 and p.heads[sc.exec1] == honest.heads[sc.exec1]


async def test_counter_set_back(scenario: Scenario) -> None:
    sc = scenario
    await sc.engine.redis.set(sc.engine.keys.sequence(sc.name), 50)
    pr = problem_of(await check(sc))
    assert (pr.kind, pr.stream) == ("counter", HEAD)
    assert pr.message == (
        "the pipeline's stream holds entry 58-0, past the sequence counter (50): the counter "
        "was set back"
    )
    await sc.engine.redis.delete(sc.engine.keys.sequence(sc.name))
    pr = problem_of(await check(sc))
    assert pr.kind == "counter" and "is missing" in pr.message


async def test_deleted_execution_stream(scenario: Scenario) -> None:
    sc = scenario
    redis, keys = sc.engine.redis, sc.engine.keys
    await redis.delete(exec_key(sc, sc.exec1))
    pr = problem_of(await check(sc))
    assert (pr.kind, pr.version, pr.stream) == ("stream", 2, sc.exec1)
    assert pr.message == (
        f"execution {sc.exec1} (started at seq 2, in the executions index) has no stream: "
        "its stream was deleted"
    )
    await redis.zrem(keys.executions(sc.name), sc.exec1)  # the index entry as well
    pr = problem_of(await check(sc))
    assert (pr.kind, pr.version) == ("missing", 2)
    assert pr.message == (
        "seq 2 missing (deleted event): the pipeline's stream holds its reference "
        f"(ExecutionStarted of execution {sc.exec1}, entry 2-0) but execution {sc.exec1} has "
        "no stream"
    )


async def test_snapshot_differs(scenario: Scenario) -> None:
    sc = scenario
    key = sc.engine.keys.snapshot(sc.name)
    raw = await sc.engine.redis.hget(key, "s")
    assert raw is not None
    snap = decode_head(raw)
    assert snap.occupant["Approve"] == sc.exec1 and not snap.executions
    snap.occupant["Approve"] = sc.exec2
    await sc.engine.redis.hset(key, "s", encode_head(snap))
    pr = problem_of(await check(sc))
    assert (pr.kind, pr.version, pr.stream) == ("snapshot", 36, HEAD)
    assert pr.message == (
        f"snapshot differs at occupant.Approve: snapshot {sc.exec2}, rebuilt {sc.exec1} "
        "(snapshot at seq 36)"
    )
    await sc.engine.redis.hset(key, "v", 40)
    pr = problem_of(await check(sc))
    assert pr.kind == "snapshot" and "labelled seq 40" in pr.message


async def test_projection_differences_are_named(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loaded head and each execution read from its stream are compared with the full
    fold: a fold path that went wrong (here: made wrong on purpose) is named."""
    sc = scenario

    def no_refs(s: Any, version: int, ref: ev.HeadRef) -> Any:
        return s  # the head references after the snapshot are not folded

    monkeypatch.setattr(verify_module, "evolve_ref", no_refs)
    pr = problem_of(await check(sc))
    assert (pr.kind, pr.stream) == ("projection", HEAD)
    assert pr.message == (
        "projection differs at version: loaded head 36, rebuilt 58 (snapshot at seq 36, "
        "caught up to 58)"
    )
    monkeypatch.undo()

    real = verify_module.execution_from

    def stale(envs: Any) -> Any:
        x = real(envs)
        if x is not None and x.executionId == sc.exec2:
            x.status = "Failed"
        return x

    monkeypatch.setattr(verify_module, "execution_from", stale)
    pr = problem_of(await check(sc))
    assert (pr.kind, pr.stream) == ("projection", sc.exec2)
    assert pr.message == (
        f"projection differs at executions.{sc.exec2}.status: read from its stream "
        "Failed, rebuilt Stopped"
    )


@pytest.mark.parametrize("index", ["xs", "as", "tok", "apv", "xa"])
async def test_derived_index_differs(scenario: Scenario, index: str) -> None:
    sc = scenario
    redis, keys, name = sc.engine.redis, sc.engine.keys, sc.name
    if index == "xs":
        await redis.zadd(keys.executions(name), {sc.exec2: 53})
        want = f"executions (xs) index: {sc.exec2} should be at seq 52, is 53"
    elif index == "as":
        (member,) = [
            m
            for m in await redis.zrange(keys.actions(name), 0, -1)
            if m.startswith(sc.exec2.encode())
        ]
        await redis.zrem(keys.actions(name), member)
        want = f"actions (as) index: {member.decode()} should be at seq 54, is (not set)"
    elif index == "tok":
        await redis.hset(keys.request_tokens(name), "forged", sc.exec1)
        want = f"request tokens (tok) index: token forged (execution {sc.exec1}) has no such event"
    elif index == "apv":
        (token,) = await redis.hkeys(keys.approvals(name))
        await redis.hset(keys.approvals(name), token, sc.exec2)
        want = (
            f"approval tokens (apv) index: token {token.decode()} should name execution "
            f"{sc.exec1}, names {sc.exec2}"
        )
    else:
        xa = keys.attempts(name, sc.exec2)
        (aid,) = await redis.hkeys(xa)
        await redis.hset(xa, aid, 56)
        want = (
            f"execution {sc.exec2}'s actions (xa) index: {aid.decode()} should be at seq 57, is 56"
        )
    pr = problem_of(await check(sc))
    assert pr.kind == "index" and pr.message == want


async def test_stream_missing_from_the_executions_index(scenario: Scenario) -> None:
    """Found by the key scan, whether one pipeline or all are verified: its events are
    checked like any other's, and the index is reported."""
    sc = scenario
    await sc.engine.redis.zrem(sc.engine.keys.executions(sc.name), sc.exec2)
    want = f"executions (xs) index: {sc.exec2} should be at seq 52, is (not set)"
    pr = problem_of(await check(sc))
    assert (pr.kind, pr.message, pr.stream) == ("index", want, sc.exec2)
    (p,) = (await verify(sc.engine.store)).pipelines
    assert problem_of(p).message == want and p.events == LAST


async def test_hidden_and_vanished_pipelines(scenario: Scenario) -> None:
    sc = scenario
    names = sc.engine.keys.names(sc.engine.keys.partition(sc.name))
    await sc.engine.redis.srem(names, sc.name)
    report = await verify(sc.engine.store)
    assert not report.ok
    assert [(p.pipeline, p.kind) for p in report.problems] == [(sc.name, "listing")]
    assert report.pipelines[0].ok  # the streams themselves are fine, and were checked

    await sc.engine.redis.sadd(names, sc.name)
    await sc.engine.redis.delete(sc.engine.keys.log(sc.name))
    report = await verify(sc.engine.store)
    (p,) = report.pipelines
    pr = problem_of(p)
    assert pr.stream == HEAD and pr.message == (
        "the pipeline's stream was deleted (the sequence counter is at 58, 2 execution "
        "streams remain)"
    )


async def test_payload_or_reference_that_does_not_decode(redis: Redis) -> None:
    store = store_of(redis)
    key = store.keys.log("raw")
    bad = b'{"id":"y","time":2.0,"actor":"a","event":{"type":"NoSuchEvent"}}'
    await redis.xadd(key, {"e": bad, "h": chain_hash("", 1, bad)}, id="1-0")
    await redis.set(store.keys.sequence("raw"), 1)
    pr = problem_of(await verify_pipeline(store, "raw"))
    assert pr.kind == "decode" and pr.message.startswith(
        "seq 1 (entry 1-0 of the pipeline's stream): payload does not decode"
    )
    await redis.delete(key)
    await redis.xadd(key, {"r": b"[1,", "h": chain_hash("", 1, b"[1,")}, id="1-0")
    pr = problem_of(await verify_pipeline(store, "raw"))
    assert pr.kind == "decode" and pr.message.startswith(
        "seq 1 (entry 1-0 of the pipeline's stream): head reference does not decode"
    )


async def test_verify_on_a_live_log(scenario: Scenario) -> None:
    """Appends while verify runs are not mistaken for tampering."""
    import anyio
    import anyio.lowlevel

    sc = scenario
    reports: list[PipelineReport] = []

    async def appender() -> None:
        for _ in range(20):
            eid = await sc.engine.start_execution(sc.name)
            await anyio.lowlevel.checkpoint()
            if _ % 3 == 0:
                await sc.engine.stop_execution(sc.name, eid, reason="busy")
            await anyio.lowlevel.checkpoint()

    async def verifier() -> None:
        for _ in range(10):
            reports.append(await verify_pipeline(sc.engine.store, sc.name, batch=3))

    async with anyio.create_task_group() as tg:
        tg.start_soon(appender)
        tg.start_soon(verifier)
    assert all(r.ok for r in reports), [str(r.problem) for r in reports if r.problem]
    assert (await check(sc)).ok


def test_report_summary_and_json_of_a_reference() -> None:
    ref = ev.HeadRef(t="StageFailed", x="e", s="Build", a=True)
    assert msgspec.json.encode(ref) == b'["StageFailed","e","Build",true]'
    p = PipelineReport("p", 3, 3, "abc", None, None, 2, {HEAD: (3, "h")})
    assert p.summary() == "ok   p: 3 events in 2 streams, chains intact, head 3:abc, no snapshot"
