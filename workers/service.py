"""A worker process: orchestrator and runner loops over every partition, plus reaper and
snapshot loops, with graceful shutdown.

Shutdown (``stop()``, or SIGINT/SIGTERM in ``run_until_signalled``): stop reading new work,
let running actions finish for up to ``shutdown_grace_s``, then hand back what is still
running (recorded as WorkerLost, retryable). A second signal stops at once.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable, Mapping

import anyio
from anyio.abc import TaskStatus

from app.engine import Engine
from workers.config import WorkerConfig
from workers.consumer import REDIS_DOWN, Entry, GroupConsumer
from workers.leases import Leases
from workers.orchestrator import Orchestrator
from workers.runner import ActionRunner, Runner

log = logging.getLogger("stageline.worker")

ORCHESTRATOR_GROUP = "orchestrators"
RUNNER_GROUP = "runners"


class Worker:
    def __init__(
        self,
        engine: Engine,
        config: WorkerConfig | None = None,
        *,
        runners: Mapping[str, ActionRunner] | None = None,
    ) -> None:
        self.engine = engine
        self.config = cfg = config or WorkerConfig()
        keys = engine.keys
        parts = range(keys.partitions)
        self.leases = Leases(engine.redis, keys, cfg.lease_ttl_s)
        self.orchestrator = Orchestrator(engine, self.leases, cfg)
        self.runner = Runner(engine, self.leases, cfg, runners)

        def dead(stream: str) -> str:
            return stream.rsplit(":", 1)[0] + ":dead"

        common = {
            "dead_letter": dead,
            "block_ms": cfg.block_ms,
            "poll_interval_s": cfg.poll_interval_s,
            "claim_idle_ms": cfg.claim_idle_ms,
            "max_deliveries": cfg.max_deliveries,
        }
        self.events = GroupConsumer(
            engine.redis,
            [keys.events(p) for p in parts],
            ORCHESTRATOR_GROUP,
            cfg.name,
            **common,  # type: ignore[arg-type]
        )
        self.run_queue = GroupConsumer(
            engine.redis,
            [keys.run(p) for p in parts],
            RUNNER_GROUP,
            cfg.name,
            **common,  # type: ignore[arg-type]
        )
        self.runner.ack = self.run_queue.ack
        self._stopping = anyio.Event()
        self._reading = anyio.CancelScope()
        self._actions = anyio.CancelScope()
        self._slots = anyio.Semaphore(cfg.concurrency)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await _retrying(self.engine.start, "start")
        roles = self.config.roles
        async with anyio.create_task_group() as outer:
            with self._actions:
                async with anyio.create_task_group() as actions:
                    with self._reading:
                        async with anyio.create_task_group() as tg:
                            if "orchestrator" in roles:
                                tg.start_soon(self._orchestrate)
                                tg.start_soon(self._every, self.config.reap_every_s, self._reap)
                                tg.start_soon(
                                    self._every,
                                    self.config.snapshot_every_s,
                                    self.orchestrator.flush_snapshots,
                                )
                            if "runner" in roles:
                                tg.start_soon(self._run_actions, actions)
                            task_status.started()
                    # reading stopped: running actions may finish within the grace period
                    with anyio.move_on_after(self.config.shutdown_grace_s):
                        for _ in range(self.config.concurrency):  # every slot free: all done
                            await self._slots.acquire()
                    actions.cancel_scope.cancel()
            if "orchestrator" in roles:
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await self.orchestrator.flush_snapshots()
            outer.cancel_scope.cancel()
        log.info("worker %s stopped", self.config.name)

    def stop(self, *, now: bool = False) -> None:
        """Stop reading work; with ``now`` also cancel running actions (handed back)."""
        self._stopping.set()
        self._reading.cancel()
        if now:
            self._actions.cancel()

    async def run_until_signalled(self) -> None:
        async with anyio.create_task_group() as tg:

            async def signals() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
                    async for sig in received:
                        if not self._stopping.is_set():
                            log.warning(
                                "%s: finishing running actions (up to %ss); again to stop now",
                                signal.Signals(sig).name,
                                self.config.shutdown_grace_s,
                            )
                            self.stop()
                        else:
                            log.warning("%s again: stopping now", signal.Signals(sig).name)
                            self.stop(now=True)
                            return

            tg.start_soon(signals)
            await self.run()
            tg.cancel_scope.cancel()

    # --- loops -------------------------------------------------------------------------------

    async def _orchestrate(self) -> None:
        consumer, handle = self.events, self.orchestrator.handle
        pending = True
        next_claim = 0.0
        while True:
            try:
                entries: list[Entry] = []
                if anyio.current_time() >= next_claim:
                    entries += await consumer.claim_stale()
                    next_claim = anyio.current_time() + self.config.claim_every_s
                entries += await consumer.read(self.config.batch, pending=pending)
                if pending and not entries:
                    pending = False
                await consumer.handle_many(entries, handle)
            except REDIS_DOWN as err:
                pending = True  # then re-read what this consumer holds but did not finish
                await _backoff("orchestrator", err)

    async def _run_actions(self, actions: anyio.abc.TaskGroup) -> None:
        consumer = self.run_queue
        next_claim = 0.0
        pending = True
        while True:
            try:
                await self._slots.acquire()
                self._slots.release()
                free = self._slots.value
                entries: list[Entry] = []
                if anyio.current_time() >= next_claim:
                    entries += await consumer.claim_stale(count=free)
                    next_claim = anyio.current_time() + self.config.claim_every_s
                if len(entries) < free:
                    entries += await consumer.read(free - len(entries), pending=pending)
                    if pending and not entries:
                        pending = False
                for e in entries:
                    await self._slots.acquire()
                    actions.start_soon(self._one_action, e)
            except REDIS_DOWN as err:
                await _backoff("runner", err)

    async def _one_action(self, e: Entry) -> None:
        try:
            for attempt in range(100):
                try:
                    await self.run_queue.handle_one(e, self.runner.handle)
                    return
                except REDIS_DOWN as err:
                    await _backoff(f"action {e.id} (attempt {attempt})", err)
        finally:
            self._slots.release()

    async def _reap(self) -> None:
        await self.orchestrator.reap()

    async def _every(self, seconds: float, fn: Callable[[], Awaitable[object]]) -> None:
        while True:
            await anyio.sleep(seconds)
            try:
                await fn()
            except REDIS_DOWN as err:
                await _backoff(getattr(fn, "__name__", "task"), err)
            except Exception:
                log.exception("periodic task failed")


async def _backoff(what: str, err: BaseException) -> None:
    log.warning("%s: Redis unavailable (%s); retrying", what, err)
    await anyio.sleep(0.5)


async def _retrying(fn: Callable[[], Awaitable[None]], what: str) -> None:
    while True:
        try:
            await fn()
            return
        except REDIS_DOWN as err:
            await _backoff(what, err)
