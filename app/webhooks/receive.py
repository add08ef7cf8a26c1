"""The receiving side: ``POST /webhooks/<id-or-name>`` (PutWebhook's URL) and
``POST /triggers/<pipeline>`` (V2 triggers), served beside ``/console`` by ``stageline serve``.

``/webhooks/<id>``:

1. the body is read up to a cap (over it: ``413``, nothing started);
2. the webhook is found by its URL id (or by its name, unless it is UNAUTHENTICATED: then
   the unguessable id is all that protects it);
3. authentication: GITHUB_HMAC checks ``X-Hub-Signature-256: sha256=<hex>`` (or
   ``X-Hub-Signature: sha1=<hex>``) over the raw body with the SecretToken, in constant time
   (``401`` when missing or wrong); IP checks the peer address against AllowedIPRange
   (``403``; the TCP peer, no proxy header is trusted); UNAUTHENTICATED accepts all;
4. the filters (:func:`app.domain.triggers.filters_match`): no match answers ``200`` with
   ``started: false`` and starts nothing;
5. an execution starts with triggerType ``Webhook``, triggerDetail the webhook ARN and, for a
   GitHub-style push (``after`` / ``head_commit.id``), that commit as the ``COMMIT_ID``
   source revision of the target action. GitHub's ``X-GitHub-Delivery`` makes the start
   idempotent: a redelivery returns the execution the first one started.

Every request to a known webhook is recorded in its delivery log (``lastTriggered``,
``errorCode`` in ListWebhooks). ``/triggers/<pipeline>`` checks the server's trigger secret
(``--trigger-secret-file``) the same way, then matches a ``push`` / ``pull_request`` event
against the pipeline's triggers (:func:`app.domain.triggers.match_trigger`) and starts with
triggerType ``WebhookV2``. JSON parsing, signatures and matching run in a worker thread, so
a large payload never holds the event loop.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec

from app.api.wire import store_error
from app.domain import triggers
from app.domain.errors import DomainError
from app.engine import Engine
from app.repository import Origin
from app.webhooks.ops import PATH_PREFIX, webhook_arn
from app.webhooks.store import Delivery, Webhook, WebhookStore, now

log = logging.getLogger("stageline.webhooks")

Scope = Any
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]

TRIGGERS_PREFIX = "/triggers/"
DEFAULT_MAX_BODY = 1_048_576


class _TooLarge(Exception):
    pass


async def _read_body(receive: Receive, cap: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        m = await receive()
        if m["type"] == "http.disconnect":
            return b""
        chunk = m.get("body", b"")
        size += len(chunk)
        if size > cap:
            raise _TooLarge
        chunks.append(chunk)
        if not m.get("more_body", False):
            return b"".join(chunks)


async def _json(send: Send, status: int, doc: Any) -> None:
    body = msgspec.json.encode(doc)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    if status >= 400 and isinstance(doc, dict) and "__type" in doc:
        headers.append((b"x-amzn-errortype", str(doc["__type"]).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: str) -> str | None:
    wanted = name.encode()
    for k, v in scope.get("headers", []):
        if k.lower() == wanted:
            return str(v.decode("latin-1"))
    return None


def signature_ok(secret: bytes, body: bytes, sha256: str | None, sha1: str | None) -> bool:
    """GitHub's ``X-Hub-Signature-256`` (preferred) or ``X-Hub-Signature``, compared in
    constant time."""
    if sha256 is not None:
        algo, given = hashlib.sha256, sha256
        prefix = "sha256="
    elif sha1 is not None:
        algo, given = hashlib.sha1, sha1
        prefix = "sha1="
    else:
        return False
    expected = prefix + hmac.new(secret, body, algo).hexdigest()
    return hmac.compare_digest(expected.encode(), given.strip().encode("latin-1", "replace"))


def peer_allowed(peer: str | None, cidr: str) -> bool:
    if peer is None:
        return False
    try:
        address = ipaddress.ip_address(peer)
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.version == network.version and address in network


def decode_payload(content_type: str | None, body: bytes) -> Any:
    """JSON, or GitHub's form encoding (``payload=<json>``); ValueError when neither."""
    if content_type is not None and content_type.startswith("application/x-www-form-urlencoded"):
        form = urllib.parse.parse_qs(body.decode("utf-8"), max_num_fields=16)
        if "payload" not in form:
            raise ValueError("a form-encoded delivery needs a 'payload' field")
        return json.loads(form["payload"][0])
    return json.loads(body)


def _commit(text: str) -> bool:
    return triggers.COMMIT_PATTERN.fullmatch(text) is not None


def push_commit(payload: Any) -> str | None:
    """The commit a GitHub-style push delivers: ``after``, else ``head_commit.id`` (a full
    hex commit id, else none)."""
    if not isinstance(payload, dict):
        return None
    after = payload.get("after")
    if isinstance(after, str) and after != triggers.ZERO_COMMIT and _commit(after):
        return after
    head = payload.get("head_commit")
    hid = head.get("id") if isinstance(head, dict) else None
    if isinstance(hid, str) and _commit(hid):
        return hid
    return None


@dataclass(frozen=True)
class _Refusal:
    status: int
    code: str
    message: str


class WebhookReceiver:
    """The ASGI app for ``/webhooks/...`` and ``/triggers/...``."""

    def __init__(
        self,
        engine: Engine,
        *,
        region: str,
        account: str,
        trigger_secret: bytes | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.engine = engine
        self.store = WebhookStore(engine.redis, engine.keys.namespace)
        self.region = region
        self.account = account
        self.trigger_secret = trigger_secret
        self.max_body_bytes = max_body_bytes

    @staticmethod
    def handles(path: str) -> bool:
        return path.startswith(PATH_PREFIX) or path.startswith(TRIGGERS_PREFIX)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if scope["method"] != "POST":
            await _json(send, 405, {"__type": "MethodNotAllowed", "message": "use POST"})
            return
        try:
            body = await _read_body(receive, self.max_body_bytes)
        except _TooLarge:
            await _json(
                send,
                413,
                {
                    "__type": "PayloadTooLarge",
                    "message": f"the body is over {self.max_body_bytes} bytes",
                },
            )
            return
        try:
            if path.startswith(PATH_PREFIX):
                await self._webhook(scope, body, send, path.removeprefix(PATH_PREFIX))
            else:
                await self._trigger(scope, body, send, path.removeprefix(TRIGGERS_PREFIX))
        except Exception as exc:
            err = store_error(exc)  # Redis down, full, failing over: 503 (GitHub redelivers)
            if err is None:
                raise
            await _json(send, err.status, {"__type": err.type_name, "message": err.message})

    # --- /webhooks/<id-or-name> ---------------------------------------------------------------

    async def _webhook(self, scope: Scope, body: bytes, send: Send, key: str) -> None:
        hooks = await self.store.load()
        hook = hooks.find(key)
        if (
            hook is not None
            and hook.webhook_id != key
            and hook.definition.get("authentication") == "UNAUTHENTICATED"
        ):
            hook = None  # by name only when a signature or an address range protects it
        if hook is None:
            await _json(
                send,
                404,
                {"__type": "WebhookNotFoundException", "message": f"no webhook '{key}'"},
            )
            return
        peer = scope["client"][0] if scope.get("client") else None
        outcome = await anyio.to_thread.run_sync(self._check_webhook, hook, scope, body, peer)
        if isinstance(outcome, _Refusal):
            await self._refuse(hook, peer, outcome, send)
            return
        payload = outcome
        if _header(scope, "x-github-event") == "ping":
            await self.store.record(
                hook.webhook_id, Delivery(at=now(), result="ignored", status=200, source=peer)
            )
            await _json(send, 200, {"started": False, "message": "pong"})
            return
        d = hook.definition
        try:
            decl = (await self.engine.head(d["targetPipeline"])).require_declaration()
        except DomainError as err:
            await self._refuse(hook, peer, _Refusal(404, err.type_name, err.message), send)
            return
        action = decl.stages[0].action(d["targetAction"]) if decl.stages else None
        config = dict(action.configuration or {}) if action is not None else None
        if action is None or config is None:
            refusal = _Refusal(
                409,
                "ActionNotFoundException",
                f"Action '{d['targetAction']}' is not in the first stage of pipeline "
                f"'{d['targetPipeline']}' any more",
            )
            await self._refuse(hook, peer, refusal, send)
            return
        rules = [(f["jsonPath"], f.get("matchEquals")) for f in d.get("filters") or []]
        matched = await anyio.to_thread.run_sync(triggers.filters_match, rules, payload, config)
        if not matched:
            await self.store.record(
                hook.webhook_id,
                Delivery(
                    at=now(),
                    result="ignored",
                    status=200,
                    source=peer,
                    message="the filters did not match",
                ),
            )
            await _json(send, 200, {"started": False, "message": "the filters did not match"})
            return
        arn = webhook_arn(hook.name, region=self.region, account=self.account)
        # the pushed commit becomes the revision of a source action (what AWS webhooks target)
        commit = push_commit(payload) if triggers.takes_commit(decl, action.name) else None
        revisions = (
            [
                {
                    "actionName": d["targetAction"],
                    "revisionType": "COMMIT_ID",
                    "revisionValue": commit,
                }
            ]
            if commit is not None
            else None
        )
        delivery_id = _header(scope, "x-github-delivery")
        origin = self._origin(arn, peer, f"webhook:{hook.webhook_id}", delivery_id)
        try:
            eid = await self.engine.start_execution(
                d["targetPipeline"],
                origin,
                trigger_type="Webhook",
                trigger_detail=arn,
                source_revisions=revisions,
            )
        except DomainError as err:
            await self._refuse(hook, peer, _Refusal(err.status, err.type_name, err.message), send)
            return
        await self.store.record(
            hook.webhook_id,
            Delivery(at=now(), result="started", status=200, source=peer, executionId=eid),
        )
        log.info("webhook %s started %s/%s", hook.name, d["targetPipeline"], eid)
        await _json(send, 200, {"started": True, "pipelineExecutionId": eid})

    def _check_webhook(
        self, hook: Webhook, scope: Scope, body: bytes, peer: str | None
    ) -> _Refusal | Any:
        """Authentication, then the payload (runs in a worker thread)."""
        d = hook.definition
        kind = d.get("authentication")
        conf = d.get("authenticationConfiguration") or {}
        if kind == "GITHUB_HMAC":
            sha256 = _header(scope, "x-hub-signature-256")
            sha1 = _header(scope, "x-hub-signature")
            if sha256 is None and sha1 is None:
                return _Refusal(401, "MissingSignature", "no X-Hub-Signature-256 header")
            if not signature_ok(str(conf.get("SecretToken", "")).encode(), body, sha256, sha1):
                return _Refusal(401, "InvalidSignature", "the signature does not match the body")
        elif kind == "IP":
            if not peer_allowed(peer, str(conf.get("AllowedIPRange", ""))):
                return _Refusal(
                    403, "AddressNotAllowed", f"{peer} is not in the webhook's AllowedIPRange"
                )
        elif kind != "UNAUTHENTICATED":
            return _Refusal(500, "InvalidWebhookAuthentication", f"unknown authentication {kind}")
        try:
            return decode_payload(_header(scope, "content-type"), body)
        except (ValueError, UnicodeDecodeError):
            return _Refusal(400, "InvalidPayload", "the body is not a JSON document")

    async def _refuse(self, hook: Webhook, peer: str | None, r: _Refusal, send: Send) -> None:
        """Answer and record a refusal; a refusal repeating the latest one is not recorded
        again, so a sender of bad signatures cannot push the real deliveries out of the log."""
        latest = await self.store.deliveries(hook.webhook_id, count=1)
        if not latest or latest[0].result != "refused" or latest[0].errorCode != r.code:
            await self.store.record(
                hook.webhook_id,
                Delivery(
                    at=now(),
                    result="refused",
                    status=r.status,
                    source=peer,
                    errorCode=r.code,
                    message=r.message,
                ),
            )
        log.info("webhook %s refused a delivery from %s: %s", hook.name, peer, r.code)
        await _json(send, r.status, {"__type": r.code, "message": r.message})

    def _origin(self, actor: str, peer: str | None, scope: str, delivery: str | None) -> Origin:
        request_id = str(uuid.uuid4())
        command = None
        if delivery is not None and 0 < len(delivery) <= 128:
            command = f"{scope}:{delivery}"  # a redelivery starts nothing new
        return Origin(
            actor=actor,
            requestId=request_id,
            correlationId=request_id,
            source=peer,
            commandId=command,
        )

    # --- /triggers/<pipeline> -----------------------------------------------------------------

    async def _trigger(self, scope: Scope, body: bytes, send: Send, pipeline: str) -> None:
        secret = self.trigger_secret
        if secret is None:
            await _json(
                send,
                404,
                {
                    "__type": "NotFoundException",
                    "message": "V2 triggers are off: start the server with --trigger-secret-file",
                },
            )
            return
        peer = scope["client"][0] if scope.get("client") else None
        event_type = _header(scope, "x-github-event")

        def check() -> _Refusal | triggers.GitEvent | None:
            ok = signature_ok(
                secret,
                body,
                _header(scope, "x-hub-signature-256"),
                _header(scope, "x-hub-signature"),
            )
            if not ok:
                return _Refusal(401, "InvalidSignature", "missing or wrong X-Hub-Signature-256")
            try:
                payload = decode_payload(_header(scope, "content-type"), body)
            except (ValueError, UnicodeDecodeError):
                return _Refusal(400, "InvalidPayload", "the body is not a JSON document")
            return triggers.git_event(event_type, payload)

        ev = await anyio.to_thread.run_sync(check)
        if isinstance(ev, _Refusal):
            log.info("trigger delivery for %s from %s refused: %s", pipeline, peer, ev.code)
            await _json(send, ev.status, {"__type": ev.code, "message": ev.message})
            return
        if ev is None:
            await _json(send, 200, {"started": False, "message": f"ignored '{event_type}' event"})
            return
        try:
            decl = (await self.engine.head(pipeline)).require_declaration()
        except DomainError as err:
            await _json(send, 404, {"__type": err.type_name, "message": err.message})
            return
        if decl.triggers and decl.pipelineType != "V2":
            decl = msgspec.structs.replace(decl, triggers=None)  # triggers are V2's
        source = triggers.match_trigger(decl, ev)
        config = triggers.action_configuration(decl, source) if source is not None else None
        if source is None or config is None:
            await _json(send, 200, {"started": False, "message": "no trigger matched"})
            return
        repo = config.get("FullRepositoryId")
        if repo is not None and ev.repository is not None and repo != ev.repository:
            await _json(
                send,
                200,
                {"started": False, "message": f"the event is for {ev.repository}, not {repo}"},
            )
            return
        detail = config.get("ConnectionArn") or f"{ev.repository or 'git'}:{ev.kind}:{ev.name}"
        origin = self._origin(
            f"trigger:{ev.repository or pipeline}",
            peer,
            f"trigger:{pipeline}",
            _header(scope, "x-github-delivery"),
        )
        try:
            eid = await self.engine.start_execution(
                pipeline,
                origin,
                trigger_type="WebhookV2",
                trigger_detail=detail,
                source_revisions=[
                    {"actionName": source, "revisionType": "COMMIT_ID", "revisionValue": ev.commit}
                ]
                if triggers.takes_commit(decl, source)
                else None,
            )
        except DomainError as err:
            await _json(send, err.status, {"__type": err.type_name, "message": err.message})
            return
        log.info("trigger %s %s started %s/%s", ev.kind, ev.name, pipeline, eid)
        await _json(send, 200, {"started": True, "pipelineExecutionId": eid})
