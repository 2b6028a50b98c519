"""Request dependencies: settings, database sessions, the sync bundle, authentication."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.ext.asyncio import async_sessionmaker

from app.security.signing import SignatureError, authenticate
from app.settings import Settings
from app.sync.deps import SyncDeps

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


def check_caller(settings: Settings, request: Request, raw_body: bytes) -> str:
    """Who is calling: 'inngest_signature', 'bearer' or 'unsigned' (development only)."""
    keys = settings.signing_keys()
    if not keys and settings.allow_unsigned_polls:
        return "unsigned"
    try:
        return authenticate(
            request.headers,
            raw_body,
            keys,
            now=time.time(),
            max_age=settings.signature_max_age_seconds,
        )
    except SignatureError as exc:
        raise HTTPException(
            status_code=401,
            detail={"error": "unauthorized", "check": exc.check, "detail": str(exc)},
            headers={**NO_RETRY_HEADERS, "WWW-Authenticate": "Bearer"},
        ) from None


async def require_caller(request: Request, settings: SettingsDep) -> str:
    """Authentication for bodiless endpoints (GET): signature over the empty body or bearer."""
    raw = await read_bounded_body(request, settings.max_request_body_bytes)
    return check_caller(settings, request, raw)
