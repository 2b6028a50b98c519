"""POST /api/poll: verify the caller, run a poll, answer with the summary."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from app.api.callers import caller_trigger
from app.api.deps import (
    NO_RETRY_HEADERS,
    SettingsDep,
    SyncDepsDep,
    authenticate_caller,
    read_bounded_body,
)
from app.api.errors import FieldError, error_response, error_responses, invalid_request
from app.api.openapi import SIGNED
from app.sync.deps import SyncDeps
from app.sync.poller import run_poll
from app.sync.results import PollSummary, RunAuth, example_unavailable
from app.sync.shard import MAX_SHARDS, Shard

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
    """Empty body or `{}`: every user with a monitored project. `user_ids`: a manual refresh.
    `shard` + `shards`: the users whose id hashes to that shard (one of N scheduler jobs)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{}, {"shard": 0, "shards": 4}, {"user_ids": ["u1"]}]},
    )

    user_ids: list[UserId] | None = Field(
        None,
        min_length=1,
        max_length=1000,
        description="Users to refresh now (a manual refresh); omit to poll everyone.",
        examples=[["clx1user0000"]],
    )
    shard: int | None = Field(
        None,
        ge=0,
        description="This job's shard, 0..shards-1: polls the users for whom "
        "int(sha256(user id)[:8]) % shards == shard. Send with `shards`, not with `user_ids`.",
        examples=[0],
    )
    shards: int | None = Field(
        None,
        ge=1,
        le=MAX_SHARDS,
        description="How many shards (scheduler jobs) split the users; every user is in exactly "
        "one. Send with `shard`.",
        examples=[4],
    )

    @model_validator(mode="after")
    def _shard_rules(self) -> PollRequest:
        if (self.shard is None) != (self.shards is None):
            raise ValueError("shard and shards go together")
        if self.shard is not None and self.shards is not None:
            if self.shard >= self.shards:
                raise ValueError(f"shard must be between 0 and shards - 1 ({self.shards - 1})")
            if self.user_ids is not None:
                raise ValueError("user_ids and shard exclude each other: name users or a shard")
        return self

    @property
    def shard_spec(self) -> Shard | None:
        if self.shard is None or self.shards is None:
            return None
        return Shard(self.shard, self.shards)


def _invalid(errors: list[FieldError] | str) -> JSONResponse:
    if isinstance(errors, str):
        errors = [FieldError(field="body", message=errors)]
    return invalid_request(errors, headers=NO_RETRY_HEADERS)


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return True  # curl --data-binary without -H, raw HTTP clients: JSON assumed
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


POLL_503: dict[str, Any] = {
    "model": PollSummary,
    "description": "The run could not run: database unreachable, GitLab down or unreachable "
    "(gitlab_unreachable: `detail` names the host and why). The summary "
    "with `error` (a code) and `detail`, the shared error shape; `Retry-After` says when to retry.",
    "headers": {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}},
    "content": {"application/json": {"example": example_unavailable().model_dump(mode="json")}},
}


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
    return _validated(data)


_SHARD_PARAMS = ("shard", "shards")


def parse_poll_query(query: Mapping[str, str]) -> PollRequest | JSONResponse:
    """GET /api/poll?shard=0&shards=4 (cron services that cannot send a body); other query
    parameters are ignored, as before sharding."""
    data: dict[str, int] = {}
    for name in _SHARD_PARAMS:
        value = query.get(name)
        if value is None:
            continue
        if not value.isascii() or not value.isdigit() or len(value) > 6:
            return _invalid([FieldError(field=name, message="must be a non-negative integer")])
        data[name] = int(value)
    return _validated(data)


def _validated(data: dict[str, Any]) -> PollRequest | JSONResponse:
    try:
        return PollRequest.model_validate(data)
    except ValidationError as exc:
        return _invalid(
            [
                FieldError(field=".".join(str(p) for p in e["loc"]) or "body", message=e["msg"])
                for e in exc.errors(include_url=False, include_input=False)
            ]
        )


_SHARD_QUERY_DOCS = [
    {
        "name": name,
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": minimum, **extra},
        "description": text,
        "example": example,
    }
    for name, minimum, extra, text, example in (
        ("shard", 0, {}, "This job's shard, 0..shards-1 (with `shards`)", 0),
        ("shards", 1, {"maximum": MAX_SHARDS}, "How many shards split the users", 4),
    )
]


@router.get(
    "/api/poll",
    summary="Run a full poll (for cron services that can only send GET, e.g. Vercel Cron)",
    description=(
        "The same as POST with an empty body. Vercel Cron sends `Authorization: Bearer "
        "$CRON_SECRET`: set CRON_SECRET to the signing key. A signed request signs the empty "
        "body. A Cloud Scheduler OIDC ID token is accepted too (OIDC_AUDIENCES). "
        "`?shard=0&shards=4` polls one shard of the users, as the POST body does (one cron "
        "line per shard)."
    ),
    response_model=PollSummary,
    responses={**error_responses(401, 413, 422), 503: POLL_503},
    openapi_extra={**SIGNED, "parameters": _SHARD_QUERY_DOCS},
)
async def poll_get(request: Request, settings: SettingsDep, deps: SyncDepsDep) -> JSONResponse:
    raw = await read_bounded_body(request, settings.max_request_body_bytes)
    auth = await authenticate_caller(settings, request, raw)
    if raw.strip():
        return _invalid("GET /api/poll takes no body; POST a body instead")
    parsed = parse_poll_query(request.query_params)
    if isinstance(parsed, JSONResponse):
        return parsed
    return await _run(request, deps, parsed, auth)


@router.post(
    "/api/poll",
    summary="Run a poll now (scheduler or manual refresh)",
    description=(
        "Authenticate with `X-Inngest-Signature: t=<unix>&s=<hex>` (HMAC-SHA256 over the "
        "RFC 8785 canonical body + t, keyed with INNGEST_SIGNING_KEY or its fallback), with "
        "`Authorization: Bearer <Google ID token>` (Cloud Scheduler OIDC; OIDC_AUDIENCES, "
        "OIDC_SERVICE_ACCOUNTS) or with `Authorization: Bearer <signing key>`. Answers 200 "
        "when the run completed, even if some users failed; 503 with Retry-After when it "
        "could not run (also when the OIDC signing keys cannot be fetched). Every 4xx/5xx "
        "body carries `error` (a code) and `detail` (text). "
        '`{"shard": 0, "shards": 4}` polls one of 4 disjoint shards of the users (a stable '
        "hash of the user id): N scheduler jobs split the users across replicas."
    ),
    response_model=PollSummary,
    responses={**error_responses(401, 413, 415, 422), 503: POLL_503},
    openapi_extra={
        **SIGNED,
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": PollRequest.model_json_schema()}},
        },
    },
)
async def poll(request: Request, settings: SettingsDep, deps: SyncDepsDep) -> JSONResponse:
    raw = await read_bounded_body(request, settings.max_request_body_bytes)
    auth = await authenticate_caller(settings, request, raw)  # before anything parses the body
    if any(name in request.query_params for name in _SHARD_PARAMS):
        # The signature covers the body only: a shard must not ride unsigned in the URL.
        return _invalid('POST the shard in the body: {"shard": 0, "shards": 4}')
    if raw.strip() and not _is_json(request.headers.get("content-type")):
        return error_response(
            415,
            "unsupported_media_type",
            "send the body as application/json (or an empty body)",
            headers=NO_RETRY_HEADERS,
        )
    parsed = parse_poll_request(raw)
    if isinstance(parsed, JSONResponse):
        return parsed
    return await _run(request, deps, parsed, auth)


async def _run(
    request: Request, deps: SyncDeps, parsed: PollRequest, auth: RunAuth
) -> JSONResponse:
    outcome = await run_poll(
        deps,
        user_ids=parsed.user_ids,
        trigger=caller_trigger(request.headers, names_users=parsed.user_ids is not None),
        auth=auth,
        shard=parsed.shard_spec,
    )
    headers = {"Retry-After": str(outcome.retry_after)} if outcome.retry_after else None
    return JSONResponse(
        outcome.summary.model_dump(mode="json"), status_code=outcome.status_code, headers=headers
    )
