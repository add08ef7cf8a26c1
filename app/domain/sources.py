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
from typing import Literal

from app.domain.model import ActionDeclaration, PipelineDeclaration

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

# a COMMIT_ID override: a full or abbreviated hex object name (SHA-1 or SHA-256)
COMMIT_ID_PATTERN = re.compile(r"[0-9a-fA-F]{4,64}")


def source_family(a: ActionDeclaration) -> SourceFamily | None:
    """``git`` / ``s3`` for a source action the engine runs itself, else None."""
    t = a.actionTypeId
    if t.owner != "AWS" or t.category != "Source" or t.version != "1":
        return None
    return SOURCE_PROVIDERS.get(t.provider)


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
