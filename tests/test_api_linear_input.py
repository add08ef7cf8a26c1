"""Linear-time input handling: no body under the size limit is expensive to validate.

Issue 12: the old string-stripping regex in ``json_depth_exceeds`` was quadratic on
``"`` + n x ``\\"`` + 65 x ``[`` (a 64 KB body blocked ``/health`` for 27 s). The checks here:

- the depth check agrees with an exact reference on every valid JSON body hypothesis makes
  (strings full of brackets, quotes and backslashes, nesting around the limit);
- adversarial 1 MB bodies, built by repeating hypothesis-chosen fragments of the characters
  the scanner cares about, are validated (depth check + decode) within a CPU bound;
- the worst shapes through the whole app, and ``/health`` answering meanwhile over HTTP.

CPU time is ``time.process_time`` (this process only), best of three runs, against a bound
(50 ms) that is several times what the code needs, so load on the machine does not matter.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.api.shapes import OPERATIONS
from app.api.wire import MAX_JSON_DEPTH, build_app, json_depth_exceeds
from tests.api_helpers import asgi_call, serve, target

MB = 1_048_576
CPU_BOUND_S = 0.050


def cpu(fn: Callable[[], Any], runs: int = 3) -> float:
    """Best-of-``runs`` CPU seconds of ``fn()`` in this process."""
    best = float("inf")
    for _ in range(runs):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def reference_depth(body: bytes) -> int:
    """Exact nesting depth of a valid JSON text, by a plain lexer (strings skipped)."""
    depth = best = 0
    i, n = 0, len(body)
    in_string = False
    while i < n:
        c = body[i]
        if in_string:
            if c == 0x5C:  # backslash: skip the escaped byte
                i += 1
            elif c == 0x22:
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c in b"[{":
            depth += 1
            best = max(best, depth)
        elif c in b"]}":
            depth -= 1
        i += 1
    return best


# --- agreement with the reference on valid JSON --------------------------------------------

nasty_text = st.text(alphabet='[]{}"\\/ab:,\n\u00e9\u2028', max_size=12)
leaves = st.none() | st.booleans() | st.integers() | nasty_text


def nested(depth: int) -> st.SearchStrategy[Any]:
    """Values nested exactly ``depth`` deep somewhere (lists or objects), noise around."""
    noise = st.recursive(
        leaves,
        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(nasty_text, kids, max_size=3),
        max_leaves=8,
    )

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        value: Any = draw(noise)
        for _ in range(depth):
            if draw(st.booleans()):
                value = [*draw(st.lists(noise, max_size=2)), value]
            else:
                siblings = draw(st.dictionaries(nasty_text, noise, max_size=2))
                value = {draw(nasty_text): value, **siblings}
        return value

    return build()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), depth=st.integers(min_value=0, max_value=MAX_JSON_DEPTH + 6))
def test_depth_check_is_exact_on_valid_json(data: st.DataObject, depth: int) -> None:
    value = data.draw(nested(depth))
    body = json.dumps(value, ensure_ascii=data.draw(st.booleans())).encode()
    msgspec.json.decode(body)  # valid JSON
    assert json_depth_exceeds(body) == (reference_depth(body) > MAX_JSON_DEPTH)
    for limit in (0, 1, 3, 10):
        assert json_depth_exceeds(body, limit) == (reference_depth(body) > limit)


@pytest.mark.parametrize(
    ("body", "deep"),
    [
        (b"[" * 64 + b"]" * 64, False),
        (b"[" * 65 + b"]" * 65, True),
        (b'["' + b"[" * 100 + b'"]', False),  # brackets in a string do not count
        (b'["\\\\"' + b",[" * 70 + b"]" * 70 + b"]", True),  # an escaped backslash ends it
        (b'["\\"' + b",[" * 70 + b'"]', False),  # an escaped quote does not
        (b'{"a\\\\\\"[[[": ' + b"[" * 63 + b"]" * 63 + b"}", False),
    ],
)
def test_depth_check_examples(body: bytes, deep: bool) -> None:
    assert json_depth_exceeds(body) is deep
    try:
        msgspec.json.decode(body)
    except msgspec.DecodeError:
        return
    assert (reference_depth(body) > MAX_JSON_DEPTH) is deep


# --- adversarial bodies: bounded CPU --------------------------------------------------------

APP = build_app({op: (lambda req, ctx: asyncio.sleep(0)) for op in ("GetPipelineState",)})


def post(app: Any, body: bytes) -> tuple[int, dict[str, Any]]:
    status, _, out = asyncio.run(
        asgi_call(app, "POST", "/", list(target("GetPipelineState").items()), [body])
    )
    return status, json.loads(out)


fragments = st.lists(
    st.text(alphabet='"\\[]{}a:, ', min_size=1, max_size=6).map(str.encode),
    min_size=1,
    max_size=4,
)


def adversarial(prefix: bytes, parts: list[bytes], suffix: bytes, size: int = MB) -> bytes:
    unit = b"".join(parts)
    body = prefix + unit * ((size - len(prefix) - len(suffix)) // len(unit))
    return body + suffix


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prefix=st.sampled_from([b"", b'"', b'{"name":"x","junk":[', b"[" * 70, b'["\\']),
    parts=fragments,
    suffix=st.sampled_from([b"", b"[" * 65, b'"]', b"]" * 70 + b"}"]),
)
@example(prefix=b'"', parts=[b'\\"'], suffix=b"[" * 65)  # the shape of issue 12
@example(prefix=b"", parts=[b"[]"], suffix=b"")
@example(prefix=b"", parts=[b'["["]'], suffix=b"")
def test_adversarial_megabyte_bodies_take_bounded_cpu(
    prefix: bytes, parts: list[bytes], suffix: bytes
) -> None:
    body = adversarial(prefix, parts, suffix)
    assert MB - 32 <= len(body) <= MB
    decode = APP._decode  # type: ignore[attr-defined]  # the whole validation step

    def validate() -> None:
        try:
            decode("GetPipelineState", body)
        except Exception as exc:  # refusals are AwsErrors (400), never anything else
            assert type(exc).__name__ == "AwsError", exc

    assert cpu(validate) < CPU_BOUND_S


# shape -> (body, status): refused (too deep / not JSON) or valid and accepted
WORST = {
    "issue-12": (b'"' + b'\\"' * ((MB - 66) // 2) + b"[" * 65, 400),
    "alternating": (b'{"name":"x","j":[' + b"[]," * ((MB - 40) // 3) + b"[]]}", 200),
    "deep-open": (
        b'{"name":"x","j":' + b"[" * ((MB - 20) // 2) + b"]" * ((MB - 20) // 2) + b"}",
        400,
    ),
    "strings-between-brackets": (
        b'{"name":"x","j":[' + b'["["],' * ((MB - 40) // 6) + b"0]}",
        200,
    ),
    "backslashes": (b'{"name":"' + b"\\\\" * ((MB - 20) // 2) + b'"}', 400),
}


@pytest.mark.parametrize("shape", sorted(WORST))
def test_worst_shapes_through_the_app(shape: str) -> None:
    body, expected = WORST[shape]
    assert len(body) <= MB
    status, out = post(APP, body)
    assert status == expected, out
    if expected == 400:
        assert out["__type"] == "ValidationException"
    assert cpu(lambda: post(APP, body)) < CPU_BOUND_S


# --- /health keeps answering while megabyte bodies are validated ------------------------------


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    async def state(req: Any, ctx: Any) -> dict[str, Any]:
        return {"pipelineName": req.name, "stageStates": []}

    with serve(build_app({"GetPipelineState": state})) as u:
        yield u


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
    try:
        conn.request("POST", "/", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_health_answers_while_worst_bodies_arrive(url: str) -> None:
    statuses: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            for body, _ in WORST.values():
                statuses.append(_post(url, body, target("GetPipelineState")))

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        worst = 0.0
        deadline = time.monotonic() + 3
        checks = 0
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=5)
            conn.request("GET", "/health")
            assert conn.getresponse().status == 200
            conn.close()
            worst = max(worst, time.monotonic() - t0)
            checks += 1
            time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert checks > 10
    assert statuses and set(statuses) <= {200, 400}
    assert worst < 1.0, f"/health took {worst:.3f} s"


def test_operations_still_decode_normally() -> None:
    body = json.dumps({"name": "demo"}).encode()
    assert msgspec.json.decode(body, type=OPERATIONS["GetPipelineState"]).name == "demo"
    status, out = post(APP, body)
    assert status == 200, out
