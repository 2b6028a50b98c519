"""Request dependencies: settings, database sessions, the sync bundle, authentication."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from loguru import logger
from sqlalchemy.ext.asyncio import async_sessionmaker

from app.auth.oidc import OIDCVerifier
from app.security.oidc import KeysUnavailable, OIDCError, bearer_id_token
from app.security.signing import SignatureError, authenticate
from app.settings import Settings
from app.sync.deps import SyncDeps
from app.sync.results import RunAuth

NO_RETRY_HEADERS = {"x-inngest-no-retry": "true"}


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_sessionmaker(request: Request) -> async_sessionmaker:
    return request.app.state.sessionmaker


def get_sync_deps(request: Request) -> SyncDeps:
    return request.app.state.sync_deps


SyncDepsDep = Annotated[SyncDeps, Depends(get_sync_deps)]


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(
            status_code=413,
            detail={"error": "body_too_large", "detail": f"request body exceeds {limit} bytes"},
            headers=NO_RETRY_HEADERS,
        )


async def read_bounded_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing more than `limit` bytes without reading it all into memory."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BodyTooLarge(limit)
        except ValueError:
            raise HTTPException(
                400, detail={"error": "bad_request", "detail": "invalid Content-Length"}
            ) from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def get_oidc_verifier(request: Request) -> OIDCVerifier | None:
    runtime = getattr(request.app.state, "runtime", None)
    return runtime.oidc if runtime is not None else None


def _unauthorized(check: str, detail: str) -> HTTPException:
    return HTTPException(
        status_code=401,
        detail={"error": "unauthorized", "check": check, "detail": detail},
        headers={**NO_RETRY_HEADERS, "WWW-Authenticate": "Bearer"},
    )


async def authenticate_caller(settings: Settings, request: Request, raw_body: bytes) -> RunAuth:
    """Who is calling, by one of three paths, each with its own checks:

    - `X-Inngest-Signature` (HMAC over the raw body, fresh timestamp);
    - `Authorization: Bearer <JWT>` when OIDC is on: a Google ID token (signature against the
      issuer's JWKS, audience, issuer, service account, expiry); 503 if no keys can be had;
    - `Authorization: Bearer <signing key>` (a static secret, compared in constant time).

    A JWT-shaped bearer value takes the OIDC path only when OIDC_AUDIENCES is set; otherwise
    it is compared with the signing keys like any other bearer value. Refusals are 401 and
    name a `check`; no message carries the token or a key.
    """
    verifier = get_oidc_verifier(request)
    try:
        token = bearer_id_token(request.headers) if verifier is not None else None
    except SignatureError as exc:
        raise _unauthorized(exc.check, str(exc)) from None
    if verifier is not None and token is not None:
        try:
            verified = await verifier.verify(token)
        except KeysUnavailable as exc:
            raise HTTPException(
                status_code=503,
                detail={"error": "unavailable", "check": exc.check, "detail": str(exc)},
                headers={"Retry-After": str(exc.retry_after)},
            ) from None
        except OIDCError as exc:
            # The check and, once the signature verified, the refused claim: never the token.
            logger.bind(check=exc.check, **exc.log_fields).info("OIDC token refused")
            raise _unauthorized(exc.check, str(exc)) from None
        logger.bind(email=verified.email).debug("OIDC caller accepted")
        return RunAuth(method="oidc", email=verified.email)

    keys = settings.signing_keys()
    if not keys and settings.allow_unsigned_polls and verifier is None:
        return RunAuth(method="unsigned")
    try:
        method = authenticate(
            request.headers,
            raw_body,
            keys,
            now=time.time(),
            max_age=settings.signature_max_age_seconds,
        )
    except SignatureError as exc:
        raise _unauthorized(exc.check, str(exc)) from None
    return RunAuth(method="inngest_signature" if method == "inngest_signature" else "bearer")


async def require_caller(request: Request, settings: SettingsDep) -> RunAuth:
    """Authentication for bodiless endpoints (GET): signature over the empty body, bearer
    key or OIDC ID token."""
    raw = await read_bounded_body(request, settings.max_request_body_bytes)
    return await authenticate_caller(settings, request, raw)
