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
import shutil
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
EXIT_NOT_FOUND = 5


class CliError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _redis_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--redis-url",
        default=default_url(),
        help=f"redis://, rediss:// or unix:// URL (default ${ENV_URL}; "
        "serve: embedded in-memory Redis when unset). A password here shows in the process "
        "list: prefer the environment variable or --redis-url-file",
    )
    p.add_argument(
        "--redis-url-file",
        metavar="PATH",
        help="read the Redis URL from this file (keep it mode 0600)",
    )
    p.add_argument(
        "--partitions",
        type=int,
        default=int(os.environ.get("STAGELINE_PARTITIONS", "16")),
        help="fixed number of work partitions (default 16; must match the data in Redis)",
    )


def _read_secret_file(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as err:
        raise CliError(f"{what} file {path}: {err.strerror or err}", EXIT_USAGE) from None


def _resolve_secrets(a: argparse.Namespace, argv: Sequence[str]) -> None:
    """Secrets given as files are read here; ones on the command line get a warning."""
    if getattr(a, "redis_url_file", None):
        a.redis_url = _read_secret_file(a.redis_url_file, "--redis-url-file") or None
    elif any(x == "--redis-url" or x.startswith("--redis-url=") for x in argv):
        from urllib.parse import urlsplit

        if a.redis_url and urlsplit(a.redis_url).password:
            logging.getLogger("stageline").warning(
                "the Redis password is on the command line (visible to other users while "
                "stageline starts); use $%s or --redis-url-file",
                ENV_URL,
            )
    keys_file = getattr(a, "access_keys_file", None)
    if keys_file:
        text = _read_secret_file(keys_file, "--access-keys-file")
        a.access_key = [*a.access_key, *(line for line in text.splitlines() if line.strip())]


def _hide_process_title(command: str) -> None:
    """Replace the command line shown in /proc/<pid>/cmdline (and ps) by ``stageline <cmd>``,
    and make the process non-dumpable, so nothing it was started with is readable there."""
    from workers.runners.isolation import harden_process

    try:
        import setproctitle

        setproctitle.setproctitle(f"stageline {command}")
    except ImportError:  # pragma: no cover - a declared dependency
        pass
    harden_process()


def _action_args(p: argparse.ArgumentParser) -> None:
    from workers.runners.isolation import DEFAULT_ACTION_USER

    p.add_argument(
        "--action-user",
        default=os.environ.get("STAGELINE_ACTION_USER", DEFAULT_ACTION_USER),
        metavar="USER",
        help="when running as root, run actions as this unprivileged user "
        f"(default {DEFAULT_ACTION_USER}; 'root' to opt out; ignored when not root)",
    )
    p.add_argument(
        "--action-workdir",
        default=os.environ.get("STAGELINE_ACTION_WORKDIR") or None,
        metavar="DIR",
        help="where actions' private workspaces are made (default: the system temp dir)",
    )
    p.add_argument(
        "--log-max-lines",
        type=int,
        default=20_000,
        metavar="N",
        help="lines kept per action log; older ones are dropped (default 20000)",
    )
    p.add_argument(
        "--action-runtime",
        choices=["process", "docker"],
        default=os.environ.get("STAGELINE_ACTION_RUNTIME", "process"),
        help="run each action as a process of this host (default) or in a fresh container",
    )
    p.add_argument(
        "--action-image",
        default=os.environ.get("STAGELINE_ACTION_IMAGE") or None,
        metavar="IMAGE",
        help="docker runtime: the default image (an action's configuration.Image overrides it)",
    )
    p.add_argument(
        "--action-network",
        default="none",
        metavar="NETWORK",
        help="docker runtime: the containers' network (default none: no route to Redis or "
        "anything else)",
    )
    p.add_argument(
        "--container-cli",
        default="docker",
        metavar="PATH",
        help="docker runtime: the docker-compatible CLI (docker, podman)",
    )
    p.add_argument(
        "--action-timeout",
        type=int,
        default=60,
        metavar="MINUTES",
        help="time limit of an action that declares no timeoutInMinutes (default 60)",
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
        "or STAGELINE_ACCESS_KEYS=AKID:SECRET,...); with none, auth is off. A secret here "
        "shows in the process list: prefer the variable or --access-keys-file",
    )
    s.add_argument(
        "--access-keys-file",
        metavar="PATH",
        help="read AKID:SECRET pairs (one a line) from this file (keep it mode 0600)",
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
    _action_args(s)

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
    w.add_argument("--block-ms", type=int, default=1000, help="XREADGROUP BLOCK (ms)")
    w.add_argument(
        "--role",
        action="append",
        choices=["orchestrator", "runner"],
        help="run only this role (repeatable; default both)",
    )
    _action_args(w)

    r = sub.add_parser("retry", help="RetryStageExecution from the command line")
    _redis_arg(r)
    r.add_argument("pipeline")
    r.add_argument("stage")
    r.add_argument("execution_id")
    r.add_argument("--mode", choices=["FAILED_ACTIONS", "ALL_ACTIONS"], default="FAILED_ACTIONS")

    lg = sub.add_parser("logs", help="print the action logs of an execution (and follow them)")
    _redis_arg(lg)
    lg.add_argument("pipeline")
    lg.add_argument("--execution", metavar="ID", help="default: the latest execution with logs")
    lg.add_argument("--action", metavar="NAME", help="only this action's logs")
    lg.add_argument(
        "--follow", "-f", action="store_true", help="keep printing until the execution ends"
    )

    from app.audit.cli import add_audit_parser

    add_audit_parser(sub, _redis_arg)
    return p


def _worker_config(a: argparse.Namespace) -> WorkerConfig:
    from workers.runners.commands_action import RUNTIMES, ActionSettings

    if a.log_max_lines < 1 or a.action_timeout < 1:
        raise CliError("--log-max-lines and --action-timeout must be >= 1", EXIT_USAGE)
    actions = ActionSettings(
        user=a.action_user,
        workdir=a.action_workdir,
        log_max_lines=a.log_max_lines,
        default_timeout_minutes=a.action_timeout,
        runtime=a.action_runtime,
        image=a.action_image,
        network=a.action_network,
        container_cli=a.container_cli,
    )
    _check_action_user(actions.user)
    if actions.runtime not in RUNTIMES:
        raise CliError(f"--action-runtime must be one of {', '.join(RUNTIMES)}", EXIT_USAGE)
    if actions.runtime == "docker" and shutil.which(actions.container_cli) is None:
        raise CliError(f"--action-runtime docker: {actions.container_cli} not found", EXIT_USAGE)
    return WorkerConfig(
        actions=actions,
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
        roles=tuple(getattr(a, "role", None) or ("orchestrator", "runner")),
    )


def _check_action_user(name: str | None) -> None:
    from workers.runners.isolation import resolve_action_user

    try:
        user = resolve_action_user(name)
    except ValueError as err:
        raise CliError(f"--action-user: {err}", EXIT_USAGE) from None
    log = logging.getLogger("stageline")
    if os.geteuid() == 0 and user is None:
        log.warning(
            "actions run as root (--action-user %s): they can read this host's secrets", name
        )
    elif user is not None:
        log.info("actions run as %s (uid %d)", user.name, user.uid)


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


async def _logs(a: argparse.Namespace) -> None:
    from app.logs_cli import NoLogs, print_logs

    if not a.redis_url:
        raise CliError(f"stageline logs needs --redis-url (or ${ENV_URL})")
    redis = await connect(a.redis_url)
    try:
        await print_logs(
            redis,
            Keys(partitions=a.partitions),
            a.pipeline,
            execution=a.execution,
            action=a.action,
            follow=a.follow,
        )
    except NoLogs as err:
        raise CliError(str(err), EXIT_NOT_FOUND) from None
    finally:
        await redis.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if a.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    run: dict[str, Any] = {"serve": _serve, "worker": _worker, "retry": _retry, "logs": _logs}
    if a.command == "audit":
        from app.audit.cli import run_audit

        run["audit"] = run_audit
    try:
        _resolve_secrets(a, sys.argv[1:] if argv is None else argv)
        if argv is None and a.command in ("serve", "worker"):  # a real process, not a test
            _hide_process_title(a.command)
        result = anyio.run(run[a.command], a)
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
