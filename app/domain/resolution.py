"""What an action runs with, worked out when it is scheduled; pipeline variables at start. Pure.

* :func:`start_variables` — the pipeline-level variables of a new execution: the declared
  ``defaultValue`` s overridden by ``StartPipelineExecution(variables=...)``; a name that is
  not declared, or a declared variable with no default that was not given, is refused
  (``ValidationException``, as AWS does).
* :func:`prepare_action` — the action's ``configuration`` values, ``commands`` and
  (plaintext) ``environmentVariables`` values with every ``#{namespace.name}`` reference
  resolved against the execution (:func:`app.domain.variables.execution_lookup`), and its
  input artifacts found by name (:func:`app.domain.artifacts.input_artifacts`). Recorded in
  ``ActionExecutionScheduled`` (a field stays None when nothing in it changed), so the runner
  runs exactly what the log shows. An unresolvable reference or a missing input artifact is
  a ``problem``: the action is failed at once, it never runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from app.domain.artifacts import ArtifactLocation, input_artifacts
from app.domain.errors import DomainError
from app.domain.model import ActionDeclaration, PipelineDeclaration
from app.domain.state import ExecutionState
from app.domain.variables import UnresolvedVariable, execution_lookup, resolve

# the service model's PipelineVariableName / PipelineVariableValue
VARIABLE_NAME = re.compile(r"[A-Za-z0-9@\-_]+\Z")
NAME_MAX = 128
VALUE_MAX = 1000
DESCRIPTION_MAX = 200

# errorCode of an action failed before it ran because of what it was declared with
CONFIGURATION_ERROR = "ConfigurationError"


def declared_variables(decl: PipelineDeclaration) -> list[tuple[str, str | None]]:
    """(name, defaultValue) of each pipeline-level variable, in declaration order."""
    out: list[tuple[str, str | None]] = []
    for v in decl.variables or []:
        default = v.get("defaultValue")
        out.append((str(v.get("name", "")), default if isinstance(default, str) else None))
    return out


def variable_problems(decl: PipelineDeclaration) -> list[str]:
    """The declaration's ``variables`` against PipelineVariableDeclaration (kept as plain
    JSON in the model): a valid unique name, a default and description within bounds."""
    problems: list[str] = []
    seen: set[str] = set()
    for v in decl.variables or []:
        name = v.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= NAME_MAX:
            problems.append(f"pipeline variable name {name!r} must be 1 to {NAME_MAX} characters")
            continue
        if not VARIABLE_NAME.match(name):
            problems.append(f"pipeline variable name {name!r} must match [A-Za-z0-9@\\-_]+")
        if name in seen:
            problems.append(f"duplicate pipeline variable name {name!r}")
        seen.add(name)
        default = v.get("defaultValue")
        if default is not None and (
            not isinstance(default, str) or not 1 <= len(default) <= VALUE_MAX
        ):
            problems.append(
                f"pipeline variable {name!r}: defaultValue must be 1 to {VALUE_MAX} characters"
            )
        desc = v.get("description")
        if desc is not None and (not isinstance(desc, str) or len(desc) > DESCRIPTION_MAX):
            problems.append(
                f"pipeline variable {name!r}: description must be at most "
                f"{DESCRIPTION_MAX} characters"
            )
    return problems


def start_variables(
    decl: PipelineDeclaration, pipeline: str, given: Mapping[str, str] | None
) -> dict[str, str] | None:
    """The resolved pipeline variables of a new execution (None: the pipeline declares none
    and none were given); ``ValidationException`` for an undeclared or a missing one."""
    declared = declared_variables(decl)
    names = {n for n, _ in declared}
    given = dict(given or {})
    unknown = sorted(n for n in given if n not in names)
    if unknown:
        raise DomainError(
            "ValidationException",
            f"Pipeline variable(s) {', '.join(unknown)} not declared in pipeline '{pipeline}'",
        )
    values: dict[str, str] = {}
    missing: list[str] = []
    for name, default in declared:
        if name in given:
            values[name] = given[name]
        elif default is not None:
            values[name] = default
        else:
            missing.append(name)
    if missing:
        raise DomainError(
            "ValidationException",
            f"Pipeline variable(s) {', '.join(missing)} of pipeline '{pipeline}' have no "
            "default value: a value must be given when the execution is started",
        )
    return values if declared else None


@dataclass(frozen=True)
class Prepared:
    """What an attempt runs with: each field None when its declaration holds no reference
    (the declared values run unchanged); ``problem`` the reason it cannot run."""

    configuration: dict[str, str] | None = None
    commands: list[str] | None = None
    environment: dict[str, str] | None = None
    inputs: dict[str, ArtifactLocation] | None = None
    problem: str | None = None


def prepare_action(
    decl: PipelineDeclaration, x: ExecutionState, pipeline: str, a: ActionDeclaration
) -> Prepared:
    lookup = execution_lookup(decl, x, pipeline)
    configuration = commands = environment = None
    problem: str | None = None
    try:
        config = dict(a.configuration or {})
        resolved = {k: resolve(v, lookup) for k, v in config.items()}
        configuration = resolved if resolved != config else None
        cmds = list(a.commands or [])
        resolved_cmds = [resolve(cmd, lookup) for cmd in cmds]
        commands = resolved_cmds if resolved_cmds != cmds else None
        env = {v.name: v.value for v in a.environmentVariables or [] if v.type != "SECRETS_MANAGER"}
        resolved_env = {k: resolve(v, lookup) for k, v in env.items()}
        environment = resolved_env if resolved_env != env else None
    except UnresolvedVariable as err:
        problem = f"{err}: no such variable in execution {x.executionId}"
    found, missing = input_artifacts(x, a)
    if missing and problem is None:
        problem = (
            f"Input artifact(s) {', '.join(missing)} of action '{a.name}' were not produced by "
            f"any succeeded action of execution {x.executionId}"
        )
    return Prepared(configuration, commands, environment, found or None, problem)
