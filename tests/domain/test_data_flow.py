"""Pipeline variables at start, variable resolution at scheduling, artifacts between actions.

Pure: decide + evolve only (tests/domain/helpers.py).
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.domain import commands as c
from app.domain import events as ev
from app.domain.artifacts import (
    ArtifactLocation,
    artifact_problems,
    artifact_producers,
    input_artifacts,
    output_artifact_files,
)
from app.domain.model import PipelineDeclaration
from app.domain.resolution import (
    CONFIGURATION_ERROR,
    declared_variables,
    prepare_action,
    start_variables,
    variable_problems,
)
from tests.domain.helpers import ROLE, Harness, of_type

CMD = {"category": "Compute", "owner": "AWS", "provider": "Commands", "version": "1"}
CUSTOM = {"category": "Build", "owner": "Custom", "provider": "MyBuilder", "version": "1"}


def act(name: str, **kw: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": name, "actionTypeId": CMD, "commands": ["true"]}
    doc.update(kw)
    return doc


def pipeline(stages: dict[str, list[dict[str, Any]]], **kw: Any) -> PipelineDeclaration:
    doc: dict[str, Any] = {
        "name": "p",
        "roleArn": ROLE,
        "stages": [
            {
                "name": n,
                "actions": a,
                **({"onFailure": kw["on_failure"][n]} if n in kw.get("on_failure", {}) else {}),
            }
            for n, a in stages.items()
        ],
    }
    if "variables" in kw:
        doc["variables"] = kw["variables"]
    return msgspec.convert(doc, PipelineDeclaration)


def start(h: Harness, variables: dict[str, str] | None = None) -> str:
    eid = h.exec_ids()
    h.run(c.StartExecution(executionId=eid, variables=variables))
    return eid


def scheduled(h: Harness, eid: str, name: str) -> ev.ActionExecutionScheduled:
    aid = h.aid(eid, name)
    found = [
        e.event
        for e in h.log
        if isinstance(e.event, ev.ActionExecutionScheduled) and e.event.actionExecutionId == aid
    ]
    assert len(found) == 1
    return found[0]


def loc(key: str) -> ArtifactLocation:
    return ArtifactLocation(bucket="b", key=key, store="S3")


# --- pipeline variables ----------------------------------------------------------------------

VARS = [
    {"name": "ENV", "defaultValue": "staging", "description": "where"},
    {"name": "REGION", "defaultValue": "eu-west-1"},
    {"name": "TICKET"},
]


def test_start_variables_defaults_and_overrides() -> None:
    decl = pipeline({"S": [act("a")]}, variables=VARS)
    assert declared_variables(decl) == [
        ("ENV", "staging"),
        ("REGION", "eu-west-1"),
        ("TICKET", None),
    ]
    assert start_variables(decl, "p", {"TICKET": "T-1"}) == {
        "ENV": "staging",
        "REGION": "eu-west-1",
        "TICKET": "T-1",
    }
    assert start_variables(decl, "p", {"TICKET": "T-1", "ENV": "prod"})["ENV"] == "prod"


def test_a_pipeline_without_variables_records_none() -> None:
    decl = pipeline({"S": [act("a")]})
    assert start_variables(decl, "p", None) is None
    assert start_variables(decl, "p", {}) is None


def test_undeclared_variable_is_refused() -> None:
    h = Harness()
    h.create(pipeline({"S": [act("a")]}, variables=VARS[:1]))
    err = h.error(c.StartExecution(executionId=h.exec_ids(), variables={"NOPE": "x"}))
    assert err.type_name == "ValidationException"
    assert "NOPE" in err.message and "not declared" in err.message
    # no variables declared at all: any given one is undeclared
    h2 = Harness()
    h2.create(pipeline({"S": [act("a")]}))
    err = h2.error(c.StartExecution(executionId=h2.exec_ids(), variables={"ENV": "x"}))
    assert err.type_name == "ValidationException"


def test_a_variable_without_default_must_be_given() -> None:
    h = Harness()
    h.create(pipeline({"S": [act("a")]}, variables=VARS))
    err = h.error(c.StartExecution(executionId=h.exec_ids(), variables={"ENV": "prod"}))
    assert err.type_name == "ValidationException"
    assert "TICKET" in err.message and "ENV" not in err.message.split("of pipeline")[0]


def test_resolved_variables_are_recorded_in_execution_started() -> None:
    h = Harness()
    h.create(pipeline({"S": [act("a")]}, variables=VARS))
    eid = start(h, {"TICKET": "T-9", "REGION": "us-east-2"})
    started = of_type(h.log, ev.ExecutionStarted)[-1]
    assert started.variables == {"ENV": "staging", "REGION": "us-east-2", "TICKET": "T-9"}
    assert h.x(eid).variables == started.variables


@pytest.mark.parametrize(
    "variables, problem",
    [
        ([{"name": "A"}, {"name": "A"}], "duplicate pipeline variable name 'A'"),
        ([{"name": "bad name"}], "must match"),
        ([{"name": ""}], "1 to 128"),
        ([{"name": "x" * 129}], "1 to 128"),
        ([{"name": "A", "defaultValue": ""}], "defaultValue must be 1 to 1000"),
        ([{"name": "A", "defaultValue": "v" * 1001}], "defaultValue must be 1 to 1000"),
        ([{"name": "A", "description": "d" * 201}], "description must be at most 200"),
    ],
)
def test_variable_declarations_are_checked_at_create(
    variables: list[dict[str, str]], problem: str
) -> None:
    decl = pipeline({"S": [act("a")]}, variables=variables)
    assert any(problem in p for p in variable_problems(decl))
    h = Harness()
    err = h.error(c.CreatePipeline(declaration=decl))
    assert err.type_name == "InvalidStructureException"
    assert problem in err.message


def test_valid_variable_declarations_at_the_bounds() -> None:
    decl = pipeline(
        {"S": [act("a")]},
        variables=[
            {"name": "x" * 128, "defaultValue": "v" * 1000, "description": "d" * 200},
            {"name": "a@b-c_9", "defaultValue": "v", "description": ""},
        ],
    )
    assert variable_problems(decl) == []


# --- resolution at scheduling ----------------------------------------------------------------


def test_references_are_resolved_when_the_action_is_scheduled() -> None:
    h = Harness()
    h.create(
        pipeline(
            {
                "Build": [act("b", namespace="BuildVariables", outputVariables=["VERSION"])],
                "Deploy": [
                    act(
                        "d",
                        commands=["echo #{BuildVariables.VERSION} to #{variables.ENV}", "true"],
                        configuration={"Target": "#{variables.ENV}-#{codepipeline.PipelineName}"},
                        environmentVariables=[
                            {"name": "V", "value": "#{BuildVariables.VERSION}"},
                            {"name": "PLAIN", "value": "same"},
                        ],
                    )
                ],
            },
            variables=VARS[:1],
        )
    )
    eid = start(h, {"ENV": "prod"})
    assert scheduled(h, eid, "b").resolvedCommands is None  # nothing to resolve
    h.complete(eid, "b", outputVariables={"VERSION": "1.2.3"})
    s = scheduled(h, eid, "d")
    assert s.resolvedCommands == ["echo 1.2.3 to prod", "true"]
    assert s.resolvedConfiguration == {"Target": "prod-p"}
    assert s.resolvedEnvironment == {"V": "1.2.3", "PLAIN": "same"}
    a = h.action(eid, "d")
    assert a.status == "InProgress"
    assert a.resolvedConfiguration == {"Target": "prod-p"}


def test_a_later_run_order_sees_an_earlier_one_of_the_same_stage() -> None:
    h = Harness()
    h.create(
        pipeline(
            {
                "S": [
                    act("first", namespace="N1", runOrder=1),
                    act("second", runOrder=2, commands=["echo #{N1.OUT}"]),
                ]
            }
        )
    )
    eid = start(h)
    h.complete(eid, "first", outputVariables={"OUT": "one"})
    assert scheduled(h, eid, "second").resolvedCommands == ["echo one"]


def test_codepipeline_execution_id_resolves() -> None:
    h = Harness()
    h.create(pipeline({"S": [act("a", commands=["echo #{codepipeline.PipelineExecutionId}"])]}))
    eid = start(h)
    assert scheduled(h, eid, "a").resolvedCommands == [f"echo {eid}"]


def test_secrets_manager_values_are_not_resolved() -> None:
    decl = pipeline(
        {
            "S": [
                act(
                    "a",
                    environmentVariables=[
                        {"name": "S", "value": "#{nope.X}", "type": "SECRETS_MANAGER"}
                    ],
                )
            ]
        }
    )
    h = Harness()
    h.create(decl)
    eid = start(h)
    s = scheduled(h, eid, "a")
    assert s.resolvedEnvironment is None
    assert h.action(eid, "a").status == "InProgress"


def test_an_unresolvable_reference_fails_the_action_without_running_it() -> None:
    h = Harness()
    h.create(
        pipeline(
            {
                "Build": [act("b", namespace="B")],
                "Deploy": [act("d", commands=["echo #{B.MISSING}"])],
            }
        )
    )
    eid = start(h)
    envs = h.complete(eid, "b", outputVariables={"OTHER": "x"})
    a = h.action(eid, "d")
    assert a.status == "Failed"
    assert a.worker is None  # never started
    assert a.errorCode == CONFIGURATION_ERROR
    assert "#{B.MISSING}" in (a.errorMessage or "")
    assert h.x(eid).status == "Failed"
    names = [ev.event_type(e.event) for e in envs]
    i = names.index("ActionExecutionScheduled")
    assert names[i : i + 4] == [
        "ActionExecutionScheduled",
        "ActionExecutionFailed",
        "StageFailed",
        "ExecutionFailed",
    ]
    failed = of_type(envs, ev.ExecutionFailed)[0]
    assert "#{B.MISSING}" in failed.reason
    # the pipeline variables of an unknown name fail the same way
    h2 = Harness()
    h2.create(pipeline({"S": [act("a", configuration={"K": "#{variables.NOPE}"})]}))
    eid2 = start(h2)
    assert h2.action(eid2, "a").status == "Failed"
    assert h2.x(eid2).status == "Failed"


def test_unresolvable_siblings_in_an_auto_retry_stage_retry_once_then_fail() -> None:
    h = Harness()
    on_failure = {"S": {"result": "RETRY", "retryConfiguration": {"retryMode": "FAILED_ACTIONS"}}}
    h.create(
        pipeline(
            {
                "S": [
                    act("a", commands=["echo #{variables.X}"]),
                    act("b", commands=["echo #{variables.Y}"]),
                    act("ok"),
                ]
            },
            on_failure=on_failure,
        )
    )
    eid = start(h)
    assert len(h.attempts(eid, "a")) == 2
    assert len(h.attempts(eid, "b")) == 2
    assert len(h.attempts(eid, "ok")) == 1  # FAILED_ACTIONS: not re-run
    assert all(x.status == "Failed" for x in h.attempts(eid, "a") + h.attempts(eid, "b"))
    assert h.x(eid).status == "Failed"
    assert len(of_type(h.log, ev.StageRetryStarted)) == 1
    assert len(of_type(h.log, ev.ExecutionFailed)) == 1


def test_a_manual_retry_resolves_again_with_what_the_execution_holds_then() -> None:
    h = Harness()
    h.create(
        pipeline(
            {
                "Build": [act("b", namespace="B")],
                "Deploy": [act("d", commands=["echo #{B.V}"])],
            }
        )
    )
    eid = start(h)
    h.complete(eid, "b", outputVariables={"V": "1"})
    h.fail(eid, "d")
    h.retry_now(eid, "Deploy", "FAILED_ACTIONS")
    assert scheduled(h, eid, "d").resolvedCommands == ["echo 1"]


# --- artifacts -------------------------------------------------------------------------------


def artifact_pipeline() -> PipelineDeclaration:
    return pipeline(
        {
            "Build": [
                act(
                    "b",
                    namespace="B",
                    outputArtifacts=[{"name": "Built", "files": ["dist/**"]}, {"name": "Docs"}],
                )
            ],
            "Deploy": [act("d", inputArtifacts=[{"name": "Built"}, {"name": "Docs"}])],
        }
    )


def test_output_artifact_files_keys() -> None:
    b = artifact_pipeline().stages[0].actions[0]
    assert output_artifact_files(b) == {"Built": ["dist/**"], "Docs": []}


def test_input_artifacts_come_from_the_producer_and_are_recorded() -> None:
    h = Harness()
    h.create(artifact_pipeline())
    eid = start(h)
    outs = {"Built": loc("built-1"), "Docs": loc("docs-1")}
    h.complete(eid, "b", outputArtifacts=outs)
    assert h.action(eid, "b").outputArtifacts == outs
    s = scheduled(h, eid, "d")
    assert s.inputArtifacts == outs
    assert list(s.inputArtifacts or {}) == ["Built", "Docs"]  # declaration order
    assert h.action(eid, "d").inputArtifacts == outs


def test_a_retried_producer_re_produces_and_a_later_retry_reuses() -> None:
    h = Harness()
    h.create(artifact_pipeline())
    eid = start(h)
    h.fail(eid, "b")
    h.retry_now(eid, "Build", "FAILED_ACTIONS")
    second = {"Built": loc("built-2"), "Docs": loc("docs-2")}
    h.complete(eid, "b", outputArtifacts=second)
    assert scheduled(h, eid, "d").inputArtifacts == second
    h.fail(eid, "d")
    h.retry_now(eid, "Deploy", "FAILED_ACTIONS")
    assert len(h.attempts(eid, "d")) == 2
    assert scheduled(h, eid, "d").inputArtifacts == second  # the Build stage's, reused


def test_the_latest_succeeded_producer_wins_even_when_an_older_one_succeeded() -> None:
    decl = artifact_pipeline()
    h = Harness()
    h.create(decl)
    eid = start(h)
    h.complete(eid, "b", outputArtifacts={"Built": loc("old"), "Docs": loc("d-old")})
    h.fail(eid, "d")
    # an ALL_ACTIONS retry of Build is not allowed (Build succeeded): fold a newer producer
    x = h.x(eid)
    first = h.action(eid, "b")
    newer = msgspec.structs.replace(
        first,
        actionExecutionId="newer",
        seq=first.seq + 100,
        outputArtifacts={"Built": loc("new")},
    )
    x.actions["newer"] = newer
    assert artifact_producers(x)["Built"] == loc("new")
    assert artifact_producers(x)["Docs"] == loc("d-old")
    failed = msgspec.structs.replace(
        newer,
        actionExecutionId="f",
        seq=first.seq + 200,
        status="Failed",
        outputArtifacts={"Built": loc("failed")},
    )
    x.actions["f"] = failed
    assert artifact_producers(x)["Built"] == loc("new")  # a failed attempt never counts


def test_a_missing_input_artifact_fails_the_action() -> None:
    h = Harness()
    h.create(artifact_pipeline())
    eid = start(h)
    h.complete(eid, "b", outputArtifacts={"Built": loc("built-1")})  # no Docs
    a = h.action(eid, "d")
    assert a.status == "Failed" and a.errorCode == CONFIGURATION_ERROR
    assert "Docs" in (a.errorMessage or "") and "Built" not in (a.errorMessage or "")
    assert h.x(eid).status == "Failed"


def test_input_artifacts_lookup_direct() -> None:
    decl = artifact_pipeline()
    h = Harness()
    h.create(decl)
    eid = start(h)
    d = decl.stages[1].actions[0]
    found, missing = input_artifacts(h.x(eid), d)
    assert (found, missing) == ({}, ["Built", "Docs"])
    prep = prepare_action(decl, h.x(eid), "p", d)
    assert prep.problem is not None and prep.inputs is None


def test_custom_action_configuration_is_resolved_too() -> None:
    h = Harness()
    h.create(
        pipeline(
            {
                "S": [
                    {"name": "c", "actionTypeId": CUSTOM, "configuration": {"K": "#{variables.V}"}}
                ]
            },
            variables=[{"name": "V", "defaultValue": "vv"}],
        )
    )
    eid = start(h)
    assert scheduled(h, eid, "c").resolvedConfiguration == {"K": "vv"}


def test_old_events_without_the_new_fields_still_decode() -> None:
    raw = b'{"type":"ActionExecutionSucceeded","executionId":"x","actionExecutionId":"a"}'
    e = msgspec.json.decode(raw, type=ev.AnyEvent)
    assert isinstance(e, ev.ActionExecutionSucceeded) and e.outputArtifacts is None
    full = ev.ActionExecutionSucceeded(
        executionId="x", actionExecutionId="a", outputArtifacts={"A": loc("k")}
    )
    assert msgspec.json.decode(msgspec.json.encode(full), type=ev.AnyEvent) == full


# --- properties ------------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_characters="#", blacklist_categories=("Cs",)), max_size=30)
_name = st.from_regex(r"[A-Za-z0-9_]{1,8}", fullmatch=True)


@given(
    values=st.dictionaries(_name, _text.filter(bool), min_size=1, max_size=4),
    plain=st.lists(_text.filter(bool), min_size=1, max_size=3),
)
def test_resolution_replaces_exactly_the_references(
    values: dict[str, str], plain: list[str]
) -> None:
    """Text without references runs unchanged (recorded as None); each reference to a
    pipeline variable becomes its value and nothing else changes."""
    variables = [{"name": n, "defaultValue": v} for n, v in values.items()]
    names = list(values)
    commands = [*plain, " ".join(f"<#{{variables.{n}}}>" for n in names)]
    decl = pipeline({"S": [act("a", commands=commands)]}, variables=variables)
    h = Harness()
    h.create(decl)
    eid = start(h)
    s = scheduled(h, eid, "a")
    assert s.resolvedCommands == [*plain, " ".join(f"<{values[n]}>" for n in names)]
    plain_only = pipeline({"S": [act("a", commands=plain)]}, variables=variables)
    h2 = Harness()
    h2.create(plain_only)
    assert scheduled(h2, start(h2), "a").resolvedCommands is None


# --- artifact declarations -------------------------------------------------------------------


@pytest.mark.parametrize(
    "stages, problem",
    [
        (
            {
                "A": [act("a", outputArtifacts=[{"name": "X"}])],
                "B": [act("b", outputArtifacts=[{"name": "X"}])],
            },
            "output artifact name 'X' is not unique",
        ),
        ({"A": [act("a", outputArtifacts=[{"name": "bad name"}])]}, "must match"),
        ({"A": [act("a", outputArtifacts=[{"name": "x" * 101}])]}, "1 to 100"),
        ({"A": [act("a", outputArtifacts=[{"files": ["a"]}])]}, "needs a name"),
        ({"A": [act("a", inputArtifacts=[{"name": ""}])]}, "needs a name"),
        ({"A": [act("a", outputArtifacts=[{"name": "X", "files": []}])]}, "files must be 1 to 10"),
        ({"A": [act("a", outputArtifacts=[{"name": "X", "files": ["f"] * 11}])]}, "files must be"),
        ({"A": [act("a", outputArtifacts=[{"name": "X", "files": ["f" * 129]}])]}, "files must be"),
        ({"A": [act("a", inputArtifacts=[{"name": "Nowhere"}])]}, "input artifact 'Nowhere'"),
        (  # produced by a later stage
            {
                "A": [act("a", inputArtifacts=[{"name": "X"}])],
                "B": [act("b", outputArtifacts=[{"name": "X"}])],
            },
            "input artifact 'X' is not the output",
        ),
        (  # by the same runOrder of the same stage
            {
                "A": [
                    act("p", outputArtifacts=[{"name": "X"}]),
                    act("c", inputArtifacts=[{"name": "X"}]),
                ]
            },
            "input artifact 'X' is not the output",
        ),
        (  # by its own output
            {"A": [act("a", outputArtifacts=[{"name": "X"}], inputArtifacts=[{"name": "X"}])]},
            "input artifact 'X' is not the output",
        ),
    ],
)
def test_artifact_declarations_are_checked_at_create(
    stages: dict[str, list[dict[str, Any]]], problem: str
) -> None:
    decl = pipeline(stages)
    assert any(problem in p for p in artifact_problems(decl)), artifact_problems(decl)
    err = Harness().error(c.CreatePipeline(declaration=decl))
    assert err.type_name == "InvalidStructureException"
    assert problem in err.message


def test_valid_artifact_declarations() -> None:
    decl = pipeline(
        {
            "A": [
                act("p", outputArtifacts=[{"name": "x" * 100, "files": ["f" * 128] * 10}]),
                act(
                    "c",
                    runOrder=2,
                    inputArtifacts=[{"name": "x" * 100}],
                    outputArtifacts=[{"name": "Y-_9"}],
                ),
            ],
            "B": [act("d", inputArtifacts=[{"name": "x" * 100}, {"name": "Y-_9"}])],
        }
    )
    assert artifact_problems(decl) == []
