"""POST /api/poll: verify the caller, run a poll, answer with the summary."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from app.api.deps import (
    NO_RETRY_HEADERS,
    SettingsDep,
    SyncDepsDep,
    authenticate_caller,
    read_bounded_body,
)
from app.sync.deps import SyncDeps
from app.sync.poller import run_poll
from app.sync.results import PollSummary, RunAuth

router = APIRouter(tags=["poll"])


def _storable_id(value: str) -> str:
    # JSON escapes can smuggle in what no database text column holds (a lone surrogate,
    # NUL): refuse them here as a bad request instead of failing in the database.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


UserId = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_storable_id)]


class PollRequest(BaseModel):
    """Empty body or `{}`: every user with a monitored project. `user_ids`: a manual refresh."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user_ids: list[UserId] | None = Field(
        None,
        min_length=1,
        max_length=1000,
        description="Users to refresh now (a manual refresh); omit to poll everyone.",
        examples=[["clx1user0000"]],
    )


class ErrorBody(BaseModel):
    error: str
    check: str | None = None
    detail: Any = None


def _invalid(detail: Any) -> JSONResponse:
    return JSONResponse(
        {"error": "invalid_body", "detail": detail}, status_code=422, headers=NO_RETRY_HEADERS
    )


def parse_poll_request(raw: bytes) -> PollRequest | JSONResponse:
    if not raw.strip():
        return PollRequest()
    try:
        # Decode explicitly: json.loads(bytes) would also accept UTF-16 and UTF-32.
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return _invalid("body must be empty or a UTF-8 JSON object")
    if not isinstance(data, dict):
        return _invalid('body must be a JSON object such as {} or {"user_ids": ["..."]}')
    try:
        return PollRequest.model_validate(data)
    except ValidationError as exc:
        return _invalid(
            [
                {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
                for e in exc.errors(include_url=False, include_input=False)
            ]
        )


@router.get(
    "/api/poll",
    summary="Run a full poll (for cron services that can only send GET, e.g. Vercel Cron)",
    description=(
        "The same as POST with an empty body. Vercel Cron sends `Authorization: Bearer "
        "$CRON_SECRET`: set CRON_SECRET to the signing key. A signed request signs the empty "
        "body. A Cloud Scheduler OIDC ID token is accepted too (OIDC_AUDIENCES)."
    ),
    response_model=PollSummary,
    responses={
        401: {"model": ErrorBody, "description": "Missing or bad credentials"},
        503: {
            "model": PollSummary,
            "description": "Database unreachable or GitLab down, or the OIDC signing keys "
            "cannot be fetched (then `detail` says so)",
        },
    },
)
async def poll_get(request: Request, settings: SettingsDep, deps: SyncDepsDep) -> JSONResponse:
    raw = await read_bounded_body(request, settings.max_request_body_bytes)
    auth = await authenticate_caller(settings, request, raw)
    if raw.strip():
        return _invalid("GET /api/poll takes no body; POST a body instead")
    return await _run(request, deps, PollRequest(), auth)


@router.post(
    "/api/poll",
    summary="Run a poll now (scheduler or manual refresh)",
    description=(
        "Authenticate with `X-Inngest-Signature: t=<unix>&s=<hex>` (HMAC-SHA256 over the "
        "RFC 8785 canonical body + t, keyed with INNGEST_SIGNING_KEY or its fallback), with "
        "`Authorization: Bearer <Google ID token>` (Cloud Scheduler OIDC; OIDC_AUDIENCES, "
        "OIDC_SERVICE_ACCOUNTS) or with `Authorization: Bearer <signing key>`. Answers 200 "
        "when the run completed, even if some users failed; 503 with Retry-After when it "
        "could not run."
    ),
    response_model=PollSummary,
    responses={
        401: {"model": ErrorBody, "description": "Missing or bad credentials"},
        413: {"model": ErrorBody, "description": "Body too large"},
        422: {"model": ErrorBody, "description": "Body is not a valid poll request"},
        503: {
            "model": PollSummary,
            "description": "Database unreachable or GitLab down, or the OIDC signing keys "
            "cannot be fetched (then `detail` says so)",
        },
    },
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": PollRequest.model_json_schema()}},
        }
    },
)
async def poll(request: Request, settings: SettingsDep, deps: SyncDepsDep) -> JSONResponse:
    raw = await read_bounded_body(request, settings.max_request_body_bytes)
    auth = await authenticate_caller(settings, request, raw)  # before anything parses the body
    parsed = parse_poll_request(raw)
    if isinstance(parsed, JSONResponse):
        return parsed
    return await _run(request, deps, parsed, auth)


async def _run(
    request: Request, deps: SyncDeps, parsed: PollRequest, auth: RunAuth
) -> JSONResponse:
    outcome = await run_poll(deps, user_ids=parsed.user_ids, trigger=_trigger(request), auth=auth)
    headers = {"Retry-After": str(outcome.retry_after)} if outcome.retry_after else None
    return JSONResponse(
        outcome.summary.model_dump(mode="json"), status_code=outcome.status_code, headers=headers
    )


def _trigger(request: Request) -> str:
    """A label for the run record, from what the (already authenticated) caller sends."""
    h = request.headers
    if h.get("x-gitlab-insights-trigger") == "scheduler":
        return "scheduler"  # the built-in scheduler
    if "x-cloudscheduler" in h:
        return "cloud_scheduler"
    if "x-inngest-signature" in h:
        return "inngest"
    if "vercel-cron" in h.get("user-agent", "").lower():
        return "vercel_cron"
    return "api"
