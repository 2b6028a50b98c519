"""The FastAPI application: `app.main:app`, built by `create_app()`."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from loguru import logger

from app import __version__
from app.api import poll, runs, status
from app.api.errors import install_error_handlers
from app.api.openapi import install_openapi_extras
from app.jobs.inngest_app import mount_inngest
from app.logging import configure_logging
from app.runtime import (
    open_runtime,
    start_following_app_refreshes,
    start_warm_up,
    stop_warm_up,
)
from app.settings import ConfigurationError, Settings, get_settings

DESCRIPTION = """
Keeps a database of GitLab activity (issues, merge requests, comments) fresh for every
user's monitored projects. A scheduler POSTs a signed request to `/api/poll` every
10 minutes; the service syncs users concurrently and answers with a summary.

Authenticate with `X-Inngest-Signature` (Inngest-style HMAC),
`Authorization: Bearer <Google ID token>` (Cloud Scheduler with OIDC, when OIDC_AUDIENCES is
set) or `Authorization: Bearer <INNGEST_SIGNING_KEY>` (Vercel Cron, curl).

Every 4xx/5xx answer has one shape: `{"error": "<code>", "detail": "<text>"}`, plus `check`
(401: which authentication check failed) or `errors` (422: each invalid field). A database
that cannot be reached answers 503 with `Retry-After` from every endpoint.
"""


def create_app(
    settings: Settings | None = None, *, clock: Callable[[], float] = time.time
) -> FastAPI:
    """The app; `clock` (unix seconds) judges OIDC token times and the JWKS cache (tests)."""
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
        async with open_runtime(settings, clock=clock) as runtime:
            app.state.runtime = runtime
            app.state.sessionmaker = runtime.sessionmaker
            app.state.sync_deps = runtime.sync
            if settings.oidc_enabled:
                logger.bind(
                    audiences=settings.oidc_audiences,
                    service_accounts=settings.oidc_service_accounts,
                    jwks_url=settings.oidc_jwks_url,
                ).info("OIDC ID tokens accepted on /api/poll")
            if not settings.signing_keys():
                if settings.oidc_enabled:
                    logger.info(
                        "no INNGEST_SIGNING_KEY configured: /api/poll accepts OIDC ID tokens only"
                    )
                elif settings.allow_unsigned_polls:
                    logger.warning(
                        "!!! ALLOW_UNSIGNED_POLLS is on and no signing key is set: ANYONE who "
                        "can reach /api/poll can trigger polls. Development only. !!!"
                    )
                else:
                    logger.warning(
                        "no INNGEST_SIGNING_KEY configured: /api/poll refuses every request"
                    )
            logger.info(
                "gitlab-insights started (database: {})", runtime.engine.url.get_backend_name()
            )
            warming = start_warm_up(runtime)  # in the background: start-up does not wait
            following = start_following_app_refreshes(runtime)
            try:
                yield
            finally:
                if following is not None:
                    # A loop until cancelled; waited for, as the warm-up, so that its
                    # connections are closed before the engine is disposed of.
                    following.cancel()
                    await asyncio.wait({following})
                await stop_warm_up(warming)
                logger.info("gitlab-insights stopped")

    # /docs and /redoc from the Swagger UI and ReDoc files shipped in fastapi-offline: no CDN.
    app = FastAPIOffline(
        title="gitlab-insights",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    routers = (poll.router, status.router, runs.router)
    for router in routers:
        app.include_router(router)
    install_error_handlers(app)
    install_openapi_extras(app, routers)
    # /api/inngest with INNGEST_EVENT_KEY (and the signing key) or INNGEST_DEV; else absent.
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
