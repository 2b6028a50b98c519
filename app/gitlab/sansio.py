"""Every decision about a GitLab answer, as pure functions of (status, headers, body).

Modelled on gidgethub's `sansio`: no socket, no event loop, no client object, no clock of its
own (`now`, Unix time, is passed where time matters). `client.py` and `oauth.py` move the bytes
and call these; the tests feed them plain statuses, header dicts and bytes.

`headers` is any `Mapping[str, str]` with lower-case keys or case-insensitive lookup (such as
`httpx.Headers`). Error messages carry the status and the endpoint path only: never a token,
a host or a query string.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, TypeVar
from urllib.parse import parse_qsl, quote, urlsplit

from pydantic import ValidationError

from app.gitlab.errors import (
    AuthReason,
    GitLabAPIError,
    GitLabAuthError,
    GitLabBadResponse,
    GitLabForbidden,
    GitLabInsufficientScope,
    GitLabMalformedResponse,
    GitLabNotFound,
    GitLabOAuthError,
    GitLabRateLimited,
    GitLabUnavailable,
)
from app.retry import rate_limit_wait

__all__ = [
    "DEFAULT_RATE_WINDOW_S",
    "Headers",
    "JsonValidator",
    "Pacing",
    "Query",
    "as_utc",
    "auth_reason",
    "decode_json",
    "error_for_status",
    "format_gitlab_time",
    "insufficient_scope",
    "next_page_query",
    "oauth_error_code",
    "oauth_error_for_status",
    "pacing",
    "parse_link_header",
    "project_ref",
    "rate_limited_wait",
]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
Headers = Mapping[str, str]
# A query as ordered (name, value) pairs: repeated names (labels[]=a&labels[]=b) survive.
Query = list[tuple[str, str]]

# GitLab's rate limits are per minute; used when a low RateLimit-Remaining comes without Reset.
DEFAULT_RATE_WINDOW_S = 60.0
# OAuth error codes are short snake_case words (RFC 6749 5.2); anything else is not echoed.
_OAUTH_ERROR_CODE = re.compile(r"[a-z0-9_.-]{1,64}")
# One `<url>; params` element of a Link header (RFC 8288); commas inside <> are part of the URL.
_LINK = re.compile(r"<([^>]*)>([^<]*)")
_REL = re.compile(r""";\s*rel\s*=\s*(?:"([^"]*)"|([^\s;,"]+))""", re.IGNORECASE)


# --- request side -----------------------------------------------------------------------


def project_ref(project_id: int | str) -> str:
    """Path segment for a project: numeric ids as-is, paths URL-encoded (group%2Fproject)."""
    if isinstance(project_id, int) or (project_id.isascii() and project_id.isdigit()):
        return str(project_id).strip()  # the common case, once per request: no quoting
    return quote(project_id.strip(), safe="")


def as_utc(value: datetime) -> datetime:
    """Aware UTC datetime; a naive one is taken as UTC, never as the host's local time."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def format_gitlab_time(value: datetime) -> str:
    """ISO 8601 in UTC with a Z (GitLab's `updated_after` form); naive datetimes are UTC."""
    value = as_utc(value)
    spec = "microseconds" if value.microsecond else "seconds"
    return value.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


# --- pagination -------------------------------------------------------------------------


def parse_link_header(value: str) -> dict[str, str]:
    """`Link` header -> {rel: url}; the first URL of a rel wins, a rel may name several."""
    links: dict[str, str] = {}
    for url, params in _LINK.findall(value):
        rel = _REL.search(params)
        if rel is None:
            continue
        for name in (rel.group(1) or rel.group(2) or "").lower().split():
            links.setdefault(name, url.strip())
    return links


def next_page_query(headers: Headers, current: Sequence[tuple[str, str]]) -> Query | None:
    """Query of the next page: `Link: rel="next"` first, `x-next-page` second, else None.

    Only the *query* of the next link is returned, to be sent to our own base URL and path:
    behind a reverse proxy GitLab's external URL can name another host, and the token must
    only ever go to the configured one.
    """
    raw = headers.get("link") or ""
    # Most pages are the last of their listing: no rel "next" to look for, no regex to run.
    link = parse_link_header(raw).get("next") if "next" in raw.lower() else None
    if link:
        return parse_qsl(urlsplit(link).query, keep_blank_values=True)
    next_page = (headers.get("x-next-page") or "").strip()
    if not next_page:
        return None
    query = [(k, v) for k, v in current if k != "page"]
    pages = [i for i, (k, _) in enumerate(current) if k == "page"]
    # Keep `page` where it was (as httpx's QueryParams.set does), else append it.
    query.insert(pages[0] if pages else len(query), ("page", next_page))
    return query


# --- bodies -----------------------------------------------------------------------------


class JsonValidator(Protocol[T_co]):
    """What validates a body: a pydantic TypeAdapter, or schemas.Decoder (msgspec first,
    pydantic for what msgspec refuses); either raises pydantic's ValidationError."""

    def validate_json(self, body: bytes, /) -> T_co: ...


def decode_json(adapter: JsonValidator[T], body: bytes, *, status: int, endpoint: str) -> T:
    """Validate the raw body in one pass.

    Invalid or truncated JSON raises GitLabMalformedResponse (worth another try: usually a
    proxy cut the body); valid JSON of the wrong shape raises GitLabBadResponse (final).
    """
    try:
        return adapter.validate_json(body)
    except ValidationError as exc:
        errors = exc.errors()
        # Given bytes, pydantic reports bad JSON as json_invalid (json_type is for non-text).
        if any(e["type"] == "json_invalid" for e in errors):
            raise GitLabMalformedResponse(
                f"malformed JSON from GitLab on {endpoint}", status=status, endpoint=endpoint
            ) from None
        # A ValidationError has at least one error; an empty loc is the body itself.
        where = ".".join(str(p) for p in errors[0]["loc"]) or "the top level"
        raise GitLabBadResponse(
            f"unexpected payload from GitLab on {endpoint}: {exc.error_count()} invalid "
            f"field(s), first at {where}",
            status=status,
            endpoint=endpoint,
        ) from None


def auth_reason(headers: Headers, body: bytes) -> AuthReason:
    """Why a 401: an expired token (refreshable), a revoked one, or an unknown one."""
    text = f"{headers.get('www-authenticate') or ''} {body.decode(errors='replace')}".lower()
    if "token is expired" in text:
        return "expired"
    if "revoked" in text:
        return "revoked"
    return "invalid"


def insufficient_scope(headers: Headers, body: bytes) -> bool:
    """Whether a 403 says the token lacks a scope (`insufficient_scope` in the body's `error`
    or in WWW-Authenticate) rather than that this resource is out of the user's reach."""
    if "insufficient_scope" in (headers.get("www-authenticate") or "").lower():
        return True
    return oauth_error_code(body) == "insufficient_scope"


def oauth_error_code(body: bytes) -> str | None:
    """The `error` of an OAuth error body, if it is a plain code safe to echo; else None."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError included
        return None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, str) and _OAUTH_ERROR_CODE.fullmatch(error):
        return error
    return None


# --- rate limits ------------------------------------------------------------------------


def rate_limited_wait(headers: Headers, *, now: float, max_wait: float, fallback: float) -> float:
    """Seconds to wait after a 429: what GitLab asks (app.retry.rate_limit_wait), else
    `fallback` (the backoff schedule's), capped at `max_wait`."""
    wait = rate_limit_wait(headers, now)
    if wait is None or math.isnan(wait):
        wait = fallback
    return min(wait, max_wait)


def _int_header(headers: Headers, name: str) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return int(float(raw))  # float() takes surrounding blanks; int() truncates "5.9"
    except (ValueError, OverflowError):  # "", "abc", "nan", "inf"
        return None


@dataclass(frozen=True, slots=True)
class Pacing:
    """What a RateLimit-Remaining header asks of the following requests.

    `low`: the quota (`remaining` requests) is at or below the threshold, so requests start
    `interval` seconds apart; otherwise the quota is fine and any pacing can stop.
    """

    low: bool
    remaining: int
    interval: float = 0.0


def pacing(
    status: int, headers: Headers, *, now: float, low_remaining: int, max_wait: float
) -> Pacing | None:
    """Spacing that spreads the quota left over the time until it resets (None: no news).

    A 429 says nothing about pacing (its wait is a pause of its own). Without RateLimit-Reset
    the window is GitLab's minute; Reset may be a Unix time (GitLab) or seconds (IETF draft).
    """
    remaining = _int_header(headers, "ratelimit-remaining")
    if remaining is None or status == 429:
        return None
    if remaining > low_remaining:
        return Pacing(low=False, remaining=remaining)
    reset = rate_limit_wait({"ratelimit-reset": headers.get("ratelimit-reset") or ""}, now)
    window = DEFAULT_RATE_WINDOW_S if reset is None or math.isnan(reset) else reset
    return Pacing(low=True, remaining=remaining, interval=min(window / max(remaining, 1), max_wait))


# --- errors -----------------------------------------------------------------------------


def error_for_status(
    status: int,
    headers: Headers,
    body: bytes,
    endpoint: str,
    *,
    now: float,
    max_wait: float,
    fallback_wait: float,
) -> GitLabAPIError | None:
    """The typed error an API answer stands for, or None for a success (2xx only).

    A 3xx is an error too: redirects are not followed (the token must not travel), so one
    means a wrong instance URL or a login page, never data. `fallback_wait` is a 429's wait
    when it carries no usable header.
    """
    if 200 <= status < 300:
        return None
    if status == 401:
        reason = auth_reason(headers, body)
        return GitLabAuthError(
            f"GitLab 401 ({reason} token) on {endpoint}", reason=reason, endpoint=endpoint
        )
    if status == 403 and insufficient_scope(headers, body):
        return GitLabInsufficientScope(
            f"GitLab 403 insufficient_scope (the token lacks a scope) on {endpoint}",
            endpoint=endpoint,
        )
    if status == 403:
        return GitLabForbidden(f"GitLab 403 forbidden on {endpoint}", status=403, endpoint=endpoint)
    if status == 404:
        return GitLabNotFound(f"GitLab 404 not found on {endpoint}", status=404, endpoint=endpoint)
    if status == 429:
        return _rate_limited(headers, endpoint, now, max_wait, fallback_wait)
    if status >= 500:
        return GitLabUnavailable(f"GitLab {status} on {endpoint}", status=status, endpoint=endpoint)
    return GitLabAPIError(f"GitLab {status} on {endpoint}", status=status, endpoint=endpoint)


def _rate_limited(
    headers: Headers, endpoint: str, now: float, max_wait: float, fallback_wait: float
) -> GitLabRateLimited:
    wait = rate_limited_wait(headers, now=now, max_wait=max_wait, fallback=fallback_wait)
    return GitLabRateLimited(
        f"GitLab 429 rate limited on {endpoint} (retry after {wait:.1f} s)",
        retry_after=wait,
        endpoint=endpoint,
    )


def oauth_error_for_status(
    status: int,
    headers: Headers,
    body: bytes,
    *,
    now: float,
    max_wait: float,
    fallback_wait: float,
) -> GitLabAPIError | None:
    """The error a /oauth/token answer stands for, or None for a success (2xx only).

    5xx and 429 are transient; any other answer is a final refusal (GitLabOAuthError with
    the OAuth error code when it is safe to echo): retrying an invalid_grant cannot help, and
    a redirect means a wrong instance URL.
    """
    endpoint = "/oauth/token"
    if 200 <= status < 300:
        return None
    if status >= 500:
        return GitLabUnavailable(f"GitLab {status} on {endpoint}", status=status, endpoint=endpoint)
    if status == 429:
        return _rate_limited(headers, endpoint, now, max_wait, fallback_wait)
    error = oauth_error_code(body)
    return GitLabOAuthError(
        f"GitLab refused the token refresh: {status} {error or 'unknown error'}",
        error=error,
        status=status,
    )
