"""The one composition root: engine, sessionmaker, HTTP clients, sync deps, OIDC verifier.

The API lifespan (`app/main.py`), every CLI command and the Inngest functions take what they
need from a `Runtime`; the built-in scheduler's client for calling the service itself comes
from `create_loopback_client`. Nothing else constructs an engine or an HTTP client.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import httpx
import sqlalchemy as sa
from loguru import logger
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import configure_mappers

from app.auth.oidc import OIDCVerifier
from app.db import repository
from app.db.engine import create_engine, create_sessionmaker
from app.gitlab.transport import AiohttpWire, GitLabWire, create_http_client
from app.settings import Settings
from app.sync.app_refresh import follow
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


# CPython collects its young generation every 700 net container allocations, and every
# collection walks what is young then. A poll allocates and frees millions of short-lived
# objects (pages, rows, requests; nearly all freed by reference counting), so at 700 the
# collector ran ~500 times in a cold team poll and ~45 times in a warm one: about 15 % of
# the service's CPU, most of it in full collections walking every module, mapper and cached
# statement of the process. Young collections every 10,000 allocations, and the objects of
# start-up moved out of the collector's sight (gc.freeze), cut that to a few percent; cyclic
# garbage is still collected, a little later.
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Start-up's objects frozen (never collected, never walked again) and the young
    generation's threshold raised (see GC_YOUNG_THRESHOLD). For the serving process."""
    gc.freeze()
    young, older, oldest = gc.get_threshold()
    gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), older, oldest)


async def warm_up(runtime: Runtime) -> None:
    """Pay first-use costs at start-up instead of in the first poll: the ORM's mapper
    configuration and the pooled PostgreSQL connections a poll opens at once (its run record
    and POLL_CONCURRENCY users), and the collector's tuning (tune_gc). Best effort: a
    database that is down only shows later, in the requests that need it (503), never as a
    failed start."""
    configure_mappers()
    await log_schema(runtime)
    tune_gc()
    if runtime.settings.is_sqlite:
        return
    wanted = min(runtime.settings.poll_concurrency + 1, runtime.settings.db_pool_size)
    try:
        async with AsyncExitStack() as stack:  # held together: distinct connections
            for _ in range(wanted):
                conn = await stack.enter_async_context(runtime.engine.connect())
                await conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - best effort, see above
        logger.debug("database warm-up skipped: {}", type(exc).__name__)


async def log_schema(runtime: Runtime) -> None:
    """Say at start-up which version of the original app's schema the database has (each
    run reads it again: the app may be upgraded while the service runs)."""
    try:
        async with runtime.sessionmaker() as s:
            profile = await repository.read_schema_profile(s)
    except Exception as exc:  # noqa: BLE001 - best effort, as the rest of the warm-up
        logger.debug("schema not read at start-up: {}", type(exc).__name__)
        return
    logger.bind(schema=profile.flavour).info("database schema: {}", profile.describe())


def start_warm_up(runtime: Runtime) -> asyncio.Task[None]:
    return asyncio.create_task(warm_up(runtime), name="warm-up")


def start_following_app_refreshes(runtime: Runtime) -> asyncio.Task[None] | None:
    """The background task that follows the original app's Refresh button (sync/app_refresh),
    unless APP_REFRESH_FOLLOW_SECONDS is 0."""
    interval = runtime.settings.app_refresh_follow_seconds
    if interval <= 0:
        return None
    return asyncio.create_task(follow(runtime.sync, interval), name="app-refresh")


async def stop_warm_up(task: asyncio.Task[None], *, grace: float = 2.0) -> None:
    """End the warm-up before the runtime closes, so that its connections are back in the
    pool when the engine is disposed of (else they stay open until garbage-collected).

    It is given `grace` seconds to finish (connecting takes milliseconds) rather than
    cancelled at once: asyncpg cancelled halfway through a connect logs "Future exception was
    never retrieved". A database slow to answer gets it cancelled. asyncio.wait: a
    cancellation of the caller still propagates.
    """
    await asyncio.wait({task}, timeout=grace)
    if not task.done():
        task.cancel()
        await asyncio.wait({task})


def create_loopback_client() -> httpx.AsyncClient:
    """A client for calls to this service itself on loopback (the built-in scheduler).

    No proxies from the environment (a proxy must not see the signed calls) and no redirects
    followed; timeouts are per request.
    """
    return httpx.AsyncClient(trust_env=False, follow_redirects=False)
