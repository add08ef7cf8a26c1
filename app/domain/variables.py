"""Variable references (``#{namespace.name}``): the pure resolver shared by actions and rules.

A reference names a namespace and a variable: ``#{variables.NAME}`` (pipeline-level variables
of the execution), ``#{codepipeline.PipelineExecutionId}`` (and the other ``codepipeline``
variables), ``#{Namespace.NAME}`` (an output variable of the action declared with that
``namespace``, from its latest successful attempt in this execution). Resolution is plain
string work over the execution's state: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from app.domain.model import PipelineDeclaration
from app.domain.state import ExecutionState

# the namespace and variable name patterns of the service model (ActionNamespace: [A-Za-z0-9@\-_]+)
REFERENCE = re.compile(r"#\{([A-Za-z0-9@\-_]+)\.([A-Za-z0-9@\-_.]+)\}")

Lookup = Callable[[str, str], str | None]


class UnresolvedVariable(ValueError):
    """A ``#{ns.name}`` reference with no value; ``ref`` is the reference as written."""

    def __init__(self, ref: str) -> None:
        super().__init__(f"Unable to resolve variable reference {ref}")
        self.ref = ref


def references(text: str) -> list[tuple[str, str]]:
    """Every (namespace, name) referenced in ``text``, in order."""
    return [(m.group(1), m.group(2)) for m in REFERENCE.finditer(text)]


def resolve(text: str, lookup: Lookup) -> str:
    """``text`` with every reference replaced; raises :class:`UnresolvedVariable`."""

    def one(m: re.Match[str]) -> str:
        value = lookup(m.group(1), m.group(2))
        if value is None:
            raise UnresolvedVariable(m.group(0))
        return value

    return REFERENCE.sub(one, text)


def resolve_mapping(values: Mapping[str, str], lookup: Lookup) -> dict[str, str]:
    return {k: resolve(v, lookup) for k, v in values.items()}


def namespace_outputs(decl: PipelineDeclaration, x: ExecutionState) -> dict[str, dict[str, str]]:
    """Output variables by namespace: each namespaced action's latest succeeded attempt."""
    spaces: dict[str, dict[str, str]] = {}
    for sdecl in decl.stages:
        run = x.stages.get(sdecl.name)
        if run is None:
            continue
        for a in sdecl.actions:
            if a.namespace is None:
                continue
            aid = run.latest.get(a.name)
            if aid is None:
                continue
            attempt = x.actions.get(aid)
            if attempt is not None and attempt.status == "Succeeded":
                spaces[a.namespace] = dict(attempt.outputVariables or {})
    return spaces


def execution_lookup(decl: PipelineDeclaration, x: ExecutionState, pipeline: str) -> Lookup:
    """The lookup for references made inside execution ``x`` of ``pipeline``."""
    spaces = namespace_outputs(decl, x)
    builtins = {
        "PipelineExecutionId": x.executionId,
        "PipelineName": pipeline,
        "PipelineVersion": str(x.pipelineVersion),
    }

    def lookup(ns: str, name: str) -> str | None:
        if ns == "codepipeline":
            return builtins.get(name)
        if ns == "variables":
            return (x.variables or {}).get(name)
        return spaces.get(ns, {}).get(name)

    return lookup
