"""AWS Signature Version 4 verification, computed with botocore's own signer, strictly.

The server rebuilds the request the client signed (method, path, query, the headers named in
``SignedHeaders``, body) as a :class:`botocore.awsrequest.AWSRequest` and asks
:class:`botocore.auth.SigV4Auth` for the canonical request, string to sign and signature,
using the request's own ``X-Amz-Date`` as the timestamp. Only header-based signing
(``Authorization: AWS4-HMAC-SHA256 ...``) is supported; presigned query strings are not.

Stricter than "the signature matches": the credential scope must name the expected service
and region, ``host``, ``x-amz-date`` and ``x-amz-target`` (and ``content-type`` when the
request has one) must be signed (an rpc-v2-cbor request, ``/service/...``, names its
operation in the signed path and has no ``x-amz-target``), an ``X-Amz-Content-SHA256``
header must match the body, and the request must be signed within ``max_skew_seconds`` of
the server's clock. Replays of an accepted signature are the caller's business
(:mod:`app.api.replay`): this module is pure.

Errors are the ones AWS's JSON services send (name, HTTP status, wording where AWS has one):

- ``UnrecognizedClientException`` (403): no ``Authorization`` header, or an unknown key;
- ``IncompleteSignatureException`` (400): the header is malformed or lacks a part, or there
  is no ``X-Amz-Date``;
- ``InvalidSignatureException`` (403): wrong scope, an unsigned required header, a date out
  of the window, a payload hash that does not match, or a signature that does not.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials

from app.api.errors import AwsError

__all__ = [
    "DEFAULT_MAX_SKEW_SECONDS",
    "DEFAULT_REGION",
    "Headers",
    "ParsedAuthorization",
    "Verified",
    "parse_authorization",
    "verify_sigv4",
]

ALGORITHM = "AWS4-HMAC-SHA256"
SIGV4_TIMESTAMP = "%Y%m%dT%H%M%SZ"
UNSIGNED_PAYLOADS = frozenset({"UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"})
DEFAULT_REGION = "us-east-1"
DEFAULT_MAX_SKEW_SECONDS = 300.0
# Headers that must be among SignedHeaders whatever the request (content-type: when sent).
REQUIRED_SIGNED = ("host", "x-amz-date", "x-amz-target")

_PARAM_RE = re.compile(r"\s*([A-Za-z]+)\s*=\s*([^,\s]*)\s*")
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")
_SIGNATURE_RE = re.compile(r"^[0-9a-f]{64}$")
_STATUS = {
    "UnrecognizedClientException": 403,
    "IncompleteSignatureException": 400,
    "InvalidSignatureException": 403,
}

Headers = Iterable[tuple[str, str]] | Mapping[str, str]


def _err(name: str, message: str) -> AwsError:
    return AwsError(name, message, _STATUS[name])


def _incomplete(message: str) -> AwsError:
    return _err("IncompleteSignatureException", message)


def _invalid(message: str) -> AwsError:
    return _err("InvalidSignatureException", message)


@dataclass(frozen=True, slots=True)
class ParsedAuthorization:
    """The parts of an ``Authorization: AWS4-HMAC-SHA256 ...`` header (nothing verified)."""

    access_key: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


@dataclass(frozen=True, slots=True)
class Verified:
    """A request whose signature checked out."""

    access_key: str
    signature: str  # lower-case hex
    signed_at: float  # epoch seconds of its X-Amz-Date


def parse_authorization(value: str) -> ParsedAuthorization:
    """Parse a SigV4 ``Authorization`` header; ``IncompleteSignatureException`` if malformed.

    Does not check anything cryptographic: the access key id it returns is unverified.
    """
    text = value.strip()
    algorithm, _, rest = text.partition(" ")
    if algorithm != ALGORITHM:
        raise _incomplete(
            f"Authorization header must use the {ALGORITHM} algorithm. "
            f"Authorization={text[:40]}"
        )
    params: dict[str, str] = {}
    for part in rest.split(","):
        m = _PARAM_RE.fullmatch(part)
        if m is None:
            raise _incomplete(
                f"'{part.strip()[:40]}' not a valid key=value pair (missing equal-sign) in "
                "Authorization header"
            )
        if m[1] in params:
            raise _incomplete(f"Authorization header has '{m[1]}' more than once")
        params[m[1]] = m[2]
    missing = [p for p in ("Credential", "Signature", "SignedHeaders") if not params.get(p)]
    if missing:
        raise _incomplete(
            " ".join(f"Authorization header requires '{p}' parameter." for p in missing)
        )
    parts = params["Credential"].split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or not all(parts):
        raise _incomplete(
            "Credential must have the form <AccessKeyId>/<yyyymmdd>/<region>/<service>/"
            "aws4_request"
        )
    signed = tuple(params["SignedHeaders"].split(";"))
    if any(_HEADER_NAME_RE.match(h) is None for h in signed) or list(signed) != sorted(set(signed)):
        raise _incomplete("SignedHeaders must be sorted, distinct, lowercase header names")
    signature = params["Signature"].lower()
    if _SIGNATURE_RE.match(signature) is None:
        raise _incomplete("Signature must be 64 hexadecimal digits")
    return ParsedAuthorization(
        access_key=parts[0],
        date=parts[1],
        region=parts[2],
        service=parts[3],
        signed_headers=signed,
        signature=signature,
    )


class _VerifyingSigner(SigV4Auth):  # type: ignore[misc]  # botocore is untyped
    """SigV4Auth that signs exactly the headers the client said it signed."""

    def headers_to_sign(self, request: Any) -> Any:
        out = HTTPHeaders()
        for name, value in request.headers.items():
            out[name.lower()] = value
        return out


def _header_pairs(headers: Headers) -> list[tuple[str, str]]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(k.lower(), v) for k, v in items]


def _parse_amz_date(value: str) -> float:
    try:
        return float(calendar.timegm(time.strptime(value, SIGV4_TIMESTAMP)))
    except ValueError:
        raise _incomplete(f"X-Amz-Date {value!r} is not in the format yyyyMMddTHHmmssZ") from None


def _stamp(t: float) -> str:
    return time.strftime(SIGV4_TIMESTAMP, time.gmtime(t))


def _window(seconds: float) -> str:
    return f"{seconds / 60:g} min." if seconds % 60 == 0 else f"{seconds:g} s."


def verify_sigv4(
    method: str,
    url_path: str,
    query: str,
    headers: Headers,
    body: bytes,
    credentials: Mapping[str, str],
    *,
    now: float,
    service: str = "codepipeline",
    region: str = DEFAULT_REGION,
    max_skew_seconds: float = DEFAULT_MAX_SKEW_SECONDS,
    required: tuple[str, ...] = REQUIRED_SIGNED,
) -> Verified:
    """Verify a SigV4-signed request; return who signed it, the signature and when.

    ``url_path`` is the path exactly as sent (still percent-encoded; ASGI ``raw_path``),
    ``query`` the raw query string without ``?``, ``headers`` the request headers (names in
    any case; repeated headers allowed), ``credentials`` maps access key id -> secret key.
    ``service`` and ``region`` are what the credential scope must name.
    """
    pairs = _header_pairs(headers)
    auth_values = [v for k, v in pairs if k == "authorization"]
    if not auth_values:
        raise _err(
            "UnrecognizedClientException", "Missing Authentication Token (no Authorization header)"
        )
    if len(auth_values) > 1:
        raise _incomplete("more than one Authorization header")
    auth = parse_authorization(auth_values[0])
    secret = credentials.get(auth.access_key)
    if secret is None:
        raise _err(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    if auth.service != service:
        raise _invalid(f"Credential should be scoped to correct service: '{service}'. ")
    if auth.region != region:
        raise _invalid(f"Credential should be scoped to a valid region, not '{auth.region}'. ")

    present = {k for k, _ in pairs}
    signed = set(auth.signed_headers)
    needed = [*required, *(["content-type"] if "content-type" in present else [])]
    if "x-amz-target" not in present and url_path.startswith("/service/"):
        # rpc-v2-cbor: the operation is in the (signed) path, there is no X-Amz-Target
        needed.remove("x-amz-target")
    for name in needed:
        if name not in signed:
            raise _invalid(f"'{name}' must be a 'SignedHeader' in the AWS Authorization.")
    missing = sorted(signed - present)
    if missing:
        raise _invalid(f"signed header(s) not present in the request: {', '.join(missing)}")
    for name in signed:
        if sum(1 for k, _ in pairs if k == name) > 1 and name in REQUIRED_SIGNED:
            raise _invalid(f"the signed header '{name}' is sent more than once")

    amz_date = next(v for k, v in pairs if k == "x-amz-date").strip()
    signed_at = _parse_amz_date(amz_date)
    if amz_date[:8] != auth.date:
        raise _invalid(
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{auth.date}' != '{amz_date[:8]}', from '{amz_date}'."
        )
    if signed_at < now - max_skew_seconds:
        raise _invalid(
            f"Signature expired: {amz_date} is now earlier than {_stamp(now - max_skew_seconds)}"
            f" ({_stamp(now)} - {_window(max_skew_seconds)})"
        )
    if signed_at > now + max_skew_seconds:
        raise _invalid(
            f"Signature not yet current: {amz_date} is still later than "
            f"{_stamp(now + max_skew_seconds)} ({_stamp(now)} + {_window(max_skew_seconds)})"
        )

    body_hash = hashlib.sha256(body).hexdigest()
    for k, v in pairs:
        if k == "x-amz-content-sha256":
            if v.strip() in UNSIGNED_PAYLOADS:
                raise _invalid("unsigned payloads are not accepted")
            if not hmac.compare_digest(v.strip().lower(), body_hash):
                raise _invalid(
                    "The provided 'x-amz-content-sha256' header does not match what was computed."
                )

    host = next(v for k, v in pairs if k == "host")
    url = f"http://{host}{url_path or '/'}" + (f"?{query}" if query else "")
    request = AWSRequest(method=method.upper(), url=url, data=body)
    for k, v in pairs:
        if k in signed:
            request.headers[k] = v
    request.context["timestamp"] = amz_date

    signer = _VerifyingSigner(Credentials(auth.access_key, secret), auth.service, auth.region)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not isinstance(expected, str) or not hmac.compare_digest(expected, auth.signature):
        raise _invalid(
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method. Consult the service "
            "documentation for details."
        )
    return Verified(auth.access_key, auth.signature, signed_at)
