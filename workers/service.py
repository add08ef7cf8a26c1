"""A worker process: owner loops for this process's share of the partitions (orchestrator
role: see ``workers.partition``) and the runner loop, with graceful shutdown.

Shutdown (``stop()``, or SIGINT/SIGTERM in ``run_until_signalled``): stop reading new work,
let running actions finish for up to ``shutdown_grace_s``, then hand back what is still
running (recorded as WorkerLost, retryable). A second signal stops at once.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Mapping
from typing import Any

import anyio
from anyio.abc import TaskStatus

from app.engine import Engine
from app.store.connection import node_of, refresh_slots
from app.store.eventstore import Fenced
from workers.backoff import Backoff, retry_until
from workers.config import WorkerConfig
from workers.consumer import IDLE_MAX_S, REDIS_DOWN, Entry, GroupConsumer
from workers.leases import Leases
from workers.ownership import Fence, PartitionOwnership, incarnation
from workers.partition import PartitionOwner
from workers.runner import ActionRunner, Runner

log = logging.getLogger("stageline.worker")

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
        self.runner = Runner(engine, self.leases, cfg, runners)
        self.ownership = PartitionOwnership(
            engine.redis, keys, incarnation(cfg.name), lease_ttl_s=cfg.partition_lease_s
        )
        self.owners: dict[int, PartitionOwner] = {}
        # one XREAD for all owned partitions; on a cluster (the streams of several
        # partitions live in different slots) one pipelined XREAD per stream (``_xread``)
        self.shared_reads = True
        self._per_stream = hasattr(engine.redis, "nodes_manager")
        self._idle_s = self.config.poll_interval_s

        def dead(stream: str) -> str:
            return stream.rsplit(":", 1)[0] + ":dead"

        self.run_queue = GroupConsumer(
            engine.redis,
            [keys.run(p) for p in parts],
            RUNNER_GROUP,
            cfg.name,
            dead_letter=dead,
            block_ms=cfg.block_ms,
            poll_interval_s=cfg.poll_interval_s,
            claim_idle_ms=cfg.claim_idle_ms,
            max_deliveries=cfg.max_deliveries,
            dead_letter_maxlen=cfg.dead_letter_maxlen,
        )
        self.runner.ack = self.run_queue.ack
        self._stopping = anyio.Event()
        self._reading = anyio.CancelScope()
        self._actions = anyio.CancelScope()
        self._slots = anyio.Semaphore(cfg.concurrency)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        if not await retry_until(self.engine.start, "start", self._stopping, errors=REDIS_DOWN):
            return  # stopped before Redis could be reached
        roles = self.config.roles
        async with anyio.create_task_group() as outer:
            # owners go on while this process's running actions finish (their results get
            # their consequences), and stop last, handing their partitions over
            if "orchestrator" in roles:
                await outer.start(self._own)
            with self._actions:
                async with anyio.create_task_group() as actions:
                    with self._reading:
                        async with anyio.create_task_group() as tg:
                            if "runner" in roles:
                                tg.start_soon(self._run_actions, actions)
                            task_status.started()
                            if "runner" not in roles:
                                await anyio.sleep_forever()
                    # reading stopped: running actions may finish within the grace period
                    with anyio.move_on_after(self.config.shutdown_grace_s):
                        for _ in range(self.config.concurrency):  # every slot free: all done
                            await self._slots.acquire()
                    actions.cancel_scope.cancel()
            # the owners take in what the last actions recorded, then hand over
            with anyio.move_on_after(self.config.drain_s):
                await self._drain_owners()
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

    async def _own(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Hold this process's share of the partitions; run an owner loop for each."""
        async with anyio.create_task_group() as tg:
            await tg.start(self.ownership.run)
            running: dict[int, tuple[Fence, anyio.CancelScope]] = {}
            if self.shared_reads:
                tg.start_soon(self._read_partitions)
            task_status.started()
            while True:
                owned = self.ownership.owned()
                for p, (fence, scope) in list(running.items()):
                    if owned.get(p) != fence:
                        scope.cancel()
                        del running[p]
                for p, fence in owned.items():
                    if p not in running:
                        scope = anyio.CancelScope()
                        running[p] = (fence, scope)
                        tg.start_soon(self._partition, p, fence, scope)
                await self.ownership.wait_changed(owned)

    async def _read_partitions(self) -> None:
        """One XREAD over the events streams of every partition this process owns, handed
        to each owner in order (instead of one blocking read per partition)."""
        redis, keys, cfg = self.engine.redis, self.engine.keys, self.config
        backoff = Backoff("partition reader")
        while True:
            owners = {
                keys.events(p): o
                for p, o in self.owners.items()
                if o.inbox_send is not None and o.read_pos is not None
            }
            if not owners:
                await anyio.sleep(0.02)
                continue
            try:
                streams: dict[Any, Any] = {k: o.read_pos or "0" for k, o in owners.items()}
                if self._per_stream:
                    resp: Any = await self._xread(streams)
                else:
                    resp = await redis.xread(streams, count=cfg.batch, block=cfg.block_ms)
            except REDIS_DOWN as err:
                await backoff.wait(err)
                continue
            backoff.reset()
            if not resp:
                if cfg.block_ms is None:
                    await anyio.sleep(cfg.poll_interval_s)
                continue
            for stream, rows in resp:
                key = stream.decode() if isinstance(stream, bytes) else str(stream)
                o = owners.get(key)
                if o is None or not rows or o.inbox_send is None:
                    continue
                if self.owners.get(o.partition) is not o:
                    continue  # that owner stopped meanwhile; its successor reads again
                last = rows[-1][0]
                o.read_pos = last.decode() if isinstance(last, bytes) else str(last)
                await o.inbox_send.send(list(rows))

    async def _xread(self, streams: dict[Any, Any]) -> list[Any]:
        """XREAD of each stream on its own, pipelined (a cluster client sends one round trip
        per node), without blocking; an empty round waits a little longer each time (up to
        ``IDLE_MAX_S``), so idle owners stay cheap and busy ones are read at once."""
        pipe: Any = self.engine.redis.pipeline(transaction=False)
        for key, pos in streams.items():
            pipe.execute_command(
                "XREAD", "COUNT", self.config.batch, "STREAMS", key, pos,
                target_nodes=node_of(self.engine.redis, key),
            )  # fmt: skip
        try:
            resp: Any = await pipe.execute()
        except REDIS_DOWN:
            await refresh_slots(self.engine.redis)  # a node failed over: its slots moved
            raise
        out = [row for r in resp if r for row in r]
        if out:
            self._idle_s = self.config.poll_interval_s
        else:
            await anyio.sleep(self._idle_s)
            self._idle_s = min(self._idle_s * 2, IDLE_MAX_S)
        return out

    async def _drain_owners(self) -> None:
        """Wait until each owner loop has read its partition's events up to now."""
        for p, owner in list(self.owners.items()):
            last: Any = await self.engine.redis.xrevrange(self.engine.keys.events(p), count=1)
            if not last:
                continue
            target = _entry_id(last[0][0])
            while self.owners.get(p) is owner and _entry_id(owner.position) < target:  # noqa: ASYNC110
                await anyio.sleep(0.01)  # a short wait: shutdown only

    async def _partition(self, p: int, fence: Fence, scope: anyio.CancelScope) -> None:
        backoff = Backoff(f"partition {p}")
        with scope:
            while True:
                owner = PartitionOwner(self.engine, p, fence, self.config, self.leases)
                if self.shared_reads:
                    owner.shared()
                self.owners[p] = owner
                try:
                    await owner.run()
                except Fenced:
                    # the owner key no longer holds our token (another process took it, or
                    # Redis lost it): forget it; the next round re-acquires it if ours
                    self.ownership.drop(p)
                    return
                except REDIS_DOWN as err:
                    await backoff.wait(err)  # the lease lapses meanwhile: ownership stops us
                except Exception:
                    log.exception("partition %d: owner loop failed; restarting it", p)
                    await anyio.sleep(0.5)
                finally:
                    if self.owners.get(p) is owner:
                        del self.owners[p]

    async def _run_actions(self, actions: anyio.abc.TaskGroup) -> None:
        consumer = self.run_queue
        next_claim = 0.0
        pending = True
        backoff = Backoff("runner", stop=self._stopping)
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
                backoff.reset()
            except REDIS_DOWN as err:
                if not await backoff.wait(err):
                    return

    async def _one_action(self, e: Entry) -> None:
        # not stopped by a graceful stop: a finished action's result is still written
        backoff = Backoff(f"action {e.id}")
        try:
            for _ in range(100):
                try:
                    await self.run_queue.handle_one(
                        e, self.runner.handle, acked=self.runner.acked_early
                    )
                    return
                except REDIS_DOWN as err:
                    await backoff.wait(err)
        finally:
            self._slots.release()


def _entry_id(raw: Any) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    ms, _, n = text.partition("-")
    return int(ms or 0), int(n or 0)
