"""The polling job as Inngest functions, served at /api/inngest with the official SDK.

Two functions, the original job split so Inngest can spread the work over replicas:

- ``gitlab-api-polling`` (cron INNGEST_POLLING_CRON, or the ``gitlab-insights/poll.requested``
  event for a manual refresh) lists the users in a step and fans out one
  ``gitlab-insights/user.sync`` event per user, in batches sent from steps;
- ``gitlab-user-sync`` syncs one user through ``run_poll`` -- the same code as /api/poll, so
  run records, leases, cursors and LastSync are shared -- and maps the outcome onto the
  SDK's retry semantics (NonRetriableError, RetryAfterError, or a plain error to retry).

Handlers reach the database and the shared HTTP client through a closure over the FastAPI
app: ``app.state.sync_deps`` is built by the lifespan in app/main.py.

The inngest SDK (pinned in pyproject) is imported lazily so the service runs without it
when Inngest is not configured.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.routing import APIRoute
from loguru import logger

from app.db import repository as repo
from app.security.signing import SIGNATURE_HEADER, SignatureError, verify_inngest_signature
from app.settings import Settings
from app.sync.deps import SyncDeps
from app.sync.poller import PollOutcome, run_poll
from app.sync.results import RunAuth

if TYPE_CHECKING:
    import inngest

APP_ID = "gitlab-insights"
POLLING_FN_ID = "gitlab-api-polling"
USER_SYNC_FN_ID = "gitlab-user-sync"
USER_SYNC_EVENT = "gitlab-insights/user.sync"
POLL_REQUESTED_EVENT = "gitlab-insights/poll.requested"
RETRIES = 3  # 4 attempts in all, as the original job
# Events per step.send_event: small request bodies, and a failed batch resends only itself.
FANOUT_BATCH_SIZE = 100
# Same bound as /api/poll's user_ids.
MAX_REQUESTED_USERS = 1000
# Skips that no retry can fix: the user must reconnect GitLab first.
NON_RETRIABLE_SKIPS = frozenset(
    {
        "no_token",
        "token_expired",
        "token_revoked",
        "token_invalid",
        "token_insufficient_scope",
        "token_refresh_failed",
    }
)
# When GitLab answered 429 without a usable Retry-After.
DEFAULT_RATE_LIMIT_WAIT_SECONDS = 60.0
# The SDK's opt-in for unsigned out-of-band sync PUTs (see mount_inngest).
ENABLE_UNAUTHED_SYNC_ENV = "INNGEST_ENABLE_UNAUTHED_SYNC"

GetDeps = Callable[[], SyncDeps]


class UserSyncFailed(Exception):
    """A user's sync failed in a way a later attempt may fix; Inngest retries it."""


# --- configuration -----------------------------------------------------------------------


def dev_mode(settings: Settings) -> bool:
    """INNGEST_DEV as the SDK reads it: set and not "false"/"0" means the dev server."""
    value = (settings.inngest_dev or "").strip().lower()
    return value not in ("", "false", "0")


def dev_server_url(settings: Settings) -> str | None:
    """INNGEST_DEV may also name the dev server (the SDK's default is 127.0.0.1:8288)."""
    if not dev_mode(settings):
        return None
    value = (settings.inngest_dev or "").strip()
    if "://" in value:
        return value
    if "." in value or ":" in value:
        return f"http://{value}"
    return None


def inngest_app_wanted(settings: Settings) -> bool:
    """Whether this deployment means to run the Inngest app: with the dev server
    (INNGEST_DEV), or for Inngest Cloud with INNGEST_EVENT_KEY, which only the app uses (its
    fan-out sends events with it). INNGEST_SIGNING_KEY alone says nothing: it also signs
    /api/poll for schedulers that have nothing to do with Inngest."""
    return dev_mode(settings) or settings.inngest_event_key is not None


class _DemoteUnauthorized(logging.Filter):
    """The SDK logs every refused request (`unauthorized: ...`) at ERROR: an unsigned GET or
    PUT from any scanner would fill the error log. A refused caller is a WARNING; every
    other SDK error stays an ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and str(record.msg).startswith("unauthorized:"):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_DEMOTE_UNAUTHORIZED = _DemoteUnauthorized()


def sdk_logger() -> logging.Logger:
    """The stdlib logger handed to the SDK, with refused callers demoted to WARNING."""
    log = logging.getLogger("inngest")
    if _DEMOTE_UNAUTHORIZED not in log.filters:
        log.addFilter(_DEMOTE_UNAUTHORIZED)
    return log


def create_client(settings: Settings) -> inngest.Inngest:
    import inngest

    dev = dev_mode(settings)
    origin = dev_server_url(settings)
    signing_key = settings.inngest_signing_key
    event_key = settings.inngest_event_key
    client = inngest.Inngest(
        app_id=APP_ID,
        # Explicit, so a value read from .env (not os.environ) decides the mode too.
        is_production=not dev,
        signing_key=signing_key.get_secret_value() if signing_key else None,
        event_key=event_key.get_secret_value() if event_key else None,
        api_base_url=origin,
        event_api_base_url=origin,
        # Routed into loguru (and its redaction) by app.logging's stdlib interception.
        logger=sdk_logger(),
    )
    fallback = settings.inngest_signing_key_fallback
    if fallback is not None and client.signing_key_fallback is None:
        # inngest 0.5.19 reads the fallback key only from os.environ and has no argument
        # for it; a key from .env must reach the request verifier and the API client too.
        client._signing_key_fallback = fallback.get_secret_value()
        client._http_client._signing_key_fallback = fallback.get_secret_value()
    return client


# --- the functions -------------------------------------------------------------------------


def _requested_user_ids(data: Any) -> list[str] | None:
    """poll.requested's optional data.user_ids, validated like /api/poll's body."""
    raw = data.get("user_ids") if data else None
    if raw is None:
        return None
    import inngest

    if (
        not isinstance(raw, list)
        or not raw
        or len(raw) > MAX_REQUESTED_USERS
        or not all(isinstance(u, str) and u for u in raw)
    ):
        raise inngest.NonRetriableError(
            f"data.user_ids must be a list of 1 to {MAX_REQUESTED_USERS} user id strings"
        )
    return list(dict.fromkeys(raw))


async def list_targets(deps: SyncDeps, user_ids: Sequence[str] | None) -> dict[str, list[str]]:
    """Users to fan out to: everyone with a monitored project, or the requested ones.

    Users without a GitLab token are not fanned out: their user.sync run could only fail with
    NonRetriableError, raising an Inngest failure alert every tick until they reconnect. They
    are listed under `no_token` in the polling run's result instead.
    """
    async with deps.sessionmaker() as s:
        if user_ids is None:
            everyone = [u.id for u in await repo.users_to_poll(s)]
            tokenless = await repo.users_without_token(s, everyone)
            return {
                "user_ids": [u for u in everyone if u not in tokenless],
                "no_token": [u for u in everyone if u in tokenless],
            }
        known = await repo.users_by_ids(s, list(user_ids))
        tokenless = await repo.users_without_token(s, [u for u in user_ids if u in known])
    targets, not_found, no_projects, no_token = [], [], [], []
    for uid in user_ids:
        if uid not in known:
            not_found.append(uid)
        elif known[uid].project_count == 0:
            no_projects.append(uid)
        elif uid in tokenless:
            no_token.append(uid)
        else:
            targets.append(uid)
    return {
        "user_ids": targets,
        "not_found": not_found,
        "no_projects": no_projects,
        "no_token": no_token,
    }


def _as_dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def outcome_result(user_id: str, outcome: PollOutcome, manual: bool) -> dict[str, Any]:
    """The function's return value, or the SDK error that tells Inngest what to do next."""
    import inngest

    summary = outcome.summary
    if outcome.status_code != 200 or not summary.users:
        raise UserSyncFailed(f"sync could not run: {summary.error or 'no result'}")
    user = summary.users[0]
    if user.status == "skipped" and user.reason in NON_RETRIABLE_SKIPS:
        raise inngest.NonRetriableError(f"user {user_id} skipped: {user.reason}")
    if user.status == "failed":
        limited = [f for f in user.failed_projects if f.error == "GitLabRateLimited"]
        if limited:
            wait = max((f.retry_after or 0.0) for f in limited)
            if wait <= 0:
                wait = DEFAULT_RATE_LIMIT_WAIT_SECONDS
            raise inngest.RetryAfterError(
                f"user {user_id}: GitLab rate limited, retry in {wait:g}s",
                datetime.timedelta(seconds=wait),
            )
        detail = "; ".join(f"{f.project_path}: {f.error}" for f in user.failed_projects[:5])
        raise UserSyncFailed(
            f"user {user_id} failed: {user.reason}" + (f" ({detail})" if detail else "")
        )
    return {"run_id": summary.run_id, "manual": manual, **user.model_dump(mode="json")}


def create_functions(
    client: inngest.Inngest, settings: Settings, get_deps: GetDeps
) -> list[inngest.Function[Any]]:
    """The app's two Inngest functions: the polling fan-out and one user's sync."""
    return [
        _polling_function(client, settings, get_deps),
        _user_sync_function(client, settings, get_deps),
    ]


async def _on_polling_failure(ctx: inngest.Context) -> None:
    # The inngest/function.failed event: the failed run's id, its error, its event.
    data = ctx.event.data
    error = _as_dict(data.get("error"))
    logger.bind(
        inngest_run_id=data.get("run_id"),
        function_id=data.get("function_id"),
        trigger_event=_as_dict(data.get("event")).get("name"),
    ).error(
        "{}: all retries exhausted: {}: {}",
        POLLING_FN_ID,
        error.get("name", "Error"),
        error.get("message", ""),
    )


def _fan_out_events(
    run_id: str, user_ids: list[str], *, manual: bool, trigger: str
) -> list[list[inngest.Event]]:
    """One user.sync event per user, in batches of FANOUT_BATCH_SIZE."""
    import inngest

    events = [
        inngest.Event(
            name=USER_SYNC_EVENT,
            # Inngest drops a repeated event id: a resent batch never syncs twice.
            id=f"{run_id}-{uid}",
            data={"user_id": uid, "manual": manual, "trigger": trigger, "poll_run_id": run_id},
        )
        for uid in user_ids
    ]
    return [events[i : i + FANOUT_BATCH_SIZE] for i in range(0, len(events), FANOUT_BATCH_SIZE)]


def _polling_function(
    client: inngest.Inngest, settings: Settings, get_deps: GetDeps
) -> inngest.Function[Any]:
    import inngest

    @client.create_function(
        fn_id=POLLING_FN_ID,
        name="GitLab API Polling",
        trigger=[
            inngest.TriggerCron(cron=settings.inngest_polling_cron),
            inngest.TriggerEvent(event=POLL_REQUESTED_EVENT),
        ],
        retries=RETRIES,
        on_failure=_on_polling_failure,
    )
    async def gitlab_api_polling(ctx: inngest.Context) -> dict[str, Any]:
        manual = ctx.event.name == POLL_REQUESTED_EVENT
        requested = _requested_user_ids(ctx.event.data) if manual else None

        async def list_users() -> dict[str, list[str]]:
            return await list_targets(get_deps(), requested)

        targets = await ctx.step.run("list-users", list_users)
        user_ids: list[str] = targets["user_ids"]
        trigger = "manual" if manual else "cron"
        batches = _fan_out_events(ctx.run_id, user_ids, manual=manual, trigger=trigger)
        for number, batch in enumerate(batches, 1):
            await ctx.step.send_event(f"fan-out-{number}", batch)
        result: dict[str, Any] = {
            "trigger": trigger,
            "users": len(user_ids),
            "events_sent": len(user_ids),
            "batches": len(batches),
        }
        # Users skipped without a user.sync run, by reason.
        for key in ("not_found", "no_projects", "no_token"):
            if targets.get(key):
                result[key] = targets[key]
        return result

    return gitlab_api_polling


def _user_sync_function(
    client: inngest.Inngest, settings: Settings, get_deps: GetDeps
) -> inngest.Function[Any]:
    import inngest

    # How Inngest's call was authenticated, recorded with each run as /api/poll records its
    # caller's: in cloud mode every call is signed (checked by our gate and the SDK); the dev
    # server's calls are not.
    auth = RunAuth(method="unsigned" if dev_mode(settings) else "inngest_signature")

    @client.create_function(
        fn_id=USER_SYNC_FN_ID,
        name="GitLab User Sync",
        trigger=inngest.TriggerEvent(event=USER_SYNC_EVENT),
        retries=RETRIES,
        concurrency=[
            # Every GitLab call of the app runs in this function, so a function-wide limit
            # is the app-wide limit, enforced by Inngest across all replicas.
            inngest.Concurrency(limit=settings.poll_concurrency),
            # Never two syncs of one user at once (the database lease would skip the second).
            inngest.Concurrency(limit=1, key="event.data.user_id"),
        ],
    )
    async def gitlab_user_sync(ctx: inngest.Context) -> dict[str, Any]:
        data = ctx.event.data
        user_id = data.get("user_id")
        if not isinstance(user_id, str) or not user_id:
            raise inngest.NonRetriableError("event data.user_id must be a non-empty string")
        manual = data.get("manual") is True
        # Not a step: one call per attempt is all this function does, and a step would cost
        # a second request per user for nothing.
        # Inngest retries this function (3 retries with its own backoff): one in-process
        # attempt per Inngest attempt, or a bad user would be tried 4 x 4 times.
        deps = get_deps()
        once = replace(deps, settings=deps.settings.model_copy(update={"user_sync_attempts": 1}))
        outcome = await run_poll(
            once, user_ids=[user_id], trigger="inngest", manual=manual, auth=auth
        )
        logger.bind(
            inngest_run_id=ctx.run_id, run_id=outcome.summary.run_id, attempt=ctx.attempt
        ).debug("inngest user sync finished")
        return outcome_result(user_id, outcome, manual)

    return gitlab_user_sync


# --- serving -------------------------------------------------------------------------------


def _fresh_signature_gate(settings: Settings) -> Callable[[Request], Any]:
    """Refuse signed requests the SDK would accept but should not: no or an old timestamp.

    inngest 0.5.19 checks the HMAC but neither the age of `t` nor its presence, so a
    captured request could be replayed forever. The SDK still does its own check after.
    """

    async def gate(request: Request) -> None:
        header = request.headers.get(SIGNATURE_HEADER)
        if header is None:
            return  # the SDK refuses unsigned invokes and introspection in cloud mode
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > settings.max_request_body_bytes * 16:
            # Inngest step payloads grow with memoized steps: a generous, finite bound.
            raise HTTPException(status_code=413, detail={"error": "body_too_large"})
        body = await request.body()  # cached by Starlette for the SDK's handler
        try:
            verify_inngest_signature(
                header,
                body,
                settings.signing_keys(),
                now=time.time(),
                max_age=settings.signature_max_age_seconds,
            )
        except SignatureError as exc:
            raise HTTPException(
                status_code=401,
                detail={"error": "unauthorized", "check": exc.check, "detail": str(exc)},
            ) from None

    return gate


def _app_deps(app: FastAPI) -> GetDeps:
    def get_deps() -> SyncDeps:
        deps = getattr(app.state, "sync_deps", None)
        if deps is None:
            # Only before start-up completes; a retry will find it.
            raise UserSyncFailed("the service is not started yet")
        return deps

    return get_deps


# /docs titles of the SDK's three routes (FastAPI would make up "Get Api Inngest").
_ROUTE_DOCS: dict[str, tuple[str, str]] = {
    "GET": (
        "Inngest: introspect the app",
        "The SDK's introspection for Inngest and the dev server: the app's mode and functions.",
    ),
    "PUT": (
        "Inngest: register the app's functions",
        "Inngest Cloud's signed in-band sync (Apps -> Sync): the SDK registers the functions "
        "gitlab-api-polling and gitlab-user-sync. Unsigned syncs only with "
        "INNGEST_ENABLE_UNAUTHED_SYNC=true (or with the dev server).",
    ),
    "POST": (
        "Inngest: run a function step",
        "Inngest calls this to run gitlab-api-polling (the fan-out) or gitlab-user-sync (one "
        "user) step by step; the body and answers are the SDK's protocol with Inngest.",
    ),
}
_SIGNED_NOTE = (
    " Calls must carry a valid X-Inngest-Signature at most SIGNATURE_MAX_AGE_SECONDS old "
    "(401 otherwise)."
)


def _describe_routes(router: APIRouter, dev: bool) -> None:
    for route in router.routes:
        if isinstance(route, APIRoute):
            for method in (route.methods or set()) & _ROUTE_DOCS.keys():
                summary, description = _ROUTE_DOCS[method]
                route.summary = summary
                route.description = description + ("" if dev else _SIGNED_NOTE)


def mount_inngest(app: FastAPI, settings: Settings) -> bool:
    """Serve the Inngest app at /api/inngest where it is wanted; one log line either way,
    a warning only where the app is wanted and cannot run."""
    dev = dev_mode(settings)
    if not inngest_app_wanted(settings):
        logger.info(
            "Inngest app off: set INNGEST_EVENT_KEY and INNGEST_SIGNING_KEY (Inngest Cloud) "
            "or INNGEST_DEV=1 (Inngest dev server) to serve /api/inngest"
        )
        return False
    if not dev and settings.inngest_signing_key is None:
        logger.warning(
            "INNGEST_EVENT_KEY is set but INNGEST_SIGNING_KEY is not: /api/inngest stays off "
            "(Inngest Cloud's calls could not be verified)"
        )
        return False

    try:
        import inngest.fast_api
    except ImportError:
        # INNGEST_SIGNING_KEY also guards /api/poll: a deployment without the SDK keeps that.
        logger.warning("Inngest disabled: the inngest SDK is not installed (inngest==0.5.19)")
        return False

    client = create_client(settings)
    functions = create_functions(client, settings, _app_deps(app))
    router = APIRouter(
        tags=["inngest"],
        dependencies=[] if dev else [Depends(_fresh_signature_gate(settings))],
    )
    # Unsigned out-of-band sync lets anyone make this service re-register itself with
    # Inngest at a URL taken from the request's Host header: opt-in only (the SDK plans the
    # same default for 0.6). Inngest Cloud's own syncs are signed in-band PUTs and work.
    unauthed_sync = os.environ.get(ENABLE_UNAUTHED_SYNC_ENV, "").strip().lower() in ("1", "true")
    # serve() only calls .get/.post/.put on its first argument: a router keeps our
    # dependency on the three routes and lets the app include them like any other.
    inngest.fast_api.serve(
        cast(Any, router),
        client,
        functions,
        enable_unauthed_sync=unauthed_sync,  # the SDK always allows it in dev mode
    )
    _describe_routes(router, dev)
    app.include_router(router)
    app.state.inngest_client = client
    logger.info(
        "Inngest app '{}' served at /api/inngest ({} mode, {} functions)",
        APP_ID,
        "dev server" if dev else "cloud",
        len(functions),
    )
    return True
