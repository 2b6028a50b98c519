"""OIDC ID-token verification for /api/poll: the pure checks of `app/security/oidc.py`, fed
with keys from the cached JWKS (`app/auth/jwks.py`). Built once per process by the runtime."""

from __future__ import annotations

import time

import httpx

from app.auth.jwks import Clock, JWKSCache
from app.security.oidc import OIDCPolicy, VerifiedIdToken, parse_header, verify_id_token
from app.settings import Settings


class OIDCVerifier:
    """`await verify(token)` -> the verified caller, or an `OIDCError` (TokenRejected: 401,
    KeysUnavailable: 503)."""

    def __init__(self, policy: OIDCPolicy, keys: JWKSCache, *, clock: Clock = time.time) -> None:
        self.policy = policy
        self.keys = keys
        self._clock = clock

    @classmethod
    def from_settings(
        cls, settings: Settings, http: httpx.AsyncClient, *, clock: Clock = time.time
    ) -> OIDCVerifier | None:
        """The verifier OIDC_* configure, or None when OIDC is off (no OIDC_AUDIENCES)."""
        if not settings.oidc_enabled:
            return None
        policy = OIDCPolicy.build(
            audiences=settings.oidc_audiences,
            service_accounts=settings.oidc_service_accounts,
            issuers=settings.oidc_issuers,
        )
        return cls(policy, JWKSCache(settings.oidc_jwks_url, http, clock=clock), clock=clock)

    async def verify(self, token: str) -> VerifiedIdToken:
        # Shape, alg and kid first: a forged header never costs a key lookup or a fetch.
        header = parse_header(token)
        key = await self.keys.key_for(header.kid)
        return verify_id_token(token, {header.kid: key}, self.policy, now=self._clock())
