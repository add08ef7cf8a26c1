"""Source actions: which declarations are sources stageline runs, and the revision overrides
of an execution (``StartPipelineExecution(sourceRevisions=...)``). Pure: no I/O.

stageline runs three AWS source providers itself (the runner is
:mod:`workers.runners.sources`):

- ``CodeStarSourceConnection`` and ``CodeCommit``: a git repository (revision = commit id,
  override type ``COMMIT_ID``);
- ``S3``: an object in a bucket (revision = the object's version id, else its ETag;
  override types ``S3_OBJECT_VERSION_ID`` and ``S3_OBJECT_KEY``, alone or together).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

from app.domain.events import ArtifactRevision
from app.domain.model import ActionDeclaration, PipelineDeclaration

if TYPE_CHECKING:  # state.py imports nothing from here; no cycle at run time either way
    from app.domain.state import ExecutionState

SourceFamily = Literal["git", "s3"]

# AWS/Source/<provider>/1 -> how stageline fetches it
SOURCE_PROVIDERS: Mapping[str, SourceFamily] = {
    "CodeStarSourceConnection": "git",
    "CodeCommit": "git",
    "S3": "s3",
}

# the override types (model enum SourceRevisionType) each family honours
REVISION_TYPES: Mapping[SourceFamily, frozenset[str]] = {
    "git": frozenset({"COMMIT_ID"}),
    "s3": frozenset({"S3_OBJECT_VERSION_ID", "S3_OBJECT_KEY"}),
}

# the configuration each provider needs (AWS refuses a declaration without them)
REQUIRED_CONFIGURATION: Mapping[str, tuple[str, ...]] = {
    "CodeStarSourceConnection": ("FullRepositoryId", "BranchName"),
    "CodeCommit": ("RepositoryName", "BranchName"),
    "S3": ("S3Bucket", "S3ObjectKey"),
}
OUTPUT_FORMATS = ("CODE_ZIP", "CODEBUILD_CLONE_REF")

# a COMMIT_ID override: a full or abbreviated hex object name (SHA-1 or SHA-256)
COMMIT_ID_PATTERN = re.compile(r"[0-9a-fA-F]{4,64}")


def source_family(a: ActionDeclaration) -> SourceFamily | None:
    """``git`` / ``s3`` for a source action the engine runs itself, else None."""
    t = a.actionTypeId
    if t.owner != "AWS" or t.category != "Source" or t.version != "1":
        return None
    return SOURCE_PROVIDERS.get(t.provider)


def configuration_problems(decl: PipelineDeclaration) -> list[str]:
    """Source actions declared without what they need (``InvalidActionDeclarationException``
    at CreatePipeline/UpdatePipeline): a required configuration key, a known
    ``OutputArtifactFormat``, at most one output artifact."""
    problems: list[str] = []
    for st in decl.stages:
        for a in st.actions:
            family = source_family(a)
            if family is None:
                continue
            config = a.configuration or {}
            for key in REQUIRED_CONFIGURATION[a.actionTypeId.provider]:
                if not config.get(key):
                    problems.append(
                        f"Action configuration for action '{a.name}' is missing required "
                        f"configuration '{key}'"
                    )
            fmt = config.get("OutputArtifactFormat")
            if family == "git" and fmt is not None and fmt not in OUTPUT_FORMATS:
                problems.append(
                    f"Action configuration for action '{a.name}': OutputArtifactFormat "
                    f"'{fmt}' is not one of {', '.join(OUTPUT_FORMATS)}"
                )
            outputs = len(a.outputArtifacts or [])
            if outputs > 1:  # none is allowed: the revision is still fetched and recorded
                problems.append(
                    f"Action '{a.name}' in stage '{st.name}' has {outputs} output artifacts; "
                    "a source action has at most one"
                )
    return problems


def override_problem(
    decl: PipelineDeclaration, overrides: Sequence[Mapping[str, str]] | None
) -> str | None:
    """Why the overrides cannot be honoured for a pipeline of this declaration (a
    ``ValidationException`` message), or None when they can.

    Each override must name a source action of the pipeline that stageline runs, with a
    revision type of that provider, once per type; a COMMIT_ID must be a hex commit id.
    """
    if not overrides:
        return None
    actions = {a.name: a for st in decl.stages for a in st.actions}
    seen: set[tuple[str, str]] = set()
    for o in overrides:
        name = o.get("actionName", "")
        rtype = o.get("revisionType", "")
        value = o.get("revisionValue", "")
        a = actions.get(name)
        if a is None:
            return f"Source revision override: no action '{name}' in pipeline '{decl.name}'"
        family = source_family(a)
        if family is None:
            t = a.actionTypeId
            return (
                f"Source revision override: action '{name}' is not a source action "
                f"stageline runs ({t.owner}/{t.category}/{t.provider}/{t.version}); overrides "
                "apply to AWS CodeStarSourceConnection, CodeCommit and S3 source actions"
            )
        if rtype not in REVISION_TYPES[family]:
            allowed = ", ".join(sorted(REVISION_TYPES[family]))
            return (
                f"Source revision override: revision type '{rtype}' does not apply to action "
                f"'{name}' (provider {a.actionTypeId.provider}: {allowed})"
            )
        if (name, rtype) in seen:
            return f"Source revision override: '{rtype}' given twice for action '{name}'"
        seen.add((name, rtype))
        if not value:
            return f"Source revision override: empty revision value for action '{name}'"
        if rtype == "COMMIT_ID" and COMMIT_ID_PATTERN.fullmatch(value) is None:
            return (
                f"Source revision override: '{value}' is not a commit id (4 to 64 hex digits) "
                f"for action '{name}'"
            )
    return None


def overrides_for(
    overrides: Sequence[Mapping[str, str]] | None, action_name: str
) -> dict[str, str]:
    """The overrides of one action: revision type -> value (empty when none)."""
    return {
        o["revisionType"]: o["revisionValue"]
        for o in overrides or []
        if o.get("actionName") == action_name and "revisionType" in o and "revisionValue" in o
    }


def fetched_revisions(
    decl: PipelineDeclaration, x: ExecutionState
) -> list[tuple[str, str | None, ArtifactRevision]]:
    """What the execution's source actions fetched: ``(action name, output artifact name,
    revision)`` of each Source-category action (the engine's, or a job worker's that reported
    ``currentRevision``) whose latest attempt succeeded with a revision, in declaration order
    (GetPipelineExecution ``artifactRevisions``, ListPipelineExecutions ``sourceRevisions``)."""
    out: list[tuple[str, str | None, ArtifactRevision]] = []
    for st in decl.stages:
        run = x.stages.get(st.name)
        if run is None:
            continue
        for a in st.actions:
            if a.actionTypeId.category != "Source":
                continue
            aid = run.latest.get(a.name)
            attempt = x.actions.get(aid) if aid is not None else None
            if attempt is None or attempt.status != "Succeeded" or attempt.revision is None:
                continue
            names = [o.get("name") for o in a.outputArtifacts or [] if isinstance(o, dict)]
            name = names[0] if names and isinstance(names[0], str) else None
            out.append((a.name, name, attempt.revision))
    return out


def put_revision_override(a: ActionDeclaration, revision_id: str) -> list[dict[str, str]] | None:
    """PutActionRevision on a source stageline runs: the revision put, as the new
    execution's override (a git commit id, an S3 object version id); None for other
    actions."""
    family = source_family(a)
    if family is None:
        return None
    rtype = "COMMIT_ID" if family == "git" else "S3_OBJECT_VERSION_ID"
    return [{"actionName": a.name, "revisionType": rtype, "revisionValue": revision_id}]

