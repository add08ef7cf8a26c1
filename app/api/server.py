"""``stageline serve``: the HTTP API (uvicorn) plus, unless disabled, in-process workers."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import signal
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import uvicorn
from redis.asyncio import Redis

from app.api.handlers import build_handlers
from app.api.limits import ConnectionLimits, protocol_class, quiet_accept_errors
from app.api.logs_handlers import build_logs_handlers
from app.api.replay import RedisReplayCache
from app.api.sigv4 import DEFAULT_MAX_SKEW_SECONDS, DEFAULT_REGION
from app.api.wire import DEFAULT_ACCOUNT, ASGIApp, build_app, principal_arn
from app.engine import Engine
from app.store.connection import connect, default_replica_acks, describe, store_keys
from workers.config import WorkerConfig
from workers.service import Worker

log = logging.getLogger("stageline.serve")


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    redis_url: str | None = None
    workers: bool = True
    credentials: Mapping[str, str] = field(default_factory=dict)  # access key id -> secret
    principals: Mapping[str, str] = field(default_factory=dict)  # access key id -> user name
    region: str = DEFAULT_REGION
    account_id: str = DEFAULT_ACCOUNT
    max_clock_skew_s: float = DEFAULT_MAX_SKEW_SECONDS
    insecure: bool = False
    aws_strict: bool = False  # AWS's source-stage rules on CreatePipeline/UpdatePipeline
    partitions: int | None = None  # None: the store's recorded count, or a new store's default
    min_replica_acks: int | None = None  # None: 1 when the Redis (every master) has replicas
    max_body_bytes: int = 1_048_576
    max_concurrent_executions: int = 50  # per pipeline, fixed when it is created
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    log_level: str = "info"
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    access_log: str | None = "text"  # one line per request: "text", "json" or None (off)
    audit_key: bytes | None = field(default=None, repr=False)  # tags new events (docs/audit.md)
    clock: Callable[[], float] | None = field(default=None, repr=False)  # tests: the engine's time
    webhook_base_url: str | None = None  # PutWebhook's url base; None: http://<Host header>
    trigger_secret: bytes | None = field(default=None, repr=False)  # POST /triggers/ HMAC key


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(cfg: ServeConfig) -> None:
    if not is_loopback(cfg.host) and not cfg.credentials and not cfg.insecure:
        raise SystemExit(
            f"stageline: refusing to listen on {cfg.host} without credentials; "
            "configure access keys (--access-key / STAGELINE_ACCESS_KEYS) or pass --insecure"
        )


def make_app(engine: Engine, cfg: ServeConfig) -> ASGIApp:
    redis: Redis = engine.redis

    async def healthy() -> bool:
        try:
            return bool(await redis.ping())
        except Exception:
            return False

    principals = {
        akid: principal_arn(cfg.principals.get(akid) or akid, cfg.account_id)
        for akid in cfg.credentials
    }
    api = build_app(
        build_handlers(
            engine,
            region=cfg.region,
            account=cfg.account_id,
            aws_strict=cfg.aws_strict,
            webhook_base_url=cfg.webhook_base_url,
        ),
        credentials=dict(cfg.credentials) or None,
        principals=principals,
        region=cfg.region,
        max_clock_skew=cfg.max_clock_skew_s,
        replay_cache=RedisReplayCache(redis),
        max_in_flight=cfg.limits.max_in_flight,
        health=healthy,
        max_body_bytes=cfg.max_body_bytes,
        extra_targets=build_logs_handlers(redis, engine.keys),
    )
    from app.console.mount import mount  # /console, /metrics, /status, access log
    from app.webhooks.receive import WebhookReceiver  # /webhooks/, /triggers/

    return mount(
        api,
        engine,
        credentials=dict(cfg.credentials) or None,
        principals=principals,
        region=cfg.region,
        max_clock_skew=cfg.max_clock_skew_s,
        access_log_format=cfg.access_log,
        webhooks=WebhookReceiver(
            engine,
            region=cfg.region,
            account=cfg.account_id,
            trigger_secret=cfg.trigger_secret,
            max_body_bytes=cfg.max_body_bytes,
        ),
    )


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: ``serve`` handles signals for API + workers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def serve(
    cfg: ServeConfig, *, task_status: Any = anyio.TASK_STATUS_IGNORED, signals: bool = True
) -> None:
    check_exposure(cfg)
    redis = await connect(cfg.redis_url)
    embedded = not cfg.redis_url
    worker_cfg = cfg.worker
    if embedded and worker_cfg.block_ms is not None:
        from dataclasses import replace

        worker_cfg = replace(worker_cfg, block_ms=None)  # fakeredis: poll, don't block
    engine = Engine(
        redis,
        await store_keys(redis, cfg.partitions, embedded=embedded),
        concurrency_limit=cfg.max_concurrent_executions,
        audit_key=cfg.audit_key,
    )
    if cfg.clock is not None:  # event times, DeploymentWindow rules (docs/pipelines.md)
        engine.repo.clock = cfg.clock
    engine.store.min_replica_acks = await default_replica_acks(redis, cfg.min_replica_acks)
    await engine.start()
    app = make_app(engine, cfg)
    import asyncio

    quiet_accept_errors(asyncio.get_running_loop())
    server = _Server(
        uvicorn.Config(
            app,
            host=cfg.host,
            port=cfg.port,
            lifespan="on",
            log_level=cfg.log_level,
            access_log=False,
            http=protocol_class(cfg.limits),
            backlog=cfg.limits.backlog,
            timeout_keep_alive=max(1, round(cfg.limits.keep_alive_s)),
        )
    )
    worker = Worker(engine, worker_cfg) if cfg.workers else None
    log.warning("stageline: Redis: %s", describe(cfg.redis_url))  # says so when in-memory
    log.warning(
        "stageline: API on http://%s:%d (auth %s), workers %s",
        cfg.host,
        cfg.port,
        "on" if cfg.credentials else "off",
        "in-process" if worker else "off (--no-workers)",
    )
    worker_done = anyio.Event()
    api_done = anyio.Event()
    started = False
    async with anyio.create_task_group() as tg:
        if signals:

            async def watch() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
                    count = 0
                    async for _ in received:
                        count += 1
                        server.should_exit = True
                        if worker is not None:
                            worker.stop(now=count > 1)
                        if count > 1:
                            server.force_exit = True

            tg.start_soon(watch)

        async def run_worker(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            try:
                if worker is not None:
                    await worker.run(task_status=task_status)
                else:
                    task_status.started()
            finally:
                worker_done.set()

        await tg.start(run_worker)

        async def api() -> None:
            try:
                await server.serve()
            except SystemExit:  # uvicorn's way to give up (cannot bind ...); it logged why
                log.error("stageline: the API server exited")
            finally:
                api_done.set()
                if worker is not None:
                    worker.stop()
                with anyio.CancelScope(shield=True):
                    await worker_done.wait()
                tg.cancel_scope.cancel()

        tg.start_soon(api)
        # Wait for uvicorn (not for the worker: with --no-workers that one is done at once).
        while not server.started:
            if api_done.is_set():
                break
            await anyio.sleep(0.01)
        if server.started:
            started = True
            task_status.started(server)
    with anyio.CancelScope(shield=True):
        await redis.aclose()
    if not started:  # raised outside the task group, so the CLI prints one line
        raise SystemExit(f"stageline: the API could not start on {cfg.host}:{cfg.port}")
