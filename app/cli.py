"""The ``stageline`` command line.

Every command that touches Redis takes ``--redis-url`` (default ``$STAGELINE_REDIS_URL``);
without one, ``serve`` runs on an embedded in-memory Redis. Errors are one line on stderr
and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import anyio
import msgspec

from app.domain.errors import DomainError
from app.store.connection import ENV_URL, connect, default_url
from app.store.keys import Keys
from workers.config import WorkerConfig, default_name

EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_UNAVAILABLE = 4


class CliError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _redis_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--redis-url",
        default=default_url(),
        help=f"redis://, rediss:// or unix:// URL (default ${ENV_URL}; "
        "serve: embedded in-memory Redis when unset)",
    )
    p.add_argument(
        "--partitions",
        type=int,
        default=int(os.environ.get("STAGELINE_PARTITIONS", "16")),
        help="fixed number of work partitions (default 16; must match the data in Redis)",
    )


def _parse_keys(values: Sequence[str]) -> dict[str, str]:
    creds: dict[str, str] = {}
    for v in values:
        for pair in v.split(","):
            pair = pair.strip()
            if not pair:
                continue
            akid, sep, secret = pair.partition(":")
            if not sep or not akid or not secret:
                raise CliError(f"access key {akid or pair!r}: expected ACCESS_KEY_ID:SECRET")
            creds[akid] = secret
    return creds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stageline",
        description="Event-sourced pipeline engine with CodePipeline's RetryStageExecution.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the CodePipeline-compatible HTTP API (+ workers)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    _redis_arg(s)
    s.add_argument("--no-workers", action="store_true", help="API only; run workers apart")
    s.add_argument(
        "--access-key",
        action="append",
        default=[os.environ["STAGELINE_ACCESS_KEYS"]]
        if os.environ.get("STAGELINE_ACCESS_KEYS")
        else [],
        metavar="AKID:SECRET",
        help="accept SigV4 requests signed with this key (repeatable; "
        "or STAGELINE_ACCESS_KEYS=AKID:SECRET,...); with none, auth is off",
    )
    s.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback host without access keys"
    )
    s.add_argument("--concurrency", type=int, default=8, help="actions run at once")
    s.add_argument(
        "--max-concurrent-executions",
        type=int,
        default=50,
        metavar="N",
        help="limit of active executions per pipeline, fixed when a pipeline is created "
        "(default 50)",
    )

    w = sub.add_parser("worker", help="run a worker process (orchestrator + action runner)")
    _redis_arg(w)
    w.add_argument("--concurrency", type=int, default=8, help="actions run at once")
    w.add_argument("--name", default=None, help="consumer name (default host-pid; unique!)")
    w.add_argument("--lease-ttl", type=float, default=30.0, help="seconds; renewed every third")
    w.add_argument("--claim-idle", type=float, default=30.0, help="seconds before takeover")
    w.add_argument("--shutdown-grace", type=float, default=30.0, help="seconds")
    w.add_argument("--claim-every", type=float, default=5.0, help="seconds between takeovers")
    w.add_argument("--reap-every", type=float, default=1.0, help="seconds between lease reaps")
    w.add_argument("--snapshot-every", type=float, default=2.0, help="seconds between snapshots")
    w.add_argument("--max-deliveries", type=int, default=5, help="then dead-letter the entry")
    w.add_argument(
        "--partition-lease",
        type=float,
        default=10.0,
        help="seconds a partition's owner holds it without renewing (default 10): another "
        "process takes over a dead owner's partitions this long after its last renewal",
    )
    w.add_argument("--block-ms", type=int, default=1000, help="XREADGROUP BLOCK (ms)")
    w.add_argument(
        "--role",
        action="append",
        choices=["orchestrator", "runner"],
        help="run only this role (repeatable; default both)",
    )

    r = sub.add_parser("retry", help="RetryStageExecution from the command line")
    _redis_arg(r)
    r.add_argument("pipeline")
    r.add_argument("stage")
    r.add_argument("execution_id")
    r.add_argument("--mode", choices=["FAILED_ACTIONS", "ALL_ACTIONS"], default="FAILED_ACTIONS")

    m = sub.add_parser(
        "migrate",
        help="convert a store of the first layout (see docs/operations.md, Migration)",
        description="Convert a Redis of the first store layout to the current one, in place.",
    )
    m.add_argument("--redis-url", default=default_url(), help=f"default ${ENV_URL}")
    m.add_argument(
        "--force", action="store_true", help="run even though stageline processes look active"
    )

    from app.audit.cli import add_audit_parser

    add_audit_parser(sub, _redis_arg)
    return p


def _worker_config(a: argparse.Namespace) -> WorkerConfig:
    return WorkerConfig(
        name=getattr(a, "name", None) or default_name(),
        concurrency=a.concurrency,
        lease_ttl_s=getattr(a, "lease_ttl", 30.0),
        claim_idle_ms=int(getattr(a, "claim_idle", 30.0) * 1000),
        shutdown_grace_s=getattr(a, "shutdown_grace", 30.0),
        claim_every_s=getattr(a, "claim_every", 5.0),
        reap_every_s=getattr(a, "reap_every", 1.0),
        snapshot_every_s=getattr(a, "snapshot_every", 2.0),
        max_deliveries=getattr(a, "max_deliveries", 5),
        block_ms=getattr(a, "block_ms", 1000),
        partition_lease_s=getattr(a, "partition_lease", 10.0),
        roles=tuple(getattr(a, "role", None) or ("orchestrator", "runner")),
    )


async def _worker(a: argparse.Namespace) -> None:
    from app.engine import Engine
    from workers.service import Worker

    if not a.redis_url:
        raise CliError(
            f"stageline worker needs --redis-url (or ${ENV_URL}): workers in other processes "
            "cannot share the embedded Redis; use 'stageline serve' for a single process"
        )
    redis = await connect(a.redis_url)
    engine = Engine(redis, Keys(partitions=a.partitions))
    worker = Worker(engine, _worker_config(a))
    logging.getLogger("stageline").warning(
        "worker %s on %s", worker.config.name, a.redis_url.split("@")[-1]
    )
    await worker.run_until_signalled()


async def _serve(a: argparse.Namespace) -> None:
    from app.api.server import ServeConfig, serve

    await serve(
        ServeConfig(
            host=a.host,
            port=a.port,
            redis_url=a.redis_url,
            workers=not a.no_workers,
            credentials=_parse_keys(a.access_key),
            insecure=a.insecure,
            partitions=a.partitions,
            max_concurrent_executions=a.max_concurrent_executions,
            worker=_worker_config(a),
        )
    )


async def _retry(a: argparse.Namespace) -> None:
    from app.engine import Engine
    from app.repository import Origin

    if not a.redis_url:
        raise CliError(f"stageline retry needs --redis-url (or ${ENV_URL})")
    redis = await connect(a.redis_url)
    try:
        engine = Engine(redis, Keys(partitions=a.partitions))
        await engine.start()
        actor = os.environ.get("USER") or "cli"
        eid = await engine.retry_stage(
            a.pipeline, a.stage, a.execution_id, a.mode, Origin(actor=f"cli:{actor}")
        )
        print(json.dumps({"pipelineExecutionId": eid}))
    finally:
        await redis.aclose()


async def _migrate(a: argparse.Namespace) -> None:
    from app.migrate import MigrationError, migrate

    if not a.redis_url:
        raise CliError(f"stageline migrate needs --redis-url (or ${ENV_URL})", EXIT_USAGE)
    redis = await connect(a.redis_url)
    try:
        report = await migrate(redis, force=a.force, log=lambda m: print(m, file=sys.stderr))
    except MigrationError as err:
        raise CliError(str(err), EXIT_REFUSED) from None
    finally:
        await redis.aclose()
    print(report.summary())


async def _on_checked_store(a: argparse.Namespace, run: Any) -> Any:
    """Refuse, before anything starts, a store of another layout or partition count
    (exit 3, one line; a Redis not reachable yet is left to the command's own retries)."""
    if a.command in ("serve", "worker", "retry") and a.redis_url:
        from redis.exceptions import RedisError

        from app.migrate import MigrationError, require_layout

        try:
            redis = await connect(a.redis_url)
            try:
                await require_layout(redis, Keys(partitions=a.partitions))
            finally:
                await redis.aclose()
        except MigrationError as err:
            raise CliError(str(err), EXIT_REFUSED) from None
        except (RedisError, OSError):
            pass
    return await run(a)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if a.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    run: dict[str, Any] = {
        "serve": _serve,
        "worker": _worker,
        "retry": _retry,
        "migrate": _migrate,
    }
    if a.command == "audit":
        from app.audit.cli import run_audit

        run["audit"] = run_audit
    try:
        result = anyio.run(_on_checked_store, a, run[a.command])
        return int(result) if isinstance(result, int) else 0
    except KeyboardInterrupt:
        return 130
    except DomainError as err:
        print(f"stageline: {err.type_name}: {err.message}", file=sys.stderr)
        return EXIT_REFUSED
    except CliError as err:
        print(f"stageline: {err}", file=sys.stderr)
        return err.code
    except msgspec.ValidationError as err:
        print(f"stageline: invalid input: {err}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as err:
        if isinstance(err.code, str):
            print(err.code, file=sys.stderr)
            return 1
        return int(err.code or 0)
    except OSError as err:
        print(f"stageline: {err}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except Exception as err:  # a last resort: one line, not a traceback
        from redis.exceptions import RedisError

        if isinstance(err, RedisError):
            print(f"stageline: Redis: {err}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        print(f"stageline: internal error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
