"""Property tests of the per-stream pieces of the domain, on the random runs of
``test_properties``:

(a) ``CompleteAction/LoseAction(consequences=False)`` then ``Advance`` gives exactly the
    events and the state of the same command with its consequences;
(b) ``decide_many`` equals deciding and folding the commands one by one;
(c) deciding on a partial state (the head folded from the references of the pipeline's
    stream, only some executions, loading what ``NeedExecutions`` asks for, marking absent
    ones) gives the same events as deciding on the full state (ids and versions aside);
(d) the head folded with ``evolve_ref`` equals the head of the full fold (``encode_head``);
(e) ``execution_from`` over an execution's own stream equals the full fold's execution, and
    catching a loaded execution up with ``evolve_execution`` equals it too;
(f) folding events a second time changes nothing (each part keeps its version).
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from app.domain import commands as c
from app.domain import events as ev
from app.domain.decide import Ctx, decide, decide_many
from app.domain.errors import DomainError
from app.domain.state import (
    NeedExecutions,
    PipelineState,
    copy_state,
    decode_head,
    encode_head,
    evolve,
    evolve_execution,
    evolve_ref,
    execution_from,
    fold,
    head_of,
    new_state,
)
from tests.domain.helpers import Harness, IdGen, encode
from tests.domain.test_properties import OPS, SETTINGS, Run, _command, runs

NOW = 1_800_000_000.0


# --- building states the way the repository does ----------------------------------------------


def stream_of(log: Iterable[ev.Envelope], eid: str) -> list[ev.Envelope]:
    """An execution's own stream: every event of that execution."""
    return [e for e in log if ev.execution_of(e.event) == eid]


def head_from_refs(name: str, log: Iterable[ev.Envelope]) -> PipelineState:
    """The head as the repository folds it from the pipeline's stream: declaration events in
    full, head events from their (encoded and decoded) references."""
    s = new_state(name)
    s.partial = True
    for e in log:
        kind = type(e.event)
        if kind in ev.PIPELINE_EVENTS:
            evolve(s, e)
        elif kind in ev.HEAD_EVENTS:
            ref = ev.decode_ref(ev.encode_ref(ev.head_ref(e.event)))
            evolve_ref(s, e.version, ref)
    return s


def load(s: PipelineState, log: list[ev.Envelope], eid: str) -> None:
    """Load one execution into a partial state from its stream (``absent`` when it has none
    in this incarnation of the pipeline), like ``PipelineRepository.load_executions``.

    It also keeps ``s.version`` at least the loaded execution's version: without that the
    events a decision emits are numbered at or below the execution's version and are not
    folded into it (see ``test_decide_on_a_loaded_execution_newer_than_the_head``)."""
    x = execution_from(stream_of(log, eid))
    if x is not None and x.started < s.incarnation:
        x = None
    if x is None:
        if eid not in s.absent:
            s.absent.append(eid)
        return
    s.executions[eid] = x
    s.version = max(s.version, x.version)


def partial_of(name: str, log: list[ev.Envelope], keep: Iterable[str]) -> PipelineState:
    s = head_from_refs(name, log)
    for eid in keep:
        load(s, log, eid)
    return s


def at(run: Run, data: st.DataObject) -> int:
    """A log length between two commands of the run."""
    return data.draw(st.sampled_from(run.boundaries), label="boundary")


def harness_at(run: Run, k: int) -> Harness:
    """A harness on the state after the first ``k`` events of the run (fresh ids)."""
    h = Harness(run.h.name)
    h.state = fold(h.name, run.h.log[:k])
    h.log = list(run.h.log[:k])
    h.ids.n = run.h.ids.n
    h.exec_ids.n = run.h.exec_ids.n
    h.now = run.h.now
    return h


def ctx_at(n: int, now: float = NOW) -> Ctx:
    ids = IdGen(prefix=0xA)
    ids.n = n
    return Ctx(now=now, new_id=ids, actor="prop")


def body(envs: Iterable[ev.Envelope]) -> list[bytes]:
    """Events without their envelope ids and versions."""
    return [msgspec.json.encode((e.event, e.time, e.actor)) for e in envs]


def in_progress(s: PipelineState) -> list[tuple[str, str]]:
    return sorted(
        (eid, a.actionExecutionId)
        for eid, x in s.executions.items()
        for a in x.actions.values()
        if a.status == "InProgress"
    )


# --- (a) a result on its own + Advance == the result with its consequences ---------------------


def _split_equals_full(s: PipelineState, full: c.Command, alone: c.Command) -> None:
    ctx = ctx_at(0)
    try:
        events = decide(s, full, ctx)
    except DomainError as err:
        try:
            decide(s, alone, ctx_at(0))
        except DomainError as err2:
            assert (err2.type_name, err2.message) == (err.type_name, err.message)
            return
        raise AssertionError(f"only the full command was refused: {err}") from None
    expected = fold(s.name, events, copy_state(s))

    ctx2 = ctx_at(0)
    first = decide(s, alone, ctx2)
    assert len(first) <= 1
    if first:
        assert isinstance(first[0].event, ev.ActionExecutionSucceeded | ev.ActionExecutionFailed), (
            first
        )
    got = fold(s.name, first, copy_state(s))
    aid = getattr(full, "actionExecutionId")  # noqa: B009
    advance = c.Advance(executionId=getattr(full, "executionId"), actionExecutionId=aid)  # noqa: B009
    rest = decide(got, advance, ctx2)
    fold(s.name, rest, got)

    assert first + rest == events
    assert encode(got) == encode(expected)
    # Advance is idempotent: once its consequences are folded, it has nothing more to do
    assert decide(got, advance, ctx_at(100)) == []


@SETTINGS
@given(runs(), st.data())
def test_result_alone_then_advance_equals_complete(run: Run, data: st.DataObject) -> None:
    s = fold(run.h.name, run.h.log[: at(run, data)])
    for eid, aid in in_progress(s)[:6]:
        worker = data.draw(st.sampled_from([None, "w1", "w2"]), label="worker")
        ok = data.draw(st.booleans(), label="succeeded")
        kw = dict(executionId=eid, actionExecutionId=aid, worker=worker)
        done = dict(succeeded=ok, errorCode=None if ok else "E", message="m", summary="s")
        _split_equals_full(
            s, c.CompleteAction(**kw, **done), c.CompleteAction(**kw, **done, consequences=False)
        )
        _split_equals_full(s, c.LoseAction(**kw), c.LoseAction(**kw, consequences=False))


# --- (b) decide_many == one by one -----------------------------------------------------------


@SETTINGS
@given(runs(), st.data())
def test_decide_many_equals_one_by_one(run: Run, data: st.DataObject) -> None:
    k = at(run, data)
    shadow = harness_at(run, k)
    start = copy_state(shadow.state)
    ids_one, ids_many = IdGen(prefix=0xB), IdGen(prefix=0xB)
    items: list[tuple[c.Command, Ctx]] = []
    one_events: list[ev.Envelope] = []
    one_refused: list[tuple[c.Command, str, str]] = []
    for i in range(data.draw(st.integers(1, 8), label="n")):
        cmd = _command(shadow, data.draw(st.sampled_from(OPS), label="op"), data)
        if cmd is None:
            continue
        now = NOW + i
        items.append((cmd, Ctx(now=now, new_id=ids_many, actor=f"a{i}")))
        try:
            envs = decide(shadow.state, cmd, Ctx(now=now, new_id=ids_one, actor=f"a{i}"))
        except DomainError as err:
            one_refused.append((cmd, err.type_name, err.message))
            continue
        fold(shadow.name, envs, shadow.state)
        one_events += envs
    if not items:
        return
    events, refused = decide_many(start, items)
    assert encode(start) == encode(fold(run.h.name, run.h.log[:k])), "decide_many mutated"
    assert events == one_events
    assert [(cmd, e.type_name, e.message) for cmd, e in refused] == one_refused
    assert encode(fold(start.name, events, start)) == encode(shadow.state)


# --- (c) partial state decides like the full state -------------------------------------------


def decide_partial(
    s: PipelineState, log: list[ev.Envelope], cmd: c.Command, n: int
) -> tuple[list[ev.Envelope], list[str]]:
    """Decide on a partial state, loading what it asks for; also returns what was loaded."""
    asked: list[str] = []
    for _ in range(20):
        try:
            return decide(s, cmd, ctx_at(n)), asked
        except NeedExecutions as need:
            assert need.ids and not set(need.ids) & set(s.executions), need.ids
            assert not set(need.ids) & set(s.absent), need.ids
            asked += need.ids
            for eid in need.ids:
                load(s, log, eid)
    raise AssertionError("NeedExecutions loop")


def _prepare(s: PipelineState, full: PipelineState, log: list[ev.Envelope], cmd: c.Command) -> None:
    """What ``PipelineRepository.prepare`` looks up in the store's indexes."""
    if isinstance(cmd, c.StartExecution) and cmd.clientRequestToken is not None:
        found = full.tokens.get(cmd.clientRequestToken)
        if found is not None:
            s.tokens[cmd.clientRequestToken] = found
    if isinstance(cmd, c.PutApproval):
        for eid, x in full.executions.items():
            if any(a.token == cmd.token for a in x.actions.values()) and eid not in s.executions:
                load(s, log, eid)


@SETTINGS
@given(runs(), st.data())
def test_partial_state_decides_like_full_state(run: Run, data: st.DataObject) -> None:
    k = at(run, data)
    log = run.h.log[:k]
    shadow = harness_at(run, k)
    full = shadow.state
    everyone = sorted({eid for e in log if (eid := ev.execution_of(e.event)) is not None})
    keep = (
        data.draw(st.lists(st.sampled_from(everyone), unique=True), label="keep")
        if everyone
        else []
    )
    for i in range(1, 4):
        cmd = _command(shadow, data.draw(st.sampled_from(OPS), label="op"), data)
        if cmd is None:
            continue
        partial = partial_of(run.h.name, log, keep)
        assert encode_head(partial) == encode_head(full)
        _prepare(partial, full, log, cmd)
        try:
            expected = decide(full, cmd, ctx_at(1000 * i))
        except DomainError as err:
            try:
                decide_partial(partial, log, cmd, 1000 * i)
            except DomainError as err2:
                assert (err2.type_name, err2.message) == (err.type_name, err.message)
                continue
            raise AssertionError(f"refused on the full state only: {err}") from None
        got, asked = decide_partial(partial, log, cmd, 1000 * i)
        assert body(got) == body(expected)
        assert [e.id for e in got] == [e.id for e in expected]
        # what it asked for exists, or is marked absent
        for eid in asked:
            assert eid in partial.executions or eid in partial.absent
        fold(shadow.name, expected, full)
        log = [*log, *expected]
        shadow.log = log


# --- (d) the head from references, (e) executions from their own streams ----------------------


@SETTINGS
@given(runs(), st.data())
def test_head_from_references_equals_head_of_full_fold(run: Run, data: st.DataObject) -> None:
    log = run.h.log
    k = data.draw(st.integers(0, len(log)), label="k")
    for prefix in (log[:k], log):
        full = fold(run.h.name, prefix)
        refs = head_from_refs(run.h.name, prefix)
        assert encode_head(refs) == encode_head(full)
        assert refs.headVersion == full.headVersion
        assert refs.executions == {}
        # the snapshot form decodes to the same head (partial)
        back = decode_head(encode_head(full))
        assert back.partial and back.executions == {} and back.tokens == {}
        assert encode_head(back) == encode_head(full)
        assert back.version == full.headVersion
    # references read again (a retried read, a dispatch stream) change nothing
    refs = head_from_refs(run.h.name, log)
    for e in log[k:]:
        if type(e.event) in ev.HEAD_EVENTS:
            evolve_ref(refs, e.version, ev.head_ref(e.event))
    assert encode_head(refs) == encode_head(run.h.state)
    assert refs.version == max(
        [
            0,
            *(
                e.version
                for e in log
                if type(e.event) in ev.HEAD_EVENTS or type(e.event) in ev.PIPELINE_EVENTS
            ),
        ]
    )
    # head_of leaves the state it is given alone
    before = encode(full)
    head_of(full)
    assert encode(full) == before


@SETTINGS
@given(runs(), st.data())
def test_execution_from_its_stream_equals_full_fold(run: Run, data: st.DataObject) -> None:
    log = run.h.log
    full = run.h.state
    for eid, x in full.executions.items():
        own = stream_of(log, eid)
        assert msgspec.json.encode(execution_from(own)) == msgspec.json.encode(x), eid
        assert x.started == own[0].version and x.version == own[-1].version
        # read twice (a dispatch stream and the log): the same execution
        twice = execution_from(own + own[data.draw(st.integers(0, len(own)), label="i") :])
        assert msgspec.json.encode(twice) == msgspec.json.encode(x)
        if len(own) > 1:
            assert execution_from(own[1:]) is None  # a stream must begin with the start


@SETTINGS
@given(runs(), st.data())
def test_loaded_executions_caught_up_equal_full_fold(run: Run, data: st.DataObject) -> None:
    """What the repository does: load at some point, then fold the head's references and
    each held execution's events that came after."""
    log = run.h.log
    k = at(run, data)
    full_k = fold(run.h.name, log[:k])
    keep = sorted(full_k.executions)
    s = partial_of(run.h.name, log[:k], keep)
    for e in log[k:]:
        kind = type(e.event)
        if kind in ev.PIPELINE_EVENTS:
            evolve(s, e)
        else:
            if kind in ev.HEAD_EVENTS:
                evolve_ref(s, e.version, ev.head_ref(e.event))
            evolve_execution(s, e)
            evolve_execution(s, e)  # read twice (the log and a dispatch stream): no change
    full = run.h.state
    assert encode_head(s) == encode_head(full)
    assert s.version == full.version
    for eid, x in s.executions.items():
        if eid in full.executions:
            assert msgspec.json.encode(x) == msgspec.json.encode(full.executions[eid]), eid


# --- (f) folding twice changes nothing ---------------------------------------------------------


@SETTINGS
@given(runs(), st.data())
def test_folding_events_again_changes_nothing(run: Run, data: st.DataObject) -> None:
    log = run.h.log
    k = data.draw(st.integers(0, len(log)), label="k")
    s = fold(run.h.name, log)
    fold(run.h.name, log[k:], s)
    if not any(isinstance(e.event, ev.PipelineDeleted) for e in log[k:]):
        # (after a deletion a full state re-creates a deleted execution: see
        # test_streams.test_refolding_a_deleted_execution_start_changes_nothing)
        assert encode(s) == encode(run.h.state)
    # ... and a partial state that folds everything again keeps what it holds equal too
    p = copy_state(run.h.state)
    p.partial = True
    fold(run.h.name, log[k:], p)
    assert encode_head(p) == encode_head(run.h.state)
    assert p.executions == run.h.state.executions
