"""Verify: the log is intact and the live projections are what the log says.

For each pipeline, in one streamed pass over its stream:

1. entry ids are ``<version>-0`` with versions consecutive from 1 (a gap is a deleted
   event);
2. each entry's hash is ``sha1(previous hash \\n version \\n payload)`` (the append script's
   chain): a mismatch is an edited payload, a reordering or a broken chain, and the report
   says which when the following entries tell;
3. each payload decodes and folds into the state rebuilt so far;
4. the end of the log is the end of what was written: the stream's own counters
   (``entries-added``, ``max-deleted-entry-id``), the command-id table and the snapshot
   must not know of versions past the last entry (events deleted at the end);
5. the live projection (the stored snapshot, caught up with the events after it, which is
   exactly what readers load) equals the state rebuilt from scratch.

The first difference of each pipeline is reported with its position. Without an external
copy of the latest hash a rewrite of the whole chain from some point on cannot be told
from the log alone: keep the ``head`` a report gives (or an export) somewhere else and
compare it later.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from app.audit.common import StreamEntry, iter_stream, log_streams, select_pipelines, text
from app.audit.progress import Progress
from app.domain import events as ev
from app.domain.state import PipelineState, evolve, new_state
from app.store.eventstore import EventStore, chain_hash

ProblemKind = Literal[
    "entry-id",
    "missing",
    "hash",
    "decode",
    "apply",
    "truncated",
    "snapshot",
    "projection",
    "listing",
]


@dataclass(frozen=True)
class Problem:
    pipeline: str
    kind: ProblemKind
    message: str
    version: int | None = None
    entry_id: str | None = None

    def __str__(self) -> str:
        return f"{self.pipeline}: {self.message}"


@dataclass(frozen=True)
class PipelineReport:
    pipeline: str
    events: int = 0
    last_version: int = 0
    head: str | None = None  # hash of the last entry
    snapshot_version: int | None = None
    problem: Problem | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        if self.problem is not None:
            return f"FAIL {self.problem}"
        snap = (
            f"snapshot at version {self.snapshot_version} matches"
            if self.snapshot_version is not None
            else "no snapshot"
        )
        return (
            f"ok   {self.pipeline}: {self.events} events, chain intact, "
            f"head {self.last_version}:{self.head}, {snap}"
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


_DIAGNOSE_AHEAD = 2000  # entries looked at to explain a hash mismatch


def _entry_where(e: StreamEntry) -> str:
    return f"version {e.version} (entry {e.entry_id})"


def _hash_problem(
    pipeline: str, prev: str, e: StreamEntry, following: list[StreamEntry]
) -> Problem:
    """Explain why ``e``'s stored hash is not the chain's (``e.payload`` is not None)."""
    assert e.payload is not None
    where = f"hash mismatch at {_entry_where(e)}"
    if e.hash is None:
        msg = f"{where}: the entry has no hash (not written by the append script)"
        return Problem(pipeline, "hash", msg, e.version, e.entry_id)
    # Reordered: this payload is the one the chain hashed at a later version.
    p = e.hash
    for f in following:
        if f.hash is None or f.payload is None:
            break
        if chain_hash(p, f.version, e.payload) == f.hash:
            msg = (
                f"{where}: events reordered (the payload stored at version {e.version} was "
                f"hashed as version {f.version}; versions {e.version} and {f.version} "
                "swapped or moved)"
            )
            return Problem(pipeline, "hash", msg, e.version, e.entry_id)
        p = f.hash
    nxt = following[0] if following else None
    if nxt is None:
        msg = f"{where}: payload edited or hash rewritten (it is the last event)"
    elif (
        nxt.payload is not None
        and nxt.hash is not None
        and nxt.version == e.version + 1
        and chain_hash(e.hash, nxt.version, nxt.payload) == nxt.hash
    ):
        msg = (
            f"{where}: payload edited (the stored hash is not this payload's, and the chain "
            f"goes on intact from it; or the hash of version {e.version - 1} was rewritten)"
        )
    else:
        msg = (
            f"{where}: chain broken (neither this payload nor the next link matches the "
            "stored hashes: an entry rewritten with a new hash, or entries inserted)"
        )
    return Problem(pipeline, "hash", msg, e.version, e.entry_id)


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


async def _load_snapshot(
    store: EventStore, pipeline: str
) -> tuple[int | None, PipelineState | None, Problem | None]:
    raw: Any = await store.redis.hgetall(store.keys.snapshot(pipeline))
    if not raw:
        return None, None, None
    try:
        version = int(text(raw[b"v"]))
        state = msgspec.json.decode(raw[b"s"], type=PipelineState)
    except (KeyError, ValueError, msgspec.DecodeError) as err:
        msg = f"snapshot does not decode: {err}"
        return None, None, Problem(pipeline, "snapshot", msg)
    if state.version != version or state.name != pipeline:
        msg = (
            f"snapshot is labelled version {version} but holds {state.name!r} "
            f"at version {state.version}"
        )
        return version, None, Problem(pipeline, "snapshot", msg, version)
    return version, state, None


async def _tail_problem(store: EventStore, pipeline: str, last: int) -> Problem | None:
    """Versions past ``last`` that the stream counters or the command-id table know of.

    Race-free on a live log: XINFO's counters come from one moment, and a command id is
    recorded by the same script that appends its events.
    """
    key = store.keys.log(pipeline)
    info: Any = await store.redis.xinfo_stream(key)
    added, length = info.get("entries-added"), info.get("length")
    if isinstance(added, int) and isinstance(length, int) and added > length:
        deleted = info.get("max-deleted-entry-id")
        at = f", last deleted entry {text(deleted)}" if deleted else ""
        msg = (
            f"version {last + 1} missing (deleted event): the stream holds {length} of the "
            f"{added} entries appended to it{at}"
        )
        return Problem(pipeline, "truncated", msg, last + 1)
    top = 0
    async for _cmd, span in store.redis.hscan_iter(store.keys.commands(pipeline), count=1000):
        top = max(top, int(text(span).rpartition(":")[2]))
    if top > last and top > await store.version(pipeline):
        msg = (
            f"version {last + 1} missing (deleted event): command ids record appends up to "
            f"version {top} but the log ends at version {last}"
        )
        return Problem(pipeline, "truncated", msg, last + 1)
    return None


async def verify_pipeline(
    store: EventStore,
    pipeline: str,
    *,
    batch: int = 1000,
    progress: Progress | None = None,
) -> PipelineReport:
    """Check one pipeline's chain, payloads and projection; see the module docstring."""
    snap_v, live, snap_problem = await _load_snapshot(store, pipeline)
    rebuilt = new_state(pipeline)
    expected = 1
    prev = ""
    count = 0

    def report(problem: Problem | None) -> PipelineReport:
        return PipelineReport(pipeline, count, expected - 1, prev or None, snap_v, problem)

    gen = iter_stream(store.redis, store.keys.log(pipeline), batch)
    async for chunk in gen:
        for i, e in enumerate(chunk):
            if e.seq != 0:
                msg = f"entry {e.entry_id}: entry id is not <version>-0 (not written by the store)"
                return report(Problem(pipeline, "entry-id", msg, e.version, e.entry_id))
            if e.version != expected:
                if e.version > expected:
                    gap = (
                        f"version {expected} missing (deleted event)"
                        if e.version == expected + 1
                        else f"versions {expected}..{e.version - 1} missing (deleted events)"
                    )
                    after = f"entry {expected - 1}-0" if expected > 1 else "the start"
                    msg = f"{gap}: the log goes from {after} to entry {e.entry_id}"
                    return report(Problem(pipeline, "missing", msg, expected, e.entry_id))
                msg = f"versions out of order at entry {e.entry_id} (expected {expected})"
                return report(Problem(pipeline, "missing", msg, e.version, e.entry_id))
            if e.payload is None:
                msg = f"{_entry_where(e)}: the entry has no payload"
                return report(Problem(pipeline, "decode", msg, e.version, e.entry_id))
            if e.hash is None or chain_hash(prev, e.version, e.payload) != e.hash:
                following = chunk[i + 1 :]
                if len(following) < _DIAGNOSE_AHEAD:
                    more = await anext(gen, None)
                    following = following + (more or [])
                return report(_hash_problem(pipeline, prev, e, following))
            try:
                env = ev.decode_payload(pipeline, e.version, e.payload)
            except (msgspec.DecodeError, msgspec.ValidationError) as err:
                msg = f"{_entry_where(e)}: payload does not decode: {err}"
                return report(Problem(pipeline, "decode", msg, e.version, e.entry_id))
            try:
                evolve(rebuilt, env)
                if live is not None and snap_v is not None and e.version > snap_v:
                    evolve(live, env)
            except Exception as err:
                msg = (
                    f"{_entry_where(e)}: {ev.event_type(env.event)} does not apply to the "
                    f"state before it ({type(err).__name__}: {err})"
                )
                return report(Problem(pipeline, "apply", msg, e.version, e.entry_id))
            prev = e.hash
            expected += 1
            count += 1
        if progress is not None:
            progress.update(len(chunk))

    last = expected - 1
    if last == 0:
        msg = "listed as a pipeline but has no events (its log stream was deleted)"
        return report(Problem(pipeline, "missing", msg, 1))
    tail = await _tail_problem(store, pipeline, last)
    if tail is not None:
        return report(tail)
    if snap_problem is not None:
        return report(snap_problem)
    if live is not None and snap_v is not None:
        if snap_v > last:
            msg = (
                f"version {last + 1} missing (deleted event): the snapshot is at version "
                f"{snap_v} but the log ends at version {last}"
            )
            return report(Problem(pipeline, "truncated", msg, last + 1))
        diff = _first_difference(msgspec.to_builtins(live), msgspec.to_builtins(rebuilt))
        if diff is not None:
            path, got, want = diff
            msg = (
                f"projection differs at {path}: snapshot {_show(got)}, rebuilt {_show(want)} "
                f"(snapshot at version {snap_v}, caught up to {last})"
            )
            return report(Problem(pipeline, "projection", msg, snap_v))
    return report(None)


async def verify(
    store: EventStore,
    pipelines: Iterable[str] | None = None,
    *,
    batch: int = 1000,
    progress: Progress | None = None,
) -> VerifyReport:
    """Verify the named pipelines, or all of them and the pipeline listing itself."""
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
    reports = [await verify_pipeline(store, name, batch=batch, progress=progress) for name in names]
    return VerifyReport(reports, problems)
