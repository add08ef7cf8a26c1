"""AWS Signature Version 4 verification, computed with botocore's own signer.

The server rebuilds the request the client signed (method, path, query, the headers named in
``SignedHeaders``, body) as a :class:`botocore.awsrequest.AWSRequest` and asks
:class:`botocore.auth.SigV4Auth` for the canonical request, string to sign and signature,
using the request's own ``X-Amz-Date`` as the timestamp. Only header-based signing
(``Authorization: AWS4-HMAC-SHA256 ...``) is supported; presigned query strings are not.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials

from app.api.errors import AwsError

__all__ = ["Headers", "ParsedAuthorization", "parse_authorization", "verify_sigv4"]

ALGORITHM = "AWS4-HMAC-SHA256"
SIGV4_TIMESTAMP = "%Y%m%dT%H%M%SZ"
UNSIGNED_PAYLOADS = frozenset({"UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"})

_AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256\s+"
    r"Credential=(?P<credential>[^,\s]+)\s*,\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+)\s*,\s*"
    r"Signature=(?P<signature>[0-9a-fA-F]+)\s*$"
)
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")

Headers = Iterable[tuple[str, str]] | Mapping[str, str]


class ParsedAuthorization:
    """The parts of an ``Authorization: AWS4-HMAC-SHA256 ...`` header."""

    __slots__ = ("access_key", "date", "region", "service", "signature", "signed_headers")

    def __init__(
        self,
        access_key: str,
        date: str,
        region: str,
        service: str,
        signed_headers: tuple[str, ...],
        signature: str,
    ) -> None:
        self.access_key = access_key
        self.date = date
        self.region = region
        self.service = service
        self.signed_headers = signed_headers
        self.signature = signature


def parse_authorization(value: str) -> ParsedAuthorization:
    """Parse a SigV4 ``Authorization`` header; raise ``InvalidSignatureException`` if malformed.

    Does not check anything cryptographic: the access key id it returns is unverified.
    """
    m = _AUTH_RE.match(value.strip())
    if m is None:
        if not value.strip().startswith(ALGORITHM):
            raise AwsError(
                "InvalidSignatureException",
                f"Authorization header must use the {ALGORITHM} algorithm",
            )
        raise AwsError(
            "InvalidSignatureException",
            "Authorization header requires Credential, SignedHeaders and Signature parameters",
        )
    parts = m["credential"].split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or not all(parts):
        raise AwsError(
            "InvalidSignatureException",
            "Credential must have the form <AccessKeyId>/<yyyymmdd>/<region>/<service>/"
            "aws4_request",
        )
    signed = tuple(m["signed"].split(";"))
    if any(_HEADER_NAME_RE.match(h) is None for h in signed) or list(signed) != sorted(set(signed)):
        raise AwsError(
            "InvalidSignatureException",
            "SignedHeaders must be sorted, distinct, lowercase header names",
        )
    return ParsedAuthorization(
        access_key=parts[0],
        date=parts[1],
        region=parts[2],
        service=parts[3],
        signed_headers=signed,
        signature=m["signature"].lower(),
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


def _fail(message: str) -> AwsError:
    return AwsError("InvalidSignatureException", message)


def _parse_amz_date(value: str) -> float:
    try:
        return float(calendar.timegm(time.strptime(value, SIGV4_TIMESTAMP)))
    except ValueError:
        raise _fail(f"X-Amz-Date {value!r} is not in the format yyyyMMddTHHmmssZ") from None


def verify_sigv4(
    method: str,
    url_path: str,
    query: str,
    headers: Headers,
    body: bytes,
    credentials: Mapping[str, str],
    *,
    now: float,
    max_skew_seconds: float = 900,
) -> str:
    """Verify a SigV4-signed request and return the caller's access key id.

    ``url_path`` is the path exactly as sent (still percent-encoded; ASGI ``raw_path``),
    ``query`` the raw query string without ``?``, ``headers`` the request headers (names in
    any case; repeated headers allowed), ``credentials`` maps access key id -> secret key.

    Raises ``AwsError("UnrecognizedClientException")`` when there is no ``Authorization``
    header or the access key id is unknown, and ``AwsError("InvalidSignatureException")``
    when the header is malformed, the date is missing/unparseable/outside ``max_skew_seconds``
    of ``now``, the payload hash header does not match the body, or the signature is wrong.
    """
    pairs = _header_pairs(headers)
    auth_values = [v for k, v in pairs if k == "authorization"]
    if not auth_values:
        raise AwsError(
            "UnrecognizedClientException", "Missing Authentication Token (no Authorization header)"
        )
    if len(auth_values) > 1:
        raise _fail("more than one Authorization header")
    auth = parse_authorization(auth_values[0])
    secret = credentials.get(auth.access_key)
    if secret is None:
        raise AwsError(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )

    signed = set(auth.signed_headers)
    for needed in ("host", "x-amz-date"):
        if needed not in signed:
            raise _fail(f"SignedHeaders must include {needed!r}")
    present = {k for k, _ in pairs}
    missing = sorted(signed - present)
    if missing:
        raise _fail(f"signed header(s) not present in the request: {', '.join(missing)}")

    amz_dates = [v for k, v in pairs if k == "x-amz-date"]
    if len(amz_dates) != 1:
        raise _fail("exactly one X-Amz-Date header is required")
    amz_date = amz_dates[0].strip()
    signed_at = _parse_amz_date(amz_date)
    if amz_date[:8] != auth.date:
        raise _fail(f"credential scope date {auth.date} does not match X-Amz-Date {amz_date}")
    if abs(now - signed_at) > max_skew_seconds:
        raise _fail(
            f"Signature expired: {amz_date} is more than {int(max_skew_seconds)} seconds "
            "away from the server time"
        )

    body_hash = hashlib.sha256(body).hexdigest()
    for k, v in pairs:
        if k == "x-amz-content-sha256" and k in signed:
            if v.strip() in UNSIGNED_PAYLOADS:
                raise _fail("unsigned payloads are not accepted")
            if not hmac.compare_digest(v.strip().lower(), body_hash):
                raise _fail("X-Amz-Content-SHA256 does not match the request body")

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
        raise _fail(
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method."
        )
    return auth.access_key
