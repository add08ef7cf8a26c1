"""Verify: the log is intact and the live projections are what the log says.

A pipeline's events are numbered by one sequence (``seq:<pipeline>``) and stored in bounded
streams: the pipeline's own stream (declaration events in full, a *reference* for every
head event) and one stream per execution (``app/store/eventstore.py``). For each pipeline,
up to the counter's value when it starts (so appends made meanwhile are not mistaken for
tampering), ``verify`` checks:

1. the streams: every execution of the executions index (``xs``) has a stream and every
   execution stream is in the index (a deleted execution stream is named);
2. in one streamed pass over every stream merged in seq order: entry ids are ``<seq>-0``;
   each stream's hash chain (``sha1(previous hash of that stream \\n seq \\n payload)``, a
   reference hashed over its ``r`` bytes): a mismatch is an edited payload, a reordering
   or a rewritten hash, and the report says which when the stream's following entries
   tell; every seq from 1 is stored exactly once across the full-event streams (a gap is a
   deleted event, and the report says which stream lost it when the streams tell); each
   event is in its own stream; every head reference matches the event with the same seq
   (type, execution, stage) and every head event has its reference; each payload decodes
   and folds into the state rebuilt so far;
3. the end: the last seq equals the counter (a cut tail), no stream holds an entry past the
   counter, the command-id table knows of no later seq;
4. the snapshot (the head alone) equals the head of the fold up to its version;
5. the projections: the head the engine loads (snapshot and the pipeline's stream after it)
   equals the head of the fold, and each execution folded from its own stream equals the
   full fold's;
6. the derived indexes (``xs``, ``as``, ``tok``, ``apv``, each execution's ``xa``) agree
   with the events.

The first difference of each pipeline is reported, naming the stream, seq and entry id.
Without an outside copy of the streams' last hashes a rewrite of a whole chain from some
point on cannot be told from the log alone: keep the ``head`` a report gives (or its
``heads``, per stream) somewhere else and compare later.

With the audit key (``key``), every entry's HMAC tag (field ``m``) is checked in step 2,
and an untagged entry after a tagged one is reported; with a signed checkpoint
(``checkpoint``, app/audit/keyed.py) every pipeline and stream it recorded must still be
there, up to the recorded (seq, hash).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from app.audit.common import (
    PREFETCH,
    PREFETCH_ENTRIES,
    Source,
    StreamEntry,
    entries_of,
    execution_streams,
    log_streams,
    merge_sources,
    prefetched,
    raw_source,
    read_entries,
    select_pipelines,
    text,
    unindexed_execution_streams,
)
from app.audit.progress import Progress
from app.domain import events as ev
from app.domain.state import (
    HEAD_FORMAT,
    PipelineState,
    decode_head,
    evolve,
    evolve_ref,
    execution_from,
    head_of,
    new_state,
)
from app.store.eventstore import HEAD, EventStore, chain_hash, event_tag, ref_tag

ProblemKind = Literal[
    "entry-id",
    "missing",
    "hash",
    "decode",
    "apply",
    "stream",
    "reference",
    "truncated",
    "counter",
    "snapshot",
    "projection",
    "index",
    "listing",
    "tag",
    "unkeyed",
    "checkpoint",
]


@dataclass(frozen=True)
class Problem:
    pipeline: str
    kind: ProblemKind
    message: str
    version: int | None = None  # the seq where it is
    entry_id: str | None = None
    stream: str | None = None  # HEAD ('-') for the pipeline's stream, else the execution id

    def __str__(self) -> str:
        return f"{self.pipeline}: {self.message}"


@dataclass(frozen=True)
class PipelineReport:
    pipeline: str
    events: int = 0
    last_version: int = 0
    head: str | None = None  # digest of every stream's last (seq, hash)
    snapshot_version: int | None = None
    problem: Problem | None = None
    streams: int = 0
    heads: dict[str, tuple[int, str]] = field(default_factory=dict)  # stream -> last seq, hash
    # with an audit key: entries whose tag was checked, and entries without a tag (written
    # without a key, all before the first tagged one); None without a key
    tagged: int | None = None
    unkeyed: int = 0

    @property
    def ok(self) -> bool:
        return self.problem is None

    def _tags(self) -> str:
        if self.tagged is None:
            return ""
        if not self.unkeyed:
            return f", {self.tagged} audit tags valid"
        if not self.tagged:
            return f", UNKEYED ({self.unkeyed} entries without audit tags: not authenticated)"
        return (
            f", {self.tagged} audit tags valid, {self.unkeyed} older entries unkeyed (not "
            "authenticated)"
        )

    def summary(self) -> str:
        if self.problem is not None:
            return f"FAIL {self.problem}"
        snap = (
            f"snapshot at seq {self.snapshot_version} matches"
            if self.snapshot_version is not None
            else "no snapshot"
        )
        return (
            f"ok   {self.pipeline}: {self.events} events in {self.streams} streams, chains "
            f"intact, head {self.last_version}:{self.head}, {snap}{self._tags()}"
        )


@dataclass(frozen=True)
class VerifyReport:
    pipelines: list[PipelineReport] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)  # beyond single pipelines

    @property
    def ok(self) -> bool:
        return not self.problems and all(p.ok for p in self.pipelines)

    def all_problems(self) -> list[Problem]:
        return [p.problem for p in self.pipelines if p.problem is not None] + self.problems


def heads_digest(heads: dict[str, tuple[int, str]]) -> str:
    """One hash over every stream's last (seq, hash): it changes when any stream does."""
    lines = sorted(f"{seq} {stream} {h}" for stream, (seq, h) in heads.items())
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()


_DIAGNOSE_AHEAD = 2000  # entries of a stream looked at to explain a hash mismatch


def label(stream: str) -> str:
    return "the pipeline's stream" if stream == HEAD else f"execution {stream}'s stream"


def _at(stream: str, e: StreamEntry) -> str:
    return f"seq {e.version} (entry {e.entry_id} of {label(stream)})"


class _Found(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def _hash_problem(
    pipeline: str, stream: str, e: StreamEntry, following: list[StreamEntry]
) -> Problem:
    """Explain why ``e``'s stored hash is not its stream's chain (``e.body`` is set)."""
    body = e.body
    assert body is not None
    where = f"hash mismatch at {_at(stream, e)}"

    def problem(msg: str) -> Problem:
        return Problem(pipeline, "hash", msg, e.version, e.entry_id, stream)

    if e.hash is None:
        return problem(f"{where}: the entry has no hash (not written by the append script)")
    # Reordered: this payload is the one the chain hashed at a later entry of the stream.
    p = e.hash
    for f in following:
        if f.hash is None or f.body is None:
            break
        if chain_hash(p, f.version, body, e.tag) == f.hash:
            return problem(
                f"{where}: events reordered (the payload stored at seq {e.version} was "
                f"hashed as seq {f.version}; seqs {e.version} and {f.version} of this stream "
                "swapped or moved)"
            )
        p = f.hash
    nxt = following[0] if following else None
    if nxt is None:
        return problem(f"{where}: payload edited or hash rewritten (the stream's last entry)")
    if (
        nxt.body is not None
        and nxt.hash is not None
        and chain_hash(e.hash, nxt.version, nxt.body, nxt.tag) == nxt.hash
    ):
        return problem(
            f"{where}: payload edited (the stored hash is not this payload's, and the chain "
            "goes on intact from it; or the hash of the stream's previous entry was rewritten)"
        )
    return problem(
        f"{where}: chain broken (neither this payload nor the next link matches the "
        "stored hashes: an entry rewritten with a new hash, or entries inserted)"
    )


def _first_difference(a: Any, b: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first path where two JSON-like values differ, with both values there."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(b) + [k for k in a if k not in b]:
            sub = f"{path}.{k}" if path else str(k)
            if k not in a or k not in b:
                return sub, a.get(k, _UNSET), b.get(k, _UNSET)
            d = _first_difference(a[k], b[k], sub)
            if d is not None:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            d = _first_difference(x, y, f"{path}[{i}]")
            if d is not None:
                return d
        if len(a) != len(b):
            return f"{path} (length)", len(a), len(b)
        return None
    return None if a == b else (path or "(root)", a, b)


class _Unset:
    def __repr__(self) -> str:
        return "(not set)"


_UNSET = _Unset()


def _show(v: Any) -> str:
    if isinstance(v, _Unset):
        return "(not set)"
    s = v if isinstance(v, str) else msgspec.json.encode(v).decode()
    return s if len(s) <= 100 else s[:97] + "..."


_enc = msgspec.json.Encoder().encode


def _show_ref(r: ev.HeadRef) -> str:
    return msgspec.json.encode(r).decode()


async def _load_snapshot(
    store: EventStore, pipeline: str
) -> tuple[int | None, PipelineState | None, Problem | None]:
    raw: Any = await store.redis.hgetall(store.keys.snapshot(pipeline))
    if not raw or text(raw.get(b"f", b"")) != str(HEAD_FORMAT):
        return None, None, None  # none, or of another format: never used (load_snapshot)
    try:
        version = int(text(raw[b"v"]))
        state = decode_head(raw[b"s"])
    except (KeyError, ValueError, msgspec.DecodeError) as err:
        msg = f"snapshot does not decode: {err}"
        return None, None, Problem(pipeline, "snapshot", msg)
    if state.headVersion != version or state.name != pipeline or state.executions:
        msg = (
            f"snapshot is labelled seq {version} but holds {state.name!r} at seq "
            f"{state.headVersion}" + (" with executions (not a head)" if state.executions else "")
        )
        return version, None, Problem(pipeline, "snapshot", msg, version)
    return version, state, None


@dataclass
class _Expected:
    """The derived indexes as the events say they are."""

    xs: dict[str, int] = field(default_factory=dict)
    actions: dict[str, int] = field(default_factory=dict)
    tok: dict[str, str] = field(default_factory=dict)
    apv: dict[str, str] = field(default_factory=dict)
    xa: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, env: ev.Envelope, eid: str) -> None:
        e = env.event
        v = env.version
        if isinstance(e, ev.ExecutionStarted):
            self.xs[eid] = v
        aid = ev.action_of(e)
        if aid:
            self.xa.setdefault(eid, {})[aid] = v
            if isinstance(e, ev.ActionExecutionScheduled):
                self.actions[f"{eid}/{aid}"] = v
        tok = getattr(e, "clientRequestToken", None)
        if tok:
            self.tok[tok] = eid
        apv = getattr(e, "token", None)
        if apv:
            self.apv[apv] = eid


class _Pass:
    """The merged pass over one pipeline's streams (see the module docstring, step 2)."""

    def __init__(
        self,
        store: EventStore,
        pipeline: str,
        until: int,
        keys: dict[str, str],
        snap_v: int | None,
        key: bytes | None = None,
        pins: dict[str, tuple[int, str]] | None = None,
        require_tags: bool = False,
    ) -> None:
        self.store = store
        self.key = key  # the audit key: every entry's tag is checked
        self.require_tags = require_tags  # an untagged entry anywhere is a problem
        self.pins = dict(pins or {})  # stream -> (seq, hash) a checkpoint recorded; met: removed
        self.first_tagged: int | None = None
        self.tagged = 0
        self.unkeyed = 0
        self.pipeline = pipeline
        self.until = until
        self.keys = keys  # stream -> key
        self.snap_v = snap_v
        self.rebuilt = new_state(pipeline)
        self.expected = 1
        self.count = 0
        self.prev: dict[str, str] = {}
        self.last: dict[str, StreamEntry] = {}
        self.snapshot_fold: dict[str, Any] | None = None
        self.index = _Expected()

    def problem(
        self,
        kind: ProblemKind,
        msg: str,
        seq: int | None = None,
        entry_id: str | None = None,
        stream: str | None = None,
    ) -> _Found:
        return _Found(Problem(self.pipeline, kind, msg, seq, entry_id, stream))

    async def entry(self, stream: str, e: StreamEntry) -> None:
        """Checks of one entry on its own: id, body, hash chain of its stream."""
        if e.seq != 0:
            msg = (
                f"entry {e.entry_id} of {label(stream)}: entry id is not <seq>-0 (not written "
                "by the store)"
            )
            raise self.problem("entry-id", msg, e.version, e.entry_id, stream)
        if e.body is None:
            raise self.problem(
                "decode",
                f"{_at(stream, e)}: the entry has no payload",
                e.version,
                e.entry_id,
                stream,
            )
        if e.ref is not None and stream != HEAD:
            msg = f"{_at(stream, e)}: a head reference in an execution's stream"
            raise self.problem("stream", msg, e.version, e.entry_id, stream)
        prev = self.prev.get(stream, "")
        if e.hash is None or chain_hash(prev, e.version, e.body, e.tag) != e.hash:
            following = await read_entries(
                self.store.redis, self.keys[stream], e.entry_id, _DIAGNOSE_AHEAD, self.until
            )
            raise _Found(_hash_problem(self.pipeline, stream, e, following))
        pin = self.pins.get(stream)
        if pin is not None and pin[0] == e.version:
            if pin[1] != e.hash:
                msg = (
                    f"{_at(stream, e)}: the checkpoint recorded this entry with hash {pin[1]}, "
                    f"it now has {e.hash}: {label(stream)} was rewritten or rolled back to an "
                    "older state since the checkpoint"
                )
                raise self.problem("checkpoint", msg, e.version, e.entry_id, stream)
            del self.pins[stream]
        self.prev[stream] = e.hash
        self.last[stream] = e

    def check_tag(self, stream: str, e: StreamEntry, want: str) -> None:
        """With a key: the entry's audit tag is ``want`` (untagged entries only before the
        first tagged one)."""
        if not e.tag:
            if self.require_tags:
                msg = (
                    f"{_at(stream, e)}: the entry has no audit tag (every entry must have one: "
                    "written without the key, or forged)"
                )
                raise self.problem("unkeyed", msg, e.version, e.entry_id, stream)
            if self.first_tagged is not None:
                msg = (
                    f"{_at(stream, e)}: the entry has no audit tag but seq {self.first_tagged} "
                    "before it has one (an unkeyed entry after keyed ones: written without the "
                    "key, or forged with its tag stripped)"
                )
                raise self.problem("unkeyed", msg, e.version, e.entry_id, stream)
            self.unkeyed += 1
            return
        if not hmac.compare_digest(e.tag, want):
            msg = (
                f"{_at(stream, e)}: audit tag does not match (the entry was edited or forged, "
                "or the audit key is not the one it was written with)"
            )
            raise self.problem("tag", msg, e.version, e.entry_id, stream)
        if self.first_tagged is None:
            self.first_tagged = e.version
        self.tagged += 1

    async def group(self, seq: int, group: list[tuple[str, StreamEntry]]) -> None:
        """Checks of the entries stored under one seq (the event, and its reference)."""
        if seq > self.expected:
            raise _Found(await self.missing(self.expected, "missing"))
        fulls = [(s, e) for s, e in group if e.payload is not None]
        refs = [(s, e) for s, e in group if e.ref is not None]
        if not fulls:
            _, r = refs[0]
            ref = self.decode_ref(r)
            stored = ref.x in self.keys
            raise self.problem(
                "missing",
                f"seq {seq} missing (deleted event): the pipeline's stream holds its reference "
                f"({ref.t} of execution {ref.x}, entry {r.entry_id}) but "
                + (
                    f"execution {ref.x}'s stream has no entry {seq}-0"
                    if stored
                    else f"execution {ref.x} has no stream"
                ),
                seq,
                r.entry_id,
                ref.x if stored else HEAD,
            )
        if len(fulls) > 1:
            where = " and ".join(label(s) for s, _ in fulls)
            raise self.problem(
                "stream", f"seq {seq} is stored twice: in {where}", seq, f"{seq}-0", fulls[1][0]
            )
        stream, e = fulls[0]
        assert e.payload is not None
        if self.key is not None:
            self.check_tag(stream, e, event_tag(self.key, self.pipeline, stream, e.payload))
            for s, r in refs:
                assert r.ref is not None
                self.check_tag(s, r, ref_tag(self.key, self.pipeline, e.tag, r.ref))
        try:
            env = ev.decode_payload(self.pipeline, e.version, e.payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            msg = f"{_at(stream, e)}: payload does not decode: {err}"
            raise self.problem("decode", msg, seq, e.entry_id, stream) from None
        kind = type(env.event)
        eid = ev.execution_of(env.event)
        if stream == HEAD and eid is not None:
            msg = (
                f"{_at(stream, e)}: {kind.__name__} of execution {eid} is in the pipeline's stream"
            )
            raise self.problem("stream", msg, seq, e.entry_id, stream)
        if stream != HEAD and eid != stream:
            msg = f"{_at(stream, e)}: {kind.__name__} is not of this execution ({eid})"
            raise self.problem("stream", msg, seq, e.entry_id, stream)
        head_event = kind in ev.HEAD_EVENTS
        if head_event and not refs:
            msg = (
                f"{_at(stream, e)}: {kind.__name__} is a head event but the pipeline's stream "
                f"has no reference to it (entry {seq}-0 deleted from the pipeline's stream)"
            )
            raise self.problem("reference", msg, seq, f"{seq}-0", HEAD)
        if refs:
            _, r = refs[0]
            ref = self.decode_ref(r)
            want = ev.head_ref(env.event)
            if not head_event or ref != want:
                what = (
                    f"the event is {_show_ref(want)}"
                    if head_event
                    else f"{kind.__name__} is not a head event"
                )
                msg = (
                    f"head reference at seq {seq} (entry {r.entry_id} of the pipeline's stream) "
                    f"says {_show_ref(ref)} but {what} (entry {e.entry_id} of {label(stream)})"
                )
                raise self.problem("reference", msg, seq, r.entry_id, HEAD)
        if self.snap_v is not None and self.snapshot_fold is None and seq > self.snap_v:
            self.take_snapshot_fold()
        try:
            evolve(self.rebuilt, env)
        except Exception as err:
            msg = (
                f"{_at(stream, e)}: {kind.__name__} does not apply to the state before it "
                f"({type(err).__name__}: {err})"
            )
            raise self.problem("apply", msg, seq, e.entry_id, stream) from None
        if eid is not None:
            self.index.add(env, eid)
        self.expected = seq + 1
        self.count += 1

    def take_snapshot_fold(self) -> None:
        self.snapshot_fold = msgspec.to_builtins(head_of(self.rebuilt))

    def decode_ref(self, r: StreamEntry) -> ev.HeadRef:
        assert r.ref is not None
        try:
            return ev.decode_ref(r.ref)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            msg = f"{_at(HEAD, r)}: head reference does not decode: {err}"
            raise self.problem("decode", msg, r.version, r.entry_id, HEAD) from None

    async def missing(self, seq: int, kind: ProblemKind, why: str = "") -> Problem:
        """Seq ``seq`` is in no stream: say which stream lost it, when the streams tell."""
        redis, until = self.store.redis, self.until
        head = f"seq {seq} missing (deleted event)" + (f": {why}" if why else "")
        found: tuple[str, str] | None = None
        for stream, key in self.keys.items():
            before: Any = await redis.xrevrange(key, max=f"{seq - 1}", min="-", count=1)
            rows: Any = await redis.xrange(key, min=f"{seq}-0", max=str(until), count=1)
            after = entries_of(rows)
            if not after or after[0].body is None:
                continue
            pred = f"entry {text(before[0][0])}" if before else "the start"
            h = before[0][1].get(b"h", b"") if before else b""
            nxt = after[0]
            assert nxt.body is not None
            if chain_hash(text(h), nxt.version, nxt.body, nxt.tag) != nxt.hash:
                found = (
                    stream,
                    (
                        f"{label(stream)} goes from {pred} to entry {nxt.entry_id} and its "
                        "chain breaks there"
                    ),
                )
                break
        if found is None:
            for stream, key in self.keys.items():
                info: Any = await redis.xinfo_stream(key)
                deleted = info.get("max-deleted-entry-id")
                if deleted and int(text(deleted).split("-")[0]) >= seq:
                    found = (
                        stream,
                        (
                            f"{label(stream)} records deleted entries up to {text(deleted)} "
                            f"(it holds {info.get('length')} of the {info.get('entries-added')} "
                            "entries appended to it)"
                        ),
                    )
                    break
        if found is None:
            for stream, key in self.keys.items():
                if stream == HEAD:
                    continue
                raw: Any = await redis.hgetall(self.store.keys.attempts(self.pipeline, stream))
                top = max((int(text(v)) for v in raw.values()), default=0)
                tail: Any = await redis.xrevrange(key, max=str(until), count=1)
                end = int(text(tail[0][0]).split("-")[0]) if tail else 0
                if seq <= top <= until and top > end:
                    found = (
                        stream,
                        (
                            f"execution {stream}'s actions index records seq {top} but its stream "
                            f"ends at entry {end}-0 (the stream was cut)"
                        ),
                    )
                    break
        if found is None:
            return Problem(
                self.pipeline, kind, f"{head}; no stream tells which lost it", seq, f"{seq}-0"
            )
        stream, detail = found
        sep = "; " if why else ": "
        return Problem(self.pipeline, kind, f"{head}{sep}{detail}", seq, f"{seq}-0", stream)


async def _firsts(store: EventStore, keys: dict[str, str], until: int) -> dict[str, int]:
    """The seq of each stream's first entry up to ``until`` (streams with none left out)."""
    out: dict[str, int] = {}
    names = list(keys)
    for i in range(0, len(names), 500):
        part = names[i : i + 500]
        pipe = store.redis.pipeline(transaction=False)
        for name in part:
            pipe.xrange(keys[name], min="-", max=str(until), count=1)
        rows: list[Any] = await pipe.execute()
        for name, r in zip(part, rows, strict=True):
            if r:
                out[name] = int(text(r[0][0]).split("-", 1)[0])
    return out


async def _sources(
    store: EventStore, firsts: dict[str, int], keys: dict[str, str], until: int, batch: int
) -> AsyncIterator[Source[StreamEntry]]:
    """The execution streams in start order, their first chunks read ahead in groups."""
    ahead = min(batch, PREFETCH_ENTRIES)

    def first(rows: Any) -> tuple[list[StreamEntry], str, bool]:
        got = entries_of(rows)
        return got, got[-1].entry_id if got else "", len(got) < ahead

    ordered = sorted(((e, s) for e, s in firsts.items() if e != HEAD), key=lambda t: t[1])
    for i in range(0, len(ordered), PREFETCH):
        group = [
            raw_source(store.redis, eid, keys[eid], start, i + j + 1, until, batch)
            for j, (eid, start) in enumerate(ordered[i : i + PREFETCH])
        ]
        for src in await prefetched(store.redis, group, keys.__getitem__, until, ahead, first):
            yield src


async def verify_pipeline(
    store: EventStore,
    pipeline: str,
    *,
    batch: int = 1000,
    progress: Progress | None = None,
    unindexed: set[str] | None = None,
    key: bytes | None = None,
    pins: dict[str, tuple[int, str]] | None = None,
    pinned_seq: int | None = None,
    require_tags: bool = False,
) -> PipelineReport:
    """Check one pipeline's streams, chains, payloads, indexes and projections; see the
    module docstring. ``unindexed``: the execution streams its executions index does not
    list, when the caller scanned the keys already (else they are found by a scan).
    ``key``: the audit key, every entry's tag is checked. ``pins``: stream -> (seq, hash)
    a checkpoint recorded; each stream must still hold that entry with that hash
    (``pinned_seq``: the pipeline's counter the checkpoint recorded). ``require_tags``:
    with the key, an entry without a tag is a problem even before the first tagged one."""
    k = store.keys
    snap_v, snap_head, snap_problem = await _load_snapshot(store, pipeline)
    until = await store.version(pipeline)
    head_len = int(await store.redis.xlen(k.log(pipeline)))
    indexed_raw: Any = await store.redis.zrange(k.executions(pipeline), 0, -1, withscores=True)
    in_index = {text(m): int(s) for m, s in indexed_raw}
    indexed = {m: s for m, s in in_index.items() if s <= until}
    keys = {HEAD: k.log(pipeline)}
    if unindexed is None:
        streams = await execution_streams(store, pipeline)
    else:  # those of the index (a missing one is found below) and those outside it
        streams = set(in_index) | unindexed
    for eid in sorted(streams):
        keys[eid] = k.execution_log(pipeline, eid)
    firsts = await _firsts(store, keys, until)
    run = _Pass(
        store,
        pipeline,
        until,
        {s: keys[s] for s in keys if s in firsts or s == HEAD},
        snap_v,
        key,
        pins,
        require_tags,
    )

    def report(problem: Problem | None) -> PipelineReport:
        heads = {s: (e.version, e.hash or "") for s, e in run.last.items()}
        return PipelineReport(
            pipeline,
            run.count,
            run.expected - 1,
            heads_digest(heads) if heads else None,
            snap_v,
            problem,
            len(heads),
            heads,
            run.tagged if key is not None else None,
            run.unkeyed,
        )

    def fail(
        kind: ProblemKind, msg: str, seq: int | None = None, stream: str | None = None
    ) -> PipelineReport:
        eid = f"{seq}-0" if seq is not None else None
        return report(Problem(pipeline, kind, msg, seq, eid, stream))

    # 1. the streams
    if head_len == 0:
        if until == 0 and len(keys) == 1:
            return fail(
                "missing",
                "listed as a pipeline but has no events (its streams were deleted)",
                1,
                HEAD,
            )
        return fail(
            "missing",
            f"the pipeline's stream was deleted (the sequence counter is at {until}, "
            f"{len(keys) - 1} execution streams remain)",
            1,
            HEAD,
        )
    if until == 0:
        return fail(
            "counter",
            f"the sequence counter {k.sequence(pipeline)} is missing but the pipeline's stream "
            f"holds {head_len} entries",
            None,
            HEAD,
        )
    for eid, start in sorted(indexed.items(), key=lambda t: t[1]):
        if eid not in firsts:
            return fail(
                "stream",
                f"execution {eid} (started at seq {start}, in the executions index) has no "
                "stream: its stream was deleted",
                start,
                eid,
            )

    # 2. the merged pass
    try:
        chunks = merge_sources(
            raw_source(store.redis, HEAD, keys[HEAD], 0, 0, until, batch),
            _sources(store, firsts, keys, until, batch),
            lambda item: item.version,
            batch,
        )
        group: list[tuple[str, StreamEntry]] = []
        seq = 0
        async for chunk in chunks:
            for stream, e in chunk:
                if e.version != seq and group:
                    await run.group(seq, group)
                    group = []
                if e.version > run.expected:  # before this entry's own checks: the gap
                    raise _Found(await run.missing(run.expected, "missing"))
                await run.entry(stream, e)
                seq = e.version
                group.append((stream, e))
            if progress is not None:  # events, not the references to them
                progress.update(sum(1 for _, e in chunk if e.ref is None))
        if group:
            await run.group(seq, group)
    except _Found as found:
        return report(found.problem)
    if run.pins:  # streams that no longer reach what the checkpoint recorded
        lost = sorted(run.pins.items(), key=lambda t: (t[1][0], t[0] == HEAD))
        stream, (pseq, phash) = lost[0]
        now_at = run.last.get(stream)
        where = f"ends at seq {now_at.version}" if now_at else "has no entries"
        if stream != HEAD and stream not in keys:
            where = "was deleted"
        behind = (
            f"the sequence counter is at {until}, the checkpoint recorded seq {pinned_seq}; "
            if pinned_seq is not None and until < pinned_seq
            else ""
        )
        others = f" (and {len(lost) - 1} more streams)" if len(lost) > 1 else ""
        return fail(
            "checkpoint",
            f"{behind}{label(stream)} {where}, but the checkpoint recorded its entry {pseq}-0 "
            f"(hash {phash}){others}: deleted, truncated or rolled back since the checkpoint",
            pseq,
            stream,
        )

    # 3. the end
    last = run.expected - 1
    if last < until:
        why = f"the sequence counter is at {until} but the streams end at seq {last}"
        return report(await run.missing(last + 1, "truncated", why))
    tails = await _tails(store, run.keys)
    now = await store.version(pipeline)
    for stream, top in tails.items():
        if top > now:
            return fail(
                "counter",
                f"{label(stream)} holds entry {top}-0, past the sequence counter ({now}): the "
                "counter was set back",
                top,
                stream,
            )
    top_cmd = 0
    async for _cmd, span in store.redis.hscan_iter(k.commands(pipeline), count=1000):
        top_cmd = max(top_cmd, int(text(span).split(":", 2)[1]))
    if top_cmd > now:
        return fail(
            "truncated",
            f"seq {last + 1} missing (deleted event): command ids record appends up to seq "
            f"{top_cmd} but the streams and the counter end at seq {last}",
            last + 1,
        )

    # 4. the snapshot
    if snap_problem is not None:
        return report(snap_problem)
    if snap_head is not None and snap_v is not None:
        if snap_v > last:
            return fail(
                "truncated",
                f"seq {last + 1} missing (deleted event): the snapshot is at seq {snap_v} but "
                f"the streams end at seq {last}",
                last + 1,
            )
        if run.snapshot_fold is None:
            run.take_snapshot_fold()
        diff = _first_difference(msgspec.to_builtins(head_of(snap_head)), run.snapshot_fold)
        if diff is not None:
            path, got, want = diff
            return fail(
                "snapshot",
                f"snapshot differs at {path}: snapshot {_show(got)}, rebuilt {_show(want)} "
                f"(snapshot at seq {snap_v})",
                snap_v,
                HEAD,
            )

    # 5. the projections
    loaded = snap_head if snap_head is not None else new_state(pipeline)
    loaded.partial = True
    for item in await store.read_head(pipeline, after=loaded.headVersion, until=until):
        if isinstance(item, ev.Envelope):
            evolve(loaded, item)
        else:
            evolve_ref(loaded, item[0], item[1])
    diff = _first_difference(
        msgspec.to_builtins(head_of(loaded)), msgspec.to_builtins(head_of(run.rebuilt))
    )
    if diff is not None:
        path, got, want = diff
        return fail(
            "projection",
            f"projection differs at {path}: loaded head {_show(got)}, rebuilt {_show(want)} "
            f"(snapshot at seq {snap_v}, caught up to {until})"
            if snap_v is not None
            else f"projection differs at {path}: loaded head {_show(got)}, rebuilt {_show(want)}",
            snap_v,
            HEAD,
        )
    ids = list(run.rebuilt.executions)
    for i in range(0, len(ids), PREFETCH):  # each execution as the engine reads it
        part = ids[i : i + PREFETCH]
        pipe = store.redis.pipeline(transaction=False)
        for eid in part:
            pipe.xrange(k.execution_log(pipeline, eid), min="-", max=str(until))
        read: list[Any] = await pipe.execute()
        for eid, rows in zip(part, read, strict=True):
            x = execution_from(
                ev.decode_payload(pipeline, int(text(rid).split("-")[0]), f[b"e"])
                for rid, f in rows
            )
            full = run.rebuilt.executions[eid]
            if x is not None and _enc(x) == _enc(full):
                continue
            diff = _first_difference(msgspec.to_builtins(x), msgspec.to_builtins(full))
            if diff is not None:
                path, got, want = diff
                return fail(
                    "projection",
                    f"projection differs at executions.{eid}.{path}: read from its stream "
                    f"{_show(got)}, rebuilt {_show(want)}",
                    None,
                    eid,
                )

    # 6. the derived indexes
    problem = await _index_problem(store, pipeline, run, until)
    return report(problem)


async def _tails(store: EventStore, keys: dict[str, str]) -> dict[str, int]:
    """The seq of each stream's last entry."""
    out: dict[str, int] = {}
    names = list(keys)
    for i in range(0, len(names), 500):
        part = names[i : i + 500]
        pipe = store.redis.pipeline(transaction=False)
        for name in part:
            pipe.xrevrange(keys[name], count=1)
        rows: list[Any] = await pipe.execute()
        for name, r in zip(part, rows, strict=True):
            if r:
                out[name] = int(text(r[0][0]).split("-", 1)[0])
    return out


async def _index_problem(
    store: EventStore, pipeline: str, run: _Pass, until: int
) -> Problem | None:
    """The derived indexes against what the events say (up to ``until``; entries the
    index gained from later appends are allowed while the pipeline moves on)."""
    k, redis, want = store.keys, store.redis, run.index

    def bad(name: str, msg: str, stream: str | None = None) -> Problem:
        return Problem(pipeline, "index", f"{name} index: {msg}", None, None, stream)

    xs: Any = await redis.zrange(k.executions(pipeline), 0, -1, withscores=True)
    acts: Any = await redis.zrange(k.actions(pipeline), 0, -1, withscores=True)
    tok: Any = await redis.hgetall(k.request_tokens(pipeline))
    apv: Any = await redis.hgetall(k.approvals(pipeline))
    xa: dict[str, dict[str, int]] = {}
    ids = list(want.xs)
    for i in range(0, len(ids), 500):
        pipe = redis.pipeline(transaction=False)
        for eid in ids[i : i + 500]:
            pipe.hgetall(k.attempts(pipeline, eid))
        for eid, raw in zip(ids[i : i + 500], await pipe.execute(), strict=True):
            xa[eid] = {text(a): int(text(v)) for a, v in raw.items()}
    quiet = await store.version(pipeline) == until  # nothing appended since the pass began

    for name, got_raw, exp in (
        ("executions (xs)", xs, want.xs),
        ("actions (as)", acts, want.actions),
    ):
        got = {text(m): int(s) for m, s in got_raw}
        for member, seq in exp.items():
            if got.get(member) != seq:
                return bad(
                    name,
                    f"{member} should be at seq {seq}, is {got.get(member, '(not set)')}",
                    member.split("/")[0],
                )
        for member, seq in got.items():
            if member not in exp and (seq <= until or quiet):
                return bad(name, f"{member} at seq {seq} has no such event", member.split("/")[0])
    for name, got_raw, exp2 in (
        ("request tokens (tok)", tok, want.tok),
        ("approval tokens (apv)", apv, want.apv),
    ):
        got2 = {text(t): text(e) for t, e in got_raw.items()}
        for token, eid in exp2.items():
            now = got2.get(token)
            if now != eid and (quiet or now in want.xs or now is None):
                return bad(
                    name,
                    f"token {token} should name execution {eid}, names {now or '(not set)'}",
                    eid,
                )
        if quiet:
            for token, eid in got2.items():
                if token not in exp2:
                    return bad(name, f"token {token} (execution {eid}) has no such event", eid)
    for eid, exp3 in want.xa.items():
        got3 = xa.get(eid, {})
        for aid, seq in exp3.items():
            now3 = got3.get(aid)
            if now3 != seq and (quiet or now3 is None or now3 <= until):
                return bad(
                    f"execution {eid}'s actions (xa)",
                    f"{aid} should be at seq {seq}, is {now3 or '(not set)'}",
                    eid,
                )
        for aid, seq in got3.items():
            if aid not in exp3 and (seq <= until or quiet):
                return bad(
                    f"execution {eid}'s actions (xa)", f"{aid} at seq {seq} has no such event", eid
                )
    return None


async def verify(
    store: EventStore,
    pipelines: Iterable[str] | None = None,
    *,
    batch: int = 1000,
    progress: Progress | None = None,
    heads: bool = False,
    key: bytes | None = None,
    checkpoint: dict[str, tuple[int, dict[str, tuple[int, str]]]] | None = None,
    require_tags: bool = False,
) -> VerifyReport:
    """Verify the named pipelines, or all of them and the pipeline listing itself.

    The reports keep each pipeline's ``head`` digest; ``heads=True`` keeps every stream's
    last (seq, hash) too (memory then grows with the executions of all pipelines).
    ``key``: the audit key (every entry's tag is checked). ``checkpoint``: pipeline ->
    (seq counter, stream -> (last seq, hash)) of a signed checkpoint (app/audit/keyed.py,
    its signature already checked): each pipeline it names must still exist, its counter
    not be behind, each of its streams hold that entry with that hash."""
    problems: list[Problem] = []
    if pipelines is not None:
        names = list(pipelines)
    else:
        listed = await select_pipelines(store, None)
        streams = await log_streams(store)
        for hidden in sorted(streams - set(listed)):
            msg = "has a log but is not listed in its partition's names set (hidden)"
            problems.append(Problem(hidden, "listing", msg))
        names = sorted(set(listed) | streams)
    found = await unindexed_execution_streams(store)  # one scan of the keys for all
    reports = []
    cp = checkpoint or {}
    wanted = None if pipelines is None else set(names)
    for name in sorted(cp):
        if (wanted is None or name in wanted) and not await _exists(store, name):
            seq, recorded = cp[name]
            msg = (
                f"deleted: the checkpoint recorded this pipeline at seq {seq} with "
                f"{len(recorded)} streams, the store holds none of its events"
            )
            problems.append(Problem(name, "checkpoint", msg, seq, None, HEAD))
            names = [n for n in names if n != name]
    for name in names:
        pinned_seq, pins = cp.get(name, (None, None))
        r = await verify_pipeline(
            store,
            name,
            batch=batch,
            progress=progress,
            unindexed=found.get(name, set()),
            key=key,
            pins=pins,
            pinned_seq=pinned_seq,
            require_tags=require_tags,
        )
        if r.ok and name in cp and r.last_version < cp[name][0]:
            msg = (
                f"the sequence counter and streams end at seq {r.last_version}, but the "
                f"checkpoint recorded seq {cp[name][0]}: events removed or the pipeline "
                "rolled back since"
            )
            r = dataclasses.replace(
                r, problem=Problem(name, "checkpoint", msg, r.last_version + 1, None, HEAD)
            )
        reports.append(r if heads else dataclasses.replace(r, heads={}))
    return VerifyReport(reports, problems)


async def _exists(store: EventStore, pipeline: str) -> bool:
    """Whether any key of the pipeline's events is left (its stream, counter, index)."""
    k = store.keys
    n: Any = await store.redis.exists(
        k.log(pipeline), k.sequence(pipeline), k.executions(pipeline)
    )
    return bool(n)
