"""The pure matching of webhook filters (V1) and V2 triggers (app/domain/triggers.py)."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.domain import triggers as t
from app.domain.model import ActionTypeId, PipelineDeclaration

ROLE = "arn:aws:iam::123456789012:role/r"
CONN = {
    "category": "Source",
    "owner": "AWS",
    "provider": "CodeStarSourceConnection",
    "version": "1",
}
BUILD = {"category": "Compute", "owner": "AWS", "provider": "Commands", "version": "1"}
SHA = "a" * 40


def decl(
    triggers: list[dict[str, Any]] | None = None,
    *,
    branch: str = "main",
    detect: str | None = None,
    provider: dict[str, str] = CONN,
) -> PipelineDeclaration:
    config = {"BranchName": branch, "FullRepositoryId": "o/r"}
    if detect is not None:
        config["DetectChanges"] = detect
    doc: dict[str, Any] = {
        "name": "p",
        "roleArn": ROLE,
        "pipelineType": "V2",
        "stages": [
            {"name": "Source", "actions": [{"name": "src", "actionTypeId": provider,
                                            "configuration": config}]},
            {"name": "Build", "actions": [{"name": "b", "actionTypeId": BUILD,
                                           "commands": ["true"]}]},
        ],
    }  # fmt: skip
    if triggers is not None:
        doc["triggers"] = triggers
    return msgspec.convert(doc, PipelineDeclaration)


def trig(push: Any = None, pr: Any = None, source: str = "src") -> dict[str, Any]:
    git: dict[str, Any] = {"sourceActionName": source}
    if push is not None:
        git["push"] = push
    if pr is not None:
        git["pullRequest"] = pr
    return {"providerType": "CodeStarSourceConnection", "gitConfiguration": git}


def push(
    ref: str = "refs/heads/main", files: list[str] | None = None, **extra: Any
) -> t.GitEvent:
    payload: dict[str, Any] = {
        "ref": ref,
        "after": SHA,
        "repository": {"full_name": "o/r"},
        "commits": [{"added": files or [], "modified": [], "removed": []}],
        **extra,
    }
    ev = t.git_event("push", payload)
    assert ev is not None
    return ev


def pr(action: str = "opened", base: str = "main", files: list[str] | None = None) -> t.GitEvent:
    p: dict[str, Any] = {"base": {"ref": base}, "head": {"ref": "feature/x", "sha": SHA}}
    if files is not None:
        p["changed_files_list"] = files
    ev = t.git_event("pull_request", {"action": action, "pull_request": p})
    assert ev is not None
    return ev


# --- globs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("main", "main", True),
        ("main", "mainline", False),
        ("main", "xmain", False),
        ("feature/*", "feature/a", True),
        ("feature/*", "feature/a/b", False),  # * stays inside a path segment
        ("feature/**", "feature/a/b", True),  # ** crosses them
        ("feature/**", "feature/", True),
        ("**", "a/b/c", True),
        ("*", "", True),
        ("release-v?", "release-v1", True),
        ("release-v?", "release-v10", False),
        ("a?c", "a/c", False),  # ? is not a separator either
        ("v[0-9]", "v7", True),
        ("v[0-9]", "vx", False),
        ("v[!0-9]", "vx", True),
        ("v[!0-9]", "v7", False),
        ("{main,dev}", "dev", True),
        ("{main,dev}", "test", False),
        ("{main,dev}-x", "main-x", True),
        (r"a\*b", "a*b", True),
        (r"a\*b", "axb", False),
        ("a.b", "axb", False),  # regex characters are literal
        ("a+", "aa", False),
        ("**/*.js", "src/x/y.js", True),
        ("**/*.js", "y.js", False),  # Java PathMatcher: **/ needs a separator
        ("*.md", "README.md", True),
        ("*.md", "docs/README.md", False),
    ],
)
def test_glob(pattern: str, text: str, expected: bool) -> None:
    assert t.glob_match(pattern, text) is expected


@pytest.mark.parametrize("pattern", ["a\\", "[abc", "{a,b", "{a,{b}}", "x[]"])
def test_bad_globs(pattern: str) -> None:
    assert t.glob_problem(pattern) is not None
    with pytest.raises(ValueError):
        t.glob_match(pattern, "x")


def test_good_glob_has_no_problem() -> None:
    assert t.glob_problem("feature/**") is None


@given(st.text(alphabet="ab/.-_", max_size=12))
def test_glob_without_wildcards_is_equality(text: str) -> None:
    assert t.glob_match(text, text)
    assert t.glob_match(re.sub(r"[^/]+", "*", text), text)  # one * per path segment
    assert not t.glob_match(text + "x", text)


@given(st.text(alphabet="abc/", max_size=10))
def test_double_star_matches_everything(text: str) -> None:
    assert t.glob_match("**", text)
    assert t.glob_match("*", text) is ("/" not in text)


# --- criteria ------------------------------------------------------------------------------


def test_criteria_none_accepts() -> None:
    assert t.criteria_match(None, "anything")


def test_criteria_excludes_take_precedence() -> None:
    c = {"includes": ["feature/**"], "excludes": ["feature/old/**"]}
    assert t.criteria_match(c, "feature/new")
    assert not t.criteria_match(c, "feature/old/x")
    assert not t.criteria_match(c, "main")


def test_criteria_excludes_only() -> None:
    c = {"excludes": ["main"]}
    assert not t.criteria_match(c, "main")
    assert t.criteria_match(c, "dev")


def test_criteria_includes_only() -> None:
    c = {"includes": ["main", "dev"]}
    assert t.criteria_match(c, "dev")
    assert not t.criteria_match(c, "test")


def test_files_match() -> None:
    c = {"includes": ["src/**"], "excludes": ["**/README.md"]}
    assert t.files_match(None, None)
    assert t.files_match(None, ["x"])
    assert not t.files_match(c, None)  # unknown changed files never pass a file filter
    assert not t.files_match(c, [])
    assert t.files_match(c, ["docs/a", "src/a.py"])  # one accepted file is enough
    assert not t.files_match(c, ["src/x/README.md"])
    assert not t.files_match(c, ["docs/a"])
    assert t.files_match({"excludes": ["*.md"]}, ["README.md", "a.py"])
    assert not t.files_match({"excludes": ["*.md"]}, ["README.md"])


# --- Git events ----------------------------------------------------------------------------


def test_push_event() -> None:
    ev = push("refs/heads/feature/a", files=["a.py"])
    assert (ev.kind, ev.name, ev.is_tag, ev.commit) == ("push", "feature/a", False, SHA)
    assert ev.files == ("a.py",)
    assert ev.repository == "o/r"
    tag = push("refs/tags/v1")
    assert (tag.name, tag.is_tag) == ("v1", True)


def test_push_changed_files_from_every_commit_once() -> None:
    ev = t.git_event(
        "push",
        {
            "ref": "refs/heads/main",
            "after": SHA,
            "commits": [
                {"added": ["a"], "modified": ["b"], "removed": ["c"]},
                {"added": ["a"], "modified": ["d"]},
            ],
        },
    )
    assert ev is not None and ev.files == ("a", "b", "c", "d")
    no_commits = t.git_event("push", {"ref": "refs/heads/main", "after": SHA})
    assert no_commits is not None and no_commits.files is None


@pytest.mark.parametrize(
    "payload",
    [
        {"ref": "refs/heads/main", "after": t.ZERO_COMMIT},  # a deleted branch
        {"ref": "refs/heads/main", "after": SHA, "deleted": True},
        {"ref": "refs/pull/1/head", "after": SHA},
        {"ref": "refs/heads/main"},
        {"after": SHA},
        [],
        "x",
    ],
)
def test_pushes_not_acted_on(payload: Any) -> None:
    assert t.git_event("push", payload) is None


def test_ping_and_unknown_events_are_ignored() -> None:
    assert t.git_event("ping", {"zen": "x"}) is None
    assert t.git_event("issues", {"ref": "refs/heads/main", "after": SHA}) is None


def test_event_type_guessed_for_a_push_without_header() -> None:
    ev = t.git_event(None, {"ref": "refs/heads/main", "after": SHA})
    assert ev is not None and ev.kind == "push"


@pytest.mark.parametrize(
    ("action", "expected"),
    [("opened", "OPEN"), ("reopened", "OPEN"), ("synchronize", "UPDATED"), ("closed", "CLOSED")],
)
def test_pr_events(action: str, expected: str) -> None:
    ev = pr(action)
    assert (ev.kind, ev.pr_event, ev.name, ev.commit) == ("pull_request", expected, "main", SHA)
    assert ev.source_branch == "feature/x"


@pytest.mark.parametrize("action", ["edited", "labeled", "assigned"])
def test_other_pr_actions_are_ignored(action: str) -> None:
    p = {"base": {"ref": "main"}, "head": {"ref": "f", "sha": SHA}}
    assert t.git_event("pull_request", {"action": action, "pull_request": p}) is None


def test_pr_without_refs_is_ignored() -> None:
    assert t.git_event("pull_request", {"action": "opened", "pull_request": {}}) is None
    p = {"base": {"ref": "main"}, "head": {"ref": "f"}}
    assert t.git_event("pull_request", {"action": "opened", "pull_request": p}) is None


def test_pr_files_only_when_listed() -> None:
    assert pr().files is None
    assert pr(files=["a", 3, "b"]).files == ("a", "b")  # type: ignore[list-item]
    assert pr(files=[]).files is None


# --- filters -------------------------------------------------------------------------------


def test_push_filter_branches_and_files() -> None:
    f = {"branches": {"includes": ["main"]}, "filePaths": {"includes": ["src/**"]}}
    assert t.push_filter_matches(f, push(files=["src/a.py"]))
    assert not t.push_filter_matches(f, push(files=["docs/a.md"]))
    assert not t.push_filter_matches(f, push("refs/heads/dev", files=["src/a.py"]))


def test_push_filter_tags_vs_branches() -> None:
    tags = {"tags": {"includes": ["v*"]}}
    branches = {"branches": {"includes": ["**"]}}
    assert t.push_filter_matches(tags, push("refs/tags/v1"))
    assert not t.push_filter_matches(tags, push("refs/tags/x1"))
    assert not t.push_filter_matches(tags, push("refs/heads/v1"))  # a branch named like a tag
    assert t.push_filter_matches(branches, push("refs/heads/v1"))
    assert not t.push_filter_matches(branches, push("refs/tags/v1"))  # a tag is no branch


def test_push_filter_never_matches_a_pr() -> None:
    assert not t.push_filter_matches({"branches": {"includes": ["**"]}}, pr())


def test_pr_filter() -> None:
    f = {"events": ["OPEN", "UPDATED"], "branches": {"includes": ["main"]}}
    assert t.pr_filter_matches(f, pr("opened"))
    assert t.pr_filter_matches(f, pr("synchronize"))
    assert not t.pr_filter_matches(f, pr("closed"))
    assert not t.pr_filter_matches(f, pr("opened", base="dev"))
    assert not t.pr_filter_matches(f, push())


def test_pr_filter_defaults_to_every_event_and_branch() -> None:
    for action in ("opened", "synchronize", "closed"):
        assert t.pr_filter_matches({}, pr(action))


def test_pr_filter_file_paths() -> None:
    f = {"filePaths": {"includes": ["src/**"]}}
    assert not t.pr_filter_matches(f, pr())  # the files are unknown
    assert t.pr_filter_matches(f, pr(files=["src/a"]))
    assert not t.pr_filter_matches(f, pr(files=["doc/a"]))


# --- match_trigger -------------------------------------------------------------------------


def test_no_triggers_default_branch_detection() -> None:
    d = decl()
    assert t.match_trigger(d, push()) == "src"
    assert t.match_trigger(d, push("refs/heads/dev")) is None
    assert t.match_trigger(d, push("refs/tags/main")) is None
    assert t.match_trigger(d, pr()) is None
    assert t.match_trigger(decl(detect="false"), push()) is None
    assert t.match_trigger(decl(detect="FALSE"), push()) is None
    assert t.match_trigger(decl(detect="true"), push()) == "src"
    assert t.match_trigger(decl(provider=BUILD | {"category": "Source"}), push()) is None


def test_trigger_without_filters_acts_on_the_action_branch() -> None:
    d = decl([trig()])
    assert t.match_trigger(d, push()) == "src"
    assert t.match_trigger(d, push("refs/heads/dev")) is None


def test_trigger_push_filters_are_ored() -> None:
    d = decl([trig(push=[{"branches": {"includes": ["dev"]}}, {"tags": {"includes": ["v*"]}}])])
    assert t.match_trigger(d, push("refs/heads/dev")) == "src"
    assert t.match_trigger(d, push("refs/tags/v2")) == "src"
    assert t.match_trigger(d, push("refs/heads/main")) is None  # filters replace the default
    assert t.match_trigger(d, pr()) is None


def test_trigger_pr_filters() -> None:
    d = decl([trig(pr=[{"events": ["CLOSED"], "branches": {"includes": ["main"]}}])])
    assert t.match_trigger(d, pr("closed")) == "src"
    assert t.match_trigger(d, pr("opened")) is None
    assert t.match_trigger(d, push()) is None


def test_trigger_of_an_unknown_action_or_provider_never_matches() -> None:
    assert t.match_trigger(decl([trig(source="nope")]), push()) is None
    other = {"providerType": "Other", "gitConfiguration": {"sourceActionName": "src"}}
    assert t.match_trigger(decl([other]), push()) is None
    assert t.match_trigger(decl([{"providerType": "CodeStarSourceConnection"}]), push()) is None


def test_action_in_a_later_stage_is_no_source() -> None:
    assert t.action_configuration(decl(), "b") is None
    want = {"BranchName": "main", "FullRepositoryId": "o/r"}
    assert t.action_configuration(decl(), "src") == want


# --- declaration checks --------------------------------------------------------------------


def test_trigger_problems() -> None:
    assert t.trigger_problems(decl([trig(push=[{"branches": {"includes": ["**"]}}])])) == []
    assert t.trigger_problems(decl()) == []
    [p] = t.trigger_problems(decl([trig(source="b")]))
    assert "first stage" in p
    [p] = t.trigger_problems(
        decl([trig(push=[{"tags": {"includes": ["v1"]}, "branches": {"includes": ["m"]}}])])
    )
    assert "tags" in p
    [p] = t.trigger_problems(
        decl([trig(push=[{"tags": {"includes": ["v1"]}, "filePaths": {"includes": ["m"]}}])])
    )
    assert "tags" in p
    [p] = t.trigger_problems(decl([trig(push=[{"filePaths": {"includes": ["a"]}}])]))
    assert "needs tags or branches" in p
    [p] = t.trigger_problems(decl([trig(pr=[{"branches": {"excludes": ["[x"]}}])]))
    assert "'[x'" in p


# --- webhook filters (V1) ------------------------------------------------------------------


PAYLOAD = {
    "ref": "refs/heads/main",
    "repository": {"name": "r", "private": False, "size": 3},
    "commits": [{"id": "c1", "author": {"name": "ann"}}, {"id": "c2"}],
}


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ([], True),
        ([("$.ref", "refs/heads/{BranchName}")], True),
        ([("$.ref", "refs/heads/main")], True),
        ([("$.ref", "refs/heads/dev")], False),
        ([("$.ref", "refs/heads/{Nope}")], False),  # an unknown key stays literal
        ([("$.repository.name", "r"), ("$.ref", "refs/heads/main")], True),
        ([("$.repository.name", "r"), ("$.ref", "refs/heads/dev")], False),  # all must pass
        ([("$.commits[0].author.name", "ann")], True),
        ([("$.commits[1].id", "c1")], False),
        ([("$.repository.private", "false")], True),  # non-strings compare as JSON
        ([("$.repository.size", "3")], True),
        ([("$.missing", None)], False),
        ([("$.ref", None)], True),  # no matchEquals: the path must select something
        ([("$.commits[*].id", "c2")], True),  # any selected value may match
    ],
)
def test_filters_match(rules: list[tuple[str, str | None]], expected: bool) -> None:
    assert t.filters_match(rules, PAYLOAD, {"BranchName": "main"}) is expected


def test_expand() -> None:
    assert t.expand("refs/heads/{Branch}", {"Branch": "main"}) == "refs/heads/main"
    assert t.expand("{A}-{B}", {"A": "1", "B": "2"}) == "1-2"
    assert t.expand("{X}", {}) == "{X}"


@pytest.mark.parametrize(
    ("path", "match", "ok"),
    [
        ("$.ref", "refs/heads/{Branch}", True),
        ("$.a.b[0].c", None, True),
        ("ref", None, False),  # must start at the root
        ("$.[", None, False),
        ("$.a[", None, False),
        ("$.ref", "refs/{Branch", False),
        ("$.ref", "refs/}", False),
        ("$.ref", "{{x}}", False),
    ],
)
def test_filter_problem(path: str, match: str | None, ok: bool) -> None:
    assert (t.filter_problem(path, match) is None) is ok


# --- what a delivery starts ------------------------------------------------------------------


def test_takes_commit_only_for_aws_git_sources_of_the_first_stage() -> None:
    assert t.takes_commit(decl(), "src")
    codecommit = CONN | {"provider": "CodeCommit"}
    assert t.takes_commit(decl(provider=codecommit), "src")
    assert not t.takes_commit(decl(), "b")  # a later stage
    assert not t.takes_commit(decl(), "nope")
    assert not t.takes_commit(decl(provider=CONN | {"provider": "S3"}), "src")
    assert not t.takes_commit(decl(provider=CONN | {"owner": "Custom"}), "src")
    assert not t.takes_commit(decl(provider=CONN | {"category": "Build"}), "src")
    assert not t.takes_commit(decl(provider=CONN | {"version": "2"}), "src")


def test_start_execution_records_the_webhook_trigger_and_revision() -> None:
    from app.domain import commands as c
    from app.domain import events as ev
    from app.domain.errors import DomainError
    from tests.domain.helpers import Harness, make_decl

    h = Harness()
    try:  # "src": a git source action, where the engine runs them (the 'sources' work) ...
        h.create(msgspec.structs.replace(decl(), name=h.name))
    except DomainError as err:  # ... else a Commands action named so
        assert "CodeStarSourceConnection" in err.message
        h.create(make_decl({"Source": ["src"], "Build": ["b"]}, name=h.name))
    revision = [{"actionName": "src", "revisionType": "COMMIT_ID", "revisionValue": SHA}]
    envs = h.run(
        c.StartExecution(
            executionId="11111111-1111-4111-8111-111111111111",
            triggerType="Webhook",
            triggerDetail="arn:aws:codepipeline:us-east-1:1:webhook:w",
            sourceRevisions=revision,
        )
    )
    started = envs[0].event
    assert isinstance(started, ev.ExecutionStarted)
    assert started.triggerType == "Webhook"
    assert started.triggerDetail == "arn:aws:codepipeline:us-east-1:1:webhook:w"
    assert started.sourceRevisions == revision
    assert h.x(started.executionId).sourceRevisions == revision
    plain = h.run(c.StartExecution(executionId="22222222-2222-4222-8222-222222222222"))
    first = plain[0].event
    assert isinstance(first, ev.ExecutionStarted) and first.sourceRevisions is None


_names = st.text(alphabet="ab/", min_size=0, max_size=6)


@given(_names, st.lists(_names, max_size=3), st.lists(_names, min_size=1, max_size=3))
def test_an_excluded_value_is_refused_whatever_the_includes(
    value: str, includes: list[str], excludes: list[str]
) -> None:
    crit = {"includes": [*includes, value, "**"], "excludes": [*excludes, value]}
    assert not t.criteria_match(crit, value)
    assert t.criteria_match({"includes": [*includes, value]}, value)


def test_a_path_compares_at_most_max_json_path_nodes_values() -> None:
    n = t.MAX_JSON_PATH_NODES
    items = [{"id": "x"}] * n + [{"id": "wanted"}]
    assert not t.filters_match([("$.items[*].id", "wanted")], {"items": items}, {})
    assert t.filters_match([("$.items[*].id", "wanted")], {"items": items[1:]}, {})


def test_changed_files_skip_what_is_not_a_commit_or_a_path() -> None:
    ev = t.git_event(
        "push",
        {
            "ref": "refs/heads/main",
            "after": SHA,
            "commits": ["nope", {"added": ["a", 7], "modified": None}],
        },
    )
    assert ev is not None and ev.files == ("a",)
    odd = t.git_event("push", {"ref": "refs/heads/main", "after": SHA, "commits": "x"})
    assert odd is not None and odd.files is None


def test_commit_ids_must_be_full_hex() -> None:
    for bad in ("abc123", "g" * 40, "A" * 39):
        assert t.git_event("push", {"ref": "refs/heads/main", "after": bad}) is None
    assert t.git_event("push", {"ref": "refs/heads/main", "after": "b" * 64}) is not None
    p = {"base": {"ref": "main"}, "head": {"ref": "f", "sha": "short"}}
    assert t.git_event("pull_request", {"action": "opened", "pull_request": p}) is None


def test_trigger_problems_skip_what_the_model_would_refuse() -> None:
    odd = {"providerType": "CodeStarSourceConnection", "gitConfiguration": "x"}
    assert t.trigger_problems(decl([odd])) == []
    [p] = t.trigger_problems(decl([trig(push=[{"branches": {"includes": [3]}}])]))
    assert "not a string" in p


# --- found by mutation testing --------------------------------------------------------------


def test_refs_and_commits_must_be_non_empty_strings() -> None:
    assert t.git_event("push", {"ref": 5, "after": SHA}) is None
    assert t.git_event("push", {"ref": "", "after": SHA}) is None
    assert t.git_event("push", {"ref": "refs/heads/main", "after": ""}) is None
    no_files = t.git_event("push", {"ref": "refs/heads/main", "after": SHA, "commits": []})
    assert no_files is not None and no_files.files is None


def test_malformed_pull_requests_are_ignored() -> None:
    assert t.git_event("pull_request", {"action": "opened", "pull_request": "x"}) is None
    assert t.git_event("pull_request", {"action": 3, "pull_request": {}}) is None
    only_base = {"base": {"ref": "main"}}
    assert t.git_event("pull_request", {"action": "opened", "pull_request": only_base}) is None
    only_head = {"head": {"ref": "f", "sha": SHA}}
    assert t.git_event("pull_request", {"action": "opened", "pull_request": only_head}) is None


def test_pr_repository() -> None:
    p = {"base": {"ref": "main"}, "head": {"ref": "f", "sha": SHA}}
    ev = t.git_event(
        "pull_request",
        {"action": "opened", "pull_request": p, "repository": {"full_name": "o/r"}},
    )
    assert ev is not None and ev.repository == "o/r"


def test_non_strings_compare_as_compact_json() -> None:
    payload = {"files": ["a", "b"], "meta": {"k": 1}}
    assert t.filters_match([("$.files", '["a","b"]')], payload, {})
    assert t.filters_match([("$.meta", '{"k":1}')], payload, {})
    assert not t.filters_match([("$.files", '["a", "b"]')], payload, {})


def test_every_rule_counts_after_one_without_match_equals() -> None:
    rules: list[tuple[str, str | None]] = [("$.ref", None), ("$.ref", "refs/heads/dev")]
    assert not t.filters_match(rules, PAYLOAD, {})


def test_problems_say_why() -> None:
    why = t.filter_problem("$.[", None)
    assert why is not None and "not valid" in why
    why = t.glob_problem("[x")
    assert why is not None and "unclosed" in why
    assert t.filter_problem("$.ref", "{a{b}") is not None  # nested, though it closes once


def test_later_triggers_are_tried_after_ones_that_cannot_match() -> None:
    good = trig(push=[{"branches": {"includes": ["main"]}}])
    other = {"providerType": "Other", "gitConfiguration": {"sourceActionName": "src"}}
    no_git = {"providerType": "CodeStarSourceConnection", "gitConfiguration": "x"}
    for first in (other, no_git, trig(source="nope"), trig(),
                  trig(push=[{"branches": {"includes": ["dev"]}}])):  # fmt: skip
        assert t.match_trigger(decl([first, good]), push()) == "src"
    # a filterless trigger that does not match (another branch) lets the next one try
    assert t.match_trigger(decl([trig(), good], branch="dev"), push()) == "src"


def test_default_detection_looks_at_every_source_action() -> None:
    d = decl()
    other = msgspec.structs.replace(
        d.stages[0].actions[0],
        name="s3",
        actionTypeId=msgspec.convert(CONN | {"provider": "S3"}, ActionTypeId),
    )
    stage = msgspec.structs.replace(d.stages[0], actions=[other, d.stages[0].actions[0]])
    two = msgspec.structs.replace(d, stages=[stage, *d.stages[1:]])
    assert t.match_trigger(two, push()) == "src"


def test_a_declaration_without_stages_matches_nothing() -> None:
    empty = msgspec.structs.replace(decl(), stages=[])
    assert t.takes_commit(empty, "src") is False
    assert t.action_configuration(empty, "src") is None
    assert t.match_trigger(empty, push()) is None


def test_every_push_filter_and_criterion_is_checked() -> None:
    both = {"tags": {"includes": ["v1"]}, "branches": {"includes": ["m"]}}
    tags_files = {"tags": {"includes": ["v1"]}, "filePaths": {"includes": ["a"]}}
    problems = t.trigger_problems(decl([trig(push=["x", both, tags_files])]))
    assert len(problems) == 2 and all(p.startswith("A push filter may have tags") for p in problems)
    assert problems[0].endswith("not tags with branches or file paths")
    [p] = t.trigger_problems(decl([trig(push=["x", {"filePaths": {"includes": ["a"]}}])]))
    assert p == "A push filter needs tags or branches"
    for key in ("tags", "branches", "filePaths"):
        f: dict[str, Any] = {"branches": {"includes": ["m"]}, key: {"includes": ["[x"]}}
        if key == "tags":
            f = {"tags": {"includes": ["[x"]}}
        [p] = t.trigger_problems(decl([trig(push=["x", f])]))
        assert p.startswith(f"Trigger {key} pattern '[x'")
    [p] = t.trigger_problems(decl([trig(pr=["x", {"branches": {"includes": [3]}}])]))
    assert p == "Trigger branches pattern '3': not a string"
    # a trigger the model would refuse does not hide the next one's problems
    odd = {"providerType": "CodeStarSourceConnection", "gitConfiguration": "x"}
    assert len(t.trigger_problems(decl([odd, trig(source="b")]))) == 1
