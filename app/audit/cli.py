"""``stageline audit log|replay|verify|checkpoint|export|import``: the audit tools on the
command line.

Every subcommand takes ``--redis-url`` and ``--partitions`` like the rest of the CLI. Errors
are one line on stderr and a non-zero exit (``app.cli.main`` prints ``CliError``);
``verify`` exits 1 when it finds a difference, after printing its report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from redis.asyncio import Redis

from app.audit.archive import export_archive, import_archive
from app.audit.common import AuditError, parse_as_of, parse_time, select_pipelines
from app.audit.keyed import (
    ENV_KEY_FILE,
    default_key_file,
    load_audit_key,
    make_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from app.audit.log import audit_log, format_jsonl, format_table, table_header
from app.audit.progress import Bar
from app.audit.replay import events_to_replay, projection, replay
from app.audit.verify import verify
from app.store.connection import ENV_URL, connect, store_keys
from app.store.eventstore import EventStore

EXIT_DIFFERENCE = 1


def add_audit_parser(sub: Any, redis_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    a = sub.add_parser(
        "audit",
        help="audit the event log: log, replay, verify, export, import",
        description="Audit tools over the event log (see docs/audit.md).",
    )
    cmds = a.add_subparsers(dest="audit_command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = cmds.add_parser(name, help=help, description=help)
        redis_arg(p)
        return p

    def progress_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="progress bar with rate and ETA on stderr (default: when stderr is a terminal)",
        )

    def key_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--audit-key-file",
            default=default_key_file(),
            metavar="FILE",
            help=f"the audit key (or ${ENV_KEY_FILE}): check every entry's audit tag",
        )

    lg = command("log", "the events of a pipeline (or one execution) in order")
    lg.add_argument("--pipeline", required=True, metavar="NAME")
    lg.add_argument(
        "--execution", metavar="ID", help="only this execution's events (read from its stream)"
    )
    lg.add_argument("--since", metavar="TIME", help="ISO 8601, @epoch or a duration ago (24h)")
    lg.add_argument("--format", choices=["table", "jsonl"], default="table")

    rp = command("replay", "fold the log from scratch into fresh projections (JSONL)")
    rp.add_argument("--pipeline", metavar="NAME", help="only this pipeline (default: all)")
    rp.add_argument(
        "--as-of",
        metavar="TIME|VERSION",
        help="the state at a past point: an event seq (17, v17) or a time "
        "(ISO 8601, @epoch, or a duration ago such as 2h)",
    )
    rp.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")
    rp.add_argument("--full", action="store_true", help="add the whole folded state")
    progress_flag(rp)

    vf = command(
        "verify",
        "check every stream's hash chain, the seqs, head references and indexes, and compare "
        "rebuilt and live projections",
    )
    vf.add_argument("--pipeline", metavar="NAME", help="only this pipeline (default: all)")
    vf.add_argument("--quiet", action="store_true", help="print only the differences")
    key_flag(vf)
    vf.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="a signed checkpoint (audit checkpoint --out): also prove that no pipeline, "
        "stream or entry it recorded was removed, cut, rewritten or rolled back (needs the key)",
    )
    vf.add_argument(
        "--require-tags",
        action="store_true",
        help="with the key: every entry must carry an audit tag (a store written with the key "
        "from its start; default: untagged entries before the first tagged one are reported "
        "as unkeyed, not as a failure)",
    )
    progress_flag(vf)

    cp = command(
        "checkpoint",
        "verify the store with the audit key, then write every pipeline's seq and every "
        "stream's last (seq, hash), signed with the key, to a file kept outside Redis",
    )
    key_flag(cp)
    cp.add_argument("--out", required=True, metavar="FILE", help="the checkpoint file to write")
    progress_flag(cp)

    ex = command("export", "write the log to a portable JSONL archive")
    ex.add_argument("--pipeline", metavar="NAME", help="only this pipeline (default: all)")
    ex.add_argument("--out", required=True, metavar="FILE.jsonl", help="'-' for stdout")
    progress_flag(ex)

    im = command("import", "load an archive into an EMPTY Redis (hashes are re-checked)")
    im.add_argument("file", metavar="FILE.jsonl")
    im.add_argument(
        "--keep-dispatch",
        action="store_true",
        help="leave the imported events on the work-dispatch streams, so workers started on "
        "this Redis act on them (default: the import is inert)",
    )
    progress_flag(im)


@contextmanager
def _output(path: str | None) -> Iterator[TextIO]:
    if path is None or path == "-":
        yield sys.stdout
        return
    with open(path, "w", encoding="utf-8") as f:
        yield f


async def _log(store: EventStore, a: argparse.Namespace) -> int:
    since = parse_time(a.since) if a.since else None
    table = a.format == "table"
    out = sys.stdout
    if table:
        out.write(table_header(with_execution=a.execution is None) + "\n")
    async for row in audit_log(store, a.pipeline, execution=a.execution, since=since):
        if table:
            out.write(format_table(row, with_execution=a.execution is None) + "\n")
        else:
            out.write(format_jsonl(row) + "\n")
    return 0


async def _replay(store: EventStore, a: argparse.Namespace) -> int:
    as_of = parse_as_of(a.as_of) if a.as_of else None
    names = await select_pipelines(store, a.pipeline)
    total = await events_to_replay(store, names, as_of)
    with Bar(total, "replay", enabled=a.progress) as bar, _output(a.out) as out:
        async for r in replay(store, names, as_of=as_of, progress=bar):
            out.write(json.dumps(projection(r, full=a.full), separators=(",", ":")) + "\n")
    return 0


def _key(a: argparse.Namespace, needed: str | None = None) -> bytes | None:
    path = a.audit_key_file or default_key_file()
    if not path:
        if needed:
            raise AuditError(f"{needed} needs the audit key: --audit-key-file (or ${ENV_KEY_FILE})")
        return None
    return load_audit_key(path)


async def _verify(store: EventStore, a: argparse.Namespace) -> int:
    needs = "--checkpoint" if a.checkpoint else "--require-tags" if a.require_tags else None
    key = _key(a, needs)
    pins = None
    if a.checkpoint:
        assert key is not None
        pins, _ = read_checkpoint(a.checkpoint, key, store.keys.namespace)
    if a.pipeline:
        try:
            names: list[str] | None = await select_pipelines(store, a.pipeline)
        except AuditError:
            if pins is None or a.pipeline not in pins:
                raise
            names = [a.pipeline]  # deleted since the checkpoint: verify says so
    else:
        names = None
    total = await events_to_replay(store, names or await store.pipelines())
    with Bar(total, "verify", enabled=a.progress) as bar:
        report = await verify(
            store, names, progress=bar, key=key, checkpoint=pins, require_tags=a.require_tags
        )
    out = sys.stdout
    for p in report.pipelines:
        if not a.quiet or not p.ok:
            out.write(p.summary() + "\n")
    for problem in report.problems:
        out.write(f"FAIL {problem}\n")
    events = sum(p.events for p in report.pipelines)
    if report.ok:
        if not a.quiet:
            out.write(f"verified {len(report.pipelines)} pipeline(s), {events} events: OK\n")
        return 0
    problems = report.all_problems()
    out.write(f"verification FAILED: {len(problems)} problem(s)\n")
    print(f"stageline: verify: {problems[0]}", file=sys.stderr)
    return EXIT_DIFFERENCE


async def _checkpoint(store: EventStore, a: argparse.Namespace) -> int:
    key = _key(a, "audit checkpoint")
    assert key is not None
    total = await events_to_replay(store, await store.pipelines())
    with Bar(total, "checkpoint", enabled=a.progress) as bar:
        report = await verify(store, None, progress=bar, key=key, heads=True)
    if not report.ok:
        problems = report.all_problems()
        for problem in problems:
            print(f"FAIL {problem}")
        print(
            f"stageline: checkpoint: not written, the store does not verify ({len(problems)} "
            f"problem(s); first: {problems[0]})",
            file=sys.stderr,
        )
        return EXIT_DIFFERENCE
    pins = {p.pipeline: (p.last_version, p.heads) for p in report.pipelines}
    doc = make_checkpoint(key, store.keys.namespace, store.keys.partitions, pins)
    write_checkpoint(a.out, doc)
    streams = sum(len(h) for _, h in pins.values())
    print(
        f"checkpoint {a.out}: {len(pins)} pipeline(s), {streams} streams, signed with key "
        f"{doc['keyId']}",
        file=sys.stderr,
    )
    return 0


async def _export(store: EventStore, a: argparse.Namespace) -> int:
    names = await select_pipelines(store, a.pipeline)
    total = await events_to_replay(store, names)
    with Bar(total, "export", enabled=a.progress) as bar, _output(a.out) as out:
        stats = await export_archive(store, out, names, progress=bar)
    print(f"exported {stats.entries} events of {stats.pipelines} pipeline(s)", file=sys.stderr)
    return 0


async def _import(store: EventStore, a: argparse.Namespace) -> int:
    path = Path(a.file)
    with Bar(None, "import", enabled=a.progress) as bar:
        stats = await import_archive(store, path, keep_dispatch=a.keep_dispatch, progress=bar)
    print(f"imported {stats.entries} events of {stats.pipelines} pipeline(s)", file=sys.stderr)
    return 0


_COMMANDS = {
    "log": _log,
    "replay": _replay,
    "verify": _verify,
    "checkpoint": _checkpoint,
    "export": _export,
    "import": _import,
}


async def run_audit(a: argparse.Namespace) -> int:
    from app.cli import CliError  # app.cli imports this module lazily

    if not a.redis_url:
        raise CliError(
            f"stageline audit needs --redis-url (or ${ENV_URL}): the embedded Redis of another "
            "process cannot be audited"
        )
    redis: Redis = await connect(a.redis_url)
    try:
        store = EventStore(redis, await store_keys(redis, a.partitions))
        return await _COMMANDS[a.audit_command](store, a)
    except AuditError as err:
        raise CliError(str(err)) from None
    except BrokenPipeError:  # e.g. `stageline audit log ... | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    finally:
        await redis.aclose()
