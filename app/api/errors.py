"""One error body for every 4xx/5xx the service answers, and the handlers that produce it.

The shape is `{"error": "<code>", "detail": "<human text>"}`, plus `check` (which
authentication check failed, 401) or `errors` (each invalid field, 422) when they apply.
`ErrorBody` is the OpenAPI model; `error_responses(...)` documents it on a route.

A database that cannot be reached answers 503 with `Retry-After` from every endpoint, never
a 500 with a traceback. The /api/inngest routes served by the Inngest SDK keep the SDK's
own answers (a protocol between Inngest and the SDK), except those of our signature gate.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from loguru import logger
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.db.engine import DATABASE_UNAVAILABLE_ERRORS

# Seconds a client should wait before retrying when the database is down.
DATABASE_RETRY_AFTER_SECONDS = 30

# The code of an error raised without one (Starlette's own 404 and 405, a bare HTTPException).
DEFAULT_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


class FieldError(BaseModel):
    field: str = Field(description="Dotted path of the offending field, or `body`")
    message: str


class ErrorBody(BaseModel):
    """The body of every 4xx/5xx answer."""

    error: str = Field(
        description="Machine-readable code: unauthorized, forbidden, not_found, "
        "method_not_allowed, body_too_large, unsupported_media_type, invalid_request, "
        "too_many_requests, internal_error, database_unavailable, ...",
        examples=["unauthorized"],
    )
    detail: str = Field(description="What went wrong, for a human", examples=["signature expired"])
    check: str | None = Field(
        None, description="401 only: which authentication check failed", examples=["bad_token"]
    )
    errors: list[FieldError] | None = Field(None, description="422 only: each invalid field")


EXAMPLES: dict[int, dict[str, Any]] = {
    401: {
        "error": "unauthorized",
        "check": "missing_credentials",
        "detail": "no X-Inngest-Signature or Authorization header",
    },
    403: {"error": "forbidden", "detail": "Forbidden"},
    404: {"error": "not_found", "detail": "Not Found"},
    405: {"error": "method_not_allowed", "detail": "Method Not Allowed"},
    413: {"error": "body_too_large", "detail": "request body exceeds 65536 bytes"},
    415: {
        "error": "unsupported_media_type",
        "detail": "send the body as application/json",
    },
    422: {
        "error": "invalid_request",
        "detail": "user_ids: Input should be a valid list",
        "errors": [{"field": "user_ids", "message": "Input should be a valid list"}],
    },
    500: {"error": "internal_error", "detail": "internal server error"},
    503: {
        "error": "database_unavailable",
        "detail": "the database is unreachable; retry after the Retry-After delay",
    },
}

DESCRIPTIONS: dict[int, str] = {
    400: "Malformed request",
    401: "Missing or bad credentials",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    413: "Body too large",
    415: "Body is not JSON",
    422: "Invalid request parameters or body",
    429: "Too many requests",
    500: "Internal error",
    503: "Database unreachable (with Retry-After)",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for these statuses: the shared model with an example."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": ErrorBody, "description": DESCRIPTIONS[status]}
        if status in EXAMPLES:
            entry["content"] = {"application/json": {"example": EXAMPLES[status]}}
        if status == 503:
            entry["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before retrying",
                    "schema": {"type": "integer"},
                }
            }
        out[status] = entry
    return out


def error_response(
    status: int,
    code: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = ErrorBody(error=code, detail=detail, **extra).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)


def database_unavailable() -> JSONResponse:
    return error_response(
        503,
        "database_unavailable",
        "the database is unreachable; retry after the Retry-After delay",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status in (204, 304):
        return Response(status_code=status, headers=exc.headers)
    code = DEFAULT_CODES.get(status) or _phrase(status).lower().replace(" ", "_")
    extra: dict[str, Any] = {}
    if isinstance(exc.detail, dict):
        code = str(exc.detail.get("error") or code)
        text = str(exc.detail.get("detail") or _phrase(status))
        if exc.detail.get("check"):
            extra["check"] = str(exc.detail["check"])
    else:
        text = str(exc.detail) if exc.detail else _phrase(status)
    return error_response(status, code, text, headers=exc.headers, **extra)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        FieldError(
            # ("query", "user_id") -> "user_id": where it came from is in the OpenAPI schema.
            field=".".join(str(p) for p in e.get("loc", ())[1:]) or "body",
            message=str(e.get("msg", "invalid value")),
        )
        for e in exc.errors()
    ]
    return invalid_request(errors)


def invalid_request(
    errors: list[FieldError], headers: dict[str, str] | None = None
) -> JSONResponse:
    text = "; ".join(f"{e.field}: {e.message}" for e in errors) or "invalid request"
    return error_response(
        422,
        "invalid_request",
        text,
        headers=headers,
        errors=[e.model_dump() for e in errors],
    )


async def _database_error(request: Request, exc: Exception) -> Response:
    # The class only: driver messages can quote SQL parameters.
    logger.warning(
        "{} {}: database unavailable ({})", request.method, request.url.path, type(exc).__name__
    )
    return database_unavailable()


async def _internal_error(request: Request, exc: Exception) -> Response:
    # Starlette logs the traceback after this answer; the client never sees it.
    return error_response(500, "internal_error", "internal server error")


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for exc_type in DATABASE_UNAVAILABLE_ERRORS:
        app.add_exception_handler(exc_type, _database_error)
    app.add_exception_handler(Exception, _internal_error)
