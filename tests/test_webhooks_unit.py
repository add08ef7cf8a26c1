"""The receiving endpoint's checks without a server: signatures, address ranges, payloads."""

from __future__ import annotations

import hashlib
import hmac
import urllib.parse
from pathlib import Path

import pytest

from app.api.errors import AwsError
from app.webhooks.ops import check_authentication, redacted
from app.webhooks.receive import decode_payload, peer_allowed, push_commit, signature_ok

BODY = b'{"ref": "refs/heads/main"}'
SECRET = b"k"
SHA = "ab" * 20


def sig256(body: bytes = BODY, secret: bytes = SECRET) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def test_signature_sha256() -> None:
    assert signature_ok(SECRET, BODY, sig256(), None)
    assert not signature_ok(SECRET, BODY + b" ", sig256(), None)
    assert not signature_ok(b"other", BODY, sig256(), None)
    assert not signature_ok(SECRET, BODY, sig256().replace("sha256=", "sha1="), None)
    assert not signature_ok(SECRET, BODY, None, None)
    assert not signature_ok(SECRET, BODY, "sha256=é", None)  # not ASCII: no crash


def test_signature_sha1_only_without_sha256() -> None:
    sha1 = "sha1=" + hmac.new(SECRET, BODY, hashlib.sha1).hexdigest()
    assert signature_ok(SECRET, BODY, None, sha1)
    assert not signature_ok(SECRET, BODY, "sha256=00", sha1)  # the stronger one decides


@pytest.mark.parametrize(
    ("peer", "cidr", "ok"),
    [
        ("127.0.0.1", "127.0.0.0/8", True),
        ("127.0.0.1", "10.0.0.0/8", False),
        ("10.1.2.3", "10.1.2.3/32", True),
        ("10.1.2.4", "10.1.2.3/32", False),
        ("::ffff:10.0.0.1", "10.0.0.0/8", True),  # IPv4-mapped IPv6
        ("::1", "127.0.0.0/8", False),
        ("2001:db8::1", "2001:db8::/32", True),
        (None, "0.0.0.0/0", False),
        ("not-an-ip", "0.0.0.0/0", False),
        ("10.0.0.1", "10.0.0.1/8", True),  # host bits set: the network it names
    ],
)
def test_peer_allowed(peer: str | None, cidr: str, ok: bool) -> None:
    assert peer_allowed(peer, cidr) is ok


def test_decode_payload() -> None:
    assert decode_payload("application/json", BODY) == {"ref": "refs/heads/main"}
    assert decode_payload(None, BODY) == {"ref": "refs/heads/main"}
    form = urllib.parse.urlencode({"payload": BODY.decode()}).encode()
    assert decode_payload("application/x-www-form-urlencoded", form) == {
        "ref": "refs/heads/main"
    }
    with pytest.raises(ValueError):
        decode_payload("application/x-www-form-urlencoded", b"a=1")
    with pytest.raises(ValueError):
        decode_payload("application/json", b"{nope")


def test_push_commit() -> None:
    assert push_commit({"after": SHA}) == SHA
    assert push_commit({"after": "0" * 40, "head_commit": {"id": SHA}}) == SHA
    assert push_commit({"after": "xyz", "head_commit": {"id": SHA}}) == SHA
    assert push_commit({"after": "abc123"}) is None  # abbreviated: not a commit to pin
    assert push_commit({"head_commit": {"id": 3}}) is None
    assert push_commit([]) is None
    assert push_commit({"after": "c" * 64}) == "c" * 64


def test_secret_is_redacted() -> None:
    d = {"authentication": "GITHUB_HMAC", "authenticationConfiguration": {"SecretToken": "t"}}
    out = redacted(d)
    assert out["authenticationConfiguration"] == {"SecretToken": "****"}
    assert d["authenticationConfiguration"] == {"SecretToken": "t"}  # the original untouched
    ip = {"authenticationConfiguration": {"AllowedIPRange": "10.0.0.0/8"}}
    assert redacted(ip) == ip


@pytest.mark.parametrize(
    ("kind", "conf", "ok"),
    [
        ("GITHUB_HMAC", {"SecretToken": "t"}, True),
        ("GITHUB_HMAC", {}, False),
        ("GITHUB_HMAC", {"SecretToken": "t", "AllowedIPRange": "10.0.0.0/8"}, False),
        ("IP", {"AllowedIPRange": "10.0.0.0/8"}, True),
        ("IP", {"AllowedIPRange": "::/0"}, True),
        ("IP", {"AllowedIPRange": "10.0.0.0/33"}, False),
        ("IP", {}, False),
        ("IP", {"AllowedIPRange": "10.0.0.0/8", "SecretToken": "t"}, False),
        ("UNAUTHENTICATED", {}, True),
        ("UNAUTHENTICATED", {"SecretToken": "t"}, False),
        ("UNAUTHENTICATED", {"AllowedIPRange": "10.0.0.0/8"}, False),
    ],
)
def test_check_authentication(kind: str, conf: dict[str, str], ok: bool) -> None:
    if ok:
        check_authentication(kind, conf)
        return
    with pytest.raises(AwsError) as exc:
        check_authentication(kind, conf)
    assert exc.value.type_name == "InvalidWebhookAuthenticationParametersException"


def test_trigger_secret_file(tmp_path: Path) -> None:
    from app.cli import CliError, _trigger_secret

    assert _trigger_secret(None) is None
    f = tmp_path / "secret"
    f.write_bytes(b"  s3cret\n")
    assert _trigger_secret(str(f)) == b"s3cret"
    f.write_bytes(b"\n")
    with pytest.raises(CliError):
        _trigger_secret(str(f))
    with pytest.raises(CliError):
        _trigger_secret(str(tmp_path / "missing"))


async def test_a_webhook_change_that_keeps_conflicting_is_concurrent_modification() -> None:
    from types import SimpleNamespace

    import fakeredis

    from app.api.operations import Operations
    from app.api.wire import RequestContext
    from app.engine import Engine
    from app.repository import Origin
    from app.webhooks.store import WebhookConflict, WebhookPut, WebhookStore

    redis = fakeredis.FakeAsyncRedis()
    ops = Operations(Engine(redis), region="us-east-1", account="1", origin=lambda _: Origin())
    store = WebhookStore(redis)
    put = WebhookPut(name="w", webhookId="i", definition={}, at=1.0, actor="a")
    await store.append("0-0", [put])
    calls = 0

    async def racing_append(seen: str, events: list[object]) -> None:
        nonlocal calls
        calls += 1
        raise WebhookConflict("someone else came first")

    ops.webhooks.store.append = racing_append  # type: ignore[assignment,method-assign]
    ctx = RequestContext("r", "anonymous", "127.0.0.1:1", 0.0)
    with pytest.raises(AwsError) as exc:
        await ops.webhooks.delete_webhook(SimpleNamespace(name="w"), ctx)
    assert exc.value.type_name == "ConcurrentModificationException"
    assert calls == 20  # retried, then refused
    assert "w" in (await store.load()).by_name
    await redis.aclose()
