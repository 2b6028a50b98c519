"""The one composition root: engine, sessionmaker, HTTP clients, sync deps, OIDC verifier.

The API lifespan (`app/main.py`), every CLI command and the Inngest functions take what they
need from a `Runtime`; the built-in scheduler's client for calling the service itself comes
from `create_loopback_client`. Nothing else constructs an engine or an HTTP client.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from app.auth.oidc import OIDCVerifier
from app.db.engine import create_engine, create_sessionmaker
from app.gitlab.transport import AiohttpWire, GitLabWire, create_http_client
from app.settings import Settings
from app.sync.deps import SyncDeps


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker
    http: httpx.AsyncClient
    # Every GitLab API request (listings, notes, projects) goes over this one wire.
    gitlab: GitLabWire
    # Verifies Cloud Scheduler's OIDC ID tokens on /api/poll; None when OIDC_AUDIENCES is empty.
    # Its JWKS cache lives as long as the process and fetches through `http`.
    oidc: OIDCVerifier | None = None

    @property
    def sync(self) -> SyncDeps:
        return SyncDeps(
            settings=self.settings,
            sessionmaker=self.sessionmaker,
            http=self.http,
            gitlab=self.gitlab,
        )


@asynccontextmanager
async def open_runtime(
    settings: Settings, *, clock: Callable[[], float] = time.time
) -> AsyncIterator[Runtime]:
    """Build the process's resources; close them (HTTP pools, then the engine) on exit.

    `clock` (unix seconds) is what token expiry and the JWKS cache are judged by; tests pass
    a fake one to move time instead of sleeping.
    """
    engine = create_engine(settings)
    http = create_http_client(settings)
    gitlab = AiohttpWire(settings)
    try:
        yield Runtime(
            settings=settings,
            engine=engine,
            sessionmaker=create_sessionmaker(engine),
            http=http,
            gitlab=gitlab,
            oidc=OIDCVerifier.from_settings(settings, http, clock=clock),
        )
    finally:
        try:
            await gitlab.aclose()
            await http.aclose()
        finally:
            await engine.dispose()


def create_loopback_client() -> httpx.AsyncClient:
    """A client for calls to this service itself on loopback (the built-in scheduler).

    No proxies from the environment (a proxy must not see the signed calls) and no redirects
    followed; timeouts are per request.
    """
    return httpx.AsyncClient(trust_env=False, follow_redirects=False)
