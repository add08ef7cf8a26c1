"""The application service between the pure domain and the event store.

``load`` gives the current state of a pipeline: a per-process cache, else the stored
projection snapshot, else a fold from the first event, in every case caught up with the
events appended since. ``execute`` runs ``decide`` on that state and appends the result
at the state's version; when another writer got there first it re-reads and decides again,
a few times, then gives up with ConflictException (SPEC check 7).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from app.domain import commands as c
from app.domain import events as ev
from app.domain.decide import Ctx, decide
from app.domain.errors import DomainError
from app.domain.state import PipelineState, evolve, new_state
from app.store.eventstore import ConcurrencyError, EventStore


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

    def forget(self, pipeline: str | None = None) -> None:
        if self._cache is None:
            return
        if pipeline is None:
            self._cache.clear()
        else:
            self._cache.pop(pipeline, None)

    def observe(self, env: ev.Envelope) -> None:
        """Fold an event seen elsewhere (a dispatch stream's copy of a log entry: the same
        payload at the same version) into the cached state if it is the very next one, so
        the next command on the pipeline need not read it from the log first."""
        s = self._cache.get(env.pipeline) if self._cache is not None else None
        if s is not None and env.version == s.version + 1:
            evolve(s, env)

    async def load(self, pipeline: str) -> PipelineState:
        """The pipeline's state as of the latest event in the store.

        The returned object is shared with the cache: treat it as read-only.
        """
        s = self._cache.get(pipeline) if self._cache is not None else None
        if s is None:
            s = await self.store.load_snapshot(pipeline) or new_state(pipeline)
            if self._cache is not None:
                self._cache[pipeline] = s
        async for chunk in self.store.iter_events(pipeline, after=s.version):
            for env in chunk:
                if env.version == s.version + 1:
                    evolve(s, env)
        return s

    async def execute(
        self,
        pipeline: str,
        cmd: c.Command,
        origin: Origin = SYSTEM,
        *,
        command_id: str | None = None,
    ) -> Outcome:
        """Decide and append ``cmd``; raises DomainError when the domain refuses it.

        Commands on the same pipeline from this process take turns: concurrent ones would
        only conflict with each other at the append (each conflict costs a re-read and a
        new decision, and enough of them end in ConflictException). Optimistic concurrency
        still arbitrates between processes.
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
                return await self._execute(pipeline, cmd, origin, command_id)
            finally:
                turn.lock.release()
        finally:
            turn.users -= 1
            if not turn.users:
                del self._turns[pipeline]

    def _ctx(self, origin: Origin, command_id: str | None) -> Ctx:
        return Ctx(
            now=self.clock(),
            new_id=self.new_id,
            actor=origin.actor,
            correlationId=origin.correlationId,
            causationId=origin.causationId,
            commandId=command_id,
            requestId=origin.requestId,
            source=origin.source,
        )

    async def _append(
        self,
        pipeline: str,
        s: PipelineState,
        events: list[ev.Envelope],
        command_id: str | None,
    ) -> Outcome:
        """Append at ``s.version`` (raises ConcurrencyError) and fold into ``s``."""
        expected = s.version
        res = await self.store.append(pipeline, expected, events, command_id=command_id)
        if res.duplicate:
            return await self._replayed(pipeline, res.first, res.last)
        if s.version == expected:
            for env in events:
                evolve(s, env)
        return Outcome(events, s)

    async def _previous(self, pipeline: str, command_id: str | None) -> Outcome | None:
        """The outcome of an earlier append with this command id, if there was one."""
        if command_id is None:
            return None
        versions = await self.store.command_versions(pipeline, command_id)
        if versions is None:
            return None
        return await self._replayed(pipeline, *versions)

    async def _replayed(self, pipeline: str, first: int, last: int) -> Outcome:
        """A repeated command: the events its first run appended, and the current state."""
        events = await self.store.read(pipeline, after=first - 1, until=last)
        return Outcome(events, await self.load(pipeline), duplicate=True)

    @staticmethod
    def _caught_up(s: PipelineState, err: ConcurrencyError) -> PipelineState | None:
        """``s`` with the events that the refused append sent back folded in, if they bring
        it to the stream's version (what a read would give, without the read); else None."""
        for env in err.missing:
            if env.version == s.version + 1:
                evolve(s, env)
        return s if s.version == err.actual else None

    async def _execute(
        self, pipeline: str, cmd: c.Command, origin: Origin, command_id: str | None
    ) -> Outcome:
        s: PipelineState | None = None
        cached = self._cache.get(pipeline) if self._cache is not None else None
        if cached is not None:
            # Optimistic first try on the cached state, without reading the log first (one
            # round trip less). If the append goes through, the stream was at the cached
            # version: the cache held every event and the decision is the one a fresh read
            # would have given. A refusal, nothing to do, or a conflict may come from a stale
            # cache: those are decided again below on a fresh read, which alone counts.
            try:
                events = decide(cached, cmd, self._ctx(origin, command_id))
            except DomainError:
                events = []
            if events:
                try:
                    return await self._append(pipeline, cached, events, command_id)
                except ConcurrencyError as err:
                    s = self._caught_up(cached, err)
        for _ in range(self.conflict_retries):
            if s is None:
                s = await self.load(pipeline)
            try:
                events = decide(s, cmd, self._ctx(origin, command_id))
            except DomainError:
                # A repeated command (an SDK retry after a lost reply) is refused by the
                # state it already changed; it gets the first attempt's outcome instead.
                previous = await self._previous(pipeline, command_id)
                if previous is None:
                    raise
                return previous
            if not events:
                return Outcome([], s)
            try:
                return await self._append(pipeline, s, events, command_id)
            except ConcurrencyError as err:
                s = self._caught_up(s, err)
        raise DomainError(
            "ConflictException",
            f"Pipeline '{pipeline}' is being changed concurrently; try again",
            status=409,
        )
