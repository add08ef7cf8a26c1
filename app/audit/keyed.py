"""The audit key and signed checkpoints (see docs/audit.md, "Keyed audit").

The audit key is a secret the writers (``serve``, ``worker``) and the auditor hold and Redis
never does: it is read from a file (``--audit-key-file`` or ``$STAGELINE_AUDIT_KEY_FILE``),
never from a command line or the environment itself. With it, every new entry carries an
HMAC-SHA256 *audit tag* (field ``m``, ``app.store.eventstore.event_tag``/``ref_tag``) over
what the writer knows before the append (pipeline, stream, payload bytes, which hold the
event id; a head reference's tag is bound to its event's), and the per-stream sha1 chain
covers the tags. Someone with Redis access but without the key cannot edit or forge an
entry: a recomputed chain still fails every tag.

What tags cannot show is an entry, a tail or a stream that is *gone*, or the whole store
rolled back to an older copy: that is what a checkpoint is for. ``audit checkpoint``
verifies the store (with the key) and writes, outside Redis, every pipeline's seq counter
and every stream's last (seq, hash), signed with the key (HMAC-SHA256 over the canonical
JSON). ``audit verify --checkpoint FILE`` checks the signature, then that every pipeline
of the checkpoint still exists, its counter is not behind, and each stream still holds the
recorded entry with the recorded hash: since each hash chains onto every entry before it
in its stream, nothing recorded before the checkpoint was removed or changed since.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from pathlib import Path
from typing import Any

from app.audit.common import AuditError, iso

ENV_KEY_FILE = "STAGELINE_AUDIT_KEY_FILE"
MIN_KEY_BYTES = 32
CHECKPOINT_FORMAT = "stageline-audit-checkpoint"
CHECKPOINT_VERSION = 1

Pins = dict[str, tuple[int, dict[str, tuple[int, str]]]]  # pipeline -> (seq, stream heads)


class AuditKeyError(AuditError):
    """The audit key file is missing, unreadable or too short (one line, no key in it)."""


def default_key_file() -> str | None:
    return os.environ.get(ENV_KEY_FILE) or None


def load_audit_key(path: str | os.PathLike[str]) -> bytes:
    """The key: the file's bytes without a trailing newline, at least 32 bytes (e.g.
    ``openssl rand -hex 32 > audit.key``). Errors never quote the file's content."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise AuditKeyError(f"audit key file {p}: no such file") from None
    except IsADirectoryError:
        raise AuditKeyError(f"audit key file {p}: is a directory") from None
    except PermissionError:
        raise AuditKeyError(f"audit key file {p}: not readable (permission denied)") from None
    except OSError as err:
        raise AuditKeyError(f"audit key file {p}: cannot read it ({err.strerror})") from None
    key = data.rstrip(b"\r\n")
    if len(key) < MIN_KEY_BYTES:
        raise AuditKeyError(
            f"audit key file {p}: the key is {len(key)} bytes, at least {MIN_KEY_BYTES} are "
            "needed (e.g. `openssl rand -hex 32 > FILE`)"
        )
    return key


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _mac(key: bytes, doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "mac"}
    return hmac.new(key, b"stageline-checkpoint\n" + _canonical(body), hashlib.sha256).hexdigest()


def key_id(key: bytes) -> str:
    """A short public name of a key (not the key): tells which key signed a checkpoint."""
    return hmac.new(key, b"stageline-key-id", hashlib.sha256).hexdigest()[:16]


def make_checkpoint(
    key: bytes, namespace: str, partitions: int, pins: Pins, now: float | None = None
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "formatVersion": CHECKPOINT_VERSION,
        "createdAt": iso(time.time() if now is None else now),
        "namespace": namespace,
        "partitions": partitions,
        "keyId": key_id(key),
        "pipelines": {
            name: {
                "seq": seq,
                "streams": {s: [v, h] for s, (v, h) in sorted(streams.items())},
            }
            for name, (seq, streams) in sorted(pins.items())
        },
    }
    doc["mac"] = _mac(key, doc)
    return doc


def write_checkpoint(path: str, doc: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, sort_keys=True, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except OSError as err:
        raise AuditError(f"cannot write checkpoint {path}: {err.strerror or err}") from None


def read_checkpoint(path: str, key: bytes, namespace: str) -> tuple[Pins, dict[str, Any]]:
    """The pins of a checkpoint file whose signature this key verifies (else AuditError)."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise AuditError(f"checkpoint {path}: no such file") from None
    except OSError as err:
        raise AuditError(f"checkpoint {path}: cannot read it ({err.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AuditError(f"checkpoint {path}: not a checkpoint (not JSON: {err})") from None
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        raise AuditError(f"checkpoint {path}: not a stageline audit checkpoint")
    if doc.get("formatVersion") != CHECKPOINT_VERSION:
        raise AuditError(f"checkpoint {path}: format version {doc.get('formatVersion')!r} unknown")
    mac = doc.get("mac")
    if not isinstance(mac, str) or not hmac.compare_digest(mac, _mac(key, doc)):
        which = doc.get("keyId")
        why = (
            "signed with another audit key"
            if which != key_id(key)
            else "altered since it was signed"
        )
        raise AuditError(f"checkpoint {path}: signature does not verify ({why})")
    if doc.get("namespace") != namespace:
        raise AuditError(
            f"checkpoint {path}: taken of namespace {doc.get('namespace')!r}, not {namespace!r}"
        )
    pins: Pins = {}
    try:
        for name, p in doc["pipelines"].items():
            streams = {s: (int(v), str(h)) for s, (v, h) in p["streams"].items()}
            pins[str(name)] = (int(p["seq"]), streams)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise AuditError(f"checkpoint {path}: malformed ({err})") from None
    return pins, doc
