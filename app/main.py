"""The FastAPI application: `app.main:app`, built by `create_app()`."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from loguru import logger

from app import __version__
from app.api import poll, status
from app.db.engine import create_engine, create_sessionmaker
from app.gitlab.client import LANE_EXTENSION
from app.jobs.inngest_app import mount_inngest
from app.logging import configure_logging
from app.settings import ConfigurationError, Settings, get_settings
from app.sync.user_sync import SyncDeps

DESCRIPTION = """
Keeps a database of GitLab activity (issues, merge requests, comments) fresh for every
user's monitored projects. A scheduler POSTs a signed request to `/api/poll` every
10 minutes; the service syncs users concurrently and answers with a summary.

Authenticate with `X-Inngest-Signature` (Inngest-style HMAC) or
`Authorization: Bearer <INNGEST_SIGNING_KEY>` (Cloud Scheduler, Vercel Cron, curl).
"""


class _ShardedTransport(httpx.AsyncBaseTransport):
    """Connection pools sharded by the request's credentials (in practice: by user) and lane.

    httpcore's pool does work proportional to its connection count on every request and
    response (a readability check, i.e. a poll() and a getpeername(), of each idle socket,
    plus a scan quadratic in the number of connections), so one pool sized for
    POLL_CONCURRENCY x GITLAB_USER_CONCURRENCY connections spent most of a busy poll's CPU
    managing itself. A request goes to the pool of (its credentials' group, its lane): the
    GitLab client gives each of a user's in-flight requests its own lane, so a pool
    normally holds one connection. Pools live as long as the client, so keep-alive
    connections carry over from one user to the next as before. Every pool has the old
    pool's limits, so a hash collision never blocks.
    """

    def __init__(self, groups: int, factory: Callable[[], httpx.AsyncHTTPTransport]) -> None:
        self._groups = groups
        self._factory = factory
        self._shards: dict[tuple[int, int], httpx.AsyncHTTPTransport] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        group = hash(request.headers.get("authorization", "")) % self._groups
        key = (group, request.extensions.get(LANE_EXTENSION, -1))
        shard = self._shards.get(key)
        if shard is None:
            shard = self._shards[key] = self._factory()
        return await shard.handle_async_request(request)

    async def aclose(self) -> None:
        for shard in list(self._shards.values()):
            await shard.aclose()


def create_http_client(settings: Settings) -> httpx.AsyncClient:
    """One client for all GitLab traffic (keep-alive across users and pages)."""
    in_flight = settings.poll_concurrency * settings.gitlab_user_concurrency
    limits = httpx.Limits(
        max_connections=max(100, in_flight), max_keepalive_connections=max(20, in_flight)
    )
    ssl_context = httpx.create_ssl_context()  # shared: building one costs ~10 ms
    transport = _ShardedTransport(
        4 * settings.poll_concurrency,
        lambda: httpx.AsyncHTTPTransport(verify=ssl_context, limits=limits),
    )
    return httpx.AsyncClient(
        timeout=httpx.Timeout(
            connect=settings.gitlab_connect_timeout,
            read=settings.gitlab_read_timeout,
            write=settings.gitlab_read_timeout,
            pool=settings.gitlab_read_timeout,
        ),
        transport=transport,
        headers={"User-Agent": f"gitlab-insights/{__version__}"},
        follow_redirects=False,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    if settings is None:
        try:
            settings = get_settings()
        except ConfigurationError as exc:
            # One clear line, not a traceback.
            print(f"gitlab-insights: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        http = create_http_client(settings)
        sessionmaker = create_sessionmaker(engine)
        app.state.engine = engine
        app.state.sessionmaker = sessionmaker
        app.state.http = http
        app.state.sync_deps = SyncDeps(settings=settings, sessionmaker=sessionmaker, http=http)
        if not settings.signing_keys():
            if settings.allow_unsigned_polls:
                logger.warning(
                    "!!! ALLOW_UNSIGNED_POLLS is on and no signing key is set: ANYONE who can "
                    "reach /api/poll can trigger polls. Development only. !!!"
                )
            else:
                logger.warning("no INNGEST_SIGNING_KEY configured: /api/poll refuses every request")
        logger.info("gitlab-insights started (database: {})", engine.url.get_backend_name())
        try:
            yield
        finally:
            await http.aclose()
            await engine.dispose()
            logger.info("gitlab-insights stopped")

    app = FastAPI(
        title="gitlab-insights",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.include_router(poll.router)
    app.include_router(status.router)
    # /api/inngest when INNGEST_SIGNING_KEY or INNGEST_DEV is set; absent otherwise.
    mount_inngest(app, settings)
    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn app.main:app` builds the app on first access, so importing this module
    # (tests, the CLI) never reads the environment as a side effect.
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
