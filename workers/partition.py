"""The owner of one partition: the only process that decides engine reactions there.

While this process holds the partition's lease (``workers.ownership``), ``PartitionOwner``
reads the partition's ``events`` stream from the checkpoint on, in order, and for each
batch of entries:

1. folds every event into the repository's cache (so the cache is always current: every
   event of the partition passes through here, in commit order);
2. works out the reactions (policy in :func:`reactions`, pure): apply an accepted retry,
   move an execution on after an action's result was recorded on its own (``Advance``),
   fail an action nobody can run; custom-action jobs are published to the job index;
3. decides all reactions on the cache and commits them in **one** Lua call (group commit),
   fenced with this owner's token and advancing the checkpoint in the same call. A batch
   refused because another writer (the API, a runner) got there first is decided again on
   what the refusal handed back; only the refused pipelines go round again.

Every reaction is a command through ``decide`` and every decision is idempotent, so an
owner that dies after committing but before its checkpoint moved, or a new owner that
re-reads entries, changes nothing twice. A stale owner (paused past its lease) is refused
by the fence and stops.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from app.domain import commands as c
from app.domain import events as ev
from app.domain.decide import decide_many
from app.domain.errors import DomainError
from app.domain.state import NeedExecutions, PipelineState
from app.engine import Engine
from app.jobs import JobRef
from app.repository import SYSTEM, Origin, decided_on, trim
from app.store.eventstore import AppendResult, Batch, ConcurrencyError, Fenced
from workers import due as deferred_rules
from workers import persist, retention
from workers.config import WorkerConfig
from workers.consumer import REDIS_DOWN
from workers.leases import Leases
from workers.ownership import Fence

log = logging.getLogger("stageline.partition")

FENCED_OR_DOWN: tuple[type[BaseException], ...] = (Fenced, *REDIS_DOWN)
ROUNDS = 8  # commit rounds for one batch of entries before the rest is retried later
CHECKPOINT_EVERY_S = 1.0  # the checkpoint of entries that needed no reaction, at most this late


@dataclass(frozen=True)
class Entry:
    """One entry of a partition's ``events`` stream."""

    id: str
    env: ev.Envelope
    head_prev: int | None
    exec_prev: int | None


FRESH_START_ENTRIES = 1000  # a never-owned partition with more events reconciles instead


def _int(raw: Any) -> int | None:
    if raw is None or raw == b"" or raw == "":
        return None
    return int(raw)


def parse(rid: Any, fields: dict[Any, Any]) -> Entry:
    f = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
    p = f["p"].decode() if isinstance(f["p"], bytes) else f["p"]
    env = ev.decode_payload(p, int(f["v"]), f["e"])
    return Entry(
        rid.decode() if isinstance(rid, bytes) else str(rid),
        env,
        _int(f.get("hp")),
        _int(f.get("xp")),
    )


def reactions(env: ev.Envelope) -> list[c.Command]:
    """What the owner does about an event (pure). Jobs and unsupported actions need the
    action's declaration and are handled by the caller."""
    e = env.event
    if isinstance(e, ev.StageRetryRequested):
        return [c.ApplyStageRetry(executionId=e.executionId, stageName=e.stageName)]
    if isinstance(
        e, (ev.ActionExecutionSucceeded, ev.ActionExecutionFailed, ev.ActionExecutionAbandoned)
    ):
        return [c.Advance(executionId=e.executionId, actionExecutionId=e.actionExecutionId)]
    if isinstance(e, (ev.RuleExecutionSucceeded, ev.RuleExecutionFailed)):
        return [c.SettleCondition(executionId=e.executionId, ruleExecutionId=e.ruleExecutionId)]
    return []


ACTION_ENDS = (ev.ActionExecutionSucceeded, ev.ActionExecutionFailed, ev.ActionExecutionAbandoned)


@dataclass
class _Pending:
    pipeline: str
    items: list[tuple[c.Command, Origin]] = field(default_factory=list)


class PartitionOwner:
    def __init__(
        self,
        engine: Engine,
        partition: int,
        fence: Fence,
        config: WorkerConfig,
        leases: Leases,
    ) -> None:
        self.engine = engine
        self.partition = partition
        self.fence = fence
        self.config = config
        self.leases = leases
        self.keys = engine.keys
        self.position = "0"
        self.saved = "0"  # the checkpoint as last written
        # With a shared reader (``Worker``: one XREAD over every partition this process
        # owns), entries arrive here; ``read_pos`` is how far the reader got for us.
        self.inbox: MemoryObjectReceiveStream[list[Any]] | None = None
        self.inbox_send: MemoryObjectSendStream[list[Any]] | None = None
        self.read_pos: str | None = None  # None until run() read the checkpoint
        self.dirty: set[str] = set()
        self.failures: dict[str, int] = {}  # entry id -> failed attempts (poison entries)
        self.commits = 0  # group-commit calls made
        self.next_expiry = 0.0  # the next idempotency-record expiry pass (housekeep)
        self.recovering = True  # the first batch after a start is handled by ``_recover``
        self.conflicts = 0  # batches refused (another writer got there first)
        # leases seen expired -> when first seen (monotonic): a lease is reaped only if it
        # is still expired a grace period later
        self.suspects: dict[str, float] = {}

    @property
    def name(self) -> str:
        return self.config.name

    def origin(self, env: ev.Envelope) -> Origin:
        return persist.caused_by(self.name, env)

    # --- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        repo = self.engine.repo
        # another owner may have written here since this process last looked: drop its cache
        for name in repo.cached_names():
            if self.keys.partition(name) == self.partition:
                repo.forget(name)
        raw: Any = await self.engine.redis.get(self.keys.checkpoint(self.partition))
        self.position = (raw.decode() if isinstance(raw, bytes) else raw) or "0"
        self.saved = self.position
        if raw is None:  # never owned: maybe a store with history (see _reconcile)
            end = await self._reconcile()
            if end is not None:
                self.position = self.saved = end
        self.read_pos = self.position
        log.info("partition %d: owner from %s", self.partition, self.position)
        try:
            await self._loop()
        finally:
            # hand the position over (a successor would otherwise re-read a little: harmless)
            with anyio.move_on_after(1.0, shield=True):
                try:
                    if self.position != self.saved:
                        await self._advance(self.position)
                except Exception:  # fenced or Redis gone: the successor re-reads
                    pass

    async def _loop(self) -> None:
        next_reap = next_snap = next_ckpt = 0.0
        next_house = anyio.current_time() + self.config.housekeep_every_s
        while True:
            entries, last = await self._read()
            if last is not None and not entries:  # only unreadable entries (parked)
                await self._advance(last)
            if entries and self.recovering:
                self.recovering = False
                await self._recover(entries)
            elif entries:
                try:
                    await self.handle(entries, last)
                except FENCED_OR_DOWN:
                    raise
                except Exception:
                    log.exception("partition %d: handling a batch failed", self.partition)
                    await self._one_at_a_time(entries)
            now = anyio.current_time()
            if now >= next_reap:
                await self.reap()
                await deferred_rules.wake(self)
                next_reap = now + self.config.reap_every_s
            if now >= next_snap:
                await self.flush_snapshots()
                next_snap = now + self.config.snapshot_every_s
            if now >= next_ckpt:
                # entries that needed no reaction move the checkpoint lazily, at most this
                # late (re-reading them after a takeover decides nothing new)
                if self.position != self.saved:
                    await self._advance(self.position)
                next_ckpt = now + CHECKPOINT_EVERY_S
            if now >= next_house:
                await self.housekeep()
                next_house = now + self.config.housekeep_every_s

    async def housekeep(self) -> None:
        """Bounded storage (workers.retention): trim the dispatch streams up to what every
        consumer processed, expire idempotency records older than the window."""
        redis, keys, p = self.engine.redis, self.keys, self.partition
        await retention.trim_dispatch(redis, keys, p, self.saved)
        now = anyio.current_time()
        if now >= self.next_expiry:  # a pass scans every record: far less often
            window = self.config.idempotency_window_s
            await retention.expire_commands(redis, keys, p, window)
            self.next_expiry = now + retention.expiry_every(window)

    async def _advance(self, position: str) -> None:
        await self.engine.store.append_many(
            [], fence=(self.partition, self.fence.token), checkpoint=(self.partition, position)
        )
        self.position = self.saved = position

    def shared(self, buffer: int = 64) -> None:
        """Take entries from a shared reader instead of reading the stream itself."""
        self.inbox_send, self.inbox = anyio.create_memory_object_stream[list[Any]](buffer)

    async def _rows(self) -> list[Any]:
        """The next rows of the partition's events stream (maybe none, after a wait)."""
        block = self.config.block_ms
        if self.inbox is not None:
            wait = (block or 0) / 1000 or self.config.poll_interval_s * 20
            rows: list[Any] = []
            with anyio.move_on_after(wait):
                rows = list(await self.inbox.receive())
            while len(rows) < self.config.batch:
                try:
                    rows += self.inbox.receive_nowait()
                except anyio.WouldBlock:
                    break
            return rows
        key = self.keys.events(self.partition)
        resp: Any = await self.engine.redis.xread(
            {key: self.position}, count=self.config.batch, block=block
        )
        if not resp:
            if block is None:
                await anyio.sleep(self.config.poll_interval_s)
            return []
        return [row for _stream, stream_rows in resp for row in stream_rows]

    async def _read(self) -> tuple[list[Entry], str | None]:
        rows = await self._rows()
        out: list[Entry] = []
        last: str | None = None
        if rows:
            for rid, fields in rows:
                last = rid.decode() if isinstance(rid, bytes) else str(rid)
                try:
                    out.append(parse(rid, fields))
                except Exception as err:
                    await self._park(rid, fields, f"unreadable, parked at once: {err!r}")
        return out, last

    async def _park(self, rid: Any, fields: dict[Any, Any], reason: str) -> None:
        stream, dead_key = self.keys.events(self.partition), self.keys.dead(self.partition)
        dead: dict[Any, Any] = dict(fields)
        dead.update({"_stream": stream, "_id": rid, "_group": "owner", "_reason": reason})
        await self.engine.redis.xadd(
            dead_key, dead, maxlen=self.config.dead_letter_maxlen, approximate=False
        )
        log.error(
            "parked poison entry %s of %s (owner of partition %d) in %s: %s",
            rid.decode() if isinstance(rid, bytes) else rid,
            stream,
            self.partition,
            dead_key,
            reason,
        )

    async def _reconcile(self) -> str | None:
        """A partition never owned (no checkpoint) whose events stream is long: a first
        worker on a store that already has history (e.g. imported, or the checkpoint lost).
        Instead of replaying the retained stream, decide from the projections: for every
        active execution of the partition's pipelines, apply a pending stage retry, advance
        past an ended latest attempt, publish an open custom job; then start at the
        stream's end (returned; None when the stream is short enough to just read)."""
        redis, keys, p = self.engine.redis, self.keys, self.partition
        if int(await redis.xlen(keys.events(p))) <= FRESH_START_ENTRIES:
            return None
        last: Any = await redis.xrevrange(keys.events(p), count=1)
        if not last:
            return None
        end = last[0][0].decode() if isinstance(last[0][0], bytes) else str(last[0][0])
        repo, pending = self.engine.repo, []
        for raw in await redis.smembers(keys.names(p)):
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            head = await repo.load(name)
            if not head.exists or not head.active:
                continue
            s = await repo.load(name, list(head.active))
            items: list[tuple[c.Command, Origin]] = []
            for eid in list(s.active):
                x = s.executions.get(eid)
                if x is None or x.status != "InProgress":
                    continue
                settle = await deferred_rules.reconcile(self.engine, p, name, x)
                items += [(cmd, SYSTEM) for cmd in settle]
                for st in x.stages.values():
                    if st.pendingRetry is not None:
                        items.append(
                            (c.ApplyStageRetry(executionId=eid, stageName=st.name), SYSTEM)
                        )
                    for aid in st.latest.values():
                        a = x.actions.get(aid)
                        if a is None:
                            continue
                        if a.status != "InProgress":
                            items.append(
                                (c.Advance(executionId=eid, actionExecutionId=aid), SYSTEM)
                            )
                        elif a.kind == "custom" and a.jobId and not a.acknowledged:
                            adecl = s.action_declaration(x, a.stageName, a.actionName)
                            if adecl is not None:
                                ref = JobRef(a.jobId, adecl.actionTypeId.key, name, eid, aid)
                                await self.engine.jobs.publish(ref, a.startTime)
            if items:
                pending.append(_Pending(name, items))
        await self.commit(pending, end)
        if self.saved != end:
            await self._advance(end)
        log.info(
            "partition %d: no checkpoint, %d pipelines with active executions reconciled; "
            "starting at the end of the events stream (%s)",
            self.partition,
            len(pending),
            end,
        )
        return end

    async def _recover(self, entries: Sequence[Entry]) -> None:
        """The first batch after a start: what the previous owner (maybe this process before
        a crash or an outage) may have died on. Each entry on its own, counted in
        ``P:tries`` before it is handled and uncounted after: an entry that brought down
        ``max_deliveries`` owners in a row is parked instead of handled again."""
        redis, key = self.engine.redis, self.keys.tries(self.partition)
        for entry in entries:
            tries = int(await redis.hincrby(key, entry.id, 1))
            if tries > self.config.max_deliveries:
                fields = {"p": entry.env.pipeline, "v": str(entry.env.version)}
                fields["e"] = ev.encode_payload(entry.env).decode()
                await self._park(
                    entry.id, fields, f"owners stopped {tries - 1} times while handling it"
                )
                await self._advance(entry.id)
            else:
                await self._one_at_a_time([entry])
            await redis.hdel(key, entry.id)

    async def _one_at_a_time(self, entries: Sequence[Entry]) -> None:
        """After a failed batch: each entry on its own; one that keeps failing is parked
        (after ``max_deliveries`` attempts) so the partition moves on."""
        for entry in entries:
            for attempt in range(1, self.config.max_deliveries + 1):
                try:
                    await self.handle([entry])
                    break
                except FENCED_OR_DOWN:
                    raise
                except Exception as err:
                    if attempt == self.config.max_deliveries:
                        fields = {"p": entry.env.pipeline, "v": str(entry.env.version)}
                        fields["e"] = ev.encode_payload(entry.env).decode()
                        await self._park(
                            entry.id, fields, f"delivered {attempt} times without success: {err}"
                        )
                        await self._advance(entry.id)
                    else:
                        await anyio.sleep(0.05 * attempt)

    # --- one batch of entries ----------------------------------------------------------------

    async def handle(self, entries: Sequence[Entry], last: str | None = None) -> None:
        repo = self.engine.repo
        pending: dict[str, _Pending] = {}
        for entry in entries:
            env = entry.env
            repo.observe(env, entry.head_prev, entry.exec_prev)
            self.dirty.add(env.pipeline)
            cmds = reactions(env)
            if isinstance(env.event, ev.ActionExecutionScheduled):
                cmds += await self._scheduled(env, env.event)
            elif isinstance(env.event, ACTION_ENDS):
                await self._ended(env, env.event)
            elif isinstance(env.event, ev.RuleExecutionDeferred):
                await deferred_rules.defer(self.engine, self.partition, env)
            if cmds:
                p = pending.setdefault(env.pipeline, _Pending(env.pipeline))
                p.items += [(cmd, self.origin(env)) for cmd in cmds]
        last = last or entries[-1].id
        await self.commit(list(pending.values()), last)
        self.position = last

    async def _ended(
        self,
        env: ev.Envelope,
        e: ev.ActionExecutionSucceeded | ev.ActionExecutionFailed | ev.ActionExecutionAbandoned,
    ) -> None:
        """A custom action ended (a job result, a stop, a lost worker, ...): its job leaves
        the open list and its record expires, whether or not anyone ever polled for it."""
        repo = self.engine.repo
        s = repo.cached(env.pipeline)
        x = s.executions.get(e.executionId) if s is not None else None
        if x is None:
            s = await repo.load(env.pipeline, [e.executionId])
            x = s.executions.get(e.executionId)
        a = x.actions.get(e.actionExecutionId) if x is not None else None
        if s is None or x is None or a is None or a.kind != "custom" or a.jobId is None:
            return
        adecl = s.action_declaration(x, a.stageName, a.actionName)
        if adecl is not None:
            ref = JobRef(
                a.jobId, adecl.actionTypeId.key, env.pipeline, x.executionId, a.actionExecutionId
            )
            await self.engine.jobs.close(ref, finished=True)

    async def _scheduled(self, env: ev.Envelope, e: ev.ActionExecutionScheduled) -> list[c.Command]:
        if e.kind in ("commands", "approval", "source"):
            return []  # runners take commands and sources; approvals wait for PutApprovalResult
        s = await self.engine.repo.load(env.pipeline, [e.executionId])
        x = s.executions.get(e.executionId)
        a = x.actions.get(e.actionExecutionId) if x is not None else None
        if x is None or a is None or a.status != "InProgress":
            return []
        adecl = s.action_declaration(x, e.stageName, e.actionName)
        if adecl is None:
            return []
        if e.kind == "custom" and e.jobId is not None:
            ref = JobRef(
                e.jobId, adecl.actionTypeId.key, env.pipeline, e.executionId, e.actionExecutionId
            )
            await self.engine.jobs.publish(ref, env.time)
            return []
        t = adecl.actionTypeId
        return [
            c.CompleteAction(
                executionId=e.executionId,
                actionExecutionId=e.actionExecutionId,
                succeeded=False,
                errorCode="ActionTypeNotSupported",
                message=(
                    f"stageline does not run {t.owner}/{t.category}/{t.provider} actions; "
                    "use AWS/Compute/Commands, AWS/Approval/Manual or a Custom action "
                    "with a job worker"
                ),
            )
        ]

    # --- group commit ------------------------------------------------------------------------

    async def commit(self, pending: list[_Pending], checkpoint: str | None) -> int:
        """Decide every pending reaction on the cache and commit them in one call per round;
        refused pipelines go round again on what the refusal handed back."""
        repo = self.engine.repo
        store = self.engine.store
        lost = 0
        refused: set[str] = set()  # pipelines refused in an earlier round of this commit
        last: ConcurrencyError | None = None
        for _ in range(ROUNDS):
            batches: list[tuple[_Pending, PipelineState, Batch]] = []
            for p in pending:
                s = repo.cached(p.pipeline) or await repo.load(p.pipeline)
                events = await self._decide(s, p)
                if events:
                    batches.append((p, s, decided_on(s, events)))
            if not batches:
                return lost  # nothing to write: the checkpoint moves lazily
            try:
                results = await store.append_many(
                    [b for _, _, b in batches],
                    fence=(self.partition, self.fence.token),
                    checkpoint=(self.partition, checkpoint) if checkpoint else None,
                )
            except Fenced:
                log.warning("partition %d: fenced (another owner took over)", self.partition)
                raise
            self.commits += 1
            if checkpoint and all(isinstance(r, AppendResult) for r in results):
                self.saved = checkpoint
            again: list[_Pending] = []
            for (p, s, batch), res in zip(batches, results, strict=True):
                if isinstance(res, AppendResult):
                    stamped = res.stamp(batch.envelopes)
                    repo.commit_local(s, stamped)
                    trim(s)
                    lost += sum(
                        1
                        for e in stamped
                        if isinstance(e.event, ev.ActionExecutionFailed)
                        and e.event.errorCode == ev.WORKER_LOST
                    )
                else:
                    assert isinstance(res, ConcurrencyError)
                    last = res
                    self.conflicts += 1
                    if p.pipeline in refused:
                        # refused again after healing: the cache may hold events the store
                        # lost at numbers since given to others (Redis back from an older
                        # snapshot), which no refusal shows; read the store afresh
                        repo.healed += 1
                        repo.forget(p.pipeline)
                    else:
                        await repo.heal(s, res)
                    refused.add(p.pipeline)
                    again.append(p)
            if not again:
                return lost
            pending = again
        log.warning(
            "partition %d: %d pipelines still conflicting (last refusal: %s); their entries "
            "are read again",
            self.partition,
            len(pending),
            last,
        )
        raise RuntimeError("commit did not settle")

    async def _decide(self, s: PipelineState, p: _Pending) -> list[ev.Envelope]:
        repo = self.engine.repo
        ids = {getattr(cmd, "executionId", None) for cmd, _ in p.items}
        missing = [i for i in ids if isinstance(i, str) and i not in s.executions]
        await repo.load_executions(s, missing)
        while True:
            items = [(cmd, repo.ctx(origin, None)) for cmd, origin in p.items]
            try:
                events, refused = decide_many(s, items)
            except NeedExecutions as need:
                await repo.load_executions(s, need.ids)
                continue
            except DomainError:
                return await self._one_by_one(s, p)
            for cmd, err in refused:
                log.debug("partition %d: %s refused: %s", self.partition, type(cmd).__name__, err)
            return events

    async def _one_by_one(self, s: PipelineState, p: _Pending) -> list[ev.Envelope]:
        """Fallback: a command refused half way; decide and append each on its own."""
        for cmd, origin in p.items:
            try:
                await persist.execute(self.engine.repo, p.pipeline, cmd, origin)
            except DomainError as err:
                log.warning("partition %d: %s refused: %s", self.partition, type(cmd).__name__, err)
        return []

    # --- leases and snapshots ----------------------------------------------------------------

    @property
    def reap_grace_s(self) -> float:
        """How long an expired lease must stay expired, observed with Redis answering,
        before its action is declared lost: two of its runner's renewal periods. A runner
        that could not reach Redis for longer than its lease (Redis paused, failing over or
        restarting) renews within one period of Redis answering again and keeps its run."""
        return 2 * self.config.lease_ttl_s / 3

    async def reap(self) -> int:
        """Fail the actions of this partition whose runner's lease expired (and stayed so)."""
        expired = await self.leases.expired(self.partition)
        # (a look that fails, e.g. Redis away, records nothing: the grace of a lease seen
        # expired after an outage starts once Redis answers again)
        now = anyio.current_time()
        seen = {lease.member for lease in expired}
        self.suspects = {m: t for m, t in self.suspects.items() if m in seen}
        due = []
        for lease in expired:
            first = self.suspects.setdefault(lease.member, now)
            if now - first >= self.reap_grace_s:
                due.append(lease)
        if not due:
            return 0
        pending: dict[str, _Pending] = {}
        for lease in due:
            p = pending.setdefault(lease.pipeline, _Pending(lease.pipeline))
            p.items.append(
                (
                    c.LoseAction(
                        executionId=lease.executionId,
                        actionExecutionId=lease.actionExecutionId,
                        worker=lease.worker,
                        message=f"worker {lease.worker} stopped renewing its lease",
                    ),
                    Origin(actor=f"worker:{self.name}"),
                )
            )
        recorded = await self.commit(list(pending.values()), None)
        for lease in due:
            self.suspects.pop(lease.member, None)
            # a lease renewed meanwhile stays: its runner finds its run recorded as lost
            # (if the loss went through) or carries on (if the action had ended)
            await self.leases.release_expired(lease)
        if recorded:
            log.warning(
                "partition %d: %d action(s) recorded as %s (their workers stopped renewing)",
                self.partition,
                recorded,
                ev.WORKER_LOST,
            )
        return recorded

    async def flush_snapshots(self) -> None:
        dirty, self.dirty = self.dirty, set()
        for name in dirty:
            s = self.engine.repo.cached(name)
            if s is not None:
                await self.engine.store.save_snapshot(s)
