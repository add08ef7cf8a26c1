"""``audit replay``: a fold from scratch gives the live state, and ``--as-of`` gives what
GetPipelineState returned at that time or version."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from app import queries
from app.audit import AsOf, parse_as_of, projection, replay, replay_pipeline
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


async def test_replay_reads_in_bounded_pieces(scenario: Scenario) -> None:
    """The merge reads each stream in chunks and opens an execution's stream only when it
    gets to its start: with chunks of 2, no read returns more than 2 entries, and the
    second execution's stream is first read after the first one's has been read to its
    end (the two executions did not overlap)."""
    sc = scenario
    store = sc.engine.store
    reads: list[tuple[str, int]] = []
    real_head, real_exec = store.read_head, store.read_execution

    async def head(*a: Any, **kw: Any) -> Any:
        got = await real_head(*a, **kw)
        reads.append(("-", len(got)))
        return got

    async def execution(p: str, eid: str, *a: Any, **kw: Any) -> Any:
        got = await real_exec(p, eid, *a, **kw)
        reads.append((eid, len(got)))
        return got

    store.read_head, store.read_execution = head, execution  # type: ignore[method-assign,assignment]
    try:
        r = await replay_pipeline(store, sc.name, batch=2)
    finally:
        store.read_head, store.read_execution = real_head, real_exec  # type: ignore[method-assign]
    assert msgspec.json.encode(r.state) == msgspec.json.encode(await sc.engine.full_state(sc.name))
    assert max(n for _, n in reads) == 2
    streams = [s for s, _ in reads]
    last_of_1 = len(streams) - 1 - streams[::-1].index(sc.exec1)
    assert streams.index(sc.exec2) > last_of_1


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
