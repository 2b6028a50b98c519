"""Async client for the GitLab REST API v4: complete pagination, typed errors, polite retries.

This module moves bytes and runs the flow (send, pace, read-ahead, pagination, the
keyset fallback); every decision about an answer (its data, next page, error, wait, pacing)
is taken by the pure `sansio` module. Behaviours the sync relies on:

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
- Only a 2xx answer is data. Redirects are not followed (the token must not travel), so a
  3xx, like a 400 or any other unmapped status, is a final GitLabAPIError.
- Malformed bodies: invalid or truncated JSON (usually a proxy cutting the response) is
  retried like a 5xx within the same attempt budget; if it persists, GitLabMalformedResponse
  (a GitLabBadResponse). Valid JSON of the wrong shape raises GitLabBadResponse at once (a
  retry would get the same).
- Budgets (the one `app.retry` policy, see `retry_policy`): 5xx, timeouts, connection errors
  and malformed JSON share `gitlab_max_attempts` attempts with exponential backoff and full
  jitter. 429s have their own budget of `gitlab_max_attempts` attempts (each 429 wait starts
  a fresh transient budget, so one call makes at most gitlab_max_attempts**2 requests); 429
  waits honour Retry-After (seconds or HTTP date), else RateLimit-Reset (Unix time or
  seconds), else RateLimit-ResetTime, else the backoff schedule, capped at
  `gitlab_rate_limit_max_wait`, and pause every request of this client, not only the one
  that was refused.
- A low RateLimit-Remaining (at most `gitlab_rate_limit_low_remaining`) spaces this client's
  requests to spread what is left until RateLimit-Reset (else over a minute).
- Every wait (retry backoff, 429 pause, pacing) goes through `app.retry.sleep`, which tests
  switch off with `retry.recorded_waits()`; a zero wait never sleeps. Time comes from the
  injectable `clock` (time.time by default); naive timestamps are UTC, never local time.
- Logs: every attempt is a DEBUG line; a request that needed retries, or finally failed on
  an error worth retrying, is one INFO line (never one line per retry).
- A poll run's `ReachabilityDetector` (reachability.py), shared by all its clients, hears of
  every answer and of every request that finally failed without a connection; once it finds
  the instance unreachable, attempts fail at once with GitLabUnreachable (not retried).
- Errors and logs carry the HTTP status and the endpoint path only: never the token, the
  host or the query string.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar
from urllib.parse import quote, urlencode

import httpx
from loguru import logger
from pydantic import TypeAdapter

from app import retry
from app.gitlab import sansio, schemas
from app.gitlab.errors import (
    GitLabAPIError,
    GitLabMalformedResponse,
    GitLabRateLimited,
    GitLabUnavailable,
)
from app.gitlab.reachability import ReachabilityDetector
from app.gitlab.sansio import JsonValidator, Query, as_utc, format_gitlab_time, project_ref
from app.gitlab.schemas import (
    GitLabCurrentUser,
    GitLabDiscussion,
    GitLabIssue,
    GitLabMergeRequest,
    GitLabNote,
    GitLabProject,
)
from app.gitlab.transport import GitLabWire, HttpxWire, WireError
from app.settings import Settings

__all__ = [
    "Clock",
    "GitLabClient",
    "RequestInfo",
    "format_gitlab_time",  # re-exported from sansio for existing importers (bench)
    "project_ref",
    "retry_policy",
]

T = TypeVar("T")
ItemT = TypeVar("ItemT", GitLabIssue, GitLabMergeRequest)

Clock = Callable[[], float]

# Listings, items and notes: msgspec with pydantic as the referee (schemas.Decoder).
_ISSUES = schemas.ISSUES
_MERGE_REQUESTS = schemas.MERGE_REQUESTS
_NOTES = schemas.NOTES
_DISCUSSIONS = schemas.DISCUSSIONS
_PROJECT = TypeAdapter(GitLabProject)
_ISSUE = schemas.ISSUE
_MERGE_REQUEST = schemas.MERGE_REQUEST
_NOTE = schemas.NOTE
_CURRENT_USER = TypeAdapter(GitLabCurrentUser)

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


def retry_policy(settings: Settings) -> retry.RetryPolicy:
    """GitLab's retry policy (API client and OAuth refresh): `gitlab_max_attempts` tries with
    full-jitter exponential backoff; a 429's requested wait is capped at
    `gitlab_rate_limit_max_wait`."""
    return retry.RetryPolicy.exponential(
        attempts=settings.gitlab_max_attempts,
        base=settings.gitlab_backoff_base,
        cap=settings.gitlab_backoff_max,
        max_requested_wait=settings.gitlab_rate_limit_max_wait,
    )


def requested_wait(exc: BaseException) -> float | None:
    """The wait a 429 error carries (already read from the answer and capped by sansio)."""
    return exc.retry_after if isinstance(exc, GitLabRateLimited) else None


def _noteable_segment(noteable_type: str) -> str:
    if noteable_type == "Issue":
        return "issues"
    if noteable_type == "MergeRequest":
        return "merge_requests"
    raise ValueError(f"unknown noteable_type {noteable_type!r}")


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark an abandoned read-ahead's outcome as seen (no 'never retrieved' warning)."""
    if not future.cancelled():
        future.exception()


@functools.lru_cache(maxsize=256)
def _query_string(query: tuple[tuple[str, str], ...]) -> str:
    """Percent-encoded query; cached: every notes request of a poll sends the same one."""
    return urlencode(query, quote_via=quote)


# --- the client -----------------------------------------------------------------------


@dataclass(slots=True)
class _Call:
    """One logical request across its attempts."""

    method: str
    url: str  # percent-encoded, with its query: built once for every attempt
    endpoint: str  # real path without query, for errors and logs: /projects/42/issues
    template: str  # low-cardinality name for metrics: /projects/:id/issues
    decode: Callable[[bytes, int], Any]  # body, status -> data (sansio.decode_json)
    attempt: int = 0


class GitLabClient:
    """GitLab API for one user (one token) over the process's shared wire (transport.py).

    `http` is the wire, or an httpx client (sent through HttpxWire: respx in unit tests).
    """

    def __init__(
        self,
        http: GitLabWire | httpx.AsyncClient,
        settings: Settings,
        token: str,
        *,
        on_request: Callable[[RequestInfo], None] | None = None,
        clock: Clock | None = None,
        reachability: ReachabilityDetector | None = None,
    ) -> None:
        self._wire: GitLabWire = (
            HttpxWire(http, settings) if isinstance(http, httpx.AsyncClient) else http
        )
        self._settings = settings
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self._on_request = on_request
        self._clock: Clock = clock or time.time
        # The run's detector (shared by every client of a poll run), if any.
        self._reachability = reachability
        self._base = settings.gitlab_api_url.rstrip("/")
        self._in_flight = asyncio.Semaphore(settings.gitlab_user_concurrency)
        # Pacing shared by all requests of this user: next allowed start, spacing between starts.
        self._next_slot = 0.0
        self._pace_interval = 0.0
        self._retry = retry_policy(settings)
        # Two budgets: transient failures inside, 429s outside (each 429 retry starts a fresh
        # transient budget). A 429's wait becomes a pause of every request of this client.
        transient = retry.retry_on(
            self._retry,
            (GitLabUnavailable, GitLabMalformedResponse),
            on_retry=self._log_retry,
        )(self._attempt)
        self._send = retry.retry_on(
            self._retry,
            GitLabRateLimited,
            requested_wait=requested_wait,
            on_retry=self._log_retry,
            wait=self._pause,
        )(transient)

    def __repr__(self) -> str:  # never show the token
        return f"GitLabClient(base={self._base!r})"

    # --- public API -------------------------------------------------------------------

    async def project(self, id_or_path: int | str) -> GitLabProject:
        path = f"/projects/{project_ref(id_or_path)}"
        return await self._get(path, "/projects/:id", _PROJECT)

    async def current_user(self) -> GitLabCurrentUser:
        return await self._get("/user", "/user", _CURRENT_USER)

    async def item(
        self, project_id: int | str, noteable_type: Literal["Issue", "MergeRequest"], iid: int
    ) -> GitLabIssue | GitLabMergeRequest:
        """One issue or MR; GitLabNotFound when it is gone or the token cannot see it."""
        kind = _noteable_segment(noteable_type)
        path = f"/projects/{project_ref(project_id)}/{kind}/{int(iid)}"
        if noteable_type == "Issue":
            return await self._get(path, "/projects/:id/issues/:iid", _ISSUE)
        return await self._get(path, "/projects/:id/merge_requests/:iid", _MERGE_REQUEST)

    async def note(
        self,
        project_id: int | str,
        noteable_type: Literal["Issue", "MergeRequest"],
        iid: int,
        note_id: int,
    ) -> GitLabNote:
        """One note of an issue or MR; GitLabNotFound when it is gone or hidden from the token."""
        kind = _noteable_segment(noteable_type)
        path = f"/projects/{project_ref(project_id)}/{kind}/{int(iid)}/notes/{int(note_id)}"
        return await self._get(path, f"/projects/:id/{kind}/:iid/notes/:note_id", _NOTE)

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
        kind = _noteable_segment(noteable_type)
        path = f"/projects/{project_ref(project_id)}/{kind}/{int(iid)}/notes"
        template = f"/projects/:id/{kind}/:iid/notes"
        params: Query = [
            ("sort", "desc"),
            ("order_by", "updated_at"),
            ("per_page", str(self._settings.gitlab_per_page)),
        ]
        since_utc = as_utc(since) if since is not None else None
        numeric_project = project_id if isinstance(project_id, int) else None
        base_url = noteable_web_url.split("#", 1)[0]
        include_system = self._settings.include_system_notes
        seen: set[int] = set()
        reached_older = False

        async with aclosing(self._pages(path, template, params, _NOTES)) as pages:
            async for page in pages:
                fresh: list[GitLabNote] = []
                for note in page:
                    if since_utc is not None and as_utc(note.updated_at) < since_utc:
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

    async def discussions(
        self,
        project_id: int | str,
        noteable_type: Literal["Issue", "MergeRequest"],
        iid: int,
    ) -> AsyncIterator[list[GitLabDiscussion]]:
        """Every thread of one issue/MR with its notes (system notes included), in GitLab's
        order; the only listing that gives a note's discussion id.

        GitLab has no time filter here, so the threads are read whole (every page, read
        ahead). A thread seen on two pages (offset pages shift when one is deleted
        meanwhile) comes once; a thread such a shift skips is what removals confirm against
        GitLab before removing anything (removals.py).
        """
        kind = _noteable_segment(noteable_type)
        path = f"/projects/{project_ref(project_id)}/{kind}/{int(iid)}/discussions"
        template = f"/projects/:id/{kind}/:iid/discussions"
        params: Query = [("per_page", str(self._settings.gitlab_per_page))]
        seen: set[str] = set()
        pages = self._pages(path, template, params, _DISCUSSIONS, read_ahead=True)
        async with aclosing(pages) as it:
            async for page in it:
                fresh = [d for d in page if d.id not in seen]
                seen.update(d.id for d in fresh)
                if fresh:
                    yield fresh

    # --- listings ---------------------------------------------------------------------

    async def _items(
        self,
        project_id: int | str,
        kind: str,
        adapter: JsonValidator[list[ItemT]],
        updated_after: datetime | None,
        extra: dict[str, str],
        *,
        keyset_fallback: bool,
        on_page: Callable[[], None] | None = None,
    ) -> AsyncGenerator[list[ItemT], None]:
        path = f"/projects/{project_ref(project_id)}/{kind}"
        template = f"/projects/:id/{kind}"
        filters: dict[str, str] = {
            "scope": "all",
            **extra,
            "order_by": "updated_at",
            "sort": "desc",
            "per_page": str(self._settings.gitlab_per_page),
        }
        if updated_after is not None:
            filters["updated_after"] = format_gitlab_time(updated_after)

        seen: set[int] = set()
        oldest: datetime | None = None
        first = self._pages(
            path, template, list(filters.items()), adapter, on_page, read_ahead=True
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
                    updated = as_utc(item.updated_at)
                    if oldest is None or updated < oldest:
                        oldest = updated
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
        rest = self._pages(path, template, list(keyset.items()), adapter, on_page, read_ahead=True)
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
        params: Query,
        adapter: JsonValidator[list[T]],
        on_page: Callable[[], None] | None = None,
        *,
        read_ahead: bool = False,
    ) -> AsyncGenerator[list[T], None]:
        """Every page, following rel=next until there is none (no page cap, no totals).

        `read_ahead`: request the next page as soon as this one arrived, before the caller
        works on it (each page needs the previous one's Link, so this chain is the critical
        path of a long listing). At most one page is held ahead; a caller that stops early
        would waste that request, so listings read to the end use it and notes do not.
        """
        base = self._base + path

        def decode(body: bytes, status: int) -> list[T]:
            return sansio.decode_json(adapter, body, status=status, endpoint=path)

        def fetch(query: Query) -> Awaitable[tuple[list[T], Mapping[str, str]]]:
            url = f"{base}?{_query_string(tuple(query))}" if query else base
            return self._request(_Call("GET", url, path, template, decode))

        if not read_ahead:
            while True:
                page, headers = await fetch(params)
                if on_page is not None:
                    on_page()
                yield page
                nxt = sansio.next_page_query(headers, params)
                if nxt is None:
                    return
                params = nxt

        ahead: asyncio.Future[tuple[list[T], Mapping[str, str]]] | None = None
        try:
            # The first page is awaited here, in the caller's task: a task of its own would be
            # awaited at once anyway (most listings of a sync are one page: a thread's, a warm
            # poll's), so only the pages after it are fetched ahead.
            page, headers = await fetch(params)
            while True:
                if on_page is not None:
                    on_page()
                nxt = sansio.next_page_query(headers, params)
                if nxt is not None:
                    params = nxt
                    ahead = asyncio.ensure_future(fetch(nxt))
                yield page
                if ahead is None:
                    return
                page, headers = await ahead
                ahead = None
        finally:
            if ahead is not None:
                # Not awaited: awaiting here could swallow a cancellation of the caller.
                ahead.cancel()
                ahead.add_done_callback(_retrieve)

    async def _get(self, path: str, template: str, adapter: JsonValidator[T]) -> T:
        def decode(body: bytes, status: int) -> T:
            return sansio.decode_json(adapter, body, status=status, endpoint=path)

        value, _ = await self._request(_Call("GET", self._base + path, path, template, decode))
        return value

    async def _request(self, call: _Call) -> tuple[Any, Mapping[str, str]]:
        """One request with its retries: one log line for the request, however many attempts
        it took (each attempt is a DEBUG line), and its final failure told to the detector."""
        try:
            answer = await self._send(call)
        except GitLabAPIError as exc:
            self._request_failed(call, exc)
            raise
        if call.attempt > 1:
            logger.info(
                "GitLab {} {}: answered after {} attempts", call.method, call.endpoint, call.attempt
            )
        return answer

    def _request_failed(self, call: _Call, exc: GitLabAPIError) -> None:
        retryable = isinstance(exc, GitLabUnavailable | GitLabMalformedResponse | GitLabRateLimited)
        if call.attempt > 1 or (retryable and call.attempt > 0):
            # Our errors' messages carry the status and endpoint path only.
            logger.info(
                "GitLab {} {}: failed after {} attempt(s): {}",
                call.method,
                call.endpoint,
                call.attempt,
                exc,
            )
        failure = exc.connect_failure if isinstance(exc, GitLabUnavailable) else None
        detector = self._reachability
        if detector is not None and failure is not None and detector.connect_failed(failure):
            # INFO like the rest: the run's summary (503, the CLI's error line) says it.
            logger.info("{}: this run sends no more GitLab requests", detector.describe())

    # --- one attempt ------------------------------------------------------------------

    async def _attempt(self, call: _Call) -> tuple[Any, Mapping[str, str]]:
        if self._reachability is not None:
            self._reachability.check(call.endpoint)  # the run gave up on the instance
        await self._wait_for_slot()
        call.attempt += 1
        status: int | None = None
        started = time.perf_counter()
        try:
            # The semaphore covers the HTTP exchange only, never a retry wait or the caller.
            async with self._in_flight:
                started = time.perf_counter()
                response = await self._wire.get(call.url, self._headers)
            status = response.status
        except WireError as exc:
            # The wire's message is the error's class name: never the URL or its query.
            raise GitLabUnavailable(
                f"GitLab unreachable on {call.endpoint} ({exc})",
                status=None,
                endpoint=call.endpoint,
                connect_failure=exc.connect_failure,
            ) from None
        finally:
            self._report(call, status, time.perf_counter() - started)

        if self._reachability is not None:
            self._reachability.answered()
        headers, body = response.headers, response.body
        self._observe_rate_limit(status, headers, call.endpoint)
        error = sansio.error_for_status(
            status,
            headers,
            body,
            call.endpoint,
            now=self._clock(),
            max_wait=self._settings.gitlab_rate_limit_max_wait,
            # Only a 429 without any usable header needs our own guess.
            fallback_wait=self._retry.delay(call.attempt) if status == 429 else 0.0,
        )
        if error is not None:
            raise error
        return call.decode(body, status), headers

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
        await retry.sleep(start - now)

    async def _pause(self, seconds: float) -> None:
        """retry_on's wait after a 429: pause every request of this client for `seconds`
        (the waiting itself happens in `_wait_for_slot` of the next attempt)."""
        if seconds > 0:
            self._next_slot = max(self._next_slot, self._clock() + seconds)

    def _log_retry(self, exc: BaseException, retry_number: int, delay: float) -> None:
        # DEBUG: the request's outcome is one INFO line (_request), not one line per retry.
        logger.debug(
            "{}: retry {}/{} in {:.2f} s", exc, retry_number, self._retry.attempts - 1, delay
        )

    def _observe_rate_limit(self, status: int, headers: Mapping[str, str], endpoint: str) -> None:
        """Space requests out when the quota runs low, so GitLab need not answer 429."""
        now = self._clock()
        pace = sansio.pacing(
            status,
            headers,
            now=now,
            # At least what this user may have in flight: those are sent before the next
            # answer says the quota is gone.
            low_remaining=max(
                self._settings.gitlab_rate_limit_low_remaining,
                self._settings.gitlab_user_concurrency,
            ),
            max_wait=self._settings.gitlab_rate_limit_max_wait,
        )
        if pace is None:
            return
        if not pace.low:
            if self._pace_interval > 0:
                # Quota recovered: drop the slots pacing reserved ahead.
                self._pace_interval = 0.0
                self._next_slot = min(self._next_slot, now)
            return
        if pace.interval > self._pace_interval:
            logger.info(
                "GitLab quota low ({} left) on {}: spacing requests {:.2f} s apart",
                pace.remaining,
                endpoint,
                pace.interval,
            )
        self._pace_interval = pace.interval
        self._next_slot = max(self._next_slot, now + pace.interval)
