"""Sync one user: claim it (freshness, lease, what the sync reads), sync every monitored
project with retries, then move LastSync and give the lease back in one transaction.

The pieces live beside this module: the lease and its heartbeat (lease.py), the token and
its refresh (tokens.py), one project's listings and notes (project_sync.py). LastSync moves
only when every project synced; a failing project leaves its own cursor where it was.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from time import perf_counter
from typing import Any

from loguru import logger
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from app import metrics, retry
from app.db import repository as repo
from app.db.models import utcnow
from app.db.rows import AccountRow, ClaimRows, CursorMove, CursorRow, LastSyncRow, ProjectRow
from app.gitlab.client import GitLabClient, RequestInfo
from app.gitlab.errors import (
    GitLabAPIError,
    GitLabAuthError,
    GitLabBadResponse,
    GitLabRateLimited,
    GitLabUnavailable,
)
from app.logging import redact
from app.settings import Settings
from app.sync import tokens
from app.sync.deps import SyncDeps
from app.sync.lease import LeaseConnectionLost, LeaseLost, UserLease
from app.sync.project_sync import ProjectOutcome, sync_project
from app.sync.reconcile import reconcile_due
from app.sync.results import AccessLostProject, ProjectFailure, UserResult, UserSkipped

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


def is_transient(exc: BaseException | None) -> bool:
    return isinstance(exc, TRANSIENT_ERRORS)


@dataclass(frozen=True, slots=True)
class Claim:
    """What a sync reads before it starts, with the lease taken (plain rows)."""

    account: AccountRow | None
    projects: list[ProjectRow]
    cursors: dict[str, CursorRow]
    last_sync: LastSyncRow | None


def user_retry_policy(settings: Settings) -> retry.RetryPolicy:
    """Attempts of one user's projects; a 429's requested wait wins over the backoff."""
    base = settings.user_retry_backoff_base
    return retry.RetryPolicy.exponential(
        attempts=settings.user_sync_attempts,
        base=base,
        cap=base * 2 ** max(settings.user_sync_attempts - 1, 0),
        max_requested_wait=settings.gitlab_rate_limit_max_wait,
    )


async def sync_user(
    deps: SyncDeps, user_id: str, run_id: str, *, manual: bool = False
) -> UserResult:
    """The one implementation of a user's sync, shared by /api/poll, the CLI and Inngest."""
    t0 = perf_counter()
    result = UserResult(user_id=user_id, status="skipped")
    log = logger.bind(run_id=run_id, user_id=user_id)
    try:
        await _sync(deps, UserLease(deps, user_id, run_id), result, manual=manual)
    finally:
        result.duration_ms = round((perf_counter() - t0) * 1000)
        metrics.USERS.labels(result.status, result.reason or "").inc()
        log.bind(
            status=result.status,
            reason=result.reason,
            stored=result.stored,
            updated=result.updated,
            removed=result.removed,
            failed_projects=len(result.failed_projects),
            attempts=result.attempts,
            duration_ms=result.duration_ms,
        ).info("user sync {}", result.status)
    return result


async def claim_user(deps: SyncDeps, lease: UserLease, *, manual: bool) -> Claim:
    """One transaction: the freshness check, the lease, and everything the sync reads first
    (token, projects, cursors, LastSync). Raises UserSkipped (fresh, in_progress)."""
    try:
        return await _claim(deps, lease, manual=manual)
    except BaseException:
        await lease.abandon()
        raise


async def _claim(deps: SyncDeps, lease: UserLease, *, manual: bool) -> Claim:
    settings = deps.settings
    fresh_after = None
    if manual and settings.min_refresh_interval_seconds > 0:
        fresh_after = utcnow() - timedelta(seconds=settings.min_refresh_interval_seconds)
    if lease.advisory:
        # Two statements on the lock's connection, no transaction around them: LastSync with
        # the lock (not taken for a fresh user), then the reads, which see what the lock's
        # previous holder committed before it let go.
        async with lease.autocommit() as conn:
            last, locked = await lease.lock(conn, fresh_after)
            if locked is None:
                raise UserSkipped("fresh", "synced moments ago")
            if not locked:
                raise UserSkipped("in_progress", "another run is syncing this user")
            rows = await repo.claim_rows(conn, lease.user_id)
        return _claimed(rows, last)
    async with lease.session() as s, s.begin():
        last = await repo.get_last_sync(s, lease.user_id)
        if fresh_after is not None and last is not None and last.updatedAt > fresh_after:
            raise UserSkipped("fresh", "synced moments ago")
        if not await lease.acquire(s):
            raise UserSkipped("in_progress", "another run is syncing this user")
        return _claimed(await repo.claim_rows(s, lease.user_id), last)


def _claimed(rows: ClaimRows, last: LastSyncRow | None) -> Claim:
    return Claim(account=rows.account, projects=rows.projects, cursors=rows.cursors, last_sync=last)


async def _finish(
    deps: SyncDeps, lease: UserLease, idle: dict[str, CursorMove], started: datetime
) -> None:
    """Every project synced: the idle projects' cursors and LastSync written together, then
    the lease given back (never before they are committed)."""
    mark = deps.profile.work_items
    if lease.advisory:
        async with lease.autocommit() as conn:  # one statement on PostgreSQL
            await repo.finish_user_sync(conn, lease.user_id, idle, started, mark=mark)
        await lease.release()
        return
    async with lease.session() as s, s.begin():
        await repo.finish_user_sync(s, lease.user_id, idle, started, mark=mark)
        await lease.release(s)


async def _sync(deps: SyncDeps, lease: UserLease, result: UserResult, *, manual: bool) -> None:
    started = utcnow()  # LastSync if every project syncs
    log = logger.bind(run_id=lease.run_id, user_id=lease.user_id)
    try:
        claim = await claim_user(deps, lease, manual=manual)
    except UserSkipped as skip:
        result.reason = skip.reason
        return
    except Exception as exc:  # noqa: BLE001 - the database is down for this user
        result.status, result.reason = "failed", "database_unavailable"
        log.error("cannot reach the database: {}", describe_error(exc))
        return
    try:
        async with asyncio.timeout(deps.settings.user_sync_deadline_seconds), lease.held():
            synced = await sync_projects(deps, lease, claim, result)
        if synced.all_synced:
            await _finish(deps, lease, synced.pending_cursors, started)
            result.status = "processed"
            return
    except asyncio.CancelledError:
        await lease.release()  # cancelled from outside (shutdown): hand the user back
        raise
    except Exception as exc:  # noqa: BLE001 - one user's failure never touches another
        _record_exception(result, exc)
    await lease.release()


def _record_exception(result: UserResult, exc: Exception) -> None:
    if isinstance(exc, UserSkipped):
        result.status, result.reason = "skipped", exc.reason
    elif isinstance(exc, TimeoutError):
        result.status, result.reason = "failed", "deadline_exceeded"
    elif isinstance(exc, LeaseConnectionLost):
        result.status, result.reason = "failed", "database_unavailable"
    elif isinstance(exc, LeaseLost):
        result.status, result.reason = "failed", "lease_lost"
    else:
        result.status, result.reason = "failed", failure_reason(exc)
        logger.bind(user_id=result.user_id).error("user sync failed: {}", describe_error(exc))


@dataclass(frozen=True, slots=True)
class Synced:
    all_synced: bool
    # Cursors of projects whose fetch stored nothing, for the caller's final transaction.
    pending_cursors: dict[str, CursorMove]


async def sync_projects(
    deps: SyncDeps, lease: UserLease, claim: Claim, result: UserResult
) -> Synced:
    """Every monitored project, failed ones retried.

    A retry fetches only the failed projects, from their claimed cursors (a failed project
    never moves its cursor). An expired token is refreshed once; any other 401 skips the
    user (it needs re-authorizing).
    """
    user_id = lease.user_id
    # Every read and write on the lease's connection (PostgreSQL) or sessions.
    deps = replace(deps, sessions=lease.session, statements=lease.statement)
    token = await tokens.access_token(deps, user_id, claim.account)
    result.projects = len(claim.projects)
    if not claim.projects:
        raise UserSkipped("no_projects", "user monitors no projects")
    last_sync_at = claim.last_sync.lastSyncAt if claim.last_sync else None
    policy = user_retry_policy(deps.settings)
    pending, cursors, refreshed = list(claim.projects), claim.cursors, False
    outcomes: dict[str, ProjectOutcome] = {}
    for attempt in range(1, policy.attempts + 1):
        result.attempts = attempt
        client = GitLabClient(
            deps.gitlab_wire(),
            deps.settings,
            token,
            on_request=_record_request,
            reachability=deps.reachability,
        )
        done = await _sync_pending(deps, lease, client, pending, cursors, last_sync_at)
        outcomes.update((o.project.gitlabProjectId, o) for o in done)
        # Counted as it happens, over every attempt: what a failed attempt stored stays
        # stored (its retry finds those rows unchanged), and a user that fails later still
        # reports it.
        result.stored += sum(o.stored for o in done)
        result.updated += sum(o.updated for o in done)
        result.removed += sum(o.removed for o in done)
        failed = [o for o in done if o.error is not None]
        lost = next((o.error for o in failed if isinstance(o.error, LeaseLost)), None)
        if lost is not None:
            raise lost
        if not failed:
            break
        auth = next((o.error for o in failed if isinstance(o.error, GitLabAuthError)), None)
        if isinstance(auth, GitLabAuthError):
            if auth.reason != "expired" or refreshed:
                raise UserSkipped(f"token_{auth.reason}", str(auth))
            token = await tokens.refresh(deps, user_id, token)
            refreshed = True
            pending = [o.project for o in failed]
            continue
        pending = [o.project for o in failed if is_transient(o.error)]
        if not pending or not policy.retries_left(attempt) or _run_gave_up(deps):
            break
        await retry.sleep(policy.delay(attempt, _requested_wait(failed)))
    await _after_sync(deps, user_id, token, claim, list(outcomes.values()), result)
    failures = [o for o in outcomes.values() if o.error is not None]
    idle = {
        pid: o.pending_cursor for pid, o in outcomes.items() if o.pending_cursor and not o.error
    }
    if failures:
        await _report_failures(lease, failures, idle, result)
    return Synced(all_synced=not failures, pending_cursors=idle)


async def _sync_pending(
    deps: SyncDeps,
    lease: UserLease,
    client: GitLabClient,
    pending: list[ProjectRow],
    cursors: dict[str, CursorRow],
    last_sync_at: datetime | None,
) -> list[ProjectOutcome]:
    """One attempt: the pending projects concurrently, on the lease's sessions."""
    return await asyncio.gather(
        *(
            sync_project(
                deps,
                lease.user_id,
                client,
                p,
                cursors.get(p.gitlabProjectId),
                last_sync_at,
            )
            for p in pending
        )
    )


async def _after_sync(
    deps: SyncDeps,
    user_id: str,
    token: str,
    claim: Claim,
    outcomes: list[ProjectOutcome],
    result: UserResult,
) -> None:
    """Projects the user can no longer read are reported; those that synced and are due
    are reconciled (reconcile.py: its failures never fail the user)."""
    result.access_lost = [
        AccessLostProject(
            gitlab_project_id=o.project.gitlabProjectId,
            project_path=o.project.projectPath,
            since=o.access_lost_at,
        )
        for o in outcomes
        if o.access_lost_at is not None
    ]
    synced = [o.project for o in outcomes if o.error is None and o.access_lost_at is None]
    await reconcile_due(deps, user_id, token, claim.cursors, synced, result)


def _run_gave_up(deps: SyncDeps) -> bool:
    """The run found GitLab unreachable: another attempt would send nothing (reachability.py)."""
    return deps.reachability is not None and deps.reachability.tripped


def _requested_wait(failed: list[ProjectOutcome]) -> float | None:
    """The longest wait GitLab asked for (429), if it asked."""
    waits = [o.error.retry_after for o in failed if isinstance(o.error, GitLabRateLimited)]
    return max(waits) if waits else None


async def _report_failures(
    lease: UserLease,
    failures: list[ProjectOutcome],
    idle: dict[str, CursorMove],
    result: UserResult,
) -> None:
    """The failed projects' errors, with the synced idle projects' cursors."""
    user_id = lease.user_id
    result.status, result.reason = "failed", "projects_failed"
    result.failed_projects = [
        ProjectFailure(
            gitlab_project_id=o.project.gitlabProjectId,
            project_path=o.project.projectPath,
            error=type(o.error).__name__,
            status=getattr(o.error, "status", None),
            message=describe_error(o.error),
            retry_after=getattr(o.error, "retry_after", None),
        )
        for o in failures
    ]
    try:
        async with lease.session() as s, s.begin():
            await repo.advance_cursors(s, user_id, idle)
            for o in failures:
                await repo.record_project_error(
                    s, user_id, o.project.gitlabProjectId, describe_error(o.error)
                )
    except Exception as exc:  # noqa: BLE001 - best effort: the failure is reported anyway
        logger.bind(user_id=user_id).warning(
            "could not record project errors: {}", type(exc).__name__
        )


# The request counter's child per (endpoint template, status), looked up once: labels() is a
# lock, a tuple and a dict lookup per GitLab request otherwise.
_REQUEST_COUNTERS: dict[tuple[str, int | None], Any] = {}


def _record_request(info: RequestInfo) -> None:
    key = (info.endpoint, info.status)
    counter = _REQUEST_COUNTERS.get(key)
    if counter is None:
        status = str(info.status or "error")
        counter = _REQUEST_COUNTERS[key] = metrics.GITLAB_REQUESTS.labels(info.endpoint, status)
    counter.inc()


def failure_reason(exc: BaseException) -> str:
    """The `reason` of a user that failed with `exc`."""
    if isinstance(exc, GitLabUnavailable):
        return "gitlab_unavailable"
    if isinstance(exc, GitLabRateLimited):
        return "rate_limited"
    if isinstance(exc, DBAPIError | PoolTimeoutError):
        return "database_unavailable"
    return "error"


def describe_error(exc: BaseException | None) -> str:
    """A one-line description safe to log and return: no token, no SQL parameters."""
    if exc is None:
        return ""
    if isinstance(exc, GitLabAPIError):
        return redact(str(exc))
    if isinstance(exc, DBAPIError):
        # Driver messages can quote SQL parameters (tokens): keep the class only.
        return f"database error ({type(exc.orig).__name__ if exc.orig else type(exc).__name__})"
    return redact(f"{type(exc).__name__}: {exc}")[:300]


__all__ = [
    "Claim",
    "claim_user",
    "describe_error",
    "failure_reason",
    "is_transient",
    "sync_projects",
    "sync_user",
    "user_retry_policy",
]
