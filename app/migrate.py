"""``stageline migrate``: convert a store of the first layout to the bounded-stream layout.

The first layout (``sl:config`` with ``partitions`` but no ``layout``) kept every event of a
pipeline in one stream ``sl:{sl.N}:log:<p>`` (entry ids ``<version>-0``, one sha1 chain
over that stream), command ids in ``sl:{sl.N}:cmd:<p>`` as ``first:last`` and a snapshot of
the whole state in ``snap:<p>``. The layout of ``app/store/eventstore.py`` (2) numbers the
events the same way but stores them in the pipeline's own stream (declarations and head
references) and one stream per execution, each with its own chain.

For each pipeline, ``migrate``:

1. checks the old chain (refused, naming the spot, when it is broken; every pipeline's is
   checked before anything changes);
2. renames the old stream to ``sl:{sl.N}:legacy:<p>`` (same slot): the old audit trail is
   kept as it was, and still verifies with the old chain (:func:`verify_legacy_chain`);
3. writes the new streams with the same seqs (old version = new seq) and the same payload
   bytes, new per-stream hash chains, the seq counter and the derived indexes
   (``EventStore.restore``), converts the command ids to ``first:last:<streams>`` and drops
   the old snapshot (workers save head snapshots again);
4. marks the pipeline done in ``sl:migrate``.

Then it sets ``layout=2`` in ``sl:config`` and drops the marks. It is idempotent and
resumable: a pipeline whose old stream was renamed but that is not marked done is rebuilt
from its legacy stream (what an interrupted run wrote for it is deleted first); a store of
layout 2 is left alone. It refuses to run while stageline processes are active (a consumer
of the ``orchestrators`` / ``runners`` groups that read within ``ACTIVE_WITHIN_MS``, or a
live member of ``sl:members``) unless ``force``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from app.domain import events as ev
from app.store.eventstore import HEAD, LAYOUT, EventStore, RawEntry, chain_hash
from app.store.keys import Keys

ACTIVE_WITHIN_MS = 60_000  # a group consumer that read this recently is a running process
CHUNK = 1000
GROUPS = ("orchestrators", "runners")


class MigrationError(Exception):
    """The migration is refused or cannot go on (one line, for the CLI)."""


# --- the first layout's hash chain -----------------------------------------------------------


@dataclass
class LegacyChain:
    """Checks a first-layout stream entry by entry (for streams too long to hold)."""

    last: int = 0
    hash: str = ""

    def feed(self, e: RawEntry) -> str | None:
        """The problem with the next entry, None when it continues the chain."""
        if e.ref:
            return f"version {e.version}: a head reference in a first-layout stream"
        if e.version <= self.last:
            return f"version {e.version} out of order (after version {self.last})"
        if e.version != self.last + 1:
            missing = (
                f"version {self.last + 1}"
                if e.version == self.last + 2
                else f"versions {self.last + 1}..{e.version - 1}"
            )
            return f"{missing} missing (deleted events)"
        if chain_hash(self.hash, e.version, e.payload) != e.hash:
            return f"version {e.version}: hash mismatch (altered event, or the chain rewritten)"
        self.last, self.hash = e.version, e.hash
        return None


def verify_legacy_chain(entries: Iterable[RawEntry]) -> str | None:
    """The first problem of a first-layout stream (the legacy stream ``migrate`` keeps),
    None when its chain is intact: versions consecutive from 1, each hash
    ``chain_hash(previous hash, version, payload)``. Entries as
    ``EventStore.read_raw_stream(Keys.legacy_log(p))`` returns them."""
    chain = LegacyChain()
    for e in entries:
        problem = chain.feed(e)
        if problem is not None:
            return problem
    return None


# --- preconditions ---------------------------------------------------------------------------


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def store_layout(redis: Redis, namespace: str = "sl") -> tuple[int | None, int | None]:
    """(partitions, layout) recorded in ``<ns>:config``; layout 1 when partitions are
    recorded without a layout, (None, None) for a Redis without stageline data."""
    raw: Any = await redis.hgetall(f"{namespace}:config")
    conf = {_text(k): _text(v) for k, v in raw.items()}
    if "partitions" not in conf:
        return None, None
    return int(conf["partitions"]), int(conf.get("layout", "1"))


async def require_layout(redis: Redis, keys: Keys) -> None:
    """Refuse (MigrationError, one line) to start on a store that ``EventStore`` would
    refuse: of the first layout (run ``stageline migrate``), another layout, or another
    partition count. Reads only."""
    partitions, layout = await store_layout(redis, keys.namespace)
    if partitions is None:
        return
    if layout == 1:
        raise MigrationError(
            "this Redis holds stageline data of the first layout (one stream per pipeline); "
            "run `stageline migrate --redis-url URL` first (see docs/operations.md, Migration)"
        )
    if layout != LAYOUT:
        raise MigrationError(
            f"this Redis holds stageline data of layout {layout}; this stageline reads "
            f"layout {LAYOUT}"
        )
    if partitions != keys.partitions:
        raise MigrationError(
            f"this Redis holds stageline data laid out in {partitions} partitions, not "
            f"{keys.partitions}; start with --partitions {partitions}"
        )


async def active_processes(
    redis: Redis, keys: Keys, *, within_ms: int = ACTIVE_WITHIN_MS
) -> list[str]:
    """Stageline processes that look alive: consumers of the worker groups on the dispatch
    streams that read within ``within_ms``, and members of ``<ns>:members`` whose heartbeat
    has not expired."""
    found: list[str] = []
    for p in range(keys.partitions):
        for stream in (keys.events(p), keys.run(p)):
            try:
                groups: Any = await redis.xinfo_groups(stream)
            except ResponseError:
                continue  # no such stream
            for g in groups:
                name = _text(g["name"])
                if name not in GROUPS:
                    continue
                consumers: Any = await redis.xinfo_consumers(stream, name)
                for c in consumers:
                    if int(c["idle"]) < within_ms:
                        found.append(
                            f"consumer {_text(c['name'])!r} of group {name!r} on {stream} "
                            f"(read {int(c['idle']) // 1000} s ago)"
                        )
    secs, micros = await redis.time()
    now_ms = int(secs) * 1000 + int(micros) // 1000
    members: Any = await redis.zrangebyscore(keys.members(), now_ms, "+inf")
    found += [f"member {_text(m)!r} of {keys.members()}" for m in members]
    return found


# --- the migration ---------------------------------------------------------------------------


@dataclass
class MigrateReport:
    already: bool = False  # the store was of layout 2 already (or held no stageline data)
    migrated: list[str] = field(default_factory=list)  # pipelines converted by this run
    skipped: list[str] = field(default_factory=list)  # converted by an earlier, cut run
    events: int = 0

    def summary(self) -> str:
        if self.already:
            return "nothing to migrate: the store is of the current layout"
        done = f"migrated {len(self.migrated)} pipeline(s), {self.events} events"
        if self.skipped:
            done += f" ({len(self.skipped)} converted by an earlier run)"
        return done + f"; layout {LAYOUT} recorded"


Hook = Callable[[str, str], Awaitable[None]]


async def _pipelines(redis: Redis, keys: Keys) -> list[str]:
    ns = keys.namespace
    names: set[str] = set()
    for p in range(keys.partitions):
        members: Any = await redis.smembers(keys.names(p))
        names.update(_text(n) for n in members)
    for kind in ("log", "legacy"):
        async for key in redis.scan_iter(match=f"{ns}:{{{ns}.*}}:{kind}:*", count=1000):
            names.add(_text(key).split(f":{kind}:", 1)[1])
    return sorted(names)


async def _legacy_entries(redis: Redis, key: str) -> AsyncIterator[list[RawEntry]]:
    """A stream's entries in chunks."""
    store = EventStore(redis)
    after = 0
    while True:
        chunk = await store.read_raw_stream(key, after=after, count=CHUNK)
        if not chunk:
            return
        yield chunk
        after = chunk[-1].version
        if len(chunk) < CHUNK:
            return


async def _check_chain(redis: Redis, pipeline: str, key: str) -> int:
    chain = LegacyChain()
    async for chunk in _legacy_entries(redis, key):
        for e in chunk:
            problem = chain.feed(e)
            if problem is not None:
                raise MigrationError(
                    f"refused: pipeline {pipeline!r}: the first-layout stream {key} is broken at "
                    f"{problem}; nothing was migrated (inspect it with the stageline that "
                    "wrote it, restore it from a backup)"
                )
    return chain.last


async def _clear_new(redis: Redis, keys: Keys, pipeline: str, executions: Iterable[str]) -> None:
    """Delete what an interrupted run may have written for the pipeline's new layout."""
    doomed = [
        keys.log(pipeline),
        keys.sequence(pipeline),
        keys.executions(pipeline),
        keys.actions(pipeline),
        keys.request_tokens(pipeline),
        keys.approvals(pipeline),
    ]
    for eid in executions:
        doomed += [keys.execution_log(pipeline, eid), keys.attempts(pipeline, eid)]
    for i in range(0, len(doomed), 500):
        await redis.delete(*doomed[i : i + 500])


async def _execution_ids(redis: Redis, key: str) -> list[str]:
    ids: dict[str, None] = {}
    async for chunk in _legacy_entries(redis, key):
        for e in chunk:
            eid = ev.execution_of(ev.decode_payload("", e.version, e.payload).event)
            if eid is not None:
                ids[eid] = None
    return list(ids)


async def _convert(store: EventStore, pipeline: str, hook: Hook | None, resume: bool) -> int:
    """Write the new layout of one pipeline from its legacy stream; the event count.
    ``resume``: an earlier run may have written part of it (deleted first)."""
    redis, keys = store.redis, store.keys
    legacy = keys.legacy_log(pipeline)
    if resume:
        await _clear_new(redis, keys, pipeline, await _execution_ids(redis, legacy))
    heads: dict[str, str] = {}  # stream -> last hash written
    names: dict[str, str] = {HEAD: HEAD}  # one string per stream name
    where: list[str] = [""]  # seq -> stream of its event (index 0 unused)
    count = 0
    async for chunk in _legacy_entries(redis, legacy):
        out: list[RawEntry] = []
        for e in chunk:
            try:
                body = ev.decode_payload(pipeline, e.version, e.payload).event
            except (msgspec.DecodeError, msgspec.ValidationError) as err:
                raise MigrationError(
                    f"refused: pipeline {pipeline!r} version {e.version}: the event does not "
                    f"decode: {err}"
                ) from None
            stream = ev.execution_of(body) or HEAD
            stream = names.setdefault(stream, stream)
            h = chain_hash(heads.get(stream, ""), e.version, e.payload)
            out.append(RawEntry(e.version, e.payload, h, stream=stream))
            heads[stream] = h
            if stream != HEAD and type(body) in ev.HEAD_EVENTS:
                ref = ev.encode_ref(ev.head_ref(body))
                rh = chain_hash(heads.get(HEAD, ""), e.version, ref)
                out.append(RawEntry(e.version, ref, rh, ref=True))
                heads[HEAD] = rh
            where.append(stream)
        try:
            await store.restore(pipeline, out)
        except ValueError as err:
            raise MigrationError(f"pipeline {pipeline!r}: {err}") from None
        count += len(chunk)
        if hook is not None:
            await hook(pipeline, f"chunk {count}")
    table: Any = await redis.hgetall(keys.commands(pipeline))
    converted: dict[str, str] = {}
    for cid, value in table.items():
        parts = _text(value).split(":")
        first, last = int(parts[0]), int(parts[1])
        streams: list[str] = []
        for v in range(max(first, 1), min(last, count) + 1):
            s = where[v]
            if s != HEAD and s not in streams:
                streams.append(s)
        converted[_text(cid)] = f"{first}:{last}:{','.join(streams)}"
    if converted:
        mapping: Any = converted
        await redis.hset(keys.commands(pipeline), mapping=mapping)
    await redis.delete(keys.snapshot(pipeline))
    return count


async def migrate(
    redis: Redis,
    *,
    namespace: str = "sl",
    force: bool = False,
    hook: Hook | None = None,
    log: Callable[[str], None] | None = None,
) -> MigrateReport:
    """Convert a first-layout store in place (see the module docstring). ``hook`` is
    awaited after each step (pipeline, step): tests interrupt a run there."""
    report = MigrateReport()
    partitions, layout = await store_layout(redis, namespace)
    marks = f"{namespace}:migrate"
    if partitions is None or layout == LAYOUT:
        report.already = True
        await redis.delete(marks)
        return report
    if layout != 1:
        raise MigrationError(
            f"refused: this Redis holds stageline data of layout {layout}; this stageline "
            f"migrates layout 1 to {LAYOUT}"
        )
    keys = Keys(namespace=namespace, partitions=partitions)
    if not force:
        active = await active_processes(redis, keys)
        if active:
            more = f" and {len(active) - 1} more" if len(active) > 1 else ""
            raise MigrationError(
                f"refused: stageline processes look active ({active[0]}{more}); stop every "
                "`stageline serve` and `stageline worker` on this Redis, wait a minute, and "
                "run again (or --force when they are known to be gone)"
            )
    store = EventStore(redis, keys)
    todo: list[tuple[str, bool]] = []  # (pipeline, resumed: its old stream is renamed)
    for name in await _pipelines(redis, keys):
        if _text(await redis.hget(marks, name) or b"") == "done":
            report.skipped.append(name)
        elif await redis.exists(keys.legacy_log(name)):
            await _check_chain(redis, name, keys.legacy_log(name))
            todo.append((name, True))
        elif await redis.exists(keys.log(name)):
            await _check_chain(redis, name, keys.log(name))
            todo.append((name, False))
    # every old chain is intact: from here on, pipeline by pipeline
    for name, resume in todo:
        if not resume:
            await redis.rename(keys.log(name), keys.legacy_log(name))
            if hook is not None:
                await hook(name, "renamed")
        report.events += await _convert(store, name, hook, resume)
        await redis.hset(marks, name, "done")
        report.migrated.append(name)
        if log is not None:
            log(f"migrated {name}")
        if hook is not None:
            await hook(name, "done")
    await redis.hset(f"{namespace}:config", "layout", str(LAYOUT))
    await redis.delete(marks)
    return report


__all__ = [
    "ACTIVE_WITHIN_MS",
    "LegacyChain",
    "MigrateReport",
    "MigrationError",
    "active_processes",
    "migrate",
    "require_layout",
    "store_layout",
    "verify_legacy_chain",
]
