"""Which incoming Git event starts which pipeline: webhook filters (V1) and triggers (V2).

PURE: plain functions over a payload (already decoded JSON) and a declaration; no I/O, no
clock. The receiving endpoint (:mod:`app.webhooks.receive`) authenticates the request, calls
these and starts the execution.

- **Webhook filters** (PutWebhook): every ``{jsonPath, matchEquals}`` rule must select a value
  equal to ``matchEquals``, where ``{KEY}`` is replaced by the target action's configuration
  value ``KEY`` (AWS: ``refs/heads/{Branch}``). A rule without ``matchEquals`` passes when the
  path selects anything.
- **Triggers** (``triggers`` of a V2 declaration, provider ``CodeStarSourceConnection``): a
  GitHub-style ``push`` or ``pull_request`` event (:func:`git_event`) is matched against each
  trigger's ``push`` / ``pullRequest`` filters: the filters of a list are OR-ed, the criteria
  inside one filter AND-ed; in each criterion ``excludes`` win over ``includes``; patterns are
  globs (:func:`glob_match`).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from jsonpath_ng.exceptions import JSONPathError
from jsonpath_ng.parser import parse as _jsonpath_parse

from app.domain.model import PipelineDeclaration

__all__ = [
    "COMMIT_PATTERN",
    "CONNECTION_PROVIDER",
    "GIT_SOURCE_PROVIDERS",
    "MAX_JSON_PATH_NODES",
    "GitEvent",
    "action_configuration",
    "criteria_match",
    "files_match",
    "filter_problem",
    "filters_match",
    "git_event",
    "glob_match",
    "glob_problem",
    "match_trigger",
    "pr_filter_matches",
    "push_filter_matches",
    "takes_commit",
    "trigger_problems",
]

CONNECTION_PROVIDER = "CodeStarSourceConnection"
# AWS source providers whose revision is a git commit (a COMMIT_ID source revision)
GIT_SOURCE_PROVIDERS = frozenset({"CodeStarSourceConnection", "CodeCommit"})
MAX_JSON_PATH_NODES = 1000  # values one jsonPath may select (a `$..x` over a huge payload)
ZERO_COMMIT = "0" * 40  # GitHub's `after` of a deleted branch or tag
COMMIT_PATTERN = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # a full SHA-1 / SHA-256 commit id

PrEvent = Literal["OPEN", "UPDATED", "CLOSED"]
# GitHub's pull_request actions -> CodePipeline's event types; other actions are ignored.
_PR_ACTIONS: dict[str, PrEvent] = {
    "opened": "OPEN",
    "reopened": "OPEN",
    "synchronize": "UPDATED",
    "closed": "CLOSED",
}


# --- webhook filters (V1) ------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def _compiled_path(path: str) -> Any:
    if not path.startswith("$"):
        raise ValueError(f"JsonPath '{path}' must start with '$'")
    try:
        return _jsonpath_parse(path)
    except (JSONPathError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(f"JsonPath '{path}' is not valid: {exc}") from None


def filter_problem(json_path: str, match_equals: str | None) -> str | None:
    """Why a filter rule is refused (InvalidWebhookFilterPatternException), else None."""
    try:
        _compiled_path(json_path)
    except ValueError as exc:
        return str(exc)
    if match_equals is not None and _unbalanced(match_equals):
        return f"MatchEquals '{match_equals}' has an unbalanced '{{' or '}}'"
    return None


def _unbalanced(text: str) -> bool:
    depth = 0
    for ch in text:
        if ch == "{":
            depth += 1
            if depth > 1:
                return True
        elif ch == "}":
            depth -= 1
            if depth < 0:
                return True
    return depth != 0


_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


def expand(match_equals: str, configuration: Mapping[str, str]) -> str:
    """``{KEY}`` -> the action configuration's value of KEY (an unknown key stays as is)."""
    return _PLACEHOLDER.sub(lambda m: configuration.get(m[1], m[0]), match_equals)


def _text(value: Any) -> str:
    """A selected value as the text compared with matchEquals (JSON for non-strings)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def filters_match(
    filters: Sequence[tuple[str, str | None]],
    payload: Any,
    configuration: Mapping[str, str],
) -> bool:
    """All rules pass (an empty list passes: AWS starts on every authenticated request)."""
    for json_path, match_equals in filters:
        found = _compiled_path(json_path).find(payload)[:MAX_JSON_PATH_NODES]
        if not found:
            return False
        if match_equals is None:
            continue
        wanted = expand(match_equals, configuration)
        if not any(_text(m.value) == wanted for m in found):
            return False
    return True


# --- globs ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """The glob syntax AWS documents for trigger filters (Java's PathMatcher glob):
    ``*`` any characters but ``/``; ``**`` any characters, ``/`` included; ``?`` one
    character but ``/``; ``[abc]``, ``[a-z]``, ``[!a-c]`` one character of (not of) a set;
    ``{a,b}`` one of the subpatterns (not nested); ``\\`` escapes the next character."""
    out: list[str] = []
    i, n = 0, len(pattern)
    in_group = False
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            if i + 1 >= n:
                raise ValueError(f"pattern '{pattern}' ends with an escape")
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if ch == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                out.append(".*")
                i += 2
            else:
                out.append("[^/]*")
                i += 1
            continue
        if ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = pattern.find("]", i + 2 if i + 1 < n and pattern[i + 1] == "!" else i + 1)
            if end < 0:
                raise ValueError(f"pattern '{pattern}' has an unclosed '['")
            body = pattern[i + 1 : end]
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            if not body:
                raise ValueError(f"pattern '{pattern}' has an empty '[]'")
            chars = "".join("\\" + c if c in "\\^[]" else c for c in body)
            out.append(f"[{'^' if negate else ''}{chars}]")
            i = end + 1
            continue
        elif ch == "{":
            if in_group:
                raise ValueError(f"pattern '{pattern}' nests '{{' groups")
            in_group = True
            out.append("(?:")
        elif ch == "}" and in_group:
            in_group = False
            out.append(")")
        elif ch == "," and in_group:
            out.append("|")
        else:
            out.append(re.escape(ch))
        i += 1
    if in_group:
        raise ValueError(f"pattern '{pattern}' has an unclosed '{{'")
    return re.compile("".join(out) + r"\Z", re.S)


def glob_problem(pattern: str) -> str | None:
    try:
        _glob_regex(pattern)
    except ValueError as exc:
        return str(exc)
    return None


def glob_match(pattern: str, text: str) -> bool:
    return _glob_regex(pattern).match(text) is not None


def criteria_match(criteria: Mapping[str, Any] | None, value: str) -> bool:
    """``{includes, excludes}``: an exclude match refuses (excludes take precedence); else an
    include match accepts; without includes, everything not excluded is accepted. No criteria
    at all: accepted."""
    if criteria is None:
        return True
    if any(glob_match(p, value) for p in criteria.get("excludes") or []):
        return False
    includes = criteria.get("includes")
    if not includes:
        return True
    return any(glob_match(p, value) for p in includes)


def files_match(criteria: Mapping[str, Any] | None, files: Sequence[str] | None) -> bool:
    """File paths: passes when at least one changed file is accepted by the criteria. No
    criteria: passes. Criteria but the changed files are unknown (``None``) or none: fails."""
    if criteria is None:
        return True
    if not files:
        return False
    return any(criteria_match(criteria, f) for f in files)


# --- Git events ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GitEvent:
    """A push or pull request, reduced to what the filters look at."""

    kind: Literal["push", "pull_request"]
    # push: the branch or tag pushed (without refs/heads/, refs/tags/); pull request: the
    # destination branch
    name: str
    commit: str  # push: the new head; pull request: the source branch's head commit
    is_tag: bool = False
    files: tuple[str, ...] | None = None  # changed files, None when the payload lists none
    pr_event: PrEvent | None = None
    source_branch: str | None = None  # pull request: the branch pulled from
    repository: str | None = None  # full name, owner/repo


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _changed_files(commits: Any) -> tuple[str, ...] | None:
    if not isinstance(commits, list):
        return None
    files: list[str] = []
    for c in commits:
        if not isinstance(c, dict):
            continue
        for key in ("added", "modified", "removed"):
            for f in c.get(key) or []:
                if isinstance(f, str) and f not in files:
                    files.append(f)
    return tuple(files) if files else None


def _pr_files(pr: dict[str, Any]) -> tuple[str, ...] | None:
    """A pull request's changed files: GitHub's payload does not list them, so only a sender
    that adds ``pull_request.changed_files_list`` (stageline's extension) gives any."""
    listed = pr.get("changed_files_list")
    if not isinstance(listed, list):
        return None
    files = tuple(f for f in listed if isinstance(f, str))
    return files or None


def git_event(event_type: str | None, payload: Any) -> GitEvent | None:
    """A GitHub ``push`` / ``pull_request`` payload (``X-GitHub-Event``) as a :class:`GitEvent`;
    None for anything the triggers do not act on (ping, a deleted ref, other PR actions)."""
    if not isinstance(payload, dict):
        return None
    repo = payload.get("repository")
    repository = _str(repo.get("full_name")) if isinstance(repo, dict) else None
    if event_type == "push" or (event_type is None and "ref" in payload and "after" in payload):
        ref, after = _str(payload.get("ref")), _str(payload.get("after"))
        if after is None or after == ZERO_COMMIT or COMMIT_PATTERN.fullmatch(after) is None:
            return None
        if ref is None or payload.get("deleted") is True:
            return None
        if ref.startswith("refs/heads/"):
            name, is_tag = ref.removeprefix("refs/heads/"), False
        elif ref.startswith("refs/tags/"):
            name, is_tag = ref.removeprefix("refs/tags/"), True
        else:
            return None
        return GitEvent(
            kind="push",
            name=name,
            commit=after,
            is_tag=is_tag,
            files=_changed_files(payload.get("commits")),
            repository=repository,
        )
    if event_type == "pull_request":
        pr = payload.get("pull_request")
        action = payload.get("action")
        if not isinstance(pr, dict) or not isinstance(action, str) or action not in _PR_ACTIONS:
            return None
        base, head = pr.get("base"), pr.get("head")
        if not isinstance(base, dict) or not isinstance(head, dict):
            return None
        dest, sha = _str(base.get("ref")), _str(head.get("sha"))
        if dest is None or sha is None or COMMIT_PATTERN.fullmatch(sha) is None:
            return None
        return GitEvent(
            kind="pull_request",
            name=dest,
            commit=sha,
            files=_pr_files(pr),
            pr_event=_PR_ACTIONS[action],
            source_branch=_str(head.get("ref")),
            repository=repository,
        )
    return None


def push_filter_matches(f: Mapping[str, Any], ev: GitEvent) -> bool:
    """One ``push`` filter: a tag push needs ``tags`` to accept the tag; a branch push needs
    ``branches`` to accept the branch (and ``filePaths``, if any, a changed file)."""
    if ev.kind != "push":
        return False
    if ev.is_tag:
        tags = f.get("tags")
        return tags is not None and criteria_match(tags, ev.name)
    branches = f.get("branches")
    if branches is None:
        return False
    return criteria_match(branches, ev.name) and files_match(f.get("filePaths"), ev.files)


def pr_filter_matches(f: Mapping[str, Any], ev: GitEvent) -> bool:
    """One ``pullRequest`` filter: the event type among ``events`` (default: all three), the
    destination branch accepted by ``branches``, a changed file by ``filePaths`` (if any)."""
    if ev.pr_event is None:  # only pull requests have one
        return False
    events = f.get("events") or ["OPEN", "UPDATED", "CLOSED"]
    if ev.pr_event not in events:
        return False
    return criteria_match(f.get("branches"), ev.name) and files_match(
        f.get("filePaths"), ev.files
    )


def takes_commit(decl: PipelineDeclaration, action: str) -> bool:
    """Whether a commit can be the source revision of ``action``: an AWS git source action
    (AWS/Source/CodeStarSourceConnection or CodeCommit/1) of the first stage."""
    found = decl.stages[0].action(action) if decl.stages else None
    if found is None:
        return False
    t = found.actionTypeId
    return (
        t.owner == "AWS"
        and t.category == "Source"
        and t.version == "1"
        and t.provider in GIT_SOURCE_PROVIDERS
    )


def action_configuration(decl: PipelineDeclaration, action: str) -> dict[str, str] | None:
    """The configuration of the action named ``action`` in the pipeline's first stage (where
    source actions are), None when there is no such action."""
    if not decl.stages:
        return None
    found = decl.stages[0].action(action)
    if found is None:
        return None
    return dict(found.configuration or {})


def match_trigger(decl: PipelineDeclaration, ev: GitEvent) -> str | None:
    """The source action an event starts the pipeline for (its revision), or None.

    With ``triggers``: the first trigger with a matching push / pull request filter; a
    trigger with neither list acts on pushes to its source action's ``BranchName``. Without
    triggers: a push to the ``BranchName`` of a first-stage CodeStarSourceConnection action
    whose ``DetectChanges`` is not ``false`` (AWS's default change detection)."""
    triggers = decl.triggers or []
    if triggers:
        for t in triggers:
            git = t.get("gitConfiguration")
            if t.get("providerType") != CONNECTION_PROVIDER or not isinstance(git, dict):
                continue
            source = git.get("sourceActionName")
            config = action_configuration(decl, str(source))
            if config is None:
                continue
            push, prs = git.get("push"), git.get("pullRequest")
            if push is None and prs is None:
                if _default_branch_push(config, ev):
                    return str(source)
                continue
            if any(push_filter_matches(f, ev) for f in push or []):
                return str(source)
            if any(pr_filter_matches(f, ev) for f in prs or []):
                return str(source)
        return None
    if not decl.stages:
        return None
    for a in decl.stages[0].actions:
        if a.actionTypeId.provider != CONNECTION_PROVIDER:
            continue
        config = dict(a.configuration or {})
        if config.get("DetectChanges", "true").lower() != "false" and _default_branch_push(
            config, ev
        ):
            return a.name
    return None


def _default_branch_push(config: Mapping[str, str], ev: GitEvent) -> bool:
    return ev.kind == "push" and not ev.is_tag and ev.name == config.get("BranchName")


def trigger_problems(decl: PipelineDeclaration) -> list[str]:
    """Triggers that cannot work: a source action that is not in the first stage, a glob that
    does not compile, tags combined with branches or file paths in one push filter (AWS's
    valid combinations: tags; branches; branches + file paths)."""
    problems: list[str] = []
    for t in decl.triggers or []:
        git = t.get("gitConfiguration")
        if not isinstance(git, dict):
            continue
        source = git.get("sourceActionName")
        if not isinstance(source, str) or action_configuration(decl, source) is None:
            problems.append(
                f"Trigger source action '{source}' is not an action of the pipeline's first "
                "stage"
            )
        for f in git.get("push") or []:
            if not isinstance(f, dict):
                continue
            if f.get("tags") is not None and (
                f.get("branches") is not None or f.get("filePaths") is not None
            ):
                problems.append(
                    "A push filter may have tags, branches, or branches and file paths; "
                    "not tags with branches or file paths"
                )
            if f.get("tags") is None and f.get("branches") is None:
                problems.append("A push filter needs tags or branches")
        for f in [*(git.get("push") or []), *(git.get("pullRequest") or [])]:
            if not isinstance(f, dict):
                continue
            for key in ("tags", "branches", "filePaths"):
                crit = f.get(key)
                if not isinstance(crit, dict):
                    continue
                for p in [*(crit.get("includes") or []), *(crit.get("excludes") or [])]:
                    why = glob_problem(p) if isinstance(p, str) else "not a string"
                    if why is not None:
                        problems.append(f"Trigger {key} pattern '{p}': {why}")
    return problems
