"""Export every stream of the store to a portable JSONL archive, and import one into an empty
Redis.

Archive format 2 (one JSON object per line, ``kind`` says which; the store layout of
``app/store/eventstore.py``: a pipeline's own stream plus one stream per execution, one seq):

- first line ``{"kind": "header", "format": "stageline-audit-archive", "formatVersion": 2,
  "layout": 2, "namespace", "partitions", "exportedAt"}``;
- per pipeline, in name order:

  - ``{"kind": "pipeline", "pipeline", "seq"}``: its seq counter;
  - one line per stored entry, stream by stream (the pipeline's own stream ``"-"`` first,
    then each execution's in start order), each in seq order: ``{"kind": "event",
    "pipeline", "stream", "version", "hash", "type", "payload", "tag"}`` where ``payload`` is the
    stored ``e`` field *as a string, byte for byte* (``payloadBase64`` when it is not
    UTF-8), or ``ref`` the stored head reference (``r``) of a head event, and ``tag`` the
    audit tag (``m``) when the entry has one (written with an audit key);
  - ``{"kind": "commands", "pipeline", "ids": {commandId: "first:last"}}`` lines (the
    command-id table, a thousand ids a line);
  - ``{"kind": "streams", "pipeline", "entries", "streams": {stream: {"last", "head"}}}``:
    the last seq and hash of each stream, so a cut or shuffled archive is detected;

- last line ``{"kind": "end", "entries", "pipelines": {name: seq}}``.

Import checks the whole archive first, without Redis: each stream's hash chain recomputed
(the first altered entry is named), every seq of a pipeline stored once (as a full event; a
head reference shares its event's seq), every payload decodes into an event of the stream
it is in, the command ids point at events, the trailers agree. It refuses a target that
holds any stageline pipeline data, then writes every entry back with its id, payload and
hash (``EventStore.restore``, which checks the chain once more as the target stores it).
What is derived is rebuilt from the events, not taken from the archive: the indexes
(executions, actions, request and approval tokens, last event per action execution, the
pipeline names) and the seq counter, and the streams part of each command-id entry.
Snapshots are not archived (workers rebuild them). Dispatch streams stay empty unless
``keep_dispatch``: an imported archive is inert, workers started on it do not re-run old
actions.
"""

from __future__ import annotations

import base64
import binascii
import time
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import msgspec

from app.audit.common import AuditError, iso, select_pipelines, text
from app.audit.progress import Progress
from app.domain import events as ev
from app.store.eventstore import (
    HEAD,
    LAYOUT,
    EventStore,
    RawEntry,
    chain_hash,
    runs_on_engine,
)

FORMAT = "stageline-audit-archive"
FORMAT_VERSION = 2


class Header(msgspec.Struct, tag_field="kind", tag="header", omit_defaults=True):
    format: str
    formatVersion: int
    namespace: str
    partitions: int
    exportedAt: str
    layout: int = 0


class PipelineLine(msgspec.Struct, tag_field="kind", tag="pipeline"):
    pipeline: str
    seq: int


class Entry(msgspec.Struct, tag_field="kind", tag="event", omit_defaults=True):
    pipeline: str
    version: int
    hash: str | None
    stream: str
    type: str | None = None
    payload: str | None = None
    payloadBase64: str | None = None  # only for a payload that is not UTF-8
    ref: str | None = None  # a head reference (the pipeline's stream only)
    tag: str | None = None  # the audit tag (field ``m``) of an entry written with a key

    def raw(self) -> bytes:
        if self.ref is not None:
            return self.ref.encode()
        if self.payload is not None:
            return self.payload.encode()
        if self.payloadBase64 is not None:
            return base64.b64decode(self.payloadBase64, validate=True)
        raise ValueError("no payload")


class Commands(msgspec.Struct, tag_field="kind", tag="commands"):
    pipeline: str
    ids: dict[str, str]


class Head(msgspec.Struct):
    last: int
    head: str


class Streams(msgspec.Struct, tag_field="kind", tag="streams"):
    pipeline: str
    entries: int
    streams: dict[str, Head]


class End(msgspec.Struct, tag_field="kind", tag="end"):
    entries: int
    pipelines: dict[str, int]


Line = Header | PipelineLine | Entry | Commands | Streams | End

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(Line)

COMMANDS_PER_LINE = 1000
MIN_LINE = 64  # bytes: no entry line is shorter (every seq has one)


@dataclass(frozen=True)
class ArchiveStats:
    pipelines: int
    entries: int


# --- export ----------------------------------------------------------------------------------


async def _stream_ids(store: EventStore) -> dict[str, set[str]]:
    """Execution ids of every execution stream found by key, by pipeline (one SCAN)."""
    ns = store.keys.namespace
    found: dict[str, set[str]] = {}
    async for key in store.redis.scan_iter(match=f"{ns}:{{{ns}.*}}:x:*", count=1000):
        pipeline, _, eid = text(key).split(":x:", 1)[1].partition(":")
        found.setdefault(pipeline, set()).add(eid)
    return found


async def _execution_streams(store: EventStore, pipeline: str, by_key: set[str]) -> list[str]:
    """Every execution stream of the pipeline, in start order: the index, then any stream
    found by key that the index lacks (exported as stored, for verify to judge)."""
    ids = await store.execution_ids(pipeline, newest_first=False)
    stray: list[tuple[int, str]] = []
    for eid in by_key - set(ids):
        first: Any = await store.redis.xrange(store.keys.execution_log(pipeline, eid), count=1)
        stray.append((int(text(first[0][0]).split("-")[0]) if first else 0, eid))
    return ids + [eid for _, eid in sorted(stray)]


def _entry(pipeline: str, stream: str, e: RawEntry) -> Entry:
    if e.ref:
        try:
            kind: str | None = ev.decode_ref(e.payload).t
        except (msgspec.DecodeError, msgspec.ValidationError):
            kind = None
        return Entry(
            pipeline,
            e.version,
            e.hash,
            stream,
            kind,
            ref=e.payload.decode("utf-8", "replace"),
            tag=e.tag or None,
        )
    try:
        payload = e.payload.decode()
    except UnicodeDecodeError:
        b64 = base64.b64encode(e.payload).decode()
        return Entry(pipeline, e.version, e.hash, stream, payloadBase64=b64, tag=e.tag or None)
    try:
        kind = ev.event_type(ev.decode_payload(pipeline, e.version, e.payload).event)
    except (msgspec.DecodeError, msgspec.ValidationError):
        kind = None
    return Entry(pipeline, e.version, e.hash, stream, kind, payload, tag=e.tag or None)


async def export_archive(
    store: EventStore,
    out: TextIO,
    pipelines: Iterable[str] | None = None,
    *,
    batch: int = 1000,
    progress: Progress | None = None,
) -> ArchiveStats:
    """Write every stream of the pipelines (all when None) to ``out`` as JSONL.

    Entries are written exactly as stored, tampered or not: run ``verify`` to judge them.
    """
    names = list(pipelines) if pipelines is not None else await select_pipelines(store, None)
    k = store.keys
    header = Header(
        FORMAT, FORMAT_VERSION, k.namespace, k.partitions, iso(time.time()), layout=LAYOUT
    )
    out.write(_enc.encode(header).decode() + "\n")
    seqs: dict[str, int] = {}
    total = 0
    by_key = await _stream_ids(store)
    for name in names:
        seq = await store.version(name)
        seqs[name] = seq
        out.write(_enc.encode(PipelineLine(name, seq)).decode() + "\n")
        heads: dict[str, Head] = {}
        count = 0
        streams = [(HEAD, k.log(name))] + [
            (eid, k.execution_log(name, eid))
            for eid in await _execution_streams(store, name, by_key.get(name, set()))
        ]
        for stream, key in streams:
            after = 0
            while True:
                chunk = await store.read_raw_stream(key, after=after, count=batch)
                if not chunk:
                    break
                out.write(
                    "\n".join(_enc.encode(_entry(name, stream, e)).decode() for e in chunk) + "\n"
                )
                after = chunk[-1].version
                heads[stream] = Head(after, chunk[-1].hash)
                count += len(chunk)
                if progress is not None:
                    progress.update(len(chunk))
                if len(chunk) < batch:
                    break
        table: Any = await store.redis.hgetall(k.commands(name))
        ids = sorted((text(c), text(v)) for c, v in table.items())
        for i in range(0, len(ids), COMMANDS_PER_LINE):
            part = {c: ":".join(v.split(":")[:2]) for c, v in ids[i : i + COMMANDS_PER_LINE]}
            out.write(_enc.encode(Commands(name, part)).decode() + "\n")
        out.write(_enc.encode(Streams(name, count, heads)).decode() + "\n")
        total += count
    out.write(_enc.encode(End(total, seqs)).decode() + "\n")
    return ArchiveStats(len(names), total)


# --- reading and checking an archive ---------------------------------------------------------


def _lines(path: Path) -> Iterator[tuple[int, Line]]:
    try:
        f = path.open("rb")
    except OSError as err:
        raise AuditError(f"{path}: {err.strerror or err}") from None
    with f:
        first = True
        for no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                line = _dec.decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError) as err:
                if first:
                    raise AuditError(f"{path}: not a stageline audit archive") from None
                raise AuditError(f"{path}:{no}: not an archive line: {err}") from None
            first = False
            yield no, line


@dataclass
class _Pipeline:
    """What the checker keeps of the pipeline it is reading."""

    name: str
    seq: int
    # per seq: 0 not seen, else 1 + the index of the stream its event is in (0 = HEAD)
    where: array[int] = field(default_factory=lambda: array("I"))
    streams: list[str] = field(default_factory=lambda: [HEAD])
    heads: dict[str, Head] = field(default_factory=dict)
    stream: str | None = None
    last: int = 0
    hash: str = ""
    entries: int = 0
    commands: dict[str, str] = field(default_factory=dict)


@dataclass
class Restore:
    """One step of an import: entries of a pipeline, or its command ids (checked)."""

    pipeline: str
    entries: list[RawEntry] = field(default_factory=list)
    commands: dict[str, str] | None = None


class _Checker:
    """Reads an archive line by line, checks it, and hands out what to restore."""

    def __init__(self, path: Path, chunk: int = 500) -> None:
        self.path = path
        self.chunk = chunk
        self.entries = 0
        self.done: dict[str, int] = {}
        try:
            self.size = path.stat().st_size
        except OSError:
            self.size = 0  # reading it reports the error

    def steps(self) -> Iterator[Restore]:
        path = self.path
        header_seen = False
        end: End | None = None
        cur: _Pipeline | None = None
        pending: list[RawEntry] = []
        for no, line in _lines(path):
            where = f"{path}:{no}"
            if not header_seen:
                if not isinstance(line, Header) or line.format != FORMAT:
                    raise AuditError(f"{where}: not a stageline audit archive (no header line)")
                if line.formatVersion > FORMAT_VERSION:
                    raise AuditError(
                        f"{where}: archive format {line.formatVersion} is newer "
                        f"than this stageline reads ({FORMAT_VERSION})"
                    )
                if line.formatVersion < FORMAT_VERSION:
                    raise AuditError(
                        f"{where}: archive format {line.formatVersion} is of the first store "
                        "layout: import it with the stageline that wrote it, then run "
                        "`stageline migrate` and export again"
                    )
                header_seen = True
                continue
            if end is not None:
                raise AuditError(f"{where}: data after the end line")
            if isinstance(line, Header):
                raise AuditError(f"{where}: a second header line")
            if isinstance(line, End):
                if cur is not None:
                    raise AuditError(f"{where}: pipeline {cur.name!r} has no streams line")
                end = line
                continue
            if isinstance(line, PipelineLine):
                if cur is not None:
                    raise AuditError(f"{where}: pipeline {cur.name!r} has no streams line")
                if line.pipeline in self.done:
                    raise AuditError(f"{where}: pipeline {line.pipeline!r} appears twice")
                if not 0 <= line.seq <= self.size // MIN_LINE:
                    raise AuditError(
                        f"{where}: pipeline {line.pipeline!r}: seq {line.seq} is not a count of "
                        "events this archive can hold"
                    )
                cur = _Pipeline(line.pipeline, line.seq)
                cur.where = array("I", bytes(4 * (line.seq + 1)))
                continue
            if cur is None or line.pipeline != cur.name:
                raise AuditError(
                    f"{where}: a line of pipeline {line.pipeline!r} outside its section"
                )
            if isinstance(line, Entry):
                entry = self._entry(where, cur, line)
                pending.append(entry)
                if len(pending) >= self.chunk:
                    yield Restore(cur.name, pending)
                    pending = []
                continue
            if isinstance(line, Commands):
                for cid, value in line.ids.items():
                    cur.commands[cid] = self._command(where, cur, cid, value)
                continue
            # the streams line closes the pipeline
            self._close(where, cur, line)
            if pending:
                yield Restore(cur.name, pending)
                pending = []
            if cur.commands:
                yield Restore(cur.name, commands=cur.commands)
            self.done[cur.name] = cur.seq
            cur = None
        if not header_seen:
            raise AuditError(f"{path}: empty file, not an archive")
        if end is None:
            raise AuditError(f"{path}: no end line: the archive is cut short")
        if end.entries != self.entries or end.pipelines != self.done:
            raise AuditError(
                f"{path}: the end line does not match the sections ({end.entries} entries "
                f"recorded, {self.entries} found; or a pipeline's seq differs): the archive is "
                "incomplete or altered"
            )

    def _entry(self, where: str, p: _Pipeline, e: Entry) -> RawEntry:
        spot = f"{where}: pipeline {e.pipeline!r} stream {e.stream} version {e.version}"
        if e.stream != p.stream:
            if e.stream in p.heads or (e.stream == HEAD and p.stream is not None):
                raise AuditError(f"{spot}: the stream's entries are not together")
            if p.stream is not None:
                p.heads[p.stream] = Head(p.last, p.hash)
            p.stream, p.last, p.hash = e.stream, 0, ""
            if e.stream != HEAD:
                p.streams.append(e.stream)
        if e.version <= p.last:
            raise AuditError(f"{spot}: not after version {p.last} (out of order)")
        if e.version > p.seq:
            raise AuditError(f"{spot}: after the pipeline's seq counter ({p.seq})")
        try:
            payload = e.raw()
        except (ValueError, binascii.Error) as err:
            raise AuditError(f"{spot}: bad payload: {err}") from None
        if e.hash is None or chain_hash(p.hash, e.version, payload, e.tag or "") != e.hash:
            raise AuditError(
                f"{spot}: hash mismatch (the archive, or the store it was exported from, was "
                "altered; run verify on the source)"
            )
        ref = e.ref is not None
        try:
            if ref:
                if e.stream != HEAD:
                    raise AuditError(f"{spot}: a head reference outside the pipeline's stream")
                ev.decode_ref(payload)
            else:
                body = ev.decode_payload(e.pipeline, e.version, payload).event
                owner = ev.execution_of(body)
                if (owner or HEAD) != e.stream:
                    raise AuditError(
                        f"{spot}: an event of {'execution ' + owner if owner else 'the pipeline'}"
                        " in another stream"
                    )
                if p.where[e.version]:
                    raise AuditError(f"{spot}: seq {e.version} stored twice")
                p.where[e.version] = len(p.streams)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            raise AuditError(f"{spot}: payload does not decode: {err}") from None
        p.last, p.hash = e.version, e.hash
        p.entries += 1
        self.entries += 1
        return RawEntry(e.version, payload, e.hash, ref=ref, stream=e.stream, tag=e.tag or "")

    def _command(self, where: str, p: _Pipeline, cid: str, value: str) -> str:
        parts = value.split(":")
        try:
            first, last = int(parts[0]), int(parts[1])
        except (ValueError, IndexError):
            raise AuditError(
                f"{where}: pipeline {p.name!r} command id {cid}: {value!r} is not first:last"
            ) from None
        if not 1 <= first <= last <= p.seq:
            raise AuditError(
                f"{where}: pipeline {p.name!r} command id {cid}: {first}:{last} is outside "
                f"the pipeline's events (1..{p.seq})"
            )
        return f"{first}:{last}"

    def _close(self, where: str, p: _Pipeline, line: Streams) -> None:
        if p.stream is not None:
            p.heads[p.stream] = Head(p.last, p.hash)
        missing = [v for v in range(1, p.seq + 1) if not p.where[v]]
        if missing:
            raise AuditError(
                f"{where}: pipeline {p.name!r}: no event stored for seq {missing[0]}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            )
        if line.entries != p.entries or line.streams != p.heads:
            raise AuditError(
                f"{where}: pipeline {p.name!r}: the streams line does not match its entries "
                f"({line.entries} recorded, {p.entries} found; or a stream's last "
                "version/hash differs): the archive is incomplete or altered"
            )
        # a command's streams: the executions its events are in, in order (as append wrote)
        for cid, value in p.commands.items():
            first, last = (int(x) for x in value.split(":"))
            streams: list[str] = []
            for v in range(first, last + 1):
                s = p.streams[p.where[v] - 1]
                if s != HEAD and s not in streams:
                    streams.append(s)
            p.commands[cid] = f"{value}:{','.join(streams)}"


def check_archive(path: Path, *, progress: Progress | None = None) -> ArchiveStats:
    """Check an archive without touching Redis; raises AuditError at the first problem."""
    checker = _Checker(path)
    for step in checker.steps():
        if progress is not None:
            progress.update(len(step.entries))
    return ArchiveStats(len(checker.done), checker.entries)


# --- import ----------------------------------------------------------------------------------


async def _ensure_empty(store: EventStore) -> None:
    ns = store.keys.namespace
    found: set[str] = set()
    # per-pipeline keys are <ns>:{<ns>.<n>}:<kind>:<pipeline>...; partition keys have no
    # fourth part, and dispatch streams or consumer groups alone hold no pipeline data
    async for key in store.redis.scan_iter(match=f"{ns}:{{{ns}.*}}:*:*", count=1000):
        found.add(text(key).split(":", 3)[3].split(":")[0])
    found.update(await store.pipelines())
    async for _key in store.redis.scan_iter(match=f"{ns}:job*", count=100):
        found.add("(jobs)")
        break
    if found:
        names = sorted(found)
        some = ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
        raise AuditError(
            f"refused: the target Redis is not empty: it holds data of {len(names)} stageline "
            f"pipeline(s) ({some}); import only into an empty Redis"
        )


async def _dispatch(store: EventStore, pipeline: str) -> None:
    """Put a restored pipeline's events on the partition's dispatch streams, as the append
    script does (seq order, with each event's previous seq in its streams)."""
    k = store.keys
    part = k.partition(pipeline)
    raw = sorted(await store.read_raw(pipeline), key=lambda e: (e.version, e.ref))
    refs = {e.version for e in raw if e.ref}
    last: dict[str, int] = {}
    pipe = store.redis.pipeline(transaction=False)
    for e in raw:
        if e.ref:
            last[HEAD] = e.version
            continue
        env = ev.decode_payload(pipeline, e.version, e.payload)
        x = "" if e.stream == HEAD else e.stream
        hp = str(last.get(HEAD, 0)) if e.stream == HEAD or e.version in refs else ""
        xp = str(last.get(e.stream, 0)) if x else ""
        if not x:
            last[HEAD] = e.version
        else:
            last[x] = e.version
        head: Any = {"p": pipeline, "v": e.version}
        pipe.xadd(
            k.events(part),
            {**head, "t": ev.event_type(env.event), "x": x, "hp": hp, "xp": xp, "e": e.payload},
            maxlen=store.dispatch_maxlen,
            approximate=True,
        )
        if runs_on_engine(env.event):
            pipe.xadd(
                k.run(part),
                {**head, "x": x, "hp": hp, "xp": xp, "e": e.payload},
                maxlen=store.dispatch_maxlen,
                approximate=True,
            )
    await pipe.execute()


async def import_archive(
    store: EventStore,
    path: Path,
    *,
    batch: int = 500,
    keep_dispatch: bool = False,
    progress: Progress | None = None,
) -> ArchiveStats:
    """Import an archive into an empty Redis; raises AuditError when refused."""
    stats = check_archive(path)
    await _ensure_empty(store)
    try:
        await store.ensure_config()
    except RuntimeError as err:
        raise AuditError(f"refused: {err}") from None
    checker = _Checker(path, batch)
    imported: list[str] = []
    for step in checker.steps():
        if step.pipeline not in imported:
            imported.append(step.pipeline)
        try:
            if step.entries:
                await store.restore(step.pipeline, step.entries)
            if step.commands:
                table: Any = step.commands
                await store.redis.hset(store.keys.commands(step.pipeline), mapping=table)
        except ValueError as err:
            raise AuditError(
                f"import failed: {err} (someone else writes to this Redis?); the target holds "
                "a partial import: flush it before trying again"
            ) from None
        if progress is not None:
            progress.update(len(step.entries))
    if keep_dispatch:
        for name in imported:
            await _dispatch(store, name)
    return stats


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ArchiveStats",
    "check_archive",
    "export_archive",
    "import_archive",
]
