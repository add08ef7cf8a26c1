"""The application service between the pure domain and the event store.

A pipeline's state is loaded in bounded pieces: the *head* (its own stream: a snapshot plus
the entries since) and only the executions a command or query needs (each from its own
stream). ``execute`` runs ``decide`` on that partial state; when ``decide`` needs an
execution it does not hold (``NeedExecutions``) it is loaded and the command decided again.
The result is appended with what the decision read as the expected positions (optimistic
concurrency); when another writer got there first the refused append hands back what was
missed, and the command is decided again, a few times, then ConflictException (SPEC
check 7). No command costs more with more past executions.

The cache keeps, per pipeline, the head and the executions still in play (active, latest
in a stage, waiting) plus a few recent ones. A cache found *ahead* of the store (Redis lost
acknowledged writes in a failover or restart) is dropped on the next conflict and re-read.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio

from app.domain import commands as c
from app.domain import events as ev
from app.domain.decide import Ctx, decide
from app.domain.errors import DomainError
from app.domain.state import (
    ExecutionState,
    NeedExecutions,
    PipelineState,
    evolve,
    evolve_execution,
    evolve_ref,
    execution_from,
    new_state,
)
from app.store.eventstore import (
    HEAD,
    AppendResult,
    Batch,
    ConcurrencyError,
    EventStore,
    HeadItem,
)

# A runner's leases to take ((member, expiry ms) ...) and release (member ...) atomically
# with its append.
Leasing = tuple[list[tuple[str, int]], list[str]]


def new_uuid() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Origin:
    """Who/why for the events a command causes (recorded in every envelope)."""

    actor: str = "system"
    requestId: str | None = None
    correlationId: str | None = None
    causationId: str | None = None
    source: str | None = None
    # Idempotency key: a command repeated with the same id is not applied twice (the
    # repeat gets the first run's events). The API sets it from the SDK's invocation id.
    commandId: str | None = None
    claimed: str | None = None  # auth off: the access key id the caller claimed (unverified)


SYSTEM = Origin()


@dataclass(frozen=True)
class Outcome:
    events: list[ev.Envelope]
    state: PipelineState
    duplicate: bool = False


@dataclass
class _Turn:
    """Commands on one pipeline take turns within a process (see ``execute``)."""

    lock: anyio.Lock = field(default_factory=anyio.Lock)
    users: int = 0


# Commands whose decision reads only the action's own attempt: a runner's start and result.
# They are appended against the action's last event, not the whole execution, so runners of
# sibling actions never conflict with each other.
def attempt_local(cmd: c.Command) -> tuple[str, str] | None:
    """(execution id, action execution id) of a runner's own attempt, else None."""
    if isinstance(cmd, c.StartAction):
        return cmd.executionId, cmd.actionExecutionId
    if isinstance(cmd, (c.CompleteAction, c.LoseAction)) and not cmd.consequences:
        return cmd.executionId, cmd.actionExecutionId
    return None


def _wanted(cmd: c.Command) -> list[str]:
    eid = getattr(cmd, "executionId", None)
    return [eid] if isinstance(eid, str) and not isinstance(cmd, c.StartExecution) else []


KEEP_RECENT = 32  # executions kept in a cached state besides those still in play


def _in_play(s: PipelineState) -> set[str]:
    keep = set(s.active) | set(s.stageLatest.values()) | set(s.occupant.values())
    for w in s.waiting.values():
        keep.update(w)
    return keep


def trim(s: PipelineState, recent: int = KEEP_RECENT) -> None:
    """Bound a cached state: executions in play, plus the ``recent`` last touched."""
    if len(s.executions) <= len(s.active) + recent:
        return
    keep = _in_play(s)
    others = sorted(
        (x for eid, x in s.executions.items() if eid not in keep), key=lambda x: x.version
    )
    for x in others[: max(len(others) - recent, 0)]:
        del s.executions[x.executionId]


class PipelineRepository:
    def __init__(
        self,
        store: EventStore,
        *,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = new_uuid,
        conflict_retries: int = 8,
        cache: bool = True,
    ) -> None:
        self.store = store
        self.clock = clock
        self.new_id = new_id
        self.conflict_retries = conflict_retries
        self._cache: dict[str, PipelineState] | None = {} if cache else None
        self._turns: dict[str, _Turn] = {}
        self._loading: dict[str, _Turn] = {}  # uncached pipelines being loaded (see load)
        self.healed = 0  # caches found ahead of the store and dropped

    # --- cache -------------------------------------------------------------------------------

    def forget(self, pipeline: str | None = None) -> None:
        if self._cache is None:
            return
        if pipeline is None:
            self._cache.clear()
        else:
            self._cache.pop(pipeline, None)

    def cached_names(self) -> list[str]:
        return list(self._cache) if self._cache is not None else []

    def cached(self, pipeline: str) -> PipelineState | None:
        return self._cache.get(pipeline) if self._cache is not None else None

    def observe(self, env: ev.Envelope, head_prev: int | None, exec_prev: int | None) -> None:
        """Fold an event seen on a dispatch stream into the cached state, where it is the
        next entry of its streams (``head_prev`` / ``exec_prev``: the seq before it in the
        pipeline's / execution's stream, None when it was not written there). A gap drops
        what it would have updated: the next use reads it again."""
        s = self.cached(env.pipeline)
        if s is None:
            return
        kind = type(env.event)
        in_head = kind in ev.HEAD_EVENTS or kind in ev.PIPELINE_EVENTS
        if in_head and env.version > s.headVersion and head_prev != s.headVersion:
            self.forget(env.pipeline)  # missed an entry of the pipeline's stream
            return
        eid = ev.execution_of(env.event)
        if eid is not None:
            x = s.executions.get(eid)
            if x is not None and env.version > x.version and exec_prev != x.version:
                del s.executions[eid]  # missed an entry of the execution's stream
        evolve(s, env)
        s.tokens.clear()

    # --- loading -----------------------------------------------------------------------------

    async def load(self, pipeline: str, executions: Iterable[str] = ()) -> PipelineState:
        """The pipeline's head as of the latest entry of its stream, holding (at least) the
        named executions, each caught up with its stream.

        The returned object is shared with the cache: treat it as read-only.
        """
        s = self.cached(pipeline)
        if s is None and self._cache is not None:
            # Tasks of this process that need the same uncached pipeline at once (a worker's
            # runners after it starts) wait for one of them to load it, instead of each
            # folding the head from the snapshot, or from the start when there is none yet.
            turn = self._loading.get(pipeline)
            if turn is None:
                turn = self._loading[pipeline] = _Turn()
            turn.users += 1
            try:
                async with turn.lock:
                    s = self.cached(pipeline)
                    if s is None:
                        s = await self._uncached(pipeline)
                        await self._catch_up_head(s)
            finally:
                turn.users -= 1
                if not turn.users:
                    del self._loading[pipeline]
        elif s is None:
            s = await self._uncached(pipeline)
        await self._catch_up_head(s)
        wanted = list(executions)
        await self.load_executions(s, wanted, refresh=True)
        return s

    async def _uncached(self, pipeline: str) -> PipelineState:
        """The pipeline's head from its snapshot (or nothing), cached, not caught up yet."""
        s = await self.store.load_snapshot(pipeline) or new_state(pipeline)
        s.partial = True
        if self._cache is not None:
            self._cache[pipeline] = s
        return s

    async def _catch_up_head(self, s: PipelineState) -> None:
        while True:
            items = await self.store.read_head(s.name, after=s.headVersion, count=1000)
            self._fold_head(s, items)
            if len(items) < 1000:
                return

    @staticmethod
    def _fold_head(s: PipelineState, items: Iterable[HeadItem]) -> None:
        """Fold entries of the pipeline's stream (declaration events and head references)."""
        for item in items:
            if isinstance(item, ev.Envelope):
                evolve(s, item)
            else:
                evolve_ref(s, item[0], item[1])
        s.tokens.clear()

    async def load_executions(
        self, s: PipelineState, ids: Iterable[str], *, refresh: bool = False
    ) -> None:
        """Make ``s`` hold these executions (read from their streams; with ``refresh``,
        held ones are caught up too). Ids without a stream go to ``s.absent``."""
        for eid in ids:
            x = s.executions.get(eid)
            if x is not None:
                if refresh:
                    for env in await self.store.read_execution(s.name, eid, after=x.version):
                        evolve_execution(s, env)
                    if eid not in s.executions:  # dropped meanwhile (another task's gap)
                        s.executions[eid] = x
                continue
            envs = await self.store.read_execution(s.name, eid)
            loaded = execution_from(envs)
            if loaded is not None and loaded.started < s.incarnation:
                loaded = None  # of an earlier pipeline of the same name
            if loaded is None:
                if eid not in s.absent:
                    s.absent.append(eid)
                    del s.absent[:-64]
            else:
                s.executions[eid] = loaded
                # decide numbers new events after the state's version: never behind what
                # it holds
                s.version = max(s.version, loaded.version)
                if eid in s.absent:
                    s.absent.remove(eid)

    async def latest_state(self, pipeline: str) -> PipelineState:
        """The head plus the executions GetPipelineState shows (the latest in each stage)."""
        s = await self.load(pipeline)
        await self.load_executions(s, list(s.stageLatest.values()), refresh=True)
        return s

    # --- commands ----------------------------------------------------------------------------

    async def execute(
        self,
        pipeline: str,
        cmd: c.Command,
        origin: Origin = SYSTEM,
        *,
        command_id: str | None = None,
        assume: PipelineState | None = None,
        leases: Leasing | None = None,
    ) -> Outcome:
        """Decide and append ``cmd``; raises DomainError when the domain refuses it.

        ``assume``: for a runner's own attempt (``attempt_local``), a state that holds what
        the decision depends on (the scheduled action): decided and appended against that
        action's last event first, without reading anything; when the action changed
        meanwhile, decided again on a fresh read. ``leases``: a runner's lease to take or
        release in the same atomic append (only if it goes through).

        Commands on the same pipeline from this process take turns: concurrent ones would
        only conflict with each other at the append. Optimistic concurrency still arbitrates
        between processes.
        """
        command_id = command_id or origin.commandId
        turn = self._turns.get(pipeline)
        if turn is None:
            turn = self._turns[pipeline] = _Turn()
        turn.users += 1
        try:
            try:
                turn.lock.acquire_nowait()  # the usual case: no yield to the event loop
            except anyio.WouldBlock:
                await turn.lock.acquire()
            try:
                if assume is not None and attempt_local(cmd) is not None:
                    done = await self._assumed(assume, cmd, origin, command_id, leases)
                    if done is not None:
                        return done
                return await self._execute(pipeline, cmd, origin, command_id, leases)
            finally:
                turn.lock.release()
        finally:
            turn.users -= 1
            if not turn.users:
                del self._turns[pipeline]

    def ctx(self, origin: Origin, command_id: str | None) -> Ctx:
        return Ctx(
            now=self.clock(),
            new_id=self.new_id,
            actor=origin.actor,
            correlationId=origin.correlationId,
            causationId=origin.causationId,
            commandId=command_id,
            requestId=origin.requestId,
            source=origin.source,
            claimed=origin.claimed,
        )

    async def prepare(self, s: PipelineState, cmd: c.Command, *, refresh: bool = False) -> None:
        """Load what ``cmd`` is known to need before deciding (saves a NeedExecutions);
        with ``refresh`` also catch up the ones already held."""
        wanted = _wanted(cmd)
        if isinstance(cmd, c.StartExecution) and cmd.clientRequestToken is not None:
            found = await self.store.token_execution(s.name, cmd.clientRequestToken)
            if found is not None:
                s.tokens[cmd.clientRequestToken] = found
        if isinstance(cmd, c.PutApproval):
            found = await self.store.approval_execution(s.name, cmd.token)
            if found is not None:
                wanted.append(found)
        if not refresh:
            wanted = [e for e in wanted if e not in s.executions]
        if wanted:
            await self.load_executions(s, wanted, refresh=refresh)

    def batch(
        self,
        s: PipelineState,
        cmd: c.Command,
        events: list[ev.Envelope],
        command_id: str | None,
        leases: Leasing | None = None,
    ) -> Batch:
        """The append of ``events`` decided on ``s``: what they were decided on is expected."""
        take, release = leases if leases is not None else ([], [])
        attempt = attempt_local(cmd)
        if attempt is not None:  # one execution, one attempt: its own last event is expected
            eid, aid = attempt
            x = s.executions[eid]
            return Batch(
                s.name,
                events,
                attempt_expected={eid: (aid, attempt_seq(x, aid))},
                command_id=command_id,
                leases=list(take),
                release=list(release),
            )
        return decided_on(s, events, command_id, leases=list(take), release=list(release))

    def commit_local(self, s: PipelineState, events: Iterable[ev.Envelope]) -> None:
        """Fold events this process appended into its state."""
        for env in events:
            evolve(s, env)
        s.tokens.clear()

    async def _drop_if_ahead(self, s: PipelineState) -> None:
        """Drop a cache that is ahead of the store (Redis lost acknowledged writes): found
        when the pipeline's stream, or the stream of an execution it holds, now ends before
        what the cache folded."""
        if await self.store.head_version(s.name) < s.headVersion:
            self.healed += 1
            self.forget(s.name)
            return
        # bounded first (what trim keeps after every append: the executions in play and the
        # last few), then one pipelined read: a cache that folded a long stretch of history
        # without committing (an owner catching up) cost one round trip per execution here
        trim(s)
        eids = list(s.executions)
        for eid, at in zip(eids, await self.store.execution_versions(s.name, eids), strict=True):
            x = s.executions.get(eid)
            if x is not None and at < x.version:
                self.healed += 1
                del s.executions[eid]

    async def heal(self, s: PipelineState, err: ConcurrencyError) -> PipelineState:
        """After a refused append: ``s`` with what was missed, or re-read when the store
        is behind it (lost writes: the cache is dropped) or too much was missed."""
        if err.behind:
            self.healed += 1
            self.forget(s.name)
            if err.stream == HEAD:  # the snapshot may be what is ahead: fold the stream
                await self.store.drop_snapshot(s.name)
            return await self.load(s.name, list(s.executions))
        if err.attempt:
            await self.load_executions(s, [err.stream], refresh=True)
            return s
        if err.stream == HEAD:
            if err.missing and self._fits(s.headVersion, err):
                self._fold_head(s, err.missing)
            else:
                await self._catch_up_head(s)
            return s
        x = s.executions.get(err.stream)
        if x is not None and err.missing and self._fits(x.version, err):
            for item in err.missing:
                if isinstance(item, ev.Envelope):
                    evolve_execution(s, item)
        else:
            await self.load_executions(s, [err.stream], refresh=True)
        return s

    @staticmethod
    def _fits(at: int, err: ConcurrencyError) -> bool:
        first = err.missing[0]
        seq = first.version if isinstance(first, ev.Envelope) else first[0]
        return at == err.expected and seq > at

    async def _previous(self, pipeline: str, command_id: str | None) -> Outcome | None:
        """The outcome of an earlier append with this command id, if there was one."""
        if command_id is None:
            return None
        found = await self.store.command_versions(pipeline, command_id)
        if found is None:
            return None
        return await self._replayed(pipeline, AppendResult(found[0], found[1], True, found[2]))

    async def _replayed(self, pipeline: str, res: AppendResult) -> Outcome:
        """A repeated command: the events its first run appended, and the current state."""
        events = await self.store.read_appended(pipeline, res.first, res.last, res.streams)
        return Outcome(events, await self.load(pipeline, res.streams), duplicate=True)

    async def _assumed(
        self,
        s: PipelineState,
        cmd: c.Command,
        origin: Origin,
        command_id: str | None,
        leases: Leasing | None,
    ) -> Outcome | None:
        try:
            events = decide(s, cmd, self.ctx(origin, command_id))
        except (DomainError, NeedExecutions):
            return None
        if not events:
            return None
        try:
            res = await self.store.append(self.batch(s, cmd, events, command_id, leases))
        except ConcurrencyError:
            return None
        if res.duplicate:
            return await self._replayed(s.name, res)
        stamped = res.stamp(events)
        self.commit_local(s, stamped)
        return Outcome(stamped, s)

    async def _execute(
        self,
        pipeline: str,
        cmd: c.Command,
        origin: Origin,
        command_id: str | None,
        leases: Leasing | None = None,
    ) -> Outcome:
        s = self.cached(pipeline)
        fresh = s is None
        if s is None:
            s = await self.load(pipeline)
        await self.prepare(s, cmd)
        tries = 0
        while True:
            try:
                events = decide(s, cmd, self.ctx(origin, command_id))
            except NeedExecutions as need:
                await self.load_executions(s, need.ids)
                continue
            except DomainError:
                if not fresh:
                    # a refusal on the cached state may be a stale cache: only a fresh one counts
                    fresh = True
                    await self._drop_if_ahead(s)
                    s = await self.load(pipeline)
                    await self.prepare(s, cmd, refresh=True)
                    continue
                # A repeated command (an SDK retry after a lost reply) is refused by the
                # state it already changed; it gets the first attempt's outcome instead.
                previous = await self._previous(pipeline, command_id)
                if previous is None:
                    raise
                return previous
            finally:
                s.tokens.clear()
            if not events:
                if not fresh:
                    fresh = True
                    s = await self.load(pipeline)
                    await self.prepare(s, cmd, refresh=True)
                    continue
                return Outcome([], s)
            try:
                res = await self.store.append(self.batch(s, cmd, events, command_id, leases))
            except ConcurrencyError as err:
                tries += 1
                if tries >= self.conflict_retries:
                    raise DomainError(
                        "ConflictException",
                        f"Pipeline '{pipeline}' is being changed concurrently; try again",
                        status=409,
                    ) from None
                if tries >= 2:
                    # healing with what the refusals handed back did not converge: the cache
                    # may hold events the store lost at numbers it has since given to other
                    # events (a restart from an older snapshot), which no refusal can show;
                    # the store is the truth: read it afresh
                    self.healed += 1
                    self.forget(pipeline)
                    s = await self.load(pipeline)
                else:
                    s = await self.heal(s, err)
                fresh = True
                continue
            if res.duplicate:
                return await self._replayed(pipeline, res)
            stamped = res.stamp(events)
            self.commit_local(s, stamped)
            trim(s)
            return Outcome(stamped, s)


def decided_on(
    s: PipelineState, events: list[ev.Envelope], command_id: str | None = None, **extra: Any
) -> Batch:
    """The append of ``events`` decided on ``s`` with full optimistic concurrency: the
    pipeline's stream and every execution stream written are expected where ``s`` has them
    (0 for an execution the events start)."""
    expected: dict[str, int] = {}
    for env in events:
        eid = ev.execution_of(env.event)
        if eid is not None and eid not in expected:
            held = s.executions.get(eid)
            expected[eid] = held.version if held is not None else 0
    return Batch(
        s.name,
        events,
        head_expected=s.headVersion,
        exec_expected=expected,
        command_id=command_id,
        **extra,
    )


def attempt_seq(x: ExecutionState, aid: str) -> int:
    """The seq of the last event about action execution ``aid`` in execution ``x``."""
    a = x.actions.get(aid)
    return a.seq if a is not None else 0
