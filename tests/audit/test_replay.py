"""``audit replay``: a fold from scratch gives the live state, and ``--as-of`` gives what
GetPipelineState returned at that time or version."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from app import queries
from app.audit import AsOf, common, parse_as_of, projection, replay, replay_pipeline
from app.audit.common import AuditError, parse_time
from app.domain.state import PipelineState, encode_head
from tests.audit.scenario import T0, Scenario


def same_as_live(replayed: PipelineState, live: PipelineState) -> None:
    """The engine's state (its head and the executions it loaded, each from its own
    stream) is the replay's head and the replay's executions."""
    assert encode_head(replayed) == encode_head(live)
    assert live.executions
    for eid, x in live.executions.items():
        assert msgspec.to_builtins(replayed.executions[eid]) == msgspec.to_builtins(x), eid


async def test_replay_equals_the_live_state(scenario: Scenario) -> None:
    sc = scenario
    r = await replay_pipeline(sc.engine.store, sc.name, batch=7)  # many small batches
    live = await sc.engine.pipeline(sc.name)  # the head and the latest executions
    same_as_live(r.state, live)
    assert set(r.state.executions) == {sc.exec1, sc.exec2}
    full = await sc.engine.full_state(sc.name)
    assert msgspec.json.encode(r.state) == msgspec.json.encode(full)
    assert r.events == await sc.engine.store.version(sc.name) == r.state.version
    doc = projection(r, full=True)
    assert doc["pipelineState"] == queries.get_pipeline_state(live)
    assert doc["state"] == msgspec.to_builtins(full) and doc["exists"]


async def test_replay_reads_in_bounded_pieces(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With chunks of 2, no read returns more than 2 entries (the first chunks read ahead
    included), and the result is the full fold."""
    sc = scenario
    store = sc.engine.store
    sizes: list[int] = []
    real_head, real_exec, real_ahead = store.read_head, store.read_execution, common.prefetched

    async def head(*a: Any, **kw: Any) -> Any:
        got = await real_head(*a, **kw)
        sizes.append(len(got))
        return got

    async def execution(*a: Any, **kw: Any) -> Any:
        got = await real_exec(*a, **kw)
        sizes.append(len(got))
        return got

    async def ahead(*a: Any, **kw: Any) -> Any:
        got = await real_ahead(*a, **kw)
        sizes.extend(len(src.first[0]) for src in got)
        return got

    monkeypatch.setattr(store, "read_head", head)
    monkeypatch.setattr(store, "read_execution", execution)
    monkeypatch.setattr(common, "prefetched", ahead)
    r = await replay_pipeline(store, sc.name, batch=2)
    assert max(sizes) == 2 and sum(sizes) >= r.events
    monkeypatch.undo()
    assert msgspec.json.encode(r.state) == msgspec.json.encode(await sc.engine.full_state(sc.name))


class Stream:
    """An in-memory stream for merge_sources: seqs, read in chunks, reads recorded."""

    def __init__(self, name: str, seqs: list[int], log: list[tuple[str, int]], start: int = 0):
        self.name, self.seqs, self.log = name, seqs, log
        self.start = start or seqs[0]

    def source(self, order: int, chunk: int = 3) -> common.Source[int]:
        async def fetch(pos: int | None) -> tuple[list[int], int, bool]:
            after = pos or 0
            got = [s for s in self.seqs if s > after][:chunk]
            self.log.append((self.name, after))
            return got, got[-1] if got else after, len(got) < chunk

        return common.Source(self.name, self.start, order, fetch)


async def _merge(head: Stream | None, streams: list[Stream]) -> list[tuple[str, int]]:
    async def gen() -> Any:
        for i, st in enumerate(streams, 1):
            yield st.source(i)

    out: list[tuple[str, int]] = []
    async for chunk in common.merge_sources(
        head.source(0) if head else None, gen(), lambda x: x, batch=4
    ):
        assert len(chunk) <= 4
        out += chunk
    return out


@pytest.mark.anyio
async def test_merge_opens_a_stream_at_its_start_and_drops_it_at_its_end() -> None:
    """A thousand short executions one after the other, the pipeline's stream alongside:
    the merge is in seq order, and an execution's stream is first read only once the
    previous one was read to its end (at most two open at any time)."""
    log: list[tuple[str, int]] = []
    execs = [Stream(f"x{i}", list(range(10 * i + 2, 10 * i + 11)), log) for i in range(1000)]
    head = Stream("-", [1] + [10 * i + 11 for i in range(1000)], log)
    got = await _merge(head, execs)
    assert [s for _, s in got] == list(range(1, 10_002))
    assert all(name == ("-" if s % 10 == 1 else f"x{(s - 2) // 10}") for name, s in got)
    opened = [name for name, after in log if after == 0 and name != "-"]
    assert opened == [f"x{i}" for i in range(1000)]
    reads = [name for name, _ in log]
    for i in range(999):  # x(i+1) is first read after x(i)'s last read: one open at a time
        last_of_i = len(reads) - 1 - reads[::-1].index(f"x{i}")
        assert reads.index(f"x{i + 1}") > last_of_i


@pytest.mark.anyio
async def test_merge_interleaves_overlapping_streams_and_refuses_a_lying_index() -> None:
    log: list[tuple[str, int]] = []
    a = Stream("a", [2, 4, 6, 8, 10, 12], log)
    b = Stream("b", [3, 5, 7, 9], log)
    c = Stream("c", [11, 13], log)
    got = await _merge(Stream("-", [1], log), [a, b, c])
    assert [s for _, s in got] == list(range(1, 14))
    liar = Stream("d", [5, 6], log, start=20)  # the index says it starts later than it does
    with pytest.raises(common.OutOfOrder, match="stream d holds seq 5"):
        await _merge(None, [Stream("e", [1, 7, 30], log), liar])


@pytest.mark.parametrize("point", ["version", "time"])
async def test_as_of_gives_what_get_pipeline_state_gave(scenario: Scenario, point: str) -> None:
    sc = scenario
    assert len(sc.captures) == 5
    for cap in sc.captures:
        as_of = AsOf(version=cap.version) if point == "version" else AsOf(time=cap.time)
        r = await replay_pipeline(sc.engine.store, sc.name, as_of=as_of, batch=5)
        assert r.state.version == cap.version
        assert projection(r)["pipelineState"] == cap.document
        same_as_live(r.state, cap.live)
        assert msgspec.json.encode(r.state) == msgspec.json.encode(cap.state)


async def test_as_of_before_creation_and_after_the_end(scenario: Scenario) -> None:
    sc = scenario
    before = await replay_pipeline(sc.engine.store, sc.name, as_of=AsOf(time=T0 - 60))
    assert projection(before) == {
        "pipeline": sc.name,
        "version": 0,
        "events": 0,
        "exists": False,
        "pipelineState": None,
        "asOf": str(AsOf(time=T0 - 60)),
    }
    after = await replay_pipeline(sc.engine.store, sc.name, as_of=AsOf(version=10_000))
    assert after.state.version == sc.captures[-1].version


async def test_replay_all_and_deleted_pipelines(scenario: Scenario) -> None:
    sc = scenario
    from tests.audit.scenario import declaration

    await sc.engine.create_pipeline(declaration("gone"))
    await sc.engine.delete_pipeline("gone")
    got = {r.pipeline: projection(r) async for r in replay(sc.engine.store)}
    assert set(got) == {sc.name, "gone"}
    assert got["gone"]["exists"] is False and got["gone"]["version"] == 2
    assert got[sc.name]["pipelineState"] == sc.captures[-1].document


def test_points_in_time() -> None:
    assert parse_as_of("17") == AsOf(version=17)
    assert parse_as_of("v3") == AsOf(version=3)
    assert parse_as_of("2023-11-14T22:13:20Z") == AsOf(time=T0)
    assert parse_as_of("2023-11-14T22:13:20") == AsOf(time=T0)  # no zone: UTC
    assert parse_as_of("2023-11-14T23:13:20+01:00") == AsOf(time=T0)
    assert parse_as_of("@1700000000.5") == AsOf(time=T0 + 0.5)
    assert parse_time("2h", now=T0) == T0 - 7200
    assert parse_time("1d", now=T0) == T0 - 86400
    for bad in ("yesterday", "@x", "12:00"):
        with pytest.raises(AuditError, match="invalid time"):
            parse_as_of(bad)
