"""``stageline migrate``: a store of the first layout (one stream per pipeline), written here
exactly as the first layout's append script wrote it, converted in place to the bounded
streams. The engine on the migrated store answers like a full fold of the old events, new
commands work, a re-run changes nothing, an interrupted run resumes, a broken old chain and
running workers are refused."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec
import pytest
from redis.asyncio import Redis

from app import queries
from app.cli import EXIT_REFUSED, main
from app.domain import commands as c
from app.domain import events as ev
from app.domain.errors import DomainError
from app.domain.model import (
    ActionDeclaration,
    ActionTypeId,
    PipelineDeclaration,
    StageDeclaration,
)
from app.domain.state import PipelineState, fold
from app.engine import Engine
from app.jobs import JobRef
from app.migrate import (
    MigrationError,
    active_processes,
    migrate,
    store_layout,
    verify_legacy_chain,
)
from app.store.connection import fake_client
from app.store.eventstore import HEAD, EventStore, RawEntry, chain_hash
from app.store.keys import Keys
from tests.audit.scenario import ALICE, APPROVAL, BOB, COMMANDS, DAVE, ROLE, Clock, Scenario

PARTITIONS = 8
KEYS = Keys(partitions=PARTITIONS)
CUSTOM = ActionTypeId(category="Deploy", owner="Custom", provider="Shipper", version="1")

# The first layout's append script, verbatim (git show 2312d8d:app/store/eventstore.py).
OLD_APPEND_LUA = r"""
-- KEYS: 1 log, 2 command ids, 3 partition names, 4 partition events, 5 partition run queue
-- ARGV: 1 pipeline, 2 expected version, 3 command id ('' = none), 4 dispatch maxlen,
--       5 event count, then per event: type, route ('1' = also to the run queue), payload
local cmd = ARGV[3]
if cmd ~= '' then
  local seen = redis.call('HGET', KEYS[2], cmd)
  if seen then return {'dup', seen} end
end
local cur = 0
local prev = ''
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then
  cur = tonumber(string.match(last[1][1], '^(%d+)-'))
  local f = last[1][2]
  for i = 1, #f, 2 do
    if f[i] == 'h' then prev = f[i + 1] end
  end
end
local expected = tonumber(ARGV[2])
if cur ~= expected then
  -- also the events the writer missed (a few), so it can decide again without a read
  local out = {'conflict', tostring(cur)}
  if cur > expected and cur - expected <= 32 then
    local rows = redis.call('XRANGE', KEYS[1], (expected + 1) .. '-0', '+')
    for i = 1, #rows do
      local f = rows[i][2]
      for j = 1, #f, 2 do
        if f[j] == 'e' then out[#out + 1] = f[j + 1] end
      end
    end
  end
  return out
end
local n = tonumber(ARGV[5])
local maxlen = ARGV[4]
for i = 0, n - 1 do
  local typ = ARGV[6 + i * 3]
  local route = ARGV[7 + i * 3]
  local payload = ARGV[8 + i * 3]
  local v = cur + i + 1
  local h = redis.sha1hex(prev .. '\n' .. v .. '\n' .. payload)
  redis.call('XADD', KEYS[1], v .. '-0', 'e', payload, 'h', h)
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', maxlen, '*',
             'p', ARGV[1], 'v', v, 't', typ, 'e', payload)
  if route == '1' then
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', maxlen, '*', 'p', ARGV[1], 'v', v, 'e', payload)
  end
  prev = h
end
if cur == 0 then redis.call('SADD', KEYS[3], ARGV[1]) end
if cmd ~= '' then redis.call('HSET', KEYS[2], cmd, (cur + 1) .. ':' .. (cur + n)) end
return {'ok', tostring(cur + n)}
"""


class Play(Scenario):
    """The audit scenario's runner and orchestrator moves, for any execution (loaded from
    its stream when not in the cache)."""

    async def attempt(self, eid: str, action: str) -> str:
        s = await self.engine.repo.load(self.name, [eid])
        for run in s.executions[eid].stages.values():
            if action in run.latest:
                return run.latest[action]
        raise AssertionError(f"no attempt of {action}")


def _cmd(name: str, run_order: int = 1) -> ActionDeclaration:
    return ActionDeclaration(
        name=name, actionTypeId=COMMANDS, runOrder=run_order, commands=["echo hi"]
    )


def full_declaration(name: str) -> PipelineDeclaration:
    return PipelineDeclaration(
        name=name,
        roleArn=ROLE,
        stages=[
            StageDeclaration(name="Source", actions=[_cmd("src")]),
            StageDeclaration(name="Build", actions=[_cmd("b1"), _cmd("b2")]),
            StageDeclaration(
                name="Approve",
                actions=[ActionDeclaration(name="gate", actionTypeId=APPROVAL)],
            ),
            StageDeclaration(
                name="Deploy", actions=[ActionDeclaration(name="ship", actionTypeId=CUSTOM)]
            ),
        ],
    )


def small_declaration(name: str, stages: int = 1) -> PipelineDeclaration:
    return PipelineDeclaration(
        name=name,
        roleArn=ROLE,
        stages=[StageDeclaration(name=f"S{i}", actions=[_cmd(f"a{i}")]) for i in range(stages)],
    )


async def finish_job(engine: Engine, sc: Play, eid: str) -> None:
    """Publish the custom job as an orchestrator does, then play the job worker."""
    aid = await sc.attempt(eid, "ship")
    s = await engine.repo.load(sc.name, [eid])
    job_id = s.executions[eid].actions[aid].jobId
    assert job_id is not None
    await engine.jobs.publish(JobRef(job_id, CUSTOM.key, sc.name, eid, aid), 1.0)
    (job,) = await engine.poll_for_jobs(CUSTOM)
    nonce = job.action.jobNonce
    assert nonce is not None
    await engine.acknowledge_job(job_id, nonce)
    await engine.put_job_result(job_id, succeeded=True, summary="shipped")


async def approve(engine: Engine, sc: Play, eid: str) -> None:
    s = await engine.repo.load(sc.name, [eid])
    token = s.executions[eid].actions[await sc.attempt(eid, "gate")].token
    assert token is not None
    await engine.put_approval(sc.name, "Approve", "gate", token, "Approved", "lgtm", DAVE)


@dataclass
class History:
    """Event histories made by the engine, to be written in the first layout."""

    events: dict[str, list[ev.Envelope]]
    commands: dict[str, dict[str, tuple[int, int]]]
    e1: str
    e2: str
    e3: str


async def make_history() -> History:
    """Executions with a failure and a manual retry, an approval, a custom job, one waiting
    for approval, one failed; a pipeline updated; a pipeline deleted."""
    redis = await fake_client()
    engine = Engine(redis, KEYS)
    engine.repo.clock = Clock()
    await engine.start()
    a = Play(engine, "legacy-a")
    await engine.create_pipeline(full_declaration(a.name), ALICE)
    e1 = await engine.start_execution(a.name, ALICE, client_request_token="tok-1")
    await a.run(e1, "src")
    await a.run(e1, "b1")
    await a.run(e1, "b2", ok=False, error="tests failed")
    await engine.retry_stage(a.name, "Build", e1, "FAILED_ACTIONS", BOB)
    await a.apply_retry(e1, "Build")
    await a.run(e1, "b2")
    await approve(engine, a, e1)
    await finish_job(engine, a, e1)
    e2 = await engine.start_execution(a.name, ALICE, client_request_token="tok-2")
    for action in ("src", "b1", "b2"):
        await a.run(e2, action)  # now waiting for approval
    e3 = await engine.start_execution(a.name, ALICE)
    await a.run(e3, "src", ok=False, error="no source")

    u = Play(engine, "legacy-upd")
    await engine.create_pipeline(small_declaration(u.name), ALICE)
    x = await engine.start_execution(u.name, ALICE)
    await u.run(x, "a0")
    await engine.update_pipeline(small_declaration(u.name, 2), ALICE)
    x = await engine.start_execution(u.name, ALICE)
    await u.run(x, "a0")

    g = Play(engine, "legacy-gone")
    await engine.create_pipeline(small_declaration(g.name, 2), ALICE)
    x = await engine.start_execution(g.name, ALICE)
    await g.run(x, "a0")
    await g.run(x, "a1")
    await engine.delete_pipeline(g.name, ALICE)

    events: dict[str, list[ev.Envelope]] = {}
    commands: dict[str, dict[str, tuple[int, int]]] = {}
    for name in ("legacy-a", "legacy-upd", "legacy-gone"):
        envs = await engine.store.read(name)
        assert [e.version for e in envs] == list(range(1, len(envs) + 1))
        # the first layout's engine did not record pipelineVersion on scheduled actions
        events[name] = [
            msgspec.structs.replace(e, event=msgspec.structs.replace(e.event, pipelineVersion=None))
            if isinstance(e.event, ev.ActionExecutionScheduled)
            else e
            for e in envs
        ]
        table: Any = await redis.hgetall(KEYS.commands(name))
        commands[name] = {
            k.decode(): (int(v.split(b":")[0]), int(v.split(b":")[1])) for k, v in table.items()
        }
    await redis.aclose()
    return History(events, commands, e1, e2, e3)


async def write_first_layout(redis: Redis, h: History) -> None:
    """Write the histories as the first layout's engine did: its append script, one call
    per command (the events a command id covers together), its config and snapshots."""
    script = redis.register_script(OLD_APPEND_LUA)
    for name, envs in h.events.items():
        part = KEYS.partition(name)
        starts = {first: (cid, last) for cid, (first, last) in h.commands[name].items()}
        i = 0
        while i < len(envs):
            v = envs[i].version
            cid, last = starts.get(v, ("", v))
            batch = envs[i : i + last - v + 1]
            argv: list[Any] = [name, v - 1, cid, 1000, len(batch)]
            for env in batch:
                route = isinstance(env.event, ev.ActionExecutionScheduled) and (
                    env.event.kind == "commands"
                )
                argv += [type(env.event).__name__, "1" if route else "0", ev.encode_payload(env)]
            keys = [
                KEYS.log(name),
                KEYS.commands(name),
                KEYS.names(part),
                KEYS.events(part),
                KEYS.run(part),
            ]
            res: Any = await script(keys=keys, args=argv)
            assert res[0] == b"ok", res
            i += len(batch)
        old_state = msgspec.json.encode(fold(name, envs))
        await redis.hset(KEYS.snapshot(name), mapping={"v": len(envs), "s": old_state})
    await redis.hset(KEYS.config(), "partitions", str(PARTITIONS))


async def old_rows(redis: Redis, name: str) -> list[RawEntry]:
    return await EventStore(redis, KEYS).read_raw_stream(KEYS.log(name))


def old_fold(name: str, rows: list[RawEntry]) -> PipelineState:
    return fold(name, [ev.decode_payload(name, r.version, r.payload) for r in rows])


async def dump_all(redis: Redis) -> dict[str, Any]:
    """Every key's content (dispatch streams without their generated entry ids)."""
    out: dict[str, Any] = {}
    async for raw in redis.scan_iter(count=1000):
        key = raw.decode()
        kind = (await redis.type(key)).decode()
        if kind == "stream":
            rows: Any = await redis.xrange(key)
            dispatch = key.endswith((":events", ":run"))
            out[key] = [(None if dispatch else rid, dict(f)) for rid, f in rows]
        elif kind == "hash":
            out[key] = await redis.hgetall(key)
        elif kind == "zset":
            out[key] = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            out[key] = sorted(await redis.smembers(key))
        else:
            out[key] = await redis.get(key)
    return out


@pytest.fixture(scope="module")
def history() -> History:
    return anyio.run(make_history)


@pytest.fixture
async def legacy(redis: Redis, history: History) -> Redis:
    await write_first_layout(redis, history)
    return redis


async def test_migrated_store_answers_like_a_fold_of_the_old_events(
    legacy: Redis, history: History
) -> None:
    redis = legacy
    assert await store_layout(redis) == (PARTITIONS, 1)
    names = sorted(history.events)
    before = {n: await old_rows(redis, n) for n in names}
    assert all(verify_legacy_chain(rows) is None for rows in before.values())
    folds = {n: old_fold(n, before[n]) for n in names}
    old_commands = {n: await redis.hgetall(KEYS.commands(n)) for n in names}

    report = await migrate(redis)
    assert sorted(report.migrated) == names and not report.already
    assert report.events == sum(len(v) for v in history.events.values())
    assert await store_layout(redis) == (PARTITIONS, 2)
    assert not await redis.exists("sl:migrate")

    engine = Engine(redis, KEYS)
    await engine.start()  # ensure_config accepts the migrated store
    store = engine.store
    for name in names:
        # the old stream is kept under its legacy key, as it was, and verifies
        legacy_rows = await store.read_raw_stream(KEYS.legacy_log(name))
        assert legacy_rows == before[name]
        assert verify_legacy_chain(legacy_rows) is None
        # same seqs and payload bytes, each stream chained on its own
        raw = await store.read_raw(name)
        assert sorted((r.version, r.payload) for r in raw if not r.ref) == [
            (r.version, r.payload) for r in before[name]
        ]
        prev: dict[str, str] = {}
        for r in raw:
            assert r.hash == chain_hash(prev.get(r.stream, ""), r.version, r.payload)
            prev[r.stream] = r.hash
        heads = {r.version for r in raw if r.ref}
        assert heads == {
            r.version
            for r in before[name]
            if type(ev.decode_payload(name, r.version, r.payload).event) in ev.HEAD_EVENTS
        }
        assert await store.version(name) == len(before[name])
        assert not await redis.exists(KEYS.snapshot(name))
        # command ids: same seqs, now with the streams they wrote
        table = await redis.hgetall(KEYS.commands(name))
        assert {k: v.split(b":")[:2] for k, v in table.items()} == {
            k: v.split(b":") for k, v in old_commands[name].items()
        }
        for cid in table:
            first, last, streams = await store.command_versions(name, cid.decode()) or (0, 0, ())
            written = await store.read_appended(name, first, last, streams)
            assert [e.version for e in written] == list(range(first, last + 1))
        # the full fold of the new streams is the fold of the old events
        assert msgspec.json.encode(await engine.full_state(name)) == msgspec.json.encode(
            folds[name]
        )
    for name in ("legacy-a", "legacy-upd"):
        f = folds[name]
        assert queries.get_pipeline_state(await engine.pipeline(name)) == (
            queries.get_pipeline_state(f)
        )
        assert await engine.list_pipeline_executions(name) == (queries.list_pipeline_executions(f))
        assert await engine.list_pipeline_executions(name, max_results=1) == (
            queries.list_pipeline_executions(f, max_results=1)
        )
        assert await engine.list_action_executions(name) == queries.list_action_executions(f)
        for eid in f.executions:
            assert await engine.list_action_executions(name, execution_id=eid) == (
                queries.list_action_executions(f, execution_id=eid)
            )
    with pytest.raises(DomainError, match="not found"):
        await engine.pipeline("legacy-gone")
    assert await engine.pipeline_names() == ["legacy-a", "legacy-upd"]


async def test_new_commands_work_after_migration(legacy: Redis, history: History) -> None:
    redis = legacy
    await migrate(redis)
    engine = Engine(redis, KEYS)
    engine.repo.clock = Clock()
    await engine.start()
    a = Play(engine, "legacy-a")
    # a command repeated with an old command id is recognised (the converted table)
    aid = await a.attempt(history.e1, "src")
    s = await engine.repo.load(a.name, [history.e1])
    before = s.executions[history.e1].version
    out = await engine.repo.execute(
        a.name,
        c.StartAction(executionId=history.e1, actionExecutionId=aid, worker="w1"),
        ALICE,
        command_id=f"start-{aid}",
    )
    assert out.duplicate and out.events and out.events[0].version < before
    # an old request token still names its execution (the rebuilt token index)
    assert await engine.start_execution(a.name, ALICE, client_request_token="tok-2") == (history.e2)
    # the pending approval (the rebuilt approval index), then the custom job
    await approve(engine, a, history.e2)
    await finish_job(engine, a, history.e2)
    assert (await engine.full_state(a.name)).executions[history.e2].status == "Succeeded"
    # a retry of the failed execution
    await engine.retry_stage(a.name, "Source", history.e3, "FAILED_ACTIONS", BOB)
    await a.apply_retry(history.e3, "Source")
    await a.run(history.e3, "src")
    await a.run(history.e3, "b1")
    await a.run(history.e3, "b2")
    assert (await engine.full_state(a.name)).executions[history.e3].status == "InProgress"
    # and a new execution
    e4 = await engine.start_execution(a.name, ALICE)
    await a.run(e4, "src")
    state = await engine.full_state(a.name)
    assert state.executions[e4].stages["Source"].status == "Succeeded"
    # what the engine serves equals a fresh fold of the migrated streams
    assert queries.get_pipeline_state(await engine.pipeline(a.name)) == (
        queries.get_pipeline_state(state)
    )
    for name in ("legacy-a", "legacy-upd"):
        raw = await engine.store.read_raw(name)
        prev: dict[str, str] = {}
        for r in raw:
            assert r.hash == chain_hash(prev.get(r.stream, ""), r.version, r.payload)
            prev[r.stream] = r.hash


async def test_a_rerun_changes_nothing(legacy: Redis) -> None:
    await migrate(legacy)
    once = await dump_all(legacy)
    report = await migrate(legacy)
    assert report.already and not report.migrated
    assert await dump_all(legacy) == once


class Crash(Exception):
    pass


def crash_at(pipeline: str, step: str) -> Callable[[str, str], Awaitable[None]]:
    async def hook(p: str, s: str) -> None:
        if (p, s) == (pipeline, step):
            raise Crash(f"{p} {s}")

    return hook


@pytest.mark.parametrize(
    "where",
    [
        ("legacy-a", "done"),  # between two pipelines
        ("legacy-gone", "renamed"),  # old stream renamed, nothing new written
        ("legacy-a", "chunk 8"),  # part of the new streams written
    ],
)
async def test_an_interrupted_run_resumes(
    legacy: Redis, history: History, where: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = await fake_client()
    await write_first_layout(reference, history)
    await migrate(reference)
    want = await dump_all(reference)
    await reference.aclose()

    monkeypatch.setattr("app.migrate.CHUNK", 4)
    with pytest.raises(Crash):
        await migrate(legacy, hook=crash_at(*where))
    assert await store_layout(legacy) == (PARTITIONS, 1)  # not done: engines still refuse
    with pytest.raises(RuntimeError, match="stageline migrate"):
        await EventStore(legacy, KEYS).ensure_config()
    report = await migrate(legacy)
    if where[1] == "done":
        assert report.skipped == [where[0]]
    assert await dump_all(legacy) == want


async def _rewrite_entry(redis: Redis, key: str, entry: str, payload: bytes) -> None:
    rows: Any = await redis.xrange(key)
    await redis.delete(key)
    for rid, fields in rows:
        if rid.decode() == entry:
            fields = {**fields, b"e": payload}
        await redis.xadd(key, fields, id=rid)


async def test_a_broken_old_chain_is_refused(legacy: Redis) -> None:
    redis = legacy
    key = KEYS.log("legacy-upd")
    rows = await old_rows(redis, "legacy-upd")
    edited = rows[2].payload.replace(b'"actor":"', b'"actor":"x')
    assert edited != rows[2].payload
    await _rewrite_entry(redis, key, "3-0", edited)
    before = await dump_all(redis)
    with pytest.raises(
        MigrationError,
        match=r"refused: pipeline 'legacy-upd': .* broken at version 3: hash mismatch",
    ):
        await migrate(redis)
    assert await dump_all(redis) == before  # nothing migrated, not even the other pipelines

    await _rewrite_entry(redis, key, "3-0", rows[2].payload)
    await redis.xdel(key, "5-0")
    with pytest.raises(MigrationError, match=r"broken at version 5 missing"):
        await migrate(redis)


def test_verify_legacy_chain() -> None:
    def chain(payloads: list[bytes]) -> list[RawEntry]:
        out, h = [], ""
        for i, p in enumerate(payloads, 1):
            h = chain_hash(h, i, p)
            out.append(RawEntry(i, p, h))
        return out

    good = chain([b"a", b"b", b"c", b"d"])
    assert verify_legacy_chain(good) is None
    assert verify_legacy_chain([]) is None
    altered = [*good[:1], RawEntry(2, b"B", good[1].hash), *good[2:]]
    assert verify_legacy_chain(altered) == (
        "version 2: hash mismatch (altered event, or the chain rewritten)"
    )
    assert verify_legacy_chain([good[0], good[2], good[3]]) == "version 2 missing (deleted events)"
    assert verify_legacy_chain(good[:1] + good[3:]) == "versions 2..3 missing (deleted events)"
    assert verify_legacy_chain([good[0], good[1], good[1]]) == (
        "version 2 out of order (after version 2)"
    )
    assert verify_legacy_chain([RawEntry(1, b"a", good[0].hash, ref=True)]) is not None


async def test_refuses_while_stageline_processes_are_active(legacy: Redis) -> None:
    redis = legacy
    events = KEYS.events(KEYS.partition("legacy-a"))
    await redis.xgroup_create(events, "orchestrators", id="0")
    await redis.xreadgroup("orchestrators", "w1", {events: ">"}, count=1)
    assert await active_processes(redis, KEYS)
    with pytest.raises(
        MigrationError,
        match=r"refused: stageline processes look active "
        r"\(consumer 'w1' of group 'orchestrators'",
    ):
        await migrate(redis)
    assert await store_layout(redis) == (PARTITIONS, 1)
    assert await active_processes(redis, KEYS, within_ms=0) == []  # idle long enough
    await redis.xgroup_delconsumer(events, "orchestrators", "w1")
    secs, _ = await redis.time()
    await redis.zadd(KEYS.members(), {"orch-1": (int(secs) + 60) * 1000})
    with pytest.raises(MigrationError, match="member 'orch-1'"):
        await migrate(redis)
    await redis.zadd(KEYS.members(), {"orch-1": (int(secs) - 60) * 1000})  # expired
    assert await active_processes(redis, KEYS) == []
    await redis.zadd(KEYS.members(), {"orch-2": (int(secs) + 60) * 1000})
    report = await migrate(redis, force=True)
    assert len(report.migrated) == 3


# --- the command line --------------------------------------------------------------------------


def _on_real(url: str, go: Callable[[Redis], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        r = Redis.from_url(url)
        try:
            return await go(r)
        finally:
            await r.aclose()

    return anyio.run(run)


def test_cli(real_redis_url: str, history: History, capsys: pytest.CaptureFixture[str]) -> None:
    url = real_redis_url

    async def setup(r: Redis) -> None:
        await r.flushdb()
        await write_first_layout(r, history)

    _on_real(url, setup)
    common = ["--redis-url", url, "--partitions", str(PARTITIONS)]
    # an unmigrated store: every process refuses with one line, exit 3
    for argv in (
        ["retry", "legacy-a", "Source", history.e3, *common],
        ["worker", *common],
        ["serve", "--port", "0", *common],
    ):
        assert main(argv) == EXIT_REFUSED
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "run `stageline migrate --redis-url URL` first" in err
    assert main(["migrate", "--redis-url", url]) == 0
    got = capsys.readouterr()
    assert "migrated 3 pipeline(s)" in got.out and "layout 2 recorded" in got.out
    assert "migrated legacy-a" in got.err
    assert main(["migrate", "--redis-url", url]) == 0
    assert "nothing to migrate" in capsys.readouterr().out
    assert main(["retry", "legacy-a", "Source", history.e3, *common]) == 0
    assert history.e3 in capsys.readouterr().out
    # a wrong --partitions is a usage error (the command line's), docs/cli.md
    assert main(["retry", *common[:2], "--partitions", "4", "legacy-a", "Source", "x"]) == 2
    assert "laid out in 8 partitions" in capsys.readouterr().err


def test_cli_refuses_while_workers_are_active(
    real_redis_url: str, history: History, capsys: pytest.CaptureFixture[str]
) -> None:
    url = real_redis_url

    async def setup(r: Redis) -> None:
        await r.flushdb()
        await write_first_layout(r, history)
        run = KEYS.run(KEYS.partition("legacy-a"))
        await r.xgroup_create(run, "runners", id="0")
        await r.xreadgroup("runners", "build-1", {run: ">"}, count=1)

    _on_real(url, setup)
    assert main(["migrate", "--redis-url", url]) == EXIT_REFUSED
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "consumer 'build-1' of group 'runners'" in err
    assert main(["migrate", "--redis-url", url, "--force"]) == 0
    assert _on_real(url, lambda r: store_layout(r)) == (PARTITIONS, 2)
    assert HEAD == "-"


async def test_workers_run_on_the_migrated_store(legacy: Redis, history: History) -> None:
    """Workers start on the migrated store, take the old dispatch entries (already done:
    nothing happens twice), apply a retry of an old execution and run new executions."""
    from tests.workers.helpers import fast_config, wait_for
    from workers.service import Worker

    redis = legacy
    await migrate(redis)
    engine = Engine(redis, KEYS)
    await engine.start()
    before = await engine.full_state("legacy-a")
    worker = Worker(Engine(redis, KEYS), fast_config(redis, "w1"))
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        try:
            eid = await engine.start_execution("legacy-upd", ALICE)

            async def done(name: str, x: str, status: str) -> bool:
                s = await engine.full_state(name)
                return s.executions[x].status == status

            await wait_for(lambda: done("legacy-upd", eid, "Succeeded"), "new execution")
            await engine.retry_stage("legacy-a", "Source", history.e3, "FAILED_ACTIONS", BOB)

            async def built() -> bool:
                x = (await engine.full_state("legacy-a")).executions[history.e3]
                run = x.stages.get("Build")
                return run is not None and run.status == "Succeeded"

            # (then it waits for Approve, which the old execution e2 holds)
            await wait_for(built, "the retried execution to pass Build")
        finally:
            worker.stop()
    after = await engine.full_state("legacy-a")
    for eid in (history.e1, history.e2):  # the old ones are as they were
        assert msgspec.json.encode(after.executions[eid]) == msgspec.json.encode(
            before.executions[eid]
        )
