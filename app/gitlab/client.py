"""Async client for the GitLab REST API v4: complete pagination, typed errors, polite retries.

Behaviours the sync relies on:

- Listings follow GitLab's `Link: rel="next"` (else `x-next-page`) until there is none. A
  short page never ends a listing and `x-total`/`x-total-pages` are never read (GitLab omits
  them above 10,000 results).
- Issues and merge requests are listed `order_by=updated_at&sort=desc`. With offset
  pagination, an item updated while we page moves to the *front* of a descending listing, so
  the items behind it shift towards pages we have not read yet (seen twice, deduplicated by
  id) instead of towards pages already read (lost, which is what happens with `sort=asc`).
  The updated item itself carries a newer `updated_at` than the fetch start, so the next
  incremental run picks it up. The caller must not assume any order within or across pages.
- When offset pagination hits GitLab's cap (405) on issues, the listing continues with keyset
  pagination restricted to `updated_before` = the oldest item seen (+1 s for the timestamp
  precision GitLab rounds away); ids already yielded are skipped, so nothing is lost or
  duplicated.
- Malformed bodies: invalid or truncated JSON (usually a proxy cutting the response) is
  retried like a 5xx within the same attempt budget; if it persists, GitLabBadResponse. Valid
  JSON of the wrong shape raises GitLabBadResponse at once (a retry would get the same).
- Budgets: 5xx, timeouts, connection errors and malformed JSON share `gitlab_max_attempts`
  attempts with exponential backoff and full jitter. 429s have their own budget of
  `gitlab_max_attempts` attempts (each 429 wait starts a fresh transient budget, so one call
  makes at most gitlab_max_attempts**2 requests); 429 waits honour Retry-After (seconds or
  HTTP date), else RateLimit-Reset, capped at `gitlab_rate_limit_max_wait`, and pause every
  request of this client, not only the one that was refused.
- Every wait goes through the `sleep` given to the client (asyncio.sleep by default); a zero
  wait never calls it.
- Errors and logs carry the HTTP status and the endpoint path only: never the token, the
  host or the query string.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Literal, TypeVar
from urllib.parse import quote, urlsplit

import backoff
import httpx
from loguru import logger
from pydantic import TypeAdapter, ValidationError

from app.gitlab.errors import (
    AuthReason,
    GitLabAPIError,
    GitLabAuthError,
    GitLabBadResponse,
    GitLabForbidden,
    GitLabNotFound,
    GitLabRateLimited,
    GitLabUnavailable,
)
from app.gitlab.schemas import (
    GitLabCurrentUser,
    GitLabIssue,
    GitLabMergeRequest,
    GitLabNote,
    GitLabProject,
)
from app.gitlab.transport import LANE_EXTENSION
from app.settings import Settings

__all__ = [
    "Clock",
    "GitLabClient",
    "RequestInfo",
    "RetryPolicy",
    "SleepFn",
    "format_gitlab_time",
    "parse_json",
    "project_ref",
    "raise_for_status",
    "rate_limit_wait",
]

T = TypeVar("T")
ItemT = TypeVar("ItemT", GitLabIssue, GitLabMergeRequest)

SleepFn = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]

_ISSUES = TypeAdapter(list[GitLabIssue])
_MERGE_REQUESTS = TypeAdapter(list[GitLabMergeRequest])
_NOTES = TypeAdapter(list[GitLabNote])
_PROJECT = TypeAdapter(GitLabProject)
_CURRENT_USER = TypeAdapter(GitLabCurrentUser)

# GitLab's rate limits are per minute; used when a low RateLimit-Remaining comes without Reset.
_DEFAULT_RATE_WINDOW_S = 60.0
# GitLab renders timestamps to the millisecond but stores microseconds: widen keyset bounds.
_TIMESTAMP_SLACK = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """One HTTP attempt, for metrics. `endpoint` is a template such as /projects/:id/issues."""

    method: str
    endpoint: str
    status: int | None
    duration_s: float
    attempt: int


class _MalformedBody(GitLabBadResponse):
    """Invalid or truncated JSON: usually a proxy cutting the body, so worth another try."""


# --- helpers --------------------------------------------------------------------------


def project_ref(project_id: int | str) -> str:
    """Path segment for a project: numeric ids as-is, paths URL-encoded (group%2Fproject)."""
    if isinstance(project_id, int):
        return str(project_id)
    text = str(project_id).strip()
    return text if text.isdigit() else quote(text, safe="")


def format_gitlab_time(value: datetime) -> str:
    """ISO 8601 in UTC with a Z; naive datetimes are taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    spec = "microseconds" if value.microsecond else "seconds"
    return value.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _http_date_to_unix(value: str) -> float | None:
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    return _as_utc(parsed).timestamp()


def rate_limit_wait(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds GitLab asks us to wait: Retry-After (seconds or HTTP date), else
    RateLimit-Reset (Unix time), else RateLimit-ResetTime (HTTP date). None if none is usable."""
    retry_after = (headers.get("retry-after") or "").strip()
    if retry_after:
        try:
            return max(float(retry_after), 0.0)
        except ValueError:
            at = _http_date_to_unix(retry_after)
            if at is not None:
                return max(at - now, 0.0)
    reset = (headers.get("ratelimit-reset") or "").strip()
    if reset:
        try:
            value = float(reset)
        except ValueError:
            value = None
        if value is not None:
            # GitLab sends a Unix time; small values are a delta (IETF draft form).
            return max(value - now, 0.0) if value > 1e9 else max(value, 0.0)
    reset_time = (headers.get("ratelimit-resettime") or "").strip()
    if reset_time:
        at = _http_date_to_unix(reset_time)
        if at is not None:
            return max(at - now, 0.0)
    return None


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    raw = (headers.get(name) or "").strip()
    try:
        return int(float(raw)) if raw else None
    except ValueError:
        return None


def _auth_reason(response: httpx.Response) -> AuthReason:
    text = response.headers.get("www-authenticate", "")
    with suppress(UnicodeDecodeError, LookupError):
        text += " " + response.text
    text = text.lower()
    if "token is expired" in text:
        return "expired"
    if "revoked" in text:
        return "revoked"
    return "invalid"


def _next_params(response: httpx.Response, current: httpx.QueryParams) -> httpx.QueryParams | None:
    """Query of the next page: Link rel=next first, x-next-page as a fallback, else None.

    Only the query of the Link URL is used, applied to our own base URL and path: behind a
    reverse proxy GitLab's external URL can name another host, and the token must only ever go
    to the configured one.
    """
    link = response.links.get("next", {}).get("url")
    if link:
        return httpx.QueryParams(urlsplit(link).query)
    next_page = (response.headers.get("x-next-page") or "").strip()
    if next_page:
        return current.set("page", next_page)
    return None


def raise_for_status(
    response: httpx.Response, endpoint: str, *, now: float, max_wait: float, fallback_wait: float
) -> None:
    """Map an HTTP error status to its typed error (message: status and endpoint path only)."""
    status = response.status_code
    if status < 400:
        return
    if status == 401:
        reason = _auth_reason(response)
        raise GitLabAuthError(
            f"GitLab 401 ({reason} token) on {endpoint}", reason=reason, endpoint=endpoint
        )
    if status == 403:
        raise GitLabForbidden(f"GitLab 403 forbidden on {endpoint}", status=403, endpoint=endpoint)
    if status == 404:
        raise GitLabNotFound(f"GitLab 404 not found on {endpoint}", status=404, endpoint=endpoint)
    if status == 429:
        wait = rate_limit_wait(response.headers, now)
        wait = min(fallback_wait if wait is None else wait, max_wait)
        raise GitLabRateLimited(
            f"GitLab 429 rate limited on {endpoint} (retry after {wait:.1f} s)",
            retry_after=wait,
            endpoint=endpoint,
        )
    if status >= 500:
        raise GitLabUnavailable(f"GitLab {status} on {endpoint}", status=status, endpoint=endpoint)
    raise GitLabAPIError(f"GitLab {status} on {endpoint}", status=status, endpoint=endpoint)


def parse_json(adapter: TypeAdapter[T], response: httpx.Response, endpoint: str) -> T:
    """Validate the raw body in one pass; malformed JSON is retryable, a wrong shape is not."""
    try:
        return adapter.validate_json(response.content)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        if any(e["type"] in ("json_invalid", "json_type") for e in errors):
            raise _MalformedBody(
                f"malformed JSON from GitLab on {endpoint}",
                status=response.status_code,
                endpoint=endpoint,
            ) from None
        where = ".".join(str(p) for p in errors[0]["loc"]) if errors else "?"
        raise GitLabBadResponse(
            f"unexpected payload from GitLab on {endpoint}: {exc.error_count()} invalid "
            f"field(s), first at {where}",
            status=response.status_code,
            endpoint=endpoint,
        ) from None


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark an abandoned read-ahead's outcome as seen (no 'never retrieved' warning)."""
    if not future.cancelled():
        future.exception()


# --- retries --------------------------------------------------------------------------


def _zero_wait() -> Any:
    """backoff wait generator that never sleeps itself: backoff's own sleep is asyncio.sleep,
    which tests cannot replace, so the real wait happens in our on_backoff handlers."""
    yield
    while True:
        yield 0.0


class RetryPolicy:
    """The retry rules, shared by the API client and the OAuth refresh."""

    def __init__(self, settings: Settings, sleep: SleepFn, clock: Clock) -> None:
        self.settings = settings
        self.sleep = sleep
        self.clock = clock

    def backoff_delay(self, retry_number: int) -> float:
        """Full-jitter exponential delay before retry `retry_number` (1-based); 0 base -> 0."""
        waits = backoff.expo(
            factor=self.settings.gitlab_backoff_base, max_value=self.settings.gitlab_backoff_max
        )
        next(waits)  # backoff generators are primed with one empty step
        delay = 0.0
        for _ in range(max(retry_number, 1)):
            delay = next(waits)
        return backoff.full_jitter(delay) if delay > 0 else 0.0

    def wrap(
        self,
        target: Callable[..., Awaitable[T]],
        *,
        hold: Callable[[float], None] | None = None,
    ) -> Callable[..., Awaitable[T]]:
        """Retry `target`: transient errors (5xx, transport, malformed JSON) inside, 429 outside.

        `hold(seconds)` lets the caller turn a 429 wait into a pause of all its requests;
        without it the retrying call sleeps itself.
        """
        attempts = self.settings.gitlab_max_attempts

        async def on_transient(details: dict[str, Any]) -> None:
            exc: GitLabAPIError = details["exception"]
            delay = self.backoff_delay(details["tries"])
            logger.warning(
                "{}: retry {}/{} in {:.2f} s",
                exc,  # our messages: status and endpoint path only
                details["tries"],
                attempts - 1,
                delay,
            )
            if delay > 0:
                await self.sleep(delay)

        async def on_rate_limited(details: dict[str, Any]) -> None:
            exc: GitLabRateLimited = details["exception"]
            logger.warning(
                "GitLab 429 on {}: retry {}/{} in {:.2f} s",
                exc.endpoint,
                details["tries"],
                attempts - 1,
                exc.retry_after,
            )
            if hold is not None:
                hold(exc.retry_after)
            elif exc.retry_after > 0:
                await self.sleep(exc.retry_after)

        transient = backoff.on_exception(
            _zero_wait,
            (GitLabUnavailable, _MalformedBody),
            max_tries=attempts,
            jitter=None,
            on_backoff=on_transient,
            logger=None,
        )(target)
        return backoff.on_exception(
            _zero_wait,
            GitLabRateLimited,
            max_tries=attempts,
            jitter=None,
            on_backoff=on_rate_limited,
            logger=None,
        )(transient)


# --- the client -----------------------------------------------------------------------


@dataclass(slots=True)
class _Call:
    """One logical request across its attempts."""

    method: str
    url: httpx.URL  # with its query: built once, not merged by httpx on every attempt
    endpoint: str  # real path without query, for errors and logs: /projects/42/issues
    template: str  # low-cardinality name for metrics: /projects/:id/issues
    params: httpx.QueryParams
    parse: Callable[[httpx.Response], Any]
    attempt: int = 0


class GitLabClient:
    """GitLab API for one user (one token) over the app's shared httpx.AsyncClient."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        settings: Settings,
        token: str,
        *,
        on_request: Callable[[RequestInfo], None] | None = None,
        sleep: SleepFn | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._http = http
        self._settings = settings
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self._on_request = on_request
        self._sleep: SleepFn = sleep or asyncio.sleep
        self._clock: Clock = clock or time.time
        self._base = settings.gitlab_api_url.rstrip("/")
        self._timeout = httpx.Timeout(
            settings.gitlab_read_timeout, connect=settings.gitlab_connect_timeout
        )
        self._in_flight = asyncio.Semaphore(settings.gitlab_user_concurrency)
        # One lane per in-flight slot; a request takes a free one while it holds the slot.
        self._free_lanes = list(range(settings.gitlab_user_concurrency))
        self._timeout_ext = self._timeout.as_dict()
        # Pacing shared by all requests of this user: next allowed start, spacing between starts.
        self._next_slot = 0.0
        self._pace_interval = 0.0
        self._retry = RetryPolicy(settings, self._sleep, self._clock)
        self._send = self._retry.wrap(self._attempt, hold=self._hold)

    def __repr__(self) -> str:  # never show the token
        return f"GitLabClient(base={self._base!r})"

    # --- public API -------------------------------------------------------------------

    async def project(self, id_or_path: int | str) -> GitLabProject:
        path = f"/projects/{project_ref(id_or_path)}"
        return await self._get(path, "/projects/:id", _PROJECT)

    async def current_user(self) -> GitLabCurrentUser:
        return await self._get("/user", "/user", _CURRENT_USER)

    def issues(
        self,
        project_id: int | str,
        updated_after: datetime | None,
        *,
        on_page: Callable[[], None] | None = None,
    ) -> AsyncIterator[list[GitLabIssue]]:
        """Pages of the project's issues updated on or after `updated_after` (all if None).

        Nothing is requested until the first page is awaited; each item comes once.
        `on_page` is called for every HTTP page received (yielded or not).
        """
        return self._items(
            project_id, "issues", _ISSUES, updated_after, {}, keyset_fallback=True, on_page=on_page
        )

    def merge_requests(
        self,
        project_id: int | str,
        updated_after: datetime | None,
        *,
        on_page: Callable[[], None] | None = None,
    ) -> AsyncIterator[list[GitLabMergeRequest]]:
        """Pages of the project's MRs (every state) updated on or after `updated_after`."""
        return self._items(
            project_id,
            "merge_requests",
            _MERGE_REQUESTS,
            updated_after,
            {"state": "all"},
            keyset_fallback=False,  # GitLab offers no keyset pagination for MRs
            on_page=on_page,
        )

    async def notes(
        self,
        project_id: int | str,
        noteable_type: Literal["Issue", "MergeRequest"],
        iid: int,
        since: datetime | None,
        *,
        noteable_web_url: str,
    ) -> AsyncIterator[list[GitLabNote]]:
        """Notes of one issue/MR updated at or after `since`, newest first.

        GitLab has no time filter on notes, so we read `sort=desc&order_by=updated_at` and
        stop after the first page that reaches a note older than `since`.
        """
        if noteable_type == "Issue":
            kind = "issues"
        elif noteable_type == "MergeRequest":
            kind = "merge_requests"
        else:
            raise ValueError(f"unknown noteable_type {noteable_type!r}")
        path = f"/projects/{project_ref(project_id)}/{kind}/{int(iid)}/notes"
        template = f"/projects/:id/{kind}/:iid/notes"
        params = httpx.QueryParams(
            {"sort": "desc", "order_by": "updated_at", "per_page": self._settings.gitlab_per_page}
        )
        since_utc = _as_utc(since) if since is not None else None
        numeric_project = project_id if isinstance(project_id, int) else None
        base_url = noteable_web_url.split("#", 1)[0]
        include_system = self._settings.include_system_notes
        seen: set[int] = set()
        reached_older = False

        async with aclosing(self._pages(path, template, params, _NOTES)) as pages:
            async for page in pages:
                fresh: list[GitLabNote] = []
                for note in page:
                    if since_utc is not None and note.updated_at < since_utc:
                        reached_older = True
                        continue
                    # Offset pages shift when notes are added meanwhile: never yield one twice.
                    if note.id in seen or (note.system and not include_system):
                        continue
                    seen.add(note.id)
                    if note.project_id is None:
                        note.project_id = numeric_project
                    if note.noteable_type is None:
                        note.noteable_type = noteable_type
                    if note.noteable_iid is None:
                        note.noteable_iid = int(iid)
                    note.web_url = f"{base_url}#note_{note.id}"
                    fresh.append(note)
                if fresh:
                    yield fresh
                if reached_older:
                    return

    # --- listings ---------------------------------------------------------------------

    async def _items(
        self,
        project_id: int | str,
        kind: str,
        adapter: TypeAdapter[list[ItemT]],
        updated_after: datetime | None,
        extra: dict[str, str],
        *,
        keyset_fallback: bool,
        on_page: Callable[[], None] | None = None,
    ) -> AsyncIterator[list[ItemT]]:
        path = f"/projects/{project_ref(project_id)}/{kind}"
        template = f"/projects/:id/{kind}"
        filters: dict[str, str | int] = {
            "scope": "all",
            **extra,
            "order_by": "updated_at",
            "sort": "desc",
            "per_page": self._settings.gitlab_per_page,
        }
        if updated_after is not None:
            filters["updated_after"] = format_gitlab_time(updated_after)

        seen: set[int] = set()
        oldest: datetime | None = None
        first = self._pages(
            path, template, httpx.QueryParams(filters), adapter, on_page, read_ahead=True
        )
        async with aclosing(first) as it:
            while True:
                # The 405 check wraps the fetch only, never the caller's work on a page.
                try:
                    page = await anext(it)
                except StopAsyncIteration:
                    return
                except GitLabAPIError as exc:
                    if exc.status == 405 and keyset_fallback:
                        break  # GitLab's offset cap: carry on with keyset below
                    raise
                fresh = [item for item in page if item.id not in seen]
                seen.update(item.id for item in fresh)
                for item in page:
                    if oldest is None or item.updated_at < oldest:
                        oldest = item.updated_at
                if fresh:
                    yield fresh

        logger.info(
            "GitLab offset pagination capped on {} after {} items: switching to keyset",
            path,
            len(seen),
        )
        keyset = {**filters, "pagination": "keyset"}
        if oldest is not None:
            # Everything newer than `oldest` was read (descending order); resume below it.
            keyset["updated_before"] = format_gitlab_time(oldest + _TIMESTAMP_SLACK)
        rest = self._pages(
            path, template, httpx.QueryParams(keyset), adapter, on_page, read_ahead=True
        )
        async with aclosing(rest) as it:
            async for page in it:
                # Keyset never repeats an item: only the overlap with offset pages is filtered.
                fresh = [item for item in page if item.id not in seen]
                if fresh:
                    yield fresh

    async def _pages(
        self,
        path: str,
        template: str,
        params: httpx.QueryParams,
        adapter: TypeAdapter[list[T]],
        on_page: Callable[[], None] | None = None,
        *,
        read_ahead: bool = False,
    ) -> AsyncIterator[list[T]]:
        """Every page, following rel=next until there is none (no page cap, no totals).

        `read_ahead`: request the next page as soon as this one arrived, before the caller
        works on it (each page needs the previous one's Link, so this chain is the critical
        path of a long listing). At most one page is held ahead; a caller that stops early
        would waste that request, so listings read to the end use it and notes do not.
        """
        base = self._base + path

        def fetch(query: httpx.QueryParams) -> Awaitable[tuple[list[T], httpx.Response]]:
            return self._send(
                _Call(
                    "GET",
                    httpx.URL(base, params=query),
                    path,
                    template,
                    query,
                    lambda r: parse_json(adapter, r, path),
                )
            )

        if not read_ahead:
            while True:
                page, response = await fetch(params)
                if on_page is not None:
                    on_page()
                yield page
                nxt = _next_params(response, params)
                if nxt is None:
                    return
                params = nxt

        ahead: asyncio.Future[tuple[list[T], httpx.Response]] | None = None
        try:
            ahead = asyncio.ensure_future(fetch(params))
            while ahead is not None:
                page, response = await ahead
                ahead = None
                if on_page is not None:
                    on_page()
                nxt = _next_params(response, params)
                if nxt is not None:
                    params = nxt
                    ahead = asyncio.ensure_future(fetch(nxt))
                yield page
        finally:
            if ahead is not None:
                # Not awaited: awaiting here could swallow a cancellation of the caller.
                ahead.cancel()
                ahead.add_done_callback(_retrieve)

    async def _get(self, path: str, template: str, adapter: TypeAdapter[T]) -> T:
        call = _Call(
            "GET",
            httpx.URL(self._base + path),
            path,
            template,
            httpx.QueryParams(),
            lambda r: parse_json(adapter, r, path),
        )
        value, _ = await self._send(call)
        return value

    # --- one attempt ------------------------------------------------------------------

    async def _attempt(self, call: _Call) -> tuple[Any, httpx.Response]:
        await self._wait_for_slot()
        call.attempt += 1
        status: int | None = None
        started = time.perf_counter()
        try:
            # The semaphore covers the HTTP exchange only, never a retry wait or the caller.
            async with self._in_flight:
                lane = self._free_lanes.pop()
                try:
                    started = time.perf_counter()
                    response = await self._http.request(
                        call.method,
                        call.url,
                        headers=self._headers,
                        extensions={"timeout": self._timeout_ext, LANE_EXTENSION: lane},
                    )
                finally:
                    self._free_lanes.append(lane)
            status = response.status_code
        except (httpx.TransportError, httpx.DecodingError) as exc:
            # `from None`: httpx's message and context carry the full URL with its query.
            raise GitLabUnavailable(
                f"GitLab unreachable on {call.endpoint} ({type(exc).__name__})",
                status=None,
                endpoint=call.endpoint,
            ) from None
        finally:
            self._report(call, status, time.perf_counter() - started)

        self._observe_rate_limit(response, call.endpoint)
        raise_for_status(
            response,
            call.endpoint,
            now=self._clock(),
            max_wait=self._settings.gitlab_rate_limit_max_wait,
            # Only a 429 without any usable header needs our own guess.
            fallback_wait=(
                self._retry.backoff_delay(call.attempt) if response.status_code == 429 else 0.0
            ),
        )
        return call.parse(response), response

    def _report(self, call: _Call, status: int | None, duration_s: float) -> None:
        logger.debug(
            "GitLab {} {} -> {} in {:.0f} ms (attempt {})",
            call.method,
            call.endpoint,
            status if status is not None else "transport error",
            duration_s * 1000,
            call.attempt,
        )
        if self._on_request is None:
            return
        try:
            self._on_request(
                RequestInfo(call.method, call.template, status, duration_s, call.attempt)
            )
        except Exception as exc:  # a metrics hook must never break a sync
            logger.warning("on_request hook failed: {}", type(exc).__name__)

    # --- pacing -----------------------------------------------------------------------

    async def _wait_for_slot(self) -> None:
        now = self._clock()
        start = max(now, self._next_slot)
        if self._pace_interval > 0:
            self._next_slot = start + self._pace_interval
        wait = start - now
        if wait > 0:
            await self._sleep(wait)

    def _hold(self, seconds: float) -> None:
        """Pause every request of this client for `seconds` (after a 429)."""
        if seconds > 0:
            self._next_slot = max(self._next_slot, self._clock() + seconds)

    def _observe_rate_limit(self, response: httpx.Response, endpoint: str) -> None:
        """Space requests out when the quota runs low, so GitLab need not answer 429."""
        remaining = _int_header(response.headers, "ratelimit-remaining")
        if remaining is None or response.status_code == 429:
            return
        if remaining > self._settings.gitlab_rate_limit_low_remaining:
            if self._pace_interval > 0:
                # Quota recovered: drop the slots pacing reserved ahead.
                self._pace_interval = 0.0
                self._next_slot = min(self._next_slot, self._clock())
            return
        now = self._clock()
        reset = _int_header(response.headers, "ratelimit-reset")
        window = float(reset) - now if reset is not None else _DEFAULT_RATE_WINDOW_S
        interval = min(
            max(window, 0.0) / max(remaining, 1), self._settings.gitlab_rate_limit_max_wait
        )
        if interval > self._pace_interval:
            logger.info(
                "GitLab quota low ({} left) on {}: spacing requests {:.2f} s apart",
                remaining,
                endpoint,
                interval,
            )
        self._pace_interval = interval
        self._next_slot = max(self._next_slot, now + interval)
