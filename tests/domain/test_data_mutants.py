"""Edges of the data-flow helpers that mutation testing found untested: artifact names and
files of odd declarations, the producer lookup's order, the exact messages of the create-time
and start-time checks, output variables of namespaces in stages or actions that did not run."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from app.domain.artifacts import (
    ArtifactLocation,
    artifact_problems,
    artifact_producers,
    input_artifact_names,
    output_artifact_files,
    output_artifact_names,
)
from app.domain.errors import DomainError
from app.domain.model import ActionDeclaration, ActionTypeId, PipelineDeclaration
from app.domain.resolution import declared_variables, start_variables
from app.domain.state import ActionExec, ExecutionState, StageRun
from app.domain.variables import namespace_outputs

COMMANDS = ActionTypeId(category="Compute", owner="AWS", provider="Commands", version="1")


def action(name: str, **kw: Any) -> ActionDeclaration:
    return ActionDeclaration(name=name, actionTypeId=COMMANDS, **kw)


def decl(stages: dict[str, list[ActionDeclaration]], **kw: Any) -> PipelineDeclaration:
    return msgspec.convert(
        {
            "name": "p",
            "roleArn": "arn:aws:iam::123456789012:role/r",
            "stages": [
                {"name": s, "actions": [msgspec.to_builtins(a) for a in acts]}
                for s, acts in stages.items()
            ],
            **kw,
        },
        PipelineDeclaration,
    )


def attempt(aid: str, stage: str, name: str, seq: int, **kw: Any) -> ActionExec:
    a = ActionExec(aid, stage, name, 1, 1, 0.0, 0.0, seq=seq)
    a.status = kw.pop("status", "Succeeded")
    for k, v in kw.items():
        setattr(a, k, v)
    return a


def loc(key: str) -> ArtifactLocation:
    return ArtifactLocation(bucket="b", key=key)


# --- artifacts -----------------------------------------------------------------------------


def test_s3_location_is_the_models_shape() -> None:
    assert ArtifactLocation("bk", "k/1.zip", "S3").s3_location() == {
        "bucket": "bk",
        "key": "k/1.zip",
    }


def test_names_and_files_skip_entries_without_a_name() -> None:
    # plain JSON in the model: an entry without a name (refused at create) is never read
    a = action(
        "a",
        outputArtifacts=[{"files": ["x"]}, {"name": "Out", "files": ["dist/**"]}, {"name": "All"}],
        inputArtifacts=[{"other": 1}, {"name": "In"}],
    )
    assert output_artifact_names(a) == ["Out", "All"]
    assert input_artifact_names(a) == ["In"]
    assert output_artifact_files(a) == {"Out": ["dist/**"], "All": []}
    assert output_artifact_names(action("n")) == [] and input_artifact_names(action("n")) == []


def test_the_producer_with_the_latest_result_wins_whatever_the_order_held() -> None:
    newer = attempt("n", "Build", "b", 20, outputArtifacts={"Built": loc("new")})
    older = attempt("o", "Build", "b", 10, outputArtifacts={"Built": loc("old")})
    for order in ({"n": newer, "o": older}, {"o": older, "n": newer}):
        x = ExecutionState("e", 1, 0.0, 0.0, actions=dict(order))
        assert artifact_producers(x) == {"Built": loc("new")}


def test_artifact_problems_messages() -> None:
    d = decl(
        {
            "S": [
                action(
                    "a",
                    outputArtifacts=[
                        {"name": "bad name"},
                        {"name": ""},
                        {"name": "Ok", "files": ["f"]},
                    ],
                    inputArtifacts=[{"name": "no way"}, {"name": "Missing"}],
                )
            ]
        }
    )
    where = "action 'a' in stage 'S'"
    assert artifact_problems(d) == [
        f"{where}: artifact name 'bad name' must match [a-zA-Z0-9_\\-]+",
        f"{where}: an artifact needs a name of 1 to 100 characters",
        f"{where}: artifact name 'no way' must match [a-zA-Z0-9_\\-]+",
        f"{where}: input artifact 'Missing' is not the output artifact of an action that "
        "runs before it",
    ]


def test_an_artifact_entry_that_is_not_an_object_is_a_problem_not_a_crash() -> None:
    a = action("a")
    a = msgspec.structs.replace(a, outputArtifacts=["Out"], inputArtifacts=[7])  # type: ignore[list-item]
    d = msgspec.structs.replace(
        decl({"S": [action("x")]}),
        stages=[msgspec.structs.replace(decl({"S": [action("x")]}).stages[0], actions=[a])],
    )
    where = "action 'a' in stage 'S'"
    msg = f"{where}: an artifact needs a name of 1 to 100 characters"
    assert artifact_problems(d) == [msg, msg]


@pytest.mark.parametrize(
    ("files", "ok"),
    [(["a"], True), (["a" * 128], True), (["a" * 129], False), ([""], False), ([], False)],
)
def test_output_files_bounds(files: list[str], ok: bool) -> None:
    d = decl({"S": [action("a", outputArtifacts=[{"name": "Out", "files": files}])]})
    assert (artifact_problems(d) == []) is ok


# --- pipeline variables --------------------------------------------------------------------


def test_declared_variables_read_plain_json_as_declared() -> None:
    d = decl(
        {"S": [action("a")]}, variables=[{"defaultValue": 5}, {"name": "V", "defaultValue": "x"}]
    )
    assert declared_variables(d) == [("", None), ("V", "x")]


def test_start_variables_messages_name_every_variable() -> None:
    d = decl(
        {"S": [action("a")]},
        variables=[{"name": "A"}, {"name": "B"}, {"name": "C", "defaultValue": "c"}],
    )
    with pytest.raises(DomainError) as err:
        start_variables(d, "p", {"Y": "1", "X": "2"})
    assert err.value.type_name == "ValidationException"
    assert err.value.message == "Pipeline variable(s) X, Y not declared in pipeline 'p'"
    with pytest.raises(DomainError) as err:
        start_variables(d, "p", {})
    assert err.value.message == (
        "Pipeline variable(s) A, B of pipeline 'p' have no default value: a value must be "
        "given when the execution is started"
    )
    assert start_variables(d, "p", {"A": "a", "B": "b"}) == {"A": "a", "B": "b", "C": "c"}


# --- namespaces ------------------------------------------------------------------------------


def test_namespaces_of_later_stages_and_actions_are_found_past_ones_that_did_not_run() -> None:
    d = decl(
        {
            "First": [action("f", namespace="F")],  # not entered (a rollback enters later)
            "Second": [
                action("plain"),  # no namespace
                action("late", namespace="L", runOrder=2),  # not run yet
                action("early", namespace="E"),
            ],
        }
    )
    x = ExecutionState(
        "e",
        1,
        0.0,
        0.0,
        stages={"Second": StageRun("Second", latest={"plain": "p1", "early": "e1"})},
        actions={
            "p1": attempt("p1", "Second", "plain", 3),
            "e1": attempt("e1", "Second", "early", 4, outputVariables={"V": "1"}),
        },
    )
    assert namespace_outputs(d, x) == {"E": {"V": "1"}}


def test_every_bad_variable_declaration_is_reported() -> None:
    from app.domain.resolution import variable_problems

    d = decl({"S": [action("a")]}, variables=[{"name": ""}, {"name": 7}, {"name": "ok"}])
    assert variable_problems(d) == [
        "pipeline variable name '' must be 1 to 128 characters",
        "pipeline variable name 7 must be 1 to 128 characters",
    ]


def test_prepare_action_records_only_what_changed_and_why_it_cannot_run() -> None:
    from app.domain.resolution import prepare_action

    d = decl({"S": [action("a")]})
    x = ExecutionState("e-9", 1, 0.0, 0.0, variables={"V": "v"})
    plain = action("a", configuration={"K": "plain"}, commands=["echo hi"])
    p = prepare_action(d, x, "p", plain)
    assert (p.configuration, p.commands, p.environment, p.inputs, p.problem) == (
        None,
        None,
        None,
        None,
        None,
    )
    bad = action("a", configuration={"K": "#{variables.NOPE}"}, commands=["echo #{variables.V}"])
    p = prepare_action(d, x, "p", bad)
    assert (p.configuration, p.commands, p.environment) == (None, None, None)
    assert p.problem == (
        "Unable to resolve variable reference #{variables.NOPE}: no such variable in execution e-9"
    )
    needs = action("a", inputArtifacts=[{"name": "One"}, {"name": "Two"}])
    p = prepare_action(d, x, "p", needs)
    assert p.problem == (
        "Input artifact(s) One, Two of action 'a' were not produced by any succeeded action "
        "of execution e-9"
    )
