"""Who may call /api/poll with an OIDC ID token (Google Cloud Scheduler's own authentication).

Pure functions: no I/O, no framework imports, the clock and the key set are parameters. The key
set comes from ``app/auth/jwks.py``, which fetches and caches the issuer's JWKS.

Cloud Scheduler, created with ``--oidc-service-account-email`` and ``--oidc-token-audience``,
sends ``Authorization: Bearer <Google ID token>``: an RS256 JWT whose header names the signing
key (``kid``) and whose claims are ``iss`` (``https://accounts.google.com`` or
``accounts.google.com``), ``aud`` (the job's audience), ``email`` (the service account),
``email_verified``, ``sub``, ``iat`` and ``exp`` (an hour later).

A token is accepted only when, in this order:

1. it has the shape of a JWS compact serialization and is at most ``MAX_ID_TOKEN_LEN`` long;
2. its header says ``alg: RS256`` (never ``none``, never an HMAC algorithm: a public key used
   as an HMAC secret is the classic algorithm-confusion forgery), names a ``kid`` and carries no
   ``crit`` extension;
3. PyJWT verifies the signature with the RSA key of that ``kid``, allowing RS256 only;
4. ``iss`` is a configured issuer, ``aud`` (a string) is a configured audience, ``email`` is an
   allowed service account (compared case-insensitively) and ``email_verified`` is true;
5. ``exp`` is in the future, ``iat`` (and ``nbf`` when present) not in the future, each with
   ``CLOCK_SKEW_SECONDS`` of tolerance for clocks that differ a little.

Every failure raises an ``OIDCError`` subclass with a stable ``check``; its message never
contains the token, a key or a claim value.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.algorithms import RSAAlgorithm

from app.security.signing import AUTHORIZATION_HEADER, SIGNATURE_HEADER, single_header
from app.settings import GOOGLE_OIDC_ISSUERS

# The one signature algorithm Google signs ID tokens with.
ALGORITHM = "RS256"
# Tolerated difference between our clock and the issuer's, for exp, iat and nbf. Small: the
# token lives an hour, and a wider window only helps a stolen token.
CLOCK_SKEW_SECONDS = 60
# A Google ID token is about 1 kB; 4 kB leaves room for longer claims, and refuses junk early.
MAX_ID_TOKEN_LEN = 4096
MAX_KID_LEN = 256

# header.payload.signature, base64url without padding; "alg: none" tokens have no signature,
# so the third part may be empty (they are routed here and refused with bad_algorithm).
_JWT_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")

_MESSAGES = {
    "malformed_token": "bearer token is not a well-formed JWT",
    "bad_algorithm": "token algorithm is not RS256",
    "missing_kid": "token header names no signing key (kid)",
    "unknown_key": "token is signed with a key the issuer does not publish",
    "bad_signature": "token signature does not verify",
    "bad_issuer": "token issuer is not accepted",
    "bad_audience": "token audience is not accepted",
    "email_not_allowed": "token e-mail is not an allowed service account",
    "email_not_verified": "token e-mail is not verified",
    "expired": "token has expired",
    "issued_in_future": "token is issued in the future",
    "not_yet_valid": "token is not valid yet",
    "missing_claim": "token lacks a required claim",
    "keys_unavailable": "the issuer's signing keys cannot be fetched; try again later",
}


class OIDCError(Exception):
    """An ID token was not accepted; ``check`` is a stable machine-readable reason.

    ``log_fields`` carries the refused claim (issuer, audience or e-mail) for the operator's
    log line, never for the response; claims are only looked at once the signature verified.
    """

    def __init__(self, check: str, **log_fields: str) -> None:
        self.check = check
        self.message = _MESSAGES[check]  # every check has its message; a typo fails loudly
        self.log_fields = {k: v[:200] for k, v in log_fields.items()}
        super().__init__(self.message)


class TokenRejected(OIDCError):
    """The token is not acceptable (answer 401)."""


class UnknownKeyId(TokenRejected):
    """The ``kid`` is not in the key set: the caller may refetch the keys (rate-limited)."""

    def __init__(self) -> None:
        super().__init__("unknown_key")


class KeysUnavailable(OIDCError):
    """The keys could not be had, so nothing can be verified (answer 503, fail closed)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("keys_unavailable")
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class OIDCPolicy:
    """What a token must say to be accepted (from the OIDC_* settings)."""

    audiences: frozenset[str]
    service_accounts: frozenset[str]  # lower-case e-mails
    issuers: frozenset[str] = frozenset(GOOGLE_OIDC_ISSUERS)
    clock_skew: int = CLOCK_SKEW_SECONDS

    @classmethod
    def build(
        cls,
        audiences: Collection[str],
        service_accounts: Collection[str],
        issuers: Collection[str] = GOOGLE_OIDC_ISSUERS,
        clock_skew: int = CLOCK_SKEW_SECONDS,
    ) -> OIDCPolicy:
        return cls(
            audiences=frozenset(audiences),
            service_accounts=frozenset(e.strip().lower() for e in service_accounts),
            issuers=frozenset(issuers),
            clock_skew=clock_skew,
        )


@dataclass(frozen=True, slots=True)
class TokenHeader:
    """What the key lookup needs from a header that passed the checks (``alg`` is RS256)."""

    kid: str


@dataclass(frozen=True, slots=True)
class VerifiedIdToken:
    """The claims of an accepted token that the service records."""

    email: str
    subject: str | None
    issuer: str
    audience: str


# --- routing -------------------------------------------------------------------------------


def looks_like_jwt(value: str) -> bool:
    """JWS compact shape (three base64url parts): how an ID token is told from a static key."""
    return _JWT_RE.fullmatch(value) is not None


def bearer_id_token(headers: Mapping[str, str]) -> str | None:
    """The ID token of ``Authorization: Bearer <jwt>``, or None when the request is not one.

    None when an X-Inngest-Signature is present (that path decides), when there is no
    Authorization header, or when its value is not a JWT-shaped Bearer credential (the static
    key path decides). A header sent twice raises ``SignatureError`` as on the other paths.
    """
    if single_header(headers, SIGNATURE_HEADER) is not None:
        return None
    authorization = single_header(headers, AUTHORIZATION_HEADER)
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not looks_like_jwt(token):
        return None
    return token


# --- the key set ---------------------------------------------------------------------------


def parse_jwks(document: Any) -> dict[str, Any]:
    """``kid`` -> RSA public key for the RS256 signing keys of a JWKS document.

    Keys of other types, uses or algorithms are skipped, as are malformed ones; a document
    with no usable key raises ValueError (the caller keeps its previous keys).
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document (an object with a 'keys' list)")
    keys: dict[str, Any] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, Mapping) or jwk.get("kty") != "RSA":
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LEN:
            continue
        if jwk.get("use", "sig") != "sig" or jwk.get("alg", ALGORITHM) != ALGORITHM:
            continue
        try:
            keys[kid] = RSAAlgorithm.from_jwk(dict(jwk))
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue
    if not keys:
        raise ValueError("the JWKS document has no usable RS256 key")
    return keys


# --- verification --------------------------------------------------------------------------


def parse_header(token: str) -> TokenHeader:
    """Checks that need no key: shape, size, ``alg`` and ``kid``. Run before any key lookup,
    so a forged ``alg`` or a junk token never costs a JWKS fetch."""
    if len(token) > MAX_ID_TOKEN_LEN or not looks_like_jwt(token):
        raise TokenRejected("malformed_token")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise TokenRejected("malformed_token") from None
    if header.get("alg") != ALGORITHM:
        raise TokenRejected("bad_algorithm")
    if "crit" in header:
        # No extension is understood here, so none may be critical (RFC 7515, 4.1.11).
        raise TokenRejected("malformed_token")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LEN:
        raise TokenRejected("missing_kid")
    return TokenHeader(kid=kid)


def verify_id_token(
    token: str, keys: Mapping[str, Any], policy: OIDCPolicy, *, now: float
) -> VerifiedIdToken:
    """Verify ``token`` against ``keys`` (kid -> RSA public key) and ``policy`` at ``now``.

    Raises ``UnknownKeyId`` when the token's ``kid`` is not in ``keys`` and ``TokenRejected``
    for every other failure.
    """
    header = parse_header(token)
    key = keys.get(header.kid)
    if key is None:
        raise UnknownKeyId()
    claims = _verified_claims(token, key)
    return check_claims(claims, policy, now=now)


def _verified_claims(token: str, key: Any) -> dict[str, Any]:
    """The payload, once PyJWT verified the RS256 signature (claims are checked by us,
    against an injected clock)."""
    try:
        return jwt.decode(
            token,
            key=key,
            algorithms=[ALGORITHM],
            options={
                "verify_signature": True,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
                "verify_sub": False,
                "verify_jti": False,
                "require": [],
                "enforce_minimum_key_length": True,
            },
        )
    except jwt.InvalidSignatureError:
        raise TokenRejected("bad_signature") from None
    except jwt.InvalidAlgorithmError:
        raise TokenRejected("bad_algorithm") from None
    except (jwt.PyJWTError, ValueError, TypeError):
        # DecodeError (payload not JSON), InvalidKeyError (key too short), ...
        raise TokenRejected("malformed_token") from None


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenRejected("malformed_token")
    return float(value)


def check_claims(claims: Mapping[str, Any], policy: OIDCPolicy, *, now: float) -> VerifiedIdToken:
    """The claim checks of an ID token whose signature is already verified."""
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or issuer not in policy.issuers:
        raise TokenRejected("bad_issuer", **({"issuer": issuer} if isinstance(issuer, str) else {}))
    audience = claims.get("aud")
    # Google ID tokens carry one audience, as a string; a list is not what Cloud Scheduler
    # sends, and accepting one would accept tokens minted for several services at once.
    if not isinstance(audience, str) or audience not in policy.audiences:
        seen = audience if isinstance(audience, str) else type(audience).__name__
        raise TokenRejected("bad_audience", audience=seen)

    exp = _number(claims, "exp")
    iat = _number(claims, "iat")
    if exp is None or iat is None:
        raise TokenRejected("missing_claim")
    if now >= exp + policy.clock_skew:
        raise TokenRejected("expired")
    if iat > now + policy.clock_skew:
        raise TokenRejected("issued_in_future")
    nbf = _number(claims, "nbf")
    if nbf is not None and nbf > now + policy.clock_skew:
        raise TokenRejected("not_yet_valid")

    email = claims.get("email")
    if not isinstance(email, str) or not email:
        raise TokenRejected("missing_claim")
    if email.strip().lower() not in policy.service_accounts:
        raise TokenRejected("email_not_allowed", email=email)
    # Google sends the JSON boolean; older Google tokens spelled it as the string "true".
    if claims.get("email_verified") not in (True, "true"):
        raise TokenRejected("email_not_verified")

    subject = claims.get("sub")
    return VerifiedIdToken(
        email=email.strip().lower(),
        subject=subject if isinstance(subject, str) else None,
        issuer=issuer,
        audience=audience,
    )
