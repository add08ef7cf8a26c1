"""``audit replay``: a fold from scratch gives the live state, and ``--as-of`` gives what
GetPipelineState returned at that time or version."""

from __future__ import annotations

import msgspec
import pytest

from app import queries
from app.audit import AsOf, parse_as_of, projection, replay, replay_pipeline
from app.audit.common import AuditError, parse_time
from tests.audit.scenario import T0, Scenario


async def test_replay_equals_the_live_state(scenario: Scenario) -> None:
    sc = scenario
    r = await replay_pipeline(sc.engine.store, sc.name, batch=7)  # many small batches
    live = await sc.engine.pipeline(sc.name)
    assert msgspec.json.encode(r.state) == msgspec.json.encode(live)
    assert r.events == live.version
    doc = projection(r, full=True)
    assert doc["pipelineState"] == queries.get_pipeline_state(live)
    assert doc["state"] == msgspec.to_builtins(live) and doc["exists"]


@pytest.mark.parametrize("point", ["version", "time"])
async def test_as_of_gives_what_get_pipeline_state_gave(scenario: Scenario, point: str) -> None:
    sc = scenario
    assert len(sc.captures) == 5
    for cap in sc.captures:
        as_of = AsOf(version=cap.version) if point == "version" else AsOf(time=cap.time)
        r = await replay_pipeline(sc.engine.store, sc.name, as_of=as_of, batch=5)
        assert r.state.version == cap.version
        assert projection(r)["pipelineState"] == cap.document
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
