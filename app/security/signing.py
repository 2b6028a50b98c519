"""Who may call POST /api/poll: Inngest-style signed requests or a static bearer key.

Pure functions: no I/O, no framework imports, the clock is a parameter.

Signature format (see docs of the Inngest SDKs): header ``X-Inngest-Signature: t=<unix
seconds>&s=<hex>`` where ``s = HMAC-SHA256(key, JCS(body) + str(t))``; ``key`` is the signing
key with its ``signkey-<env>-`` prefix removed, used as UTF-8 text (not hex-decoded).

Bearer (Cloud Scheduler, Vercel Cron, curl): ``Authorization: Bearer <key>`` where ``<key>`` is
a configured signing key written exactly as configured, prefix included. The stripped form is
deliberately NOT accepted: one spelling per credential keeps configuration and audits simple.

Every failure raises ``SignatureError(check, message)``; messages never contain a key, a
signature value or the body.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from urllib.parse import parse_qsl

import rfc8785

SIGNATURE_HEADER = "x-inngest-signature"
AUTHORIZATION_HEADER = "authorization"

# A real header is ~80 chars (10-digit t, 64 hex chars); anything much longer is an attack.
MAX_SIGNATURE_HEADER_LEN = 256
MAX_AUTHORIZATION_LEN = 1024

_PREFIX_RE = re.compile(r"^signkey-\w+-")
_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")
_HEX64_RE = re.compile(r"[0-9a-fA-F]{64}")
# Visible ASCII and space only: rejects CR/LF (header injection), other controls, non-ASCII.
_PRINTABLE_RE = re.compile(r"[\x20-\x7e]*")

_DEFAULT_MESSAGES = {
    "missing_signature": "X-Inngest-Signature header is missing or empty",
    "malformed_signature": "X-Inngest-Signature header is malformed",
    "missing_timestamp": "X-Inngest-Signature header has no timestamp",
    "stale_timestamp": "signature timestamp is too old",
    "future_timestamp": "signature timestamp is too far in the future",
    "invalid_body": "request body is not valid JSON",
    "bad_signature": "signature does not match any configured signing key",
    "no_key_configured": "no signing key is configured",
    "missing_credentials": "no X-Inngest-Signature or Authorization header",
    "wrong_scheme": "unsupported authorization scheme; use Bearer",
    "bad_token": "credentials do not match any configured signing key",
}


class SignatureError(Exception):
    """Authentication failed; ``check`` is a stable machine-readable reason."""

    def __init__(self, check: str, message: str | None = None) -> None:
        self.check = check
        self.message = message or _DEFAULT_MESSAGES.get(check, "authentication failed")
        super().__init__(self.message)


def strip_signing_key_prefix(key: str) -> str:
    return _PREFIX_RE.sub("", key, count=1)


def canonicalize_body(raw: bytes) -> bytes:
    """RFC 8785 (JCS) form of a JSON body; an empty body stays empty."""
    if not raw:
        return b""
    try:
        # Decode explicitly: json.loads(bytes) would also accept UTF-16/32.
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
        return rfc8785.dumps(value)
    except (ValueError, RecursionError, rfc8785.CanonicalizationError):
        # ValueError covers UnicodeDecodeError, JSONDecodeError and duplicate keys.
        raise SignatureError("invalid_body") from None


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # Duplicate keys are ambiguous (which one did the sender mean?): refuse them.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def _hmac_hex(canonical: bytes, key: str, timestamp: int) -> str:
    mac = hmac.new(strip_signing_key_prefix(key).encode("utf-8"), canonical, hashlib.sha256)
    mac.update(str(timestamp).encode("ascii"))
    return mac.hexdigest()


def compute_signature(raw_body: bytes, key: str, timestamp: int) -> str:
    return _hmac_hex(canonicalize_body(raw_body), key, timestamp)


def sign_request(raw_body: bytes, key: str, now: int) -> str:
    """The X-Inngest-Signature value for ``raw_body`` signed at ``now`` (unix seconds)."""
    t = int(now)
    return f"t={t}&s={compute_signature(raw_body, key, t)}"


def _usable_keys(keys: Sequence[str]) -> list[str]:
    usable = [k for k in keys if k and strip_signing_key_prefix(k)]
    if not usable:
        raise SignatureError("no_key_configured")
    return usable


def _parse_signature_header(header: str | None) -> tuple[int, str]:
    if header is None or not header.strip():
        raise SignatureError("missing_signature")
    if len(header) > MAX_SIGNATURE_HEADER_LEN or not _PRINTABLE_RE.fullmatch(header):
        raise SignatureError("malformed_signature")
    try:
        pairs = parse_qsl(header.strip(), keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise SignatureError("malformed_signature") from None
    names = [name for name, _ in pairs]
    if len(names) != len(set(names)):
        raise SignatureError("malformed_signature", "X-Inngest-Signature has duplicate fields")
    fields = dict(pairs)
    s = fields.get("s", "")
    if not _HEX64_RE.fullmatch(s):
        raise SignatureError("malformed_signature")
    if "t" not in fields:
        # The Python SDK signs without t when it is absent; that disables replay protection.
        raise SignatureError("missing_timestamp")
    if not _TIMESTAMP_RE.fullmatch(fields["t"]):
        raise SignatureError("malformed_signature")
    return int(fields["t"]), s.lower()


def verify_inngest_signature(
    header: str | None,
    raw_body: bytes,
    keys: Sequence[str],
    *,
    now: float,
    max_age: int,
) -> None:
    """Accept only a fresh signature made with one of ``keys`` (primary, then fallback)."""
    usable = _usable_keys(keys)
    t, signature = _parse_signature_header(header)
    if now - t > max_age:
        raise SignatureError("stale_timestamp")
    if t - now > max_age:
        raise SignatureError("future_timestamp")
    canonical = canonicalize_body(raw_body)
    matched = False
    for key in usable:
        # No early exit: the time taken must not reveal which key (if any) matched.
        expected = _hmac_hex(canonical, key, t)
        matched |= hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii"))
    if not matched:
        raise SignatureError("bad_signature")


def verify_bearer(authorization: str | None, keys: Sequence[str]) -> None:
    """Accept ``Bearer <key>`` (scheme case-insensitive) for a configured signing key."""
    usable = _usable_keys(keys)
    if authorization is None or not authorization.strip():
        raise SignatureError("missing_credentials")
    if len(authorization) > MAX_AUTHORIZATION_LEN or not _PRINTABLE_RE.fullmatch(authorization):
        raise SignatureError("bad_token")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise SignatureError("wrong_scheme")
    token = token.strip()
    if not token or " " in token:
        raise SignatureError("bad_token")
    # Compare fixed-length digests so not even the key length leaks through timing.
    presented = hashlib.sha256(token.encode("utf-8")).digest()
    matched = False
    for key in usable:
        matched |= hmac.compare_digest(presented, hashlib.sha256(key.encode("utf-8")).digest())
    if not matched:
        raise SignatureError("bad_token")


def single_header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive lookup that refuses a header sent twice (ambiguous credentials)."""
    items = headers.items()
    # Starlette's Headers.items() returns every raw pair, duplicates included.
    values = [v for k, v in items if k.lower() == name]
    if len(values) > 1:
        check = "malformed_signature" if name == SIGNATURE_HEADER else "bad_token"
        raise SignatureError(check, f"{name} header sent more than once")
    return values[0] if values else None


def authenticate(
    headers: Mapping[str, str],
    raw_body: bytes,
    keys: Sequence[str],
    *,
    now: float,
    max_age: int,
) -> str:
    """Verify the request; return the method used: "inngest_signature" or "bearer"."""
    _usable_keys(keys)
    signature = single_header(headers, SIGNATURE_HEADER)
    if signature is not None:
        verify_inngest_signature(signature, raw_body, keys, now=now, max_age=max_age)
        return "inngest_signature"
    authorization = single_header(headers, AUTHORIZATION_HEADER)
    if authorization is None:
        raise SignatureError("missing_credentials")
    verify_bearer(authorization, keys)
    return "bearer"
