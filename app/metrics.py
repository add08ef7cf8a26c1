"""Prometheus metrics (``GET /metrics``, text format, via ``prometheus_client``).

Three sources, none of which needs the engine or the workers to be instrumented:

- the **API layer** (an ASGI middleware, :mod:`app.console.mount`): requests by operation
  and status, latency histograms;
- the **event streams** (:class:`app.console.feed.EventFeed`, which reads the partition
  dispatch streams): actions started/succeeded/failed/lost by kind, retries by mode and
  trigger, lease expiries, events by type. These are facts about the whole cluster, counted
  from when the process started (as any Prometheus counter);
- **Redis at scrape time**: consumer-group lag and pending entries per partition
  (``XINFO GROUPS``), dead letters (``XLEN`` of the dead-letter streams), workers alive
  (``XINFO CONSUMERS``), Redis round trip (``PING``).

``docs/operations.md`` lists every metric with suggested alerts. Each :class:`Metrics` has
its own registry (several servers can live in one test process).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

import anyio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from redis.asyncio import Redis

from app.console.feed import FeedItem
from app.domain import events as ev
from app.status import collect_status
from app.store.keys import Keys

log = logging.getLogger("stageline.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
_KINDS_REMEMBERED = 100_000  # action execution id -> kind, for the outcome events


class Metrics:
    def __init__(self, *, events: bool = True) -> None:
        self.registry = r = CollectorRegistry()
        self.events = events
        self.api_requests = Counter(
            "stageline_api_requests",
            "HTTP requests by CodePipeline operation (or path) and HTTP status",
            ["operation", "status"],
            registry=r,
        )
        self.api_latency = Histogram(
            "stageline_api_request_duration_seconds",
            "HTTP request latency by operation (or path)",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.redis_rtt = Histogram(
            "stageline_redis_round_trip_seconds",
            "Redis PING round trip, measured at scrape time and every 10 s",
            buckets=REDIS_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "stageline_consumer_group_lag",
            "entries in a partition stream not yet delivered to the group",
            ["partition", "group"],
            registry=r,
        )
        self.pending = Gauge(
            "stageline_consumer_group_pending",
            "entries delivered to the group and not acknowledged yet",
            ["partition", "group"],
            registry=r,
        )
        self.dead = Gauge(
            "stageline_dead_letters",
            "entries parked in a partition's dead-letter stream",
            ["partition"],
            registry=r,
        )
        self.workers_alive = Gauge(
            "stageline_workers_alive",
            "worker consumers that read a partition stream within 15 s, by group",
            ["group"],
            registry=r,
        )
        self.scrape_errors = Counter(
            "stageline_scrape_errors",
            "scrapes whose Redis part failed (Redis unavailable)",
            registry=r,
        )
        if events:
            self.actions_started = Counter(
                "stageline_actions_started",
                "action executions started (scheduled), by kind",
                ["kind"],
                registry=r,
            )
            self.actions_succeeded = Counter(
                "stageline_actions_succeeded", "action executions succeeded", ["kind"], registry=r
            )
            self.actions_failed = Counter(
                "stageline_actions_failed",
                "action executions failed (including lost ones)",
                ["kind"],
                registry=r,
            )
            self.actions_lost = Counter(
                "stageline_actions_lost",
                "action executions failed as WorkerLost (worker died or handed back)",
                ["kind"],
                registry=r,
            )
            self.lease_expiries = Counter(
                "stageline_lease_expiries",
                "running actions whose lease expired and were reaped",
                registry=r,
            )
            self.retries = Counter(
                "stageline_stage_retries",
                "stage retries started, by mode and trigger",
                ["mode", "trigger"],
                registry=r,
            )
            self.retries_rejected = Counter(
                "stageline_stage_retries_rejected",
                "accepted retries rejected when applied",
                registry=r,
            )
            self.events_seen = Counter(
                "stageline_events", "events appended, by type", ["type"], registry=r
            )
        self._kinds: OrderedDict[str, str] = OrderedDict()

    # --- event stream -------------------------------------------------------------------------

    def fold(self, items: list[FeedItem]) -> None:
        if not self.events:
            return
        for item in items:
            self.events_seen.labels(item.type).inc()
            env = item.envelope
            if env is None:
                continue
            e = env.event
            if isinstance(e, ev.ActionExecutionScheduled):
                self._kinds[e.actionExecutionId] = e.kind
                if len(self._kinds) > _KINDS_REMEMBERED:
                    self._kinds.popitem(last=False)
                self.actions_started.labels(e.kind).inc()
            elif isinstance(e, ev.ActionExecutionSucceeded):
                self.actions_succeeded.labels(self._kind(e.actionExecutionId)).inc()
            elif isinstance(e, ev.ActionExecutionFailed):
                kind = self._kind(e.actionExecutionId)
                self.actions_failed.labels(kind).inc()
                if e.errorCode == ev.WORKER_LOST:
                    self.actions_lost.labels(kind).inc()
                    if "lease" in e.message:
                        self.lease_expiries.inc()
            elif isinstance(e, ev.StageRetryStarted):
                self.retries.labels(e.retryMode, e.trigger).inc()
            elif isinstance(e, ev.StageRetryRejected):
                self.retries_rejected.inc()

    def _kind(self, action_execution_id: str) -> str:
        return self._kinds.get(action_execution_id, "unknown")

    # --- API ----------------------------------------------------------------------------------

    def observe_request(self, operation: str, status: int, seconds: float) -> None:
        self.api_requests.labels(operation, str(status)).inc()
        self.api_latency.labels(operation).observe(seconds)

    # --- scrape -------------------------------------------------------------------------------

    async def refresh(self, redis: Redis, keys: Keys) -> None:
        """Set the scrape-time gauges from Redis (one pipelined round trip + a PING)."""
        try:
            with anyio.fail_after(5):
                doc = await collect_status(redis, keys)
        except Exception as err:
            log.warning("metrics: Redis unavailable: %s", err)
            self.scrape_errors.inc()
            return
        self.redis_rtt.observe(doc["redisRoundTripMs"] / 1000)
        for p in doc["partitions_detail"]:
            part = str(p["partition"])
            self.dead.labels(part).set(p["deadLetters"])
            for g in p["groups"]:
                self.lag.labels(part, g["group"]).set(g["lag"] or 0)
                self.pending.labels(part, g["group"]).set(g["pending"])
        alive: dict[str, int] = {"orchestrators": 0, "runners": 0}
        for w in doc["workers"]:
            if w["alive"]:
                alive[w["group"]] = alive.get(w["group"], 0) + 1
        for group, n in alive.items():
            self.workers_alive.labels(group).set(n)

    async def render(self, redis: Redis, keys: Keys) -> bytes:
        await self.refresh(redis, keys)
        return bytes(generate_latest(self.registry))

    async def ping_every(self, redis: Redis, seconds: float = 10.0) -> None:
        while True:
            try:
                t0 = time.perf_counter()
                await redis.ping()
                self.redis_rtt.observe(time.perf_counter() - t0)
            except Exception as err:
                log.debug("metrics ping: %s", err)
            await anyio.sleep(seconds)


class _QuietServer:
    """uvicorn without its own signal handlers (the worker handles SIGINT/SIGTERM)."""

    @staticmethod
    def make(app: Any, host: str, port: int) -> Any:
        import contextlib
        from collections.abc import Generator

        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Generator[None, None, None]:
                yield

        return Server(
            uvicorn.Config(
                app, host=host, port=port, lifespan="off", log_level="warning", access_log=False
            )
        )


async def serve_worker_metrics(
    engine: Any, host: str, port: int, *, task_status: Any = anyio.TASK_STATUS_IGNORED
) -> None:
    """``stageline worker --metrics-port``: ``/metrics`` and ``/health`` for one worker.

    A worker exposes the scrape-time families (lag, pending, dead letters, workers alive,
    Redis round trip); the event-derived counters are the API process's (one count for the
    cluster, not one per worker). Runs until cancelled.
    """
    from app.cli import _check_port_free
    from app.console.mount import metrics_only_app

    _check_port_free(host, port)
    metrics = Metrics(events=False)
    server = _QuietServer.make(metrics_only_app(engine.redis, engine.keys, metrics), host, port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(metrics.ping_every, engine.redis)
        tg.start_soon(server.serve)
        while not server.started:  # noqa: ASYNC110  (uvicorn sets a flag, no event)
            await anyio.sleep(0.02)
        log.warning("metrics on http://%s:%d/metrics", host, port)
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            server.should_exit = True
