"""Sync one user: lease, token, every monitored project, cursors, LastSync.

The invariant everything here protects: a project's cursor (and the user's LastSync) only
moves after every page fetched since the previous cursor is stored. A failure anywhere
leaves the cursor where it was, so the next attempt or run fetches the gap again.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from time import perf_counter
from typing import Any

from loguru import logger
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from app import metrics, retry
from app.db import repository as repo
from app.db.models import Account, LastSync, MonitoredProject, SyncCursor, utcnow
from app.gitlab.client import GitLabClient, RequestInfo
from app.gitlab.errors import (
    GitLabAPIError,
    GitLabAuthError,
    GitLabBadResponse,
    GitLabOAuthError,
    GitLabRateLimited,
    GitLabUnavailable,
)
from app.gitlab.oauth import refresh_access_token
from app.gitlab.schemas import GitLabIssue, GitLabMergeRequest, NoteableType
from app.logging import redact, register_secret
from app.settings import Settings
from app.sync.deps import SyncDeps
from app.sync.results import ProjectFailure, UserResult
from app.sync.transform import (
    EventRow,
    ProjectRef,
    transform_issue,
    transform_merge_request,
    transform_note,
)

# Refresh a token this long before GitLab would reject it.
TOKEN_EXPIRY_MARGIN = timedelta(seconds=30)
# Pages of one list whose notes and storage may run while the next page is fetched.
PAGES_IN_FLIGHT = 4
# Re-listings of items changed during a multi-page fetch before the project is retried later.
RELIST_PASSES = 3

Sleep = Callable[[float], Awaitable[None]]


class UserSkipped(Exception):
    """The user cannot be synced now for a reason that is not a failure (no token...)."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


# Errors worth another attempt: GitLab or the database may recover.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    GitLabUnavailable,
    GitLabRateLimited,
    GitLabBadResponse,
    OperationalError,
    DBAPIError,
    PoolTimeoutError,
    OSError,
    TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT_ERRORS)


@dataclass
class _ProjectOutcome:
    project: MonitoredProject
    stored: int = 0
    updated: int = 0
    error: BaseException | None = None


@dataclass
class _UserState:
    token: str
    refreshed: bool = False
    stored: int = 0
    updated: int = 0
    outcomes: dict[str, _ProjectOutcome] = field(default_factory=dict)


def _record_request(info: RequestInfo) -> None:
    metrics.GITLAB_REQUESTS.labels(info.endpoint, str(info.status or "error")).inc()


def _since(
    settings: Settings,
    project: MonitoredProject,
    cursor: SyncCursor | None,
    last_sync_at: datetime | None,
    now: datetime,
) -> datetime | None:
    """Where this project's fetch starts: cursor minus overlap, else LastSync, else backfill."""
    overlap = timedelta(seconds=settings.sync_overlap_seconds)
    if cursor is not None and cursor.cursor_at is not None:
        return cursor.cursor_at - overlap
    # Adopted database: the original's per-user LastSync covers projects that existed then.
    # A project added after it never had its history fetched, so it is backfilled.
    if last_sync_at is not None and project.createdAt <= last_sync_at:
        return last_sync_at - overlap
    if settings.sync_backfill_days == 0:
        return None
    return now - timedelta(days=settings.sync_backfill_days)


@dataclass
class _Loaded:
    """What a sync reads before it starts, in the transaction that takes the lease."""

    account: Account | None
    projects: list[MonitoredProject]
    cursors: dict[str, SyncCursor]
    last_sync: LastSync | None


class UserSync:
    """One user's sync within one run. Create per user; call `run()`."""

    def __init__(self, deps: SyncDeps, user_id: str, run_id: str) -> None:
        self.deps = deps
        self.settings = deps.settings
        self.user_id = user_id
        self.run_id = run_id
        self.log = logger.bind(run_id=run_id, user_id=user_id)
        # Set while the success transaction (LastSync + lease release) runs and after it
        # committed: the heartbeat then no longer takes a missing lease for a lost one.
        self._releasing = False
        self._loaded: _Loaded | None = None
        self._started = utcnow()
        self._synced = False

    # --- token ------------------------------------------------------------------------

    async def _token(self, account: Account | None) -> str:
        if account is None or not account.accessToken:
            raise UserSkipped("no_token", "user has no GitLab access token")
        register_secret(account.accessToken)
        if account.refreshToken:
            register_secret(account.refreshToken)
        expires = account.accessTokenExpiresAt
        if expires is not None and expires <= utcnow() + TOKEN_EXPIRY_MARGIN:
            return await self._refresh(account.accessToken)
        return account.accessToken

    async def _refresh(self, stale_access_token: str) -> str:
        """Rotate the token pair, serialized per account; store it before using it."""
        if not self.settings.oauth_refresh_configured:
            self.log.warning("token expired and OAuth refresh is not configured: user skipped")
            raise UserSkipped("token_expired", "access token expired; refresh not configured")
        async with self.deps.sessionmaker() as s, s.begin():
            # Row lock on PostgreSQL: a concurrent refresh of this account waits here, then
            # sees the rotated pair instead of spending the (now revoked) refresh token.
            account = await repo.get_gitlab_account(s, self.user_id, for_update=True)
            if account is None or not account.accessToken:
                raise UserSkipped("no_token", "user has no GitLab access token")
            fresh = account.accessTokenExpiresAt is None or (
                account.accessTokenExpiresAt > utcnow() + TOKEN_EXPIRY_MARGIN
            )
            if account.accessToken != stale_access_token and fresh:
                return account.accessToken
            if not account.refreshToken:
                self.log.warning("token expired and no refresh token stored: user skipped")
                raise UserSkipped("token_expired", "access token expired; no refresh token")
            try:
                answer = await refresh_access_token(
                    self.deps.http, self.settings, account.refreshToken
                )
            except GitLabOAuthError as exc:
                self.log.warning("token refresh refused: {}", exc.error or exc.status)
                raise UserSkipped(
                    "token_refresh_failed",
                    f"GitLab refused the token refresh ({exc.error or exc.status})",
                ) from None
            register_secret(answer.access_token)
            if answer.refresh_token:
                register_secret(answer.refresh_token)
            expires_at = (
                utcnow() + timedelta(seconds=answer.expires_in) if answer.expires_in else None
            )
            stored = await repo.store_rotated_tokens(
                s,
                account_id=account.id,
                expected_refresh_token=account.refreshToken,
                access_token=answer.access_token,
                refresh_token=answer.refresh_token,
                expires_at=expires_at,
            )
            if not stored:  # pragma: no cover - the row lock makes this unreachable on PG
                raise GitLabUnavailable("token rotated concurrently; retry", endpoint="")
        self.log.info("access token refreshed")
        return answer.access_token

    # --- projects ---------------------------------------------------------------------

    async def _store(self, batches: list[list[EventRow]]) -> list[repo.UpsertCounts]:
        """Store several batches of rows in one transaction (one round trip each)."""
        if not any(batches):
            return [repo.UpsertCounts() for _ in batches]
        async with self.deps.sessionmaker() as s, s.begin():
            return [await repo.upsert_events(s, self.user_id, rows) for rows in batches]

    async def _sync_list(
        self,
        client: GitLabClient,
        project: MonitoredProject,
        ref: ProjectRef,
        kind: NoteableType,
        since: datetime | None,
        fetch_started: datetime,
        outcome: _ProjectOutcome,
    ) -> None:
        """Every page of issues (or MRs) since `since`, with their new notes, stored.

        A page is stored together with its items' new notes, in one transaction, as soon as
        those notes arrived (one transaction per page instead of one per item with notes).

        An item edited while a listing of several pages is read jumps to the already-read
        first page (updated_at desc), so that listing never shows it. Its updated_at is then
        at or after `fetch_started`: such items are listed again, their notes fetched from
        `since`, until one listing fits on one page (one consistent answer). Without this the
        next run would list the item again but read its notes only from its own `since`, and
        every comment older than that was lost for good.
        """
        transform_item = transform_issue if kind == "Issue" else transform_merge_request
        event_type = "issue" if kind == "Issue" else "merge_request"
        gate = asyncio.Semaphore(PAGES_IN_FLIGHT)

        async def handle(page: list[GitLabIssue] | list[GitLabMergeRequest]) -> None:
            try:
                rows = [transform_item(item, ref) for item in page]  # type: ignore[arg-type]
                noted = [item for item in page if item.user_notes_count > 0]
                notes: list[EventRow] = []
                if noted:
                    for part in await asyncio.gather(
                        *(self._fetch_notes(client, project, ref, kind, it, since) for it in noted)
                    ):
                        notes.extend(part)
                items_counts, notes_counts = await self._store([rows, notes])
                for label, counts in ((event_type, items_counts), ("comment", notes_counts)):
                    outcome.stored += counts.inserted
                    outcome.updated += counts.updated
                    metrics.EVENTS.labels(label, "stored").inc(counts.inserted)
                    metrics.EVENTS.labels(label, "updated").inc(counts.updated)
            finally:
                gate.release()

        handled: dict[int, datetime] = {}  # item id -> the updated_at stored in this fetch

        async def drain(updated_after: datetime | None) -> int:
            """Store one listing; return how many HTTP pages it took."""
            pages = 0

            def count() -> None:
                nonlocal pages
                pages += 1

            listing = (
                client.issues(project.gitlabProjectId, updated_after, on_page=count)
                if kind == "Issue"
                else client.merge_requests(project.gitlabProjectId, updated_after, on_page=count)
            )
            async with asyncio.TaskGroup() as tg:
                async for page in listing:
                    fresh = [it for it in page if handled.get(it.id) != it.updated_at]
                    handled.update((it.id, it.updated_at) for it in fresh)
                    if not fresh:
                        continue
                    # Bounded: at most PAGES_IN_FLIGHT pages held in memory at once.
                    await gate.acquire()
                    tg.create_task(handle(fresh))  # type: ignore[arg-type]
            return pages

        pages = await drain(since)
        for _ in range(RELIST_PASSES):
            if pages <= 1:
                return
            pages = await drain(fetch_started)
        if pages > 1:
            raise GitLabBadResponse(
                "listing kept changing while it was read; retrying later", endpoint=""
            )

    async def _fetch_notes(
        self,
        client: GitLabClient,
        project: MonitoredProject,
        ref: ProjectRef,
        kind: NoteableType,
        item: GitLabIssue | GitLabMergeRequest,
        since: datetime | None,
    ) -> list[EventRow]:
        rows: list[EventRow] = []
        async for page in client.notes(
            project.gitlabProjectId, kind, item.iid, since, noteable_web_url=item.web_url
        ):
            rows.extend(transform_note(note, ref) for note in page)
        return rows

    async def _sync_project(
        self,
        client: GitLabClient,
        project: MonitoredProject,
        cursor: SyncCursor | None,
        last_sync_at: datetime | None,
    ) -> _ProjectOutcome:
        outcome = _ProjectOutcome(project=project)
        # The cursor moves to when this fetch STARTED: anything changed during the fetch is
        # at or after it, so the next run sees it (the original lost such changes).
        fetch_started = utcnow()
        since = _since(self.settings, project, cursor, last_sync_at, fetch_started)
        ref = ProjectRef(project.gitlabProjectId, project.projectName, project.projectPath)
        try:
            async with asyncio.TaskGroup() as tg:
                for kind in ("Issue", "MergeRequest"):
                    tg.create_task(
                        self._sync_list(client, project, ref, kind, since, fetch_started, outcome)
                    )
            async with self.deps.sessionmaker() as s, s.begin():
                await repo.advance_cursor(s, self.user_id, project.gitlabProjectId, fetch_started)
        except Exception as exc:  # noqa: BLE001 - reported per project; cursor stays put
            outcome.error = _first_leaf(exc)
        return outcome

    async def _record_failures(self, failures: list[_ProjectOutcome]) -> None:
        try:
            async with self.deps.sessionmaker() as s, s.begin():
                for o in failures:
                    await repo.record_project_error(
                        s, self.user_id, o.project.gitlabProjectId, _describe(o.error)
                    )
        except Exception as exc:  # noqa: BLE001 - best effort: the failure is reported anyway
            self.log.warning("could not record project errors: {}", type(exc).__name__)

    # --- the whole user -----------------------------------------------------------------

    async def _attempts(self, result: UserResult) -> None:
        """Sync every project (with retries). True in `self._synced` when all succeeded:
        LastSync is then written by `_commit_success`, outside (tests audit this method as
        the lease-held work, so it must not release the lease itself)."""
        loaded = self._loaded
        assert loaded is not None
        projects, cursors, last_sync = loaded.projects, loaded.cursors, loaded.last_sync
        state = _UserState(token=await self._token(loaded.account))
        result.projects = len(projects)
        if not projects:
            raise UserSkipped("no_projects", "user monitors no projects")
        last_sync_at = last_sync.lastSyncAt if last_sync else None
        pending = list(projects)
        attempts = self.settings.user_sync_attempts
        for attempt in range(1, attempts + 1):
            result.attempts = attempt
            client = GitLabClient(
                self.deps.http, self.settings, state.token, on_request=_record_request
            )
            outcomes = await asyncio.gather(
                *(
                    self._sync_project(client, p, cursors.get(p.gitlabProjectId), last_sync_at)
                    for p in pending
                )
            )
            for o in outcomes:
                state.stored += o.stored
                state.updated += o.updated
                state.outcomes[o.project.gitlabProjectId] = o
            # Counted as it happens: a user that fails later still reports what it stored.
            result.stored, result.updated = state.stored, state.updated
            failed = [o for o in outcomes if o.error is not None]
            if not failed:
                break
            auth = [o.error for o in failed if isinstance(o.error, GitLabAuthError)]
            if auth:
                err = auth[0]
                assert isinstance(err, GitLabAuthError)
                if err.reason == "expired" and not state.refreshed:
                    state.token = await self._refresh(state.token)
                    state.refreshed = True
                    pending = [o.project for o in failed]
                    continue
                self.log.warning("GitLab rejected the token ({}): user skipped", err.reason)
                raise UserSkipped(f"token_{err.reason}", str(err))
            retryable = [o.project for o in failed if is_transient(o.error)]  # type: ignore[arg-type]
            if not retryable or attempt == attempts:
                break
            # Resume: cursors of synced projects moved, so only the failed ones run again.
            async with self.deps.sessionmaker() as s:
                cursors = await repo.get_cursors(s, self.user_id)
            pending = retryable
            await retry.sleep(self._retry_delay(attempt, failed))

        failures = [o for o in state.outcomes.values() if o.error is not None]
        result.stored, result.updated = state.stored, state.updated
        if failures:
            await self._record_failures(failures)
            result.status = "failed"
            result.reason = "projects_failed"
            result.failed_projects = [
                ProjectFailure(
                    gitlab_project_id=o.project.gitlabProjectId,
                    project_path=o.project.projectPath,
                    error=type(o.error).__name__,
                    status=getattr(o.error, "status", None),
                    message=_describe(o.error),
                    retry_after=getattr(o.error, "retry_after", None),
                )
                for o in failures
            ]
            return
        self._synced = True

    async def _commit_success(self, result: UserResult) -> None:
        """LastSync and the lease release commit together (one transaction instead of two)."""
        self._releasing = True
        try:
            async with self.deps.sessionmaker() as s, s.begin():
                await repo.upsert_last_sync(s, self.user_id, self._started)
                await repo.release_lease(s, self.user_id, self.run_id)
        except BaseException:
            self._releasing = False  # not committed: the lease is still ours to release
            raise
        result.status = "processed"

    def _retry_delay(self, attempt: int, failed: list[_ProjectOutcome]) -> float:
        waits = [o.error.retry_after for o in failed if isinstance(o.error, GitLabRateLimited)]
        if waits:
            return min(max(waits), self.settings.gitlab_rate_limit_max_wait)
        cap = self.settings.user_retry_backoff_base * (2 ** (attempt - 1))
        return random.uniform(0, cap)  # full jitter

    async def _heartbeat(self, lost: asyncio.Event, main: asyncio.Task[Any]) -> None:
        ttl = self.settings.lease_ttl_seconds
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                async with self.deps.sessionmaker() as s, s.begin():
                    ok = await repo.renew_lease(s, self.user_id, self.run_id, ttl)
            except Exception as exc:  # noqa: BLE001 - retry on the next beat
                self.log.warning("lease renewal failed: {}", type(exc).__name__)
                continue
            if not ok and not self._releasing:
                lost.set()
                main.cancel()
                return

    async def run(self, *, manual: bool = False) -> UserResult:
        t0 = perf_counter()
        result = UserResult(user_id=self.user_id, status="skipped")
        try:
            await self._run(result, manual=manual)
        finally:
            result.duration_ms = round((perf_counter() - t0) * 1000)
            metrics.USERS.labels(result.status, result.reason or "").inc()
            self.log.bind(
                status=result.status,
                reason=result.reason,
                stored=result.stored,
                updated=result.updated,
                failed_projects=len(result.failed_projects),
                attempts=result.attempts,
                duration_ms=result.duration_ms,
            ).info("user sync {}", result.status)
        return result

    async def _run(self, result: UserResult, *, manual: bool) -> None:
        settings = self.settings
        self._started = utcnow()  # LastSync if every project syncs
        loaded: _Loaded | None = None
        try:
            # One transaction: the freshness check, the lease, and everything the sync reads
            # first (token, projects, cursors, LastSync), instead of three.
            async with self.deps.sessionmaker() as s, s.begin():
                last = await repo.get_last_sync(s, self.user_id)
                if manual and settings.min_refresh_interval_seconds > 0:
                    horizon = utcnow() - timedelta(seconds=settings.min_refresh_interval_seconds)
                    if last is not None and last.updatedAt > horizon:
                        result.reason = "fresh"
                        return
                got = await repo.try_acquire_lease(
                    s, self.user_id, self.run_id, settings.lease_ttl_seconds
                )
                if got:
                    loaded = _Loaded(
                        account=await repo.get_gitlab_account(s, self.user_id),
                        projects=await repo.list_projects(s, self.user_id),
                        cursors=await repo.get_cursors(s, self.user_id),
                        last_sync=last,
                    )
        except Exception as exc:  # noqa: BLE001 - the database is down for this user
            result.status, result.reason = "failed", "database_unavailable"
            self.log.error("cannot reach the database: {}", redact(_describe(exc)))
            return
        if not got or loaded is None:
            result.reason = "in_progress"
            return
        self._loaded = loaded

        lost = asyncio.Event()
        main = asyncio.current_task()
        assert main is not None
        beat = asyncio.create_task(self._heartbeat(lost, main))
        try:
            async with asyncio.timeout(settings.user_sync_deadline_seconds):
                await self._attempts(result)
                if self._synced:
                    await self._commit_success(result)
        except UserSkipped as skip:
            result.status, result.reason = "skipped", skip.reason
        except TimeoutError:
            result.status, result.reason = "failed", "deadline_exceeded"
        except asyncio.CancelledError:
            if not lost.is_set():
                raise
            result.status, result.reason = "failed", "lease_lost"
        except Exception as exc:  # noqa: BLE001 - one user's failure never touches another
            result.status = "failed"
            result.reason = _failure_reason(exc)
            self.log.error("user sync failed: {}", redact(_describe(exc)))
        finally:
            beat.cancel()
            if not self._releasing:  # else released together with LastSync
                try:
                    async with self.deps.sessionmaker() as s, s.begin():
                        await repo.release_lease(s, self.user_id, self.run_id)
                except Exception as exc:  # noqa: BLE001 - the lease expires on its own
                    self.log.warning("lease release failed: {}", type(exc).__name__)


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, GitLabUnavailable):
        return "gitlab_unavailable"
    if isinstance(exc, GitLabRateLimited):
        return "rate_limited"
    if isinstance(exc, DBAPIError | PoolTimeoutError):
        return "database_unavailable"
    return "error"


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    if isinstance(exc, GitLabAPIError):
        return redact(str(exc))
    if isinstance(exc, DBAPIError):
        # Driver messages can quote SQL parameters (tokens): keep the class only.
        return f"database error ({type(exc.orig).__name__ if exc.orig else type(exc).__name__})"
    return redact(f"{type(exc).__name__}: {exc}")[:300]


async def sync_user(
    deps: SyncDeps, user_id: str, run_id: str, *, manual: bool = False
) -> UserResult:
    """The one implementation of a user's sync, shared by /api/poll, the CLI and Inngest."""
    return await UserSync(deps, user_id, run_id).run(manual=manual)
