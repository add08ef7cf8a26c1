"""The pure variable resolver: references, lookups, unresolvable references."""

from __future__ import annotations

import msgspec
import pytest

from app.domain.model import PipelineDeclaration
from app.domain.state import ActionExec, ExecutionState, StageRun
from app.domain.variables import (
    UnresolvedVariable,
    execution_lookup,
    references,
    resolve,
    resolve_mapping,
)

DECL = msgspec.convert(
    {
        "name": "p",
        "roleArn": "arn:aws:iam::123456789012:role/r",
        "stages": [
            {
                "name": "Build",
                "actions": [
                    {
                        "name": "b",
                        "namespace": "BuildVars",
                        "actionTypeId": {
                            "category": "Compute",
                            "owner": "AWS",
                            "provider": "Commands",
                            "version": "1",
                        },
                    },
                    {
                        "name": "plain",
                        "actionTypeId": {
                            "category": "Compute",
                            "owner": "AWS",
                            "provider": "Commands",
                            "version": "1",
                        },
                    },
                ],
            }
        ],
    },
    PipelineDeclaration,
)


def _x(status: str = "Succeeded") -> ExecutionState:
    a1 = ActionExec(
        "a1", "Build", "b", 1, 1, 0.0, 0.0, status="Failed", outputVariables={"V": "old"}
    )
    a2 = ActionExec("a2", "Build", "b", 1, 1, 0.0, 0.0, outputVariables={"V": "new"})
    a2.status = status  # type: ignore[assignment]
    run = StageRun("Build", latest={"b": "a2"})
    return ExecutionState(
        "e-1",
        3,
        0.0,
        0.0,
        stages={"Build": run},
        actions={"a1": a1, "a2": a2},
        variables={"REGION": "eu-west-1"},
    )


def test_references_in_order() -> None:
    assert references("a #{x.y} b #{variables.Z}") == [("x", "y"), ("variables", "Z")]
    assert references("no refs, #{broken, #{a b}") == []


def test_resolve_every_namespace() -> None:
    look = execution_lookup(DECL, _x(), "p")
    text = "#{codepipeline.PipelineExecutionId}/#{variables.REGION}/#{BuildVars.V}"
    assert resolve(text, look) == "e-1/eu-west-1/new"
    assert resolve("#{codepipeline.PipelineName}@#{codepipeline.PipelineVersion}", look) == "p@3"
    assert resolve_mapping({"k": "#{BuildVars.V}!"}, look) == {"k": "new!"}


@pytest.mark.parametrize(
    "ref", ["#{variables.NOPE}", "#{BuildVars.NOPE}", "#{Other.V}", "#{codepipeline.Nope}"]
)
def test_unresolvable_names_the_reference(ref: str) -> None:
    with pytest.raises(UnresolvedVariable) as info:
        resolve(f"x {ref} y", execution_lookup(DECL, _x(), "p"))
    assert info.value.ref == ref
    assert ref in str(info.value)


def test_only_a_succeeded_latest_attempt_exports() -> None:
    with pytest.raises(UnresolvedVariable):
        resolve("#{BuildVars.V}", execution_lookup(DECL, _x("InProgress"), "p"))


def test_no_pipeline_variables() -> None:
    x = _x()
    x.variables = None
    with pytest.raises(UnresolvedVariable):
        resolve("#{variables.REGION}", execution_lookup(DECL, x, "p"))
