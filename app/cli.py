"""The ``stageline`` command line.

Commands that act on pipelines (``retry``, ``status``, ``watch``) talk to the HTTP API
(``--endpoint-url``, default ``http://127.0.0.1:8080``; AWS credentials from the usual
environment/profile), so they work with the embedded server of ``stageline serve``. With
``--redis-url`` (or ``$STAGELINE_REDIS_URL``) and no ``--endpoint-url`` they go to Redis
directly. Without a Redis URL, ``serve`` runs on an embedded in-memory Redis.

Errors are one line on stderr and an exit code from :data:`EXIT_CODES` (the table in
docs/cli.md), never a traceback. Global options (``-v``, ``--endpoint-url``, ``--redis-url``
...) are accepted before or after the subcommand.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import string
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import msgspec

from app.domain.errors import DomainError
from app.store.connection import (
    ENV_URL,
    connect,
    default_replica_acks,
    default_url,
    store_keys,
)
from workers.config import WorkerConfig, default_name

# The one exit-code table (docs/cli.md). Every command uses these and only these.
EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and what it checked failed (retry --wait, audit verify)
EXIT_USAGE = 2  # bad arguments, input or configuration: fix the command line
EXIT_REFUSED = 3  # the service refused or did not find it (NotFound, NotRetryable, ...)
EXIT_UNAVAILABLE = 4  # cannot reach the API or Redis, or cannot listen on the port
EXIT_TIMEOUT = 5  # --wait gave up after --timeout
EXIT_INTERRUPTED = 130  # Ctrl-C

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_FAILED: "the command ran and what it checked failed (retry --wait: the stage "
    "failed; audit verify: differences found)",
    EXIT_USAGE: "usage error: bad arguments, input or configuration",
    EXIT_REFUSED: "refused or not found by the service (pipeline/stage/execution not found, "
    "stage not retryable, ...)",
    EXIT_UNAVAILABLE: "unavailable: cannot reach the API or Redis, or the port is in use",
    EXIT_TIMEOUT: "timed out waiting (--wait with --timeout)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}

DEFAULT_ENDPOINT = "http://127.0.0.1:8080"
ENV_ENDPOINT = "STAGELINE_ENDPOINT_URL"
# The embedded fakeredis cannot block on XREADGROUP, so its workers poll: this often.
EMBEDDED_POLL_INTERVAL_S = 0.2


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stageline")
    except PackageNotFoundError:  # running from a source tree
        return "unknown"


def os_user() -> str:
    """The OS user running the CLI ($USER, else the password database, else the uid)."""
    import getpass

    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return f"uid{os.getuid()}"


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _seconds(text: str) -> float:
    try:
        n = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {n}")
    return n


def _port(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {n}")
    return n


EXIT_NAMES = {
    EXIT_OK: "ok",
    EXIT_FAILED: "failed",
    EXIT_USAGE: "usage",
    EXIT_REFUSED: "refused/not found",
    EXIT_UNAVAILABLE: "unavailable",
    EXIT_TIMEOUT: "timed out",
    EXIT_INTERRUPTED: "interrupted",
}


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in --help, unless the help text already says it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS, []):
            return text
        return super()._get_help_string(action) or text


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (``stageline: <problem> (see ... --help)``)."""

    def error(self, message: str) -> Any:
        print(f"stageline: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


# --- option groups (shared by the subcommands) ---------------------------------------------


def _global_args(p: argparse.ArgumentParser, *, top: bool) -> None:
    # On subparsers the default is SUPPRESS, so `stageline -v serve` is not undone by serve.
    default: Any = False if top else argparse.SUPPRESS
    p.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logging")


def _replica_acks_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--min-replica-acks",
        type=_non_negative_int,
        default=os.environ.get("STAGELINE_MIN_REPLICA_ACKS") or None,  # parsed by type
        metavar="N",
        help="acknowledge an append only once N replicas have it (WAIT); default 1 when "
        "the Redis (every cluster master) has replicas, else 0",
    )


def _retention_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--idempotency-window",
        type=_seconds,
        default=86_400.0,
        metavar="SECONDS",
        help="how long an SDK invocation id is remembered (a retry within it is applied "
        "once); default 86400 (24 h)",
    )


def _non_negative_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {n}")
    return n


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
        type=_positive_int,
        default=os.environ.get("STAGELINE_PARTITIONS") or None,  # a string: parsed by type
        help="number of work partitions of a NEW store (default 128; $STAGELINE_PARTITIONS); "
        "a store keeps the count recorded at its first start (a different one is refused)",
    )


_USER_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "+=,.@_-")


def _audit_key_arg(p: argparse.ArgumentParser) -> None:
    from app.audit.keyed import ENV_KEY_FILE, default_key_file

    p.add_argument(
        "--audit-key-file",
        default=default_key_file(),
        metavar="FILE",
        help="file holding the audit key (at least 32 bytes; Redis never sees it): new events "
        f"get HMAC-SHA256 audit tags (or ${ENV_KEY_FILE}; see docs/audit.md)",
    )


def _audit_key(a: argparse.Namespace) -> bytes | None:
    """The audit key of --audit-key-file (or $STAGELINE_AUDIT_KEY_FILE), None when unset; a
    bad file is a one-line usage error that never shows the key."""
    from app.audit.keyed import AuditKeyError, default_key_file, load_audit_key

    path = getattr(a, "audit_key_file", None) or default_key_file()
    if not path:
        return None
    try:
        return load_audit_key(path)
    except AuditKeyError as err:
        raise CliError(str(err), EXIT_USAGE) from None


def _log_audit_key(key: bytes | None) -> None:
    from app.audit.keyed import key_id

    if key is not None:  # the key's public id, never the key
        logging.getLogger("stageline").warning("audit tags on (key id %s)", key_id(key))


def _parse_key(entry: str, where: str) -> tuple[str, str, str | None]:
    """``AKID:SECRET[:NAME]`` -> (akid, secret, name)."""
    parts = entry.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        shown = parts[0] if parts and parts[0] else "?"
        raise CliError(
            f"{where}: access key {shown!r}: expected ACCESS_KEY_ID:SECRET[:NAME]", EXIT_USAGE
        )
    name = parts[2] if len(parts) == 3 else None
    if name is not None and not set(name) <= _USER_NAME_CHARS:
        raise CliError(
            f"{where}: access key {parts[0]!r}: user name {name!r} may only use letters, "
            "digits and +=,.@_-",
            EXIT_USAGE,
        )
    return parts[0], parts[1], name


def _parse_access_keys(
    values: Sequence[str], files: Sequence[str] = ()
) -> tuple[dict[str, str], dict[str, str]]:
    """Access keys from ``--access-key`` values and keys files: (akid -> secret, akid -> name).

    A keys file has one ``ACCESS_KEY_ID:SECRET[:NAME]`` per line; blank lines and lines
    starting with ``#`` are ignored. A key without a name is recorded under its key id.
    """
    creds: dict[str, str] = {}
    names: dict[str, str] = {}

    def add(entry: str, where: str) -> None:
        akid, secret, name = _parse_key(entry, where)
        if akid in creds and creds[akid] != secret:
            raise CliError(f"{where}: access key {akid!r} is given twice", EXIT_USAGE)
        creds[akid] = secret
        if name is not None:
            names[akid] = name

    for v in values:
        for pair in v.split(","):
            if pair.strip():
                add(pair.strip(), "--access-key")
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as err:
            raise CliError(f"--access-keys-file {path}: {err.strerror}", EXIT_USAGE) from None
        for n, line in enumerate(lines, 1):
            line = line.strip()
            if line and not line.startswith("#"):
                add(line, f"{path}:{n}")
    return creds, names


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
    p.add_argument(
        "--artifact-dir",
        default=None,
        metavar="DIR",
        help="the local artifact store: where actions' artifacts are kept as zip files "
        "(default: $STAGELINE_ARTIFACT_DIR, else <temp dir>/stageline-artifacts; processes "
        "on several hosts need a shared directory or S3)",
    )
    p.add_argument(
        "--s3-endpoint",
        default=None,
        metavar="URL",
        help="an S3-compatible endpoint (default: $STAGELINE_S3_ENDPOINT): pipelines whose "
        "artifactStore is {type: S3, location: <bucket>} keep their artifacts there; "
        "credentials come from the standard AWS environment or credentials file",
    )


def _api_args(p: argparse.ArgumentParser) -> None:
    """How a command reaches the API: endpoint, region, profile (credentials as boto3 does)."""
    p.add_argument(
        "--endpoint-url",
        default=None,
        help=f"the stageline API (default: ${ENV_ENDPOINT}, else {DEFAULT_ENDPOINT}); "
        "without it, a --redis-url (or $STAGELINE_REDIS_URL) means direct Redis access",
    )
    p.add_argument(
        "--profile",
        default=None,
        help="AWS profile for credentials (default: $AWS_PROFILE / the default chain)",
    )
    p.add_argument(
        "--region",
        default=None,
        help="SigV4 region to sign for (default: $AWS_DEFAULT_REGION, else us-east-1)",
    )
    _redis_arg(p)


def build_parser() -> argparse.ArgumentParser:
    fmt = _Formatter
    p = _Parser(
        prog="stageline",
        description="Event-sourced pipeline engine with CodePipeline's RetryStageExecution. "
        "Exit codes: "
        + ", ".join(f"{k} {v}" for k, v in EXIT_NAMES.items())
        + " (docs/cli.md).",
        formatter_class=fmt,
    )
    _global_args(p, top=True)
    p.add_argument("--version", action="version", version=f"stageline {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        c: argparse.ArgumentParser = sub.add_parser(
            name, help=help, description=help, formatter_class=fmt
        )
        _global_args(c, top=False)
        return c

    s = command("serve", "run the CodePipeline-compatible HTTP API (+ workers)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on")
    s.add_argument("--port", type=_port, default=8080, help="port to listen on")
    _redis_arg(s)
    _replica_acks_arg(s)
    _retention_arg(s)
    s.add_argument("--no-workers", action="store_true", help="API only; run workers apart")
    _audit_key_arg(s)
    s.add_argument(
        "--webhook-base-url",
        default=os.environ.get("STAGELINE_WEBHOOK_BASE_URL"),
        help="base of the webhook URLs PutWebhook returns, e.g. https://ci.example.com "
        "(env STAGELINE_WEBHOOK_BASE_URL; default: http://<the request's Host>)",
    )
    s.add_argument(
        "--trigger-secret-file",
        default=os.environ.get("STAGELINE_TRIGGER_SECRET_FILE"),
        help="file holding the secret GitHub signs V2 trigger deliveries with "
        "(POST /triggers/<pipeline>; env STAGELINE_TRIGGER_SECRET_FILE; default: off)",
    )
    s.add_argument(
        "--access-key",
        action="append",
        default=[os.environ["STAGELINE_ACCESS_KEYS"]]
        if os.environ.get("STAGELINE_ACCESS_KEYS")
        else [],
        metavar="AKID:SECRET[:NAME]",
        help="accept SigV4 requests signed with this key, recorded as user NAME (repeatable; "
        "default: $STAGELINE_ACCESS_KEYS=AKID:SECRET,...; visible in ps: prefer "
        "--access-keys-file); with no key at all, auth is off",
    )
    s.add_argument(
        "--access-keys-file",
        action="append",
        default=[os.environ["STAGELINE_ACCESS_KEYS_FILE"]]
        if os.environ.get("STAGELINE_ACCESS_KEYS_FILE")
        else [],
        metavar="FILE",
        help="file of ACCESS_KEY_ID:SECRET[:NAME] lines (repeatable; "
        "default: $STAGELINE_ACCESS_KEYS_FILE)",
    )
    s.add_argument(
        "--region",
        default=os.environ.get("STAGELINE_REGION", "us-east-1"),
        help="the region signatures must be scoped to (default us-east-1)",
    )
    s.add_argument(
        "--account-id",
        default=os.environ.get("STAGELINE_ACCOUNT_ID", "000000000000"),
        help="account id in the principals' ARNs (default 000000000000)",
    )
    s.add_argument(
        "--max-clock-skew",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how far a request's X-Amz-Date may be from the server clock (default 300)",
    )
    s.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback host without access keys"
    )
    s.add_argument(
        "--aws-strict",
        action="store_true",
        help="also enforce AWS's source-stage rules (>= 2 stages, source actions only and "
        "always in the first stage, an artifactStore)",
    )
    s.add_argument(
        "--max-connections",
        type=int,
        default=1000,
        metavar="N",
        help="open connections at most (default 1000, and always below the descriptor limit); "
        "over it the oldest idle or half-sent connection is closed",
    )
    s.add_argument(
        "--max-in-flight",
        type=int,
        default=256,
        metavar="N",
        help="requests handled at once (default 256); over it: 503 ThrottlingException",
    )
    s.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="time to send a request's headers (default 10)",
    )
    s.add_argument(
        "--body-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="time to send a request's body after its headers (default 30)",
    )
    s.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="idle time allowed between requests on one connection (default 5)",
    )
    s.add_argument("--concurrency", type=_positive_int, default=8, help="actions run at once")
    s.add_argument(
        "--max-concurrent-executions",
        type=_positive_int,
        default=50,
        metavar="N",
        help="limit of active executions per pipeline, fixed when a pipeline is created",
    )
    s.add_argument(
        "--access-log",
        choices=["text", "json", "off"],
        default=os.environ.get("STAGELINE_ACCESS_LOG", "text"),
        help="one line per request on stderr (or $STAGELINE_ACCESS_LOG)",
    )
    _action_args(s)

    w = command("worker", "run a worker process (orchestrator + action runner)")
    _redis_arg(w)
    _audit_key_arg(w)
    _replica_acks_arg(w)
    _retention_arg(w)
    w.add_argument("--concurrency", type=_positive_int, default=8, help="actions run at once")
    w.add_argument(
        "--name",
        default=os.environ.get("STAGELINE_WORKER_NAME"),
        help="consumer name, unique per worker and stable across restarts "
        "(or $STAGELINE_WORKER_NAME; default host-pid)",
    )
    w.add_argument("--lease-ttl", type=_seconds, default=30.0, help="seconds; renewed every third")
    w.add_argument("--claim-idle", type=_seconds, default=30.0, help="seconds before takeover")
    w.add_argument("--shutdown-grace", type=_seconds, default=30.0, help="seconds")
    w.add_argument("--claim-every", type=_seconds, default=5.0, help="seconds between takeovers")
    w.add_argument("--reap-every", type=_seconds, default=1.0, help="seconds between lease reaps")
    w.add_argument("--snapshot-every", type=_seconds, default=2.0, help="seconds between snapshots")
    w.add_argument(
        "--max-deliveries", type=_positive_int, default=5, help="then dead-letter the entry"
    )
    w.add_argument(
        "--partition-lease",
        type=_seconds,
        default=10.0,
        help="seconds a partition's owner holds it without renewing: another process takes "
        "over a dead owner's partitions this long after its last renewal",
    )
    w.add_argument("--block-ms", type=_positive_int, default=1000, help="XREADGROUP BLOCK (ms)")
    w.add_argument(
        "--role",
        action="append",
        choices=["orchestrator", "runner"],
        help="run only this role (repeatable; default both)",
    )
    w.add_argument(
        "--metrics-port",
        type=_port,
        default=None,
        help="serve Prometheus /metrics (and /health) on this port (default: off)",
    )
    w.add_argument(
        "--metrics-host", default="127.0.0.1", help="address for --metrics-port to listen on"
    )
    _action_args(w)

    r = command("retry", "RetryStageExecution: retry a stage of an execution")
    _api_args(r)
    r.add_argument("pipeline", help="pipeline name")
    r.add_argument("stage", help="stage to retry")
    r.add_argument("execution_id", help="the pipeline execution whose stage failed")
    r.add_argument(
        "--mode",
        choices=["FAILED_ACTIONS", "ALL_ACTIONS"],
        default="FAILED_ACTIONS",
        help="retry the failed actions only, or the whole stage",
    )
    r.add_argument(
        "--wait",
        action="store_true",
        help="wait for the stage to end; exit 1 if it failed (see the exit codes)",
    )
    r.add_argument(
        "--timeout", type=_seconds, default=600.0, help="with --wait: give up after (exit 5)"
    )

    st = command("status", "workers alive, partitions, consumer lag, pending, dead letters")
    _api_args(st)
    st.add_argument("--json", action="store_true", help="print the status document as JSON")

    wa = command("watch", "live terminal view of a pipeline's stages and actions")
    _api_args(wa)
    wa.add_argument("pipeline", help="pipeline name")
    wa.add_argument(
        "--once",
        "--no-live",
        dest="once",
        action="store_true",
        help="print the view once and exit (non-interactive, for scripts and tests)",
    )
    wa.add_argument("--interval", type=_seconds, default=1.0, help="seconds between refreshes")

    m = sub.add_parser(
        "migrate",
        help="convert a store of the first layout (see docs/operations.md, Migration)",
        description="Convert a Redis of the first store layout to the current one, in place.",
    )
    m.add_argument("--redis-url", default=default_url(), help=f"default ${ENV_URL}")
    m.add_argument(
        "--force", action="store_true", help="run even though stageline processes look active"
    )

    lg = command("logs", "print the action logs of an execution (and follow them)")
    _api_args(lg)
    lg.add_argument("pipeline")
    lg.add_argument("--execution", metavar="ID", help="default: the latest execution with logs")
    lg.add_argument("--action", metavar="NAME", help="only this action's logs")
    lg.add_argument(
        "--follow", "-f", action="store_true", help="keep printing until the execution ends"
    )

    from app.audit.cli import add_audit_parser

    def audit_common(ap: argparse.ArgumentParser) -> None:
        _global_args(ap, top=False)
        ap.formatter_class = fmt
        _redis_arg(ap)

    add_audit_parser(sub, audit_common)
    return p


def _worker_config(a: argparse.Namespace) -> WorkerConfig:
    from app.artifacts import ArtifactSettings
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
        artifacts=ArtifactSettings.from_env(dir=a.artifact_dir, s3_endpoint=a.s3_endpoint),
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
        idempotency_window_s=getattr(a, "idempotency_window", 86_400.0),
        max_deliveries=getattr(a, "max_deliveries", 5),
        block_ms=getattr(a, "block_ms", 1000),
        partition_lease_s=getattr(a, "partition_lease", 10.0),
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
        log.debug("actions run as %s (uid %d)", user.name, user.uid)


async def _worker(a: argparse.Namespace) -> None:
    from app.engine import Engine
    from workers.service import Worker

    if not a.redis_url:
        raise CliError(
            f"worker needs --redis-url (or ${ENV_URL}): workers in other processes "
            "cannot share the embedded Redis; use 'stageline serve' for a single process"
        )
    key = _audit_key(a)
    _log_audit_key(key)
    redis = await connect(a.redis_url)
    engine = Engine(redis, await store_keys(redis, a.partitions), audit_key=key)
    engine.store.min_replica_acks = await default_replica_acks(redis, a.min_replica_acks)
    worker = Worker(engine, _worker_config(a))
    logging.getLogger("stageline").warning(
        "worker %s on %s", worker.config.name, a.redis_url.split("@")[-1]
    )
    if not await _until_redis_answers(engine):
        await redis.aclose()
        return
    if a.metrics_port is None:
        await worker.run_until_signalled()
        return
    from app.metrics import serve_worker_metrics

    async with anyio.create_task_group() as tg:
        await tg.start(serve_worker_metrics, engine, a.metrics_host, a.metrics_port)
        await worker.run_until_signalled()
        tg.cancel_scope.cancel()


def _check_port_free(host: str, port: int) -> None:
    """Fail before anything starts when the port is taken (uvicorn would first say 'startup
    complete')."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise CliError(f"cannot listen on {host}: {err.strerror}", EXIT_USAGE) from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as err:
            raise CliError(
                f"cannot listen on {host}:{port}: {err.strerror or err} "
                "(another server running? pick another --port)",
                EXIT_UNAVAILABLE,
            ) from None


async def _until_redis_answers(engine: Any) -> bool:
    """Start the engine once Redis answers (backing off, quietly); False on SIGINT/SIGTERM.

    A worker started before its Redis (or pointed at a wrong URL) waits here, logging at a
    bounded rate, and the first signal ends it at once.
    """
    import signal

    from workers.backoff import retry_until

    stop = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def signals() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
                async for sig in received:
                    logging.getLogger("stageline.worker").warning(
                        "%s while waiting for Redis: stopping", signal.Signals(sig).name
                    )
                    stop.set()
                    return

        tg.start_soon(signals)
        ok = await retry_until(engine.start, "start", stop)
        tg.cancel_scope.cancel()
    return ok


def _trigger_secret(path: str | None) -> bytes | None:
    """The V2 trigger secret of --trigger-secret-file (surrounding whitespace stripped)."""
    if not path:
        return None
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as exc:
        raise CliError(f"cannot read --trigger-secret-file {path}: {exc.strerror}") from None
    if not secret:
        raise CliError(f"--trigger-secret-file {path} is empty", EXIT_USAGE)
    return secret


async def _serve(a: argparse.Namespace) -> None:
    from dataclasses import replace

    from app.api.limits import ConnectionLimits
    from app.api.server import ServeConfig, check_exposure, serve

    creds, names = _parse_access_keys(a.access_key, a.access_keys_file)
    for flag in ("max_clock_skew", "header_timeout", "body_timeout", "keep_alive_timeout",
                 "max_connections", "max_in_flight"):  # fmt: skip
        if getattr(a, flag) <= 0:
            raise CliError(f"--{flag.replace('_', '-')} must be positive", EXIT_USAGE)
    limits = ConnectionLimits(
        header_timeout_s=a.header_timeout,
        body_timeout_s=a.body_timeout,
        keep_alive_s=a.keep_alive_timeout,
        max_connections=a.max_connections,
        max_in_flight=a.max_in_flight,
    )
    worker = _worker_config(a)
    audit_key = _audit_key(a)
    _log_audit_key(audit_key)
    if not a.redis_url:
        import importlib.util

        if importlib.util.find_spec("fakeredis") is None:  # e.g. the container image
            raise CliError(
                f"no --redis-url (or ${ENV_URL}) and the embedded Redis is not installed "
                "here (pip install 'fakeredis[lua]'): give a Redis URL"
            )
        # The embedded fakeredis cannot block: workers poll, gently (an idle server takes
        # < 2% of a core). One process: a lost lease means this process died, so reaping
        # can be lazy.
        worker = replace(
            worker,
            block_ms=None,
            poll_interval_s=EMBEDDED_POLL_INTERVAL_S,
            reap_every_s=max(worker.reap_every_s, 5.0),
        )
    cfg = ServeConfig(
        host=a.host,
        port=a.port,
        redis_url=a.redis_url,
        workers=not a.no_workers,
        credentials=creds,
        principals=names,
        region=a.region,
        account_id=a.account_id,
        max_clock_skew_s=a.max_clock_skew,
        limits=limits,
        insecure=a.insecure,
        aws_strict=a.aws_strict,
        partitions=a.partitions,
        min_replica_acks=a.min_replica_acks,
        max_concurrent_executions=a.max_concurrent_executions,
        worker=worker,
        access_log=None if a.access_log == "off" else a.access_log,
        audit_key=audit_key,
        webhook_base_url=a.webhook_base_url,
        trigger_secret=_trigger_secret(a.trigger_secret_file),
    )
    try:
        check_exposure(cfg)
    except SystemExit as err:
        raise CliError(str(err.code).removeprefix("stageline: "), EXIT_USAGE) from None
    _check_port_free(a.host, a.port)
    try:
        await serve(cfg)
    except SystemExit as err:  # e.g. "the API could not start on HOST:PORT" (uvicorn said why)
        if not isinstance(err.code, str):
            raise
        raise CliError(err.code.removeprefix("stageline: "), EXIT_UNAVAILABLE) from None


# --- commands that act on pipelines: API or direct Redis -----------------------------------


def _direct(a: argparse.Namespace) -> bool:
    """Direct Redis access: a Redis URL is given (flag or env) and no --endpoint-url."""
    return bool(a.redis_url) and a.endpoint_url is None


async def _retry(a: argparse.Namespace) -> int:
    from app.cli_client import api_client, retry_via_api, wait_for_stage

    if _direct(a):
        from app import queries as q
        from app.engine import Engine
        from app.repository import Origin

        key = _audit_key(a)  # $STAGELINE_AUDIT_KEY_FILE: the event it writes is tagged too
        redis = await connect(a.redis_url)
        try:
            engine = Engine(redis, await store_keys(redis, a.partitions), audit_key=key)
            await engine.start()

            async def state() -> dict[str, Any]:
                return q.get_pipeline_state(await engine.pipeline(a.pipeline))

            before = await state() if a.wait else None
            eid = await engine.retry_stage(
                a.pipeline, a.stage, a.execution_id, a.mode, Origin(actor=f"cli:{os_user()}")
            )
            print(json.dumps({"pipelineExecutionId": eid}), flush=True)
            if before is None:
                return EXIT_OK
            return await wait_for_stage(state, before, a.stage, eid, a.timeout)
        finally:
            await redis.aclose()
    api = api_client(a)
    api_state = api.state_async(a.pipeline)
    before_api = await api_state() if a.wait else None
    eid = await anyio.to_thread.run_sync(retry_via_api, api, a)
    print(json.dumps({"pipelineExecutionId": eid}), flush=True)
    if before_api is None:
        return EXIT_OK
    return await wait_for_stage(api_state, before_api, a.stage, eid, a.timeout)


async def _status(a: argparse.Namespace) -> int:
    from app.cli_client import api_client, print_status

    if _direct(a):
        from app.status import collect_status

        redis = await connect(a.redis_url)
        try:
            doc = await collect_status(redis, await store_keys(redis, a.partitions))
        finally:
            await redis.aclose()
    else:
        doc = await anyio.to_thread.run_sync(api_client(a).status)
    print_status(doc, as_json=a.json)
    return EXIT_OK


async def _watch(a: argparse.Namespace) -> int:
    from app.cli_client import api_client, watch

    if _direct(a):
        from app import queries as q
        from app.engine import Engine

        redis = await connect(a.redis_url)
        try:
            engine = Engine(redis, await store_keys(redis, a.partitions))

            async def state() -> dict[str, Any]:
                return q.get_pipeline_state(await engine.pipeline(a.pipeline))

            return await watch(state, a.pipeline, once=a.once, interval=a.interval)
        finally:
            await redis.aclose()
    return await watch(
        api_client(a).state_async(a.pipeline), a.pipeline, once=a.once, interval=a.interval
    )


# --- main -------------------------------------------------------------------------------


def _audit_code(message: str) -> int:
    if "has no event log" in message or "has no execution" in message:
        return EXIT_REFUSED  # not found
    if message.startswith("refused"):
        return EXIT_REFUSED
    return EXIT_USAGE


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
    (exit 3, one line; a Redis not reachable yet is left to the command's own retries).
    A bad audit key file is refused first (exit 2), before Redis is touched."""
    if a.command in ("serve", "worker"):
        _audit_key(a)
    if a.command in ("serve", "worker", "retry") and a.redis_url:
        from redis.exceptions import RedisError

        from app.migrate import MigrationError, require_layout

        try:
            redis = await connect(a.redis_url)
            try:
                await require_layout(redis, await store_keys(redis, a.partitions))
            finally:
                await redis.aclose()
        except MigrationError as err:
            # a wrong --partitions is the command line's mistake; an unmigrated store the data's
            code = EXIT_USAGE if "partitions" in str(err) else EXIT_REFUSED
            raise CliError(str(err), code) from None
        except (RedisError, OSError):
            pass
    return await run(a)


async def _logs(a: argparse.Namespace) -> None:
    from app.logs_cli import NoLogs, print_logs, print_logs_via_api

    if not _direct(a):
        from botocore.exceptions import ClientError, EndpointConnectionError

        from app.cli_client import ApiError, api_client

        api = api_client(a)
        try:
            await anyio.to_thread.run_sync(
                lambda: print_logs_via_api(
                    api.client,
                    api.logs,
                    a.pipeline,
                    execution=a.execution,
                    action=a.action,
                    follow=a.follow,
                )
            )
        except NoLogs as err:
            raise CliError(str(err), EXIT_REFUSED) from None
        except ClientError as err:
            e = err.response.get("Error", {})
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            code = EXIT_UNAVAILABLE if status >= 500 else EXIT_REFUSED
            raise ApiError(f"{e.get('Code', 'Error')}: {e.get('Message', '')}", code) from None
        except EndpointConnectionError:
            raise ApiError(
                f"cannot reach the API at {api.endpoint} (is 'stageline serve' running? "
                "set --endpoint-url)",
                EXIT_UNAVAILABLE,
            ) from None
        return
    redis = await connect(a.redis_url)
    try:
        await print_logs(
            redis,
            await store_keys(redis, a.partitions),
            a.pipeline,
            execution=a.execution,
            action=a.action,
            follow=a.follow,
        )
    except NoLogs as err:
        raise CliError(str(err), EXIT_REFUSED) from None
    finally:
        await redis.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        a = parser.parse_args(argv)
    except SystemExit as err:  # argparse printed usage + one error line (or --help/--version)
        return int(err.code or 0) if not isinstance(err.code, str) else EXIT_USAGE
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    verbose = getattr(a, "verbose", False)
    logging.getLogger("stageline").setLevel(logging.DEBUG if verbose else logging.INFO)
    run: dict[str, Callable[[argparse.Namespace], Any]] = {
        "serve": _serve,
        "worker": _worker,
        "retry": _retry,
        "status": _status,
        "watch": _watch,
        "migrate": _migrate,
        "logs": _logs,
    }
    if a.command == "audit":
        from app.audit.cli import run_audit

        async def audit(ns: argparse.Namespace) -> int:
            try:
                return await run_audit(ns)
            except CliError as err:
                message = str(err).removeprefix("stageline ")  # "stageline audit needs ..."
                raise CliError(message, _audit_code(message)) from None

        run["audit"] = audit
    try:
        _resolve_secrets(a, sys.argv[1:] if argv is None else argv)
        if argv is None and a.command in ("serve", "worker"):  # a real process, not a test
            _hide_process_title(a.command)
        result = anyio.run(_on_checked_store, a, run[a.command])
        return int(result) if isinstance(result, int) else EXIT_OK
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BaseException as err:  # one line, never a traceback
        code, message = describe_error(err)
        print(f"stageline: {message}", file=sys.stderr)
        return code


def describe_error(err: BaseException) -> tuple[int, str]:
    """(exit code, one-line message) for anything a command raised."""
    from app.cli_client import ApiError

    if isinstance(err, BaseExceptionGroup) and len(err.exceptions) == 1:
        return describe_error(err.exceptions[0])
    if isinstance(err, DomainError):
        return EXIT_REFUSED, f"{err.type_name}: {err.message}"
    if isinstance(err, ApiError):
        return err.code, str(err)
    if isinstance(err, CliError):
        return err.code, str(err).removeprefix("stageline: ")
    if isinstance(err, msgspec.ValidationError):
        return EXIT_USAGE, f"invalid input: {err}"
    if isinstance(err, SystemExit):
        if isinstance(err.code, str):
            return EXIT_USAGE, err.code.removeprefix("stageline: ")
        return int(err.code or 0), "exited"
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError

    if isinstance(err, RedisConnectionError | ConnectionError | TimeoutError):
        return EXIT_UNAVAILABLE, f"cannot reach Redis: {err}"
    if isinstance(err, RedisError):
        return EXIT_UNAVAILABLE, f"Redis: {err}"
    if isinstance(err, OSError):
        return EXIT_UNAVAILABLE, str(err)
    if isinstance(err, ValueError | RuntimeError):  # configuration mistakes (URL, partitions)
        return EXIT_USAGE, str(err)
    return EXIT_FAILED, f"internal error: {type(err).__name__}: {err}"


if __name__ == "__main__":
    sys.exit(main())
