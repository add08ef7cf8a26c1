"""One contract suite for the event store (app/store/eventstore.py).

Every test runs on fakeredis, a real redis-server and a real 3-master Redis Cluster
(``any_redis`` in conftest): fakeredis is not trusted for Lua or cluster behaviour, so the
same assertions must hold on the real servers.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import anyio
import msgspec
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from app.domain import events as ev
from app.domain.model import ActionDeclaration, ActionTypeId, PipelineDeclaration, StageDeclaration
from app.domain.state import fold
from app.store.eventstore import (
    HEAD,
    AppendResult,
    Batch,
    ConcurrencyError,
    EventStore,
    Fenced,
    chain_hash,
    event_tag,
    ref_tag,
)
from app.store.keys import Keys

KEYS = Keys(partitions=8)
ROLE = "arn:aws:iam::123456789012:role/stageline"
COMMANDS = ActionTypeId(category="Compute", owner="AWS", provider="Commands", version="1")

_ids = itertools.count()


@pytest.fixture
def store(any_redis: Redis | RedisCluster) -> EventStore:
    return EventStore(any_redis, KEYS)  # type: ignore[arg-type]  # a cluster client works too


# --- events ----------------------------------------------------------------------------------


def env(pipeline: str, event: ev.Event, **kw: Any) -> ev.Envelope:
    n = next(_ids)
    return ev.Envelope(
        id=f"e{n}",
        pipeline=pipeline,
        version=0,
        time=1_700_000_000.0 + n,
        actor="tester",
        event=event,  # type: ignore[arg-type]
        **kw,
    )


def batch(pipeline: str, *events: ev.Event, **kw: Any) -> Batch:
    return Batch(pipeline, [env(pipeline, e) for e in events], **kw)


def declaration(name: str) -> PipelineDeclaration:
    action = ActionDeclaration(name="A", actionTypeId=COMMANDS, commands=["true"])
    return PipelineDeclaration(
        name=name, roleArn=ROLE, stages=[StageDeclaration(name="S", actions=[action])]
    )


def created(p: str) -> ev.PipelineCreated:
    return ev.PipelineCreated(declaration=declaration(p))


def started(x: str, token: str | None = None) -> ev.ExecutionStarted:
    return ev.ExecutionStarted(executionId=x, pipelineVersion=1, clientRequestToken=token)


def entered(x: str, stage: str = "S") -> ev.StageEntered:
    return ev.StageEntered(executionId=x, stageName=stage)


def scheduled(
    x: str, aid: str, kind: ev.Kind = "commands", token: str | None = None
) -> ev.ActionExecutionScheduled:
    return ev.ActionExecutionScheduled(
        executionId=x, stageName="S", actionName="A", actionExecutionId=aid, kind=kind,
        token=token,
    )


def taken(x: str, aid: str, worker: str = "w1") -> ev.ActionExecutionStarted:
    return ev.ActionExecutionStarted(executionId=x, actionExecutionId=aid, worker=worker)


def done(x: str, aid: str) -> ev.ActionExecutionSucceeded:
    return ev.ActionExecutionSucceeded(executionId=x, actionExecutionId=aid)


def one_of_each(x: str) -> list[ev.Event]:
    """One event of every type that belongs to an execution."""
    return [
        started(x),
        entered(x),
        scheduled(x, "a1", kind="approval", token="apv"),
        taken(x, "a1"),
        ev.JobAcknowledged(executionId=x, actionExecutionId="a1", jobId="j", nonce="n"),
        ev.ApprovalRecorded(executionId=x, actionExecutionId="a1", status="Approved"),
        done(x, "a1"),
        ev.ActionExecutionFailed(executionId=x, actionExecutionId="a1"),
        ev.ActionExecutionAbandoned(executionId=x, actionExecutionId="a1"),
        ev.StageFailed(executionId=x, stageName="S", autoRetry=True),
        ev.StageRetryRequested(executionId=x, stageName="S", retryMode="FAILED_ACTIONS"),
        ev.StageRetryStarted(executionId=x, stageName="S", retryMode="FAILED_ACTIONS"),
        ev.StageRetryRejected(executionId=x, stageName="S"),
        ev.StageSucceeded(executionId=x, stageName="S"),
        # stage conditions (app/domain/conditions.py)
        ev.ConditionStarted(
            executionId=x, stageName="S", conditionType="ON_SUCCESS", conditionExecutionId="c1"
        ),
        ev.RuleExecutionScheduled(
            executionId=x,
            stageName="S",
            conditionExecutionId="c1",
            ruleName="r",
            ruleExecutionId="r1",
            provider="Commands",
            kind="commands",
        ),
        ev.RuleExecutionStarted(executionId=x, ruleExecutionId="r1", worker="w"),
        ev.RuleExecutionDeferred(executionId=x, ruleExecutionId="r1", until=1.0),
        ev.RuleExecutionSucceeded(executionId=x, ruleExecutionId="r1"),
        ev.RuleExecutionFailed(executionId=x, ruleExecutionId="r1"),
        ev.ConditionEnded(executionId=x, stageName="S", conditionExecutionId="c1", status="Failed"),
        ev.StageConditionOverridden(
            executionId=x, stageName="S", conditionType="ON_SUCCESS", conditionExecutionId="c1"
        ),
        ev.ExecutionWaiting(executionId=x, stageName="T"),
        ev.ExecutionSuperseded(executionId=x, byExecutionId="other"),
        ev.ExecutionStopping(executionId=x),
        ev.ExecutionStopped(executionId=x),
        ev.ExecutionSucceeded(executionId=x),
        ev.ExecutionFailed(executionId=x, stageName="S"),
        ev.RollbackStarted(executionId=x, stageName="S", targetExecutionId="good"),
    ]


def same_partition(n: int, prefix: str = "pipe") -> list[str]:
    """``n`` pipeline names of one partition."""
    names = (f"{prefix}{i}" for i in range(1000))
    first = f"{prefix}0"
    return [name for name in names if KEYS.partition(name) == KEYS.partition(first)][:n]


def one_per_partition() -> list[str]:
    seen: dict[int, str] = {}
    for i in range(1000):
        seen.setdefault(KEYS.partition(f"q{i}"), f"q{i}")
    assert len(seen) == KEYS.partitions
    return [seen[p] for p in range(KEYS.partitions)]


async def ok(store: EventStore, b: Batch) -> AppendResult:
    r = await store.append(b)
    assert not r.duplicate
    return r


async def refused(store: EventStore, b: Batch) -> ConcurrencyError:
    with pytest.raises(ConcurrencyError) as err:
        await store.append(b)
    return err.value


def text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def all_keys(r: Redis | RedisCluster) -> set[str]:
    if isinstance(r, RedisCluster):
        raw: Any = await r.keys("*", target_nodes=RedisCluster.PRIMARIES)
    else:
        raw = await r.keys("*")
    return {text(k) for k in raw}


async def fields(r: Redis | RedisCluster, key: str) -> list[tuple[str, dict[str, str]]]:
    rows: Any = await r.xrange(key)
    return [(text(rid), {text(k): text(v) for k, v in f.items()}) for rid, f in rows]


# --- append and read -------------------------------------------------------------------------


async def test_append_and_read_in_order(store: EventStore) -> None:
    p = "p"
    b1 = batch(p, created(p), head_expected=0)
    r1 = await ok(store, b1)
    assert (r1.first, r1.last, r1.streams) == (1, 1, ())
    b2 = batch(p, started("a"), entered("a"), scheduled("a", "a1"), head_expected=1,
               exec_expected={"a": 0})
    r2 = await ok(store, b2)
    assert (r2.first, r2.last) == (2, 4)
    b3 = batch(p, started("b"), head_expected=3, exec_expected={"b": 0})
    r3 = await ok(store, b3)
    b4 = batch(p, done("a", "a1"), exec_expected={"a": 4})
    r4 = await ok(store, b4)
    assert (r3.first, r4.first) == (5, 6)

    stamped = (
        r1.stamp(b1.envelopes) + r2.stamp(b2.envelopes) + r3.stamp(b3.envelopes)
        + r4.stamp(b4.envelopes)
    )
    assert [e.version for e in stamped] == [1, 2, 3, 4, 5, 6]
    got = await store.read(p)
    assert got == stamped  # every field round-trips, merged in seq order
    assert got[0].pipeline == p and got[0].actor == "tester"

    assert await store.read(p, after=2, count=3) == stamped[2:5]
    assert await store.read(p, after=2, until=4) == stamped[2:4]
    assert await store.read(p, after=6) == []
    chunks = [[e.version for e in c] async for c in store.iter_events(p, after=1, batch=4)]
    assert chunks == [[2, 3, 4, 5], [6]]

    xa = [stamped[i] for i in (1, 2, 3, 5)]
    assert await store.read_execution(p, "a") == xa
    assert await store.read_execution(p, "a", after=2, until=4) == xa[1:3]
    assert await store.read_execution(p, "a", count=2) == xa[:2]
    assert await store.read_execution(p, "b") == [stamped[4]]
    assert await store.read_execution(p, "nope") == []

    head = await store.read_head(p)
    assert head == [
        stamped[0],
        (2, ev.HeadRef("ExecutionStarted", "a")),
        (3, ev.HeadRef("StageEntered", "a", "S")),
        (5, ev.HeadRef("ExecutionStarted", "b")),
    ]
    assert await store.read_head(p, after=1, until=3) == head[1:3]
    assert await store.read_head(p, after=1, count=1) == head[1:2]

    assert await store.version(p) == 6
    assert await store.head_version(p) == 5
    assert await store.version("nothing") == 0
    assert await store.head_version("nothing") == 0
    assert await store.read("nothing") == []
    assert await store.read_head("nothing") == []


async def test_one_counter_numbers_every_stream_and_is_the_entry_id(store: EventStore) -> None:
    p = "p"
    await ok(store, batch(p, created(p)))
    await ok(store, batch(p, started("x"), started("y"), scheduled("x", "x1")))
    res = await store.append_many(
        [batch(p, scheduled("y", "y1"), entered("x")), batch(p, done("x", "x1"), started("z"))]
    )
    assert [(r.first, r.last) for r in res if isinstance(r, AppendResult)] == [(5, 6), (7, 8)]
    assert await store.version(p) == 8
    assert text(await store.redis.get(KEYS.sequence(p))) == "8"

    full: list[int] = []
    refs: list[int] = []
    for stream, key in await store.stream_keys(p):
        rows: Any = await store.redis.xrange(key)
        ids = [text(rid) for rid, _ in rows]
        entries = await store.read_raw_stream(key)
        assert ids == [f"{r.version}-0" for r in entries], stream  # entry id = seq
        assert ids == sorted(ids, key=lambda i: int(i.split("-")[0]))
        full += [r.version for r in entries if not r.ref]
        refs += [r.version for r in entries if r.ref]
    # every seq is stored in full exactly once; references share the id of their event
    assert sorted(full) == list(range(1, 9))
    assert set(refs) <= set(full) and refs == [2, 3, 6, 8]
    assert [s for s, _ in await store.stream_keys(p)] == [HEAD, "x", "y", "z"]

    b = batch(p, started("w"), taken("w", "w1"))
    r = await ok(store, b)
    assert [e.version for e in r.stamp(b.envelopes)] == [9, 10]
    assert [e.version for e in await store.read_execution(p, "w")] == [9, 10]


async def test_head_references_for_head_events_only(store: EventStore) -> None:
    p = "p"
    events = one_of_each("x")
    covered = {type(e) for e in events}
    assert covered == set(ev.EVENT_TYPES) - ev.PIPELINE_EVENTS  # a new event type joins here
    await ok(store, batch(p, created(p)))
    r = await ok(store, batch(p, *events))
    head = await store.read_head(p)
    assert isinstance(head[0], ev.Envelope) and head[0].version == 1
    refs = dict(h for h in head[1:] if isinstance(h, tuple))
    assert len(refs) == len(head) - 1
    expected = {
        r.first + i: ev.head_ref(e) for i, e in enumerate(events) if type(e) in ev.HEAD_EVENTS
    }
    assert refs == expected
    assert {ref.t for ref in refs.values()} == {t.__name__ for t in ev.HEAD_EVENTS}
    assert ev.HeadRef("StageFailed", "x", "S", True) in refs.values()
    assert ev.HeadRef("ExecutionWaiting", "x", "T") in refs.values()
    # the execution's stream has every event in full, the declaration is not in it
    assert [e.event for e in await store.read_execution(p, "x")] == events
    raw_head = await store.read_raw_stream(KEYS.log(p))
    assert [x.ref for x in raw_head] == [False] + [True] * len(expected)
    assert all(x.payload == ev.encode_ref(refs[x.version]) for x in raw_head[1:])


# --- optimistic concurrency ------------------------------------------------------------------


async def race(store: EventStore, batches: list[Batch]) -> list[AppendResult | ConcurrencyError]:
    """Append every batch at once (concurrent calls); results in the batches' order."""
    results: list[AppendResult | ConcurrencyError | None] = [None] * len(batches)

    async def one(i: int) -> None:
        try:
            results[i] = await store.append(batches[i])
        except ConcurrencyError as e:
            results[i] = e

    async with anyio.create_task_group() as tg:
        for i in range(len(batches)):
            tg.start_soon(one, i)
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


async def test_eight_appenders_on_the_head_exactly_one_wins(store: EventStore) -> None:
    p = "p"
    await ok(store, batch(p, created(p)))
    racers = [
        batch(p, started(f"w{i}"), entered(f"w{i}"), head_expected=1, exec_expected={f"w{i}": 0})
        for i in range(8)
    ]
    results = await race(store, racers)
    wins = [i for i, r in enumerate(results) if isinstance(r, AppendResult)]
    assert len(wins) == 1
    w = f"w{wins[0]}"
    assert (results[wins[0]].first, results[wins[0]].last) == (2, 3)  # type: ignore[union-attr]
    for i, r in enumerate(results):
        if i == wins[0]:
            continue
        assert isinstance(r, ConcurrencyError)
        assert (r.stream, r.expected, r.actual, r.behind) == (HEAD, 1, 3, False)
        # what the loser missed, so it can decide again without a read
        assert r.missing == [
            (2, ev.HeadRef("ExecutionStarted", w)),
            (3, ev.HeadRef("StageEntered", w, "S")),
        ]
    assert await store.execution_ids(p) == [w]
    assert await store.version(p) == 3
    # a loser brought up to date by ``missing`` goes through
    loser = next(i for i in range(8) if i != wins[0])
    again = batch(p, started(f"w{loser}"), head_expected=3, exec_expected={f"w{loser}": 0})
    assert (await ok(store, again)).first == 4


async def test_head_conflict_sends_missing_declarations_in_full(store: EventStore) -> None:
    p = "p"
    await ok(store, batch(p, created(p)))
    upd = batch(p, ev.PipelineUpdated(declaration=declaration(p)), head_expected=1)
    r = await ok(store, upd)
    err = await refused(store, batch(p, started("x"), head_expected=1))
    assert err.missing == r.stamp(upd.envelopes)
    assert (err.expected, err.actual) == (1, 2)


async def test_eight_appenders_on_an_execution_exactly_one_wins(store: EventStore) -> None:
    p = "p"
    await ok(store, batch(p, started("x"), exec_expected={"x": 0}))
    racers = [
        batch(p, scheduled("x", f"a{i}"), taken("x", f"a{i}"), exec_expected={"x": 1})
        for i in range(8)
    ]
    results = await race(store, racers)
    wins = [i for i, r in enumerate(results) if isinstance(r, AppendResult)]
    assert len(wins) == 1
    won = results[wins[0]]
    assert isinstance(won, AppendResult)
    written = won.stamp(racers[wins[0]].envelopes)
    for r in results:
        if r is won:
            continue
        assert isinstance(r, ConcurrencyError)
        assert (r.stream, r.expected, r.actual, r.attempt, r.behind) == ("x", 1, 3, False, False)
        assert r.missing == written  # full envelopes of the execution's stream
    assert await store.read_execution(p, "x", after=1) == written
    assert await store.head_version(p) == 1  # the racers' events are not head events


async def test_starting_an_existing_execution_conflicts(store: EventStore) -> None:
    p = "p"
    b = batch(p, started("x"), exec_expected={"x": 0})
    r = await ok(store, b)
    err = await refused(store, batch(p, started("x"), exec_expected={"x": 0}))
    assert (err.stream, err.expected, err.actual) == ("x", 0, 1)
    assert err.missing == r.stamp(b.envelopes)
    assert await store.version(p) == 1


async def test_a_refused_batch_writes_to_none_of_its_streams(store: EventStore) -> None:
    p = "p"
    await ok(store, batch(p, created(p)))
    await ok(store, batch(p, started("x"), started("y"), head_expected=1))
    before = await all_keys(store.redis), await store.read_raw(p)
    # x is where the writer saw it, y is not: nothing of the batch is written, x neither
    err = await refused(store, batch(p, entered("x"), entered("y"), started("z", "t"),
                                     exec_expected={"x": 2, "y": 2, "z": 0}))
    assert (err.stream, err.expected, err.actual) == ("y", 2, 3)
    assert (await all_keys(store.redis), await store.read_raw(p)) == before
    assert await store.version(p) == 3


async def test_missing_is_sent_for_32_entries_at_most(store: EventStore) -> None:
    p = "p"
    await ok(store, batch(p, started("x"), *[taken("x", f"a{i}") for i in range(31)]))
    err = await refused(store, batch(p, done("x", "a0"), exec_expected={"x": 0}))
    assert err.actual == 32 and [m.version for m in err.missing] == list(range(1, 33))  # type: ignore[union-attr]
    await ok(store, batch(p, taken("x", "b")))
    err = await refused(store, batch(p, done("x", "a0"), exec_expected={"x": 0}))
    assert (err.actual, err.missing, err.behind) == (33, [], False)  # too many: read instead


async def test_attempt_local_concurrency(store: EventStore) -> None:
    p = "p"
    r = await ok(store, batch(p, started("x"), entered("x"), scheduled("x", "a1"),
                              scheduled("x", "a2"), exec_expected={"x": 0}))
    assert r.last == 4
    attempts = KEYS.attempts(p, "x")
    assert {text(k): text(v) for k, v in (await store.redis.hgetall(attempts)).items()} == {
        "a1": "3", "a2": "4",
    }
    # two runners on different actions of one execution: both go through, in any order
    results = await race(store, [
        batch(p, taken("x", "a1", "w1"), attempt_expected={"x": ("a1", 3)}),
        batch(p, taken("x", "a2", "w2"), attempt_expected={"x": ("a2", 4)}),
    ])
    assert all(isinstance(r, AppendResult) for r in results)
    assert sorted(r.first for r in results if isinstance(r, AppendResult)) == [5, 6]
    seq: dict[str, int] = {
        text(k): int(v) for k, v in (await store.redis.hgetall(attempts)).items()
    }
    assert sorted(seq.values()) == [5, 6]
    # two runners on the same action: exactly one
    results = await race(store, [
        batch(p, done("x", "a1"), attempt_expected={"x": ("a1", seq["a1"])}) for _ in range(2)
    ])
    wins = [r for r in results if isinstance(r, AppendResult)]
    errs = [r for r in results if isinstance(r, ConcurrencyError)]
    assert len(wins) == 1 and len(errs) == 1
    e = errs[0]
    assert (e.stream, e.attempt, e.behind, e.expected, e.actual) == ("x", True, False, seq["a1"], 7)
    assert e.missing == []
    assert int(await store.redis.hget(attempts, "a1")) == 7  # type: ignore[arg-type]
    # the other action is still where its runner saw it
    await ok(store, batch(p, done("x", "a2"), attempt_expected={"x": ("a2", seq["a2"])}))
    assert [x.version for x in await store.read_execution(p, "x")] == list(range(1, 9))


async def test_behind_is_a_stream_short_of_the_writers_view(store: EventStore) -> None:
    p = "p"
    await ok(store, batch(p, created(p)))
    await ok(store, batch(p, started("x"), head_expected=1, exec_expected={"x": 0}))
    err = await refused(store, batch(p, entered("x"), head_expected=5))
    assert (err.stream, err.expected, err.actual, err.behind, err.missing) == (HEAD, 5, 2, True, [])
    err = await refused(store, batch(p, entered("x"), head_expected=2, exec_expected={"x": 9}))
    assert (err.stream, err.expected, err.actual, err.behind) == ("x", 9, 2, True)
    # ahead is not behind, and an attempt conflict never is
    err = await refused(store, batch(p, entered("x"), head_expected=1))
    assert (err.actual, err.behind) == (2, False)
    err = await refused(store, batch(p, done("x", "a"), attempt_expected={"x": ("a", 9)}))
    assert err.attempt and not err.behind
    assert await store.version(p) == 2


# --- command ids -----------------------------------------------------------------------------


async def test_repeated_command_id_appends_nothing_and_returns_the_first_result(
    store: EventStore,
) -> None:
    p = "p"
    part = KEYS.partition(p)
    first = batch(p, created(p), started("x"), started("y"), entered("x"), head_expected=0,
                  exec_expected={"x": 0, "y": 0}, command_id="c1")
    r1 = await ok(store, first)
    assert (r1.first, r1.last) == (1, 4)
    dispatched = await store.redis.xlen(KEYS.events(part))
    # the repeat, even with other events and stale expectations
    again = batch(p, started("z"), head_expected=0, exec_expected={"z": 0}, command_id="c1")
    r2 = await store.append(again)
    assert r2 == AppendResult(1, 4, duplicate=True, streams=("x", "y"))
    assert await store.version(p) == 4
    assert await store.redis.xlen(KEYS.events(part)) == dispatched
    assert await store.execution_ids(p) == ["y", "x"]
    await ok(store, batch(p, taken("x", "x1")))  # later events are not part of it
    assert await store.read_appended(p, r2.first, r2.last, r2.streams) == r1.stamp(
        first.envelopes
    )
    assert await store.command_versions(p, "c1") == (1, 4, ("x", "y"))
    assert await store.command_seen(p, "c1")
    assert await store.command_versions(p, "c9") is None
    assert not await store.command_seen(p, "c9")
    # a head-only append names no stream
    upd = batch(p, ev.PipelineUpdated(declaration=declaration(p)), command_id="c2")
    r3 = await ok(store, upd)
    d = await store.append(batch(p, created(p), command_id="c2"))
    assert (d.duplicate, d.first, d.last, d.streams) == (True, r3.first, r3.last, ())
    assert await store.read_appended(p, d.first, d.last, d.streams) == r3.stamp(upd.envelopes)


async def test_a_refused_batch_records_no_command_id(store: EventStore) -> None:
    p = "p"
    await ok(store, batch(p, created(p)))
    await refused(store, batch(p, started("x"), head_expected=0, command_id="c1"))
    assert not await store.command_seen(p, "c1")
    r = await ok(store, batch(p, started("x"), head_expected=1, command_id="c1"))
    assert (r.first, r.last) == (2, 2)
    # a repeat inside one call is recognised too
    res = await store.append_many(
        [batch(p, started("y"), command_id="c3"), batch(p, started("z"), command_id="c3")]
    )
    assert res == [AppendResult(3, 3), AppendResult(3, 3, duplicate=True, streams=("y",))]


# --- group commit, fencing, checkpoint -------------------------------------------------------


async def test_append_many_refuses_batches_on_their_own(store: EventStore) -> None:
    a, b, c = same_partition(3)
    part = KEYS.partition(a)
    ckpt = KEYS.checkpoint(part)
    for p in (a, b, c):
        await ok(store, batch(p, created(p)))
    res = await store.append_many(
        [
            batch(a, started("x"), head_expected=1),
            batch(b, started("x"), head_expected=0),  # stale
            batch(c, started("x"), head_expected=1),
        ],
        checkpoint=(part, "1700000000000-0"),
    )
    assert isinstance(res[0], AppendResult) and (res[0].first, res[0].last) == (2, 2)
    assert isinstance(res[1], ConcurrencyError) and res[1].pipeline == b
    assert isinstance(res[2], AppendResult) and (res[2].first, res[2].last) == (2, 2)
    assert [await store.version(p) for p in (a, b, c)] == [2, 1, 2]
    assert await store.redis.get(ckpt) is None  # not every batch went through
    dispatched = await fields(store.redis, KEYS.events(part))
    assert [(f["p"], f["v"]) for _, f in dispatched[3:]] == [(a, "2"), (c, "2")]
    # every batch through: the checkpoint is written; batches of one pipeline chain
    res = await store.append_many(
        [
            batch(b, started("x"), head_expected=1),
            batch(b, entered("x"), head_expected=2, exec_expected={"x": 2}),
            batch(a, entered("x"), head_expected=2, exec_expected={"x": 2}),
        ],
        checkpoint=(part, "1700000000001-0"),
    )
    assert [(r.first, r.last) for r in res if isinstance(r, AppendResult)] == [
        (2, 2), (3, 3), (3, 3),
    ]
    assert text(await store.redis.get(ckpt)) == "1700000000001-0"


async def test_one_call_covers_one_partition(store: EventStore) -> None:
    p, q = one_per_partition()[:2]
    with pytest.raises(ValueError, match="one partition"):
        await store.append_many([batch(p, created(p)), batch(q, created(q))])
    with pytest.raises(ValueError, match="one partition"):
        await store.append_many([batch(p, created(p))], fence=(KEYS.partition(q), "t"))
    with pytest.raises(ValueError, match="one partition"):
        await store.append_many([batch(p, created(p))], checkpoint=(KEYS.partition(q), "1-0"))
    with pytest.raises(ValueError, match="not of pipeline"):
        await store.append(Batch(p, [env(q, created(q))]))
    assert await all_keys(store.redis) == set()


async def test_fencing_token_must_be_the_owners(store: EventStore) -> None:
    p = "p"
    part = KEYS.partition(p)
    owner = KEYS.owner(part)

    async def fenced(token: str) -> None:
        with pytest.raises(Fenced):
            await store.append_many(
                [batch(p, created(p), command_id="c1")],
                fence=(part, token),
                checkpoint=(part, "5-0"),
            )

    await fenced("w1|1")  # no owner
    await store.redis.set(owner, "w2|2")
    await fenced("w1|1")  # another owner
    await fenced("")  # an empty token is a token too
    assert await all_keys(store.redis) == {owner}  # nothing written, not even the command id
    await store.redis.set(owner, "w1|1")
    (r,) = await store.append_many(
        [batch(p, created(p), command_id="c1")], fence=(part, "w1|1"), checkpoint=(part, "5-0")
    )
    assert isinstance(r, AppendResult) and (r.first, r.last) == (1, 1)
    assert text(await store.redis.get(KEYS.checkpoint(part))) == "5-0"
    # a checkpoint alone (entries that needed no append), fenced the same way
    assert await store.append_many([], fence=(part, "w1|1"), checkpoint=(part, "6-0")) == []
    assert text(await store.redis.get(KEYS.checkpoint(part))) == "6-0"
    # ownership moved: the old owner is refused even for a repeat, and for a checkpoint
    await store.redis.set(owner, "w2|3")
    await fenced("w1|1")
    with pytest.raises(Fenced):
        await store.append_many([], fence=(part, "w1|1"), checkpoint=(part, "7-0"))
    assert text(await store.redis.get(KEYS.checkpoint(part))) == "6-0"
    assert await store.version(p) == 1
    assert await store.redis.xlen(KEYS.events(part)) == 1
    with pytest.raises(ValueError, match="one partition"):
        await store.append_many([])


# --- what each append writes -----------------------------------------------------------------


async def test_hash_chain_per_stream_is_computed_inside_the_append(store: EventStore) -> None:
    p = "p"
    await ok(store, batch(p, created(p)))
    await ok(store, batch(p, started("x"), entered("x"), scheduled("x", "x1")))
    await store.append_many(
        [batch(p, started("y"), done("x", "x1")), batch(p, entered("y"), taken("x", "x2"))]
    )
    await ok(store, batch(p, ev.PipelineUpdated(declaration=declaration(p))))
    raw = await store.read_raw(p)
    by_stream: dict[str, list[Any]] = {}
    for r in raw:
        by_stream.setdefault(r.stream, []).append(r)
    assert set(by_stream) == {HEAD, "x", "y"}
    assert any(r.ref for r in by_stream[HEAD]) and not all(r.ref for r in by_stream[HEAD])
    for stream, entries in by_stream.items():
        prev = ""
        for r in entries:
            assert r.hash == chain_hash(prev, r.version, r.payload), (stream, r.version)
            prev = r.hash
    # a stored hash is the `h` field as written by the script
    rows: Any = await store.redis.xrange(KEYS.execution_log(p, "x"))
    assert [text(f[b"h"]) for _, f in rows] == [r.hash for r in by_stream["x"]]


async def test_with_an_audit_key_each_entry_has_a_tag_the_chain_covers(
    any_redis: Redis | RedisCluster,
) -> None:
    key = b"0123456789abcdef0123456789abcdef"
    store = EventStore(any_redis, KEYS, audit_key=key)  # type: ignore[arg-type]
    p = "p"
    await ok(store, batch(p, created(p)))
    await ok(store, batch(p, started("x"), entered("x"), scheduled("x", "x1"), taken("x", "x1")))
    raw = await store.read_raw(p)
    tags = {r.version: r.tag for r in raw if not r.ref}
    prev: dict[str, str] = {}
    for r in raw:
        if r.ref:
            assert r.tag == ref_tag(key, p, tags[r.version], r.payload)
        else:
            assert r.tag == event_tag(key, p, r.stream, r.payload)
        # sha1(prev \n seq \n payload \n tag)
        assert r.hash == chain_hash(prev.get(r.stream, ""), r.version, r.payload, r.tag)
        assert r.hash != chain_hash(prev.get(r.stream, ""), r.version, r.payload)
        prev[r.stream] = r.hash
    assert {r.stream for r in raw} == {HEAD, "x"} and any(r.ref for r in raw)
    rows: Any = await store.redis.xrange(KEYS.execution_log(p, "x"))
    assert [text(f[b"m"]) for _, f in rows] == [r.tag for r in raw if r.stream == "x"]
    # the tag binds the pipeline and the stream: the same payload elsewhere has another
    one = raw[-1]
    assert event_tag(key, "q", one.stream, one.payload) != one.tag
    assert event_tag(key, p, HEAD, one.payload) != one.tag
    # an unkeyed store writes no `m` field and the plain chain (old entries stay as they are)
    plain = EventStore(any_redis, KEYS)  # type: ignore[arg-type]
    await ok(plain, batch("q", created("q")))
    (entry,) = await plain.read_raw("q")
    assert entry.tag == "" and entry.hash == chain_hash("", 1, entry.payload)
    rows = await store.redis.xrange(KEYS.log("q"))
    assert b"m" not in rows[0][1]


async def test_dispatch_streams_get_one_entry_per_event(store: EventStore) -> None:
    p = "p"
    part = KEYS.partition(p)
    await ok(store, batch(p, created(p)))
    await ok(store, batch(p, started("x"), scheduled("x", "a1", kind="commands"),
                          scheduled("x", "a2", kind="custom"), done("x", "a2")))
    payloads = {r.version: r.payload.decode() for r in await store.read_raw(p) if not r.ref}
    got = await fields(store.redis, KEYS.events(part))
    assert {k for _, f in got for k in f} == {"p", "v", "t", "x", "hp", "xp", "e"}
    assert [(f["v"], f["t"], f["x"], f["hp"], f["xp"]) for _, f in got] == [
        ("1", "PipelineCreated", "", "0", ""),
        ("2", "ExecutionStarted", "x", "1", "0"),  # its head reference follows seq 1
        ("3", "ActionExecutionScheduled", "x", "", "2"),
        ("4", "ActionExecutionScheduled", "x", "", "3"),
        ("5", "ActionExecutionSucceeded", "x", "", "4"),
    ]
    assert all(f["p"] == p and f["e"] == payloads[int(f["v"])] for _, f in got)
    # the run stream: the actions the engine runs itself (runs_on_engine)
    run = await fields(store.redis, KEYS.run(part))
    assert [f for _, f in run] == [
        {"p": p, "v": "3", "x": "x", "hp": "", "xp": "2", "e": payloads[3]}
    ]


async def test_derived_indexes(store: EventStore) -> None:
    p = "p"
    await ok(store, batch(
        p,
        started("x1", token="tok-1"),
        started("x2"),
        scheduled("x1", "a1", kind="approval", token="apv-1"),
        started("x3", token="tok-3"),
        scheduled("x2", "b1"),
        taken("x1", "a1"),
        scheduled("x1", "a2"),
    ))
    xs: Any = await store.redis.zrange(KEYS.executions(p), 0, -1, withscores=True)
    assert [(text(m), int(s)) for m, s in xs] == [("x1", 1), ("x2", 2), ("x3", 4)]
    assert await store.execution_ids(p) == ["x3", "x2", "x1"]
    assert await store.execution_ids(p, newest_first=False) == ["x1", "x2", "x3"]
    assert await store.execution_ids(p, start=1, count=1) == ["x2"]
    assert await store.execution_rank(p, "x1") == 2
    assert await store.execution_rank(p, "nope") is None
    assert await store.execution_count(p) == 3

    acts: Any = await store.redis.zrange(KEYS.actions(p), 0, -1, withscores=True)
    assert [(text(m), int(s)) for m, s in acts] == [("x1/a1", 3), ("x2/b1", 5), ("x1/a2", 7)]
    assert await store.action_ids(p) == [("x1", "a2"), ("x2", "b1"), ("x1", "a1")]
    assert await store.action_ids(p, start=1, count=1) == [("x2", "b1")]
    assert await store.action_rank(p, "x1", "a1") == 2
    assert await store.action_rank(p, "x1", "zz") is None

    assert await store.token_execution(p, "tok-1") == "x1"
    assert await store.token_execution(p, "tok-3") == "x3"
    assert await store.token_execution(p, "tok-2") is None
    assert await store.approval_execution(p, "apv-1") == "x1"
    assert await store.approval_execution(p, "apv-2") is None

    async def xa(x: str) -> dict[str, int]:
        raw: Any = await store.redis.hgetall(KEYS.attempts(p, x))
        return {text(k): int(v) for k, v in raw.items()}

    assert await xa("x1") == {"a1": 6, "a2": 7}
    assert await xa("x2") == {"b1": 5}
    assert await xa("x3") == {}
    # a refused batch leaves every index alone
    await refused(store, batch(p, started("x4", token="tok-4"),
                               scheduled("x1", "a3", kind="approval", token="apv-4"),
                               exec_expected={"x1": 1}))
    assert await store.execution_count(p) == 3
    assert await store.token_execution(p, "tok-4") is None
    assert await store.approval_execution(p, "apv-4") is None
    assert await xa("x1") == {"a1": 6, "a2": 7}
    assert len(await store.action_ids(p)) == 3


async def test_snapshots_hold_the_head_and_newer_wins(store: EventStore) -> None:
    p = "p"
    assert await store.load_snapshot(p) is None
    await ok(store, batch(p, created(p)))
    await ok(store, batch(p, started("x"), entered("x"), scheduled("x", "a1")))
    state = fold(p, await store.read(p))
    assert (state.version, state.headVersion) == (4, 3) and "x" in state.executions
    assert await store.save_snapshot(state)
    snap = await store.load_snapshot(p)
    assert snap is not None and snap.partial
    assert (snap.headVersion, snap.executions, snap.declaration) == (3, {}, state.declaration)
    assert snap.occupant == state.occupant and snap.active == state.active == ["x"]
    raw: Any = await store.redis.hgetall(KEYS.snapshot(p))
    assert text(raw[b"v"]) == "3" and b'"executions"' not in raw[b"s"]
    older = msgspec.structs.replace(state, headVersion=2, occupant={})
    assert not await store.save_snapshot(older)
    assert not await store.save_snapshot(msgspec.structs.replace(older, headVersion=3))
    assert (await store.load_snapshot(p)).occupant == state.occupant  # type: ignore[union-attr]
    # a head past the pipeline's stream (a cache ahead of a store that lost writes) is
    # never stored: every later load would start from events the store does not have
    assert not await store.save_snapshot(msgspec.structs.replace(older, headVersion=9))
    await ok(store, batch(p, started("y"), entered("y")))  # the stream reaches 6
    assert await store.save_snapshot(msgspec.structs.replace(older, headVersion=6))
    newer = await store.load_snapshot(p)
    assert newer is not None and (newer.headVersion, newer.occupant) == (6, {})
    await store.drop_snapshot(p)
    assert await store.load_snapshot(p) is None


async def test_a_snapshot_of_another_format_is_ignored_and_replaced(store: EventStore) -> None:
    """A head snapshot written by a release that folded the head differently (before
    HEAD_FORMAT, or another one) is never used: the head is folded from its stream, and the
    next snapshot replaces it even though its version is not newer."""
    from app.domain.state import HEAD_FORMAT, encode_head

    p = "p"
    await ok(store, batch(p, created(p)))
    state = fold(p, await store.read(p))
    key = KEYS.snapshot(p)
    await store.redis.hset(key, mapping={"v": 99, "s": encode_head(state)})  # no format
    assert await store.load_snapshot(p) is None
    await store.redis.hset(key, "f", HEAD_FORMAT + 1)
    assert await store.load_snapshot(p) is None
    assert await store.save_snapshot(state)  # version 1 < 99, but of this format
    raw: Any = await store.redis.hgetall(key)
    assert (text(raw[b"v"]), text(raw[b"f"])) == ("1", str(HEAD_FORMAT))
    snap = await store.load_snapshot(p)
    assert snap is not None and snap.headVersion == state.headVersion


async def test_payload_is_readable_json(store: EventStore) -> None:
    p = "p"
    await ok(store, batch(p, started("x", token="t"), taken("x", "a1")))
    raw = await store.read_raw(p)
    ref = next(r for r in raw if r.ref)
    assert json.loads(ref.payload) == ["ExecutionStarted", "x", "", False]  # ev.HeadRef
    full = next(r for r in raw if not r.ref and r.version == 1)
    doc = json.loads(full.payload)
    assert doc["event"] == {
        "type": "ExecutionStarted", "executionId": "x", "pipelineVersion": 1,
        "clientRequestToken": "t",
    }
    assert doc["actor"] == "tester" and doc["id"].startswith("e")
    assert "pipeline" not in doc and "version" not in doc  # the key and the entry id say them


# --- configuration and layout ----------------------------------------------------------------


async def test_ensure_config_records_partitions_and_layout(store: EventStore) -> None:
    await store.ensure_config()
    await store.ensure_config()
    raw: Any = await store.redis.hgetall(KEYS.config())
    assert {text(k): text(v) for k, v in raw.items()} == {"partitions": "8", "layout": "2"}
    other = EventStore(store.redis, Keys(partitions=9))
    with pytest.raises(RuntimeError, match="in 8 partitions, not 9"):
        await other.ensure_config()
    await store.redis.hset(KEYS.config(), "layout", "3")
    with pytest.raises(RuntimeError, match="layout 3"):
        await store.ensure_config()


async def test_ensure_config_refuses_a_first_layout_store(store: EventStore) -> None:
    await store.redis.hset(KEYS.config(), "partitions", "8")  # as the first layout left it
    with pytest.raises(RuntimeError, match=r"first layout.*stageline migrate"):
        await store.ensure_config()
    assert await store.redis.hget(KEYS.config(), "layout") is None  # left as it was


# --- cluster ---------------------------------------------------------------------------------


def test_every_key_of_a_pipeline_is_in_one_cluster_slot() -> None:
    keys = Keys(partitions=16)
    for name in ["a", "MyFirstPipeline", "x.y@z-1_2", "p" * 100]:
        p = keys.partition(name)
        slots = {key_slot(k.encode()) for k in keys.pipeline_keys(name)}
        slots |= {key_slot(k.encode()) for k in (
            keys.execution_log(name, "x"), keys.attempts(name, "x"), keys.legacy_log(name),
            keys.events(p), keys.run(p), keys.owner(p), keys.checkpoint(p),
        )}
        assert slots == {key_slot(keys.events(p).encode())}, name
    assert len({keys.partition(f"pipe{i}") for i in range(200)}) == 16
    assert len({key_slot(keys.events(p).encode()) for p in range(16)}) == 16


async def test_what_an_append_writes_stays_in_its_partitions_slot(store: EventStore) -> None:
    names = one_per_partition()
    for p in names:
        await ok(store, batch(p, created(p)))
        await ok(store, batch(p, started("x", "t"), entered("x"), scheduled("x", "a", token="k")))
        await store.save_snapshot(fold(p, await store.read(p)))
    await store.ensure_config()
    assert await store.pipelines() == sorted(names)
    keys = await all_keys(store.redis) - {KEYS.config()}
    assert len(keys) == len(names) * 12  # 12 keys each (own 9, partition's 3)
    for key in keys:
        part = next(n for n in range(KEYS.partitions) if KEYS.tag(n) in key)
        assert key_slot(key.encode()) == key_slot(KEYS.events(part).encode()), key
    if isinstance(store.redis, RedisCluster):  # the partitions really are spread over nodes
        nodes = {store.redis.get_node_from_key(KEYS.events(n)).name for n in range(8)}
        assert len(nodes) > 1
