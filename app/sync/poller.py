"""One poll run: choose the users, sync them concurrently, summarize, record the run."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from time import perf_counter
from typing import TYPE_CHECKING

from loguru import logger

if TYPE_CHECKING:
    from loguru import Logger

from app import metrics
from app.db import repository as repo
from app.db.models import utcnow
from app.gitlab.reachability import ReachabilityDetector
from app.logging import redact
from app.sync.deps import SyncDeps
from app.sync.results import PollSummary, RunAuth, TriggerName, UserResult, summarize
from app.sync.shard import Shard
from app.sync.user_sync import sync_user

ProgressCallback = Callable[[UserResult, int, int], None]


@dataclass
class PollOutcome:
    summary: PollSummary
    # 200 when the run completed (even with failed users); 503 when it could not run.
    status_code: int
    retry_after: int | None = None


class _GitLabDownDetector:
    """Several users in a row failing with GitLab unavailable means GitLab is down."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.streak = 0
        self.down = False

    def observe(self, result: UserResult) -> None:
        if result.status == "skipped":
            return
        if _failed_because_gitlab_down(result):
            self.streak += 1
            if self.streak >= self.threshold:
                self.down = True
        else:
            self.streak = 0


def _failed_because_gitlab_down(result: UserResult) -> bool:
    if result.status != "failed":
        return False
    if result.reason == "gitlab_unavailable":
        return True
    return bool(result.failed_projects) and all(
        f.error == "GitLabUnavailable" for f in result.failed_projects
    )


async def run_poll(
    deps: SyncDeps,
    *,
    user_ids: Sequence[str] | None = None,
    trigger: TriggerName = "api",
    manual: bool | None = None,
    on_user_done: ProgressCallback | None = None,
    auth: RunAuth | None = None,
    shard: Shard | None = None,
) -> PollOutcome:
    """Sync every user with monitored projects, or the given users.

    Naming users is a manual refresh (users synced within MIN_REFRESH_INTERVAL are skipped
    as "fresh") unless `manual=False` says the caller is a schedule fanning out per user.
    `auth` (how an /api/poll caller authenticated) is recorded with the run and summary.
    `shard` limits an all-users run to that shard's users (callers refuse it with user_ids).
    """
    if shard is not None and user_ids is not None:
        raise ValueError("a shard selects among all users; it does not combine with user_ids")
    run = _Run(deps, trigger, on_user_done, auth, shard)
    metrics.RUNS_IN_PROGRESS.inc()
    try:
        try:
            targets = await run.start(user_ids)
        except Exception as exc:  # noqa: BLE001 - no database, no run
            return run.unavailable(exc)
        await run.fan_out(targets, manual=user_ids is not None if manual is None else manual)
        return await run.finish(user_ids or targets)
    finally:
        metrics.RUNS_IN_PROGRESS.dec()


class _Run:
    """One poll run: its id, its results so far, and its two GitLab detectors: users failing
    with GitLab unavailable (5xx, timeouts), and requests unable to connect at all."""

    def __init__(
        self,
        deps: SyncDeps,
        trigger: TriggerName,
        on_user_done: ProgressCallback | None,
        auth: RunAuth | None,
        shard: Shard | None = None,
    ) -> None:
        settings = deps.settings
        self.reachability = ReachabilityDetector(
            settings.gitlab_unreachable_threshold, settings.gitlab_instance_url
        )
        # Every GitLab client of this run shares the detector (user_sync.py, reconcile.py).
        self.deps = replace(deps, reachability=self.reachability)
        self.auth = auth
        self.shard = shard
        self.trigger = trigger
        self.on_user_done = on_user_done
        self.run_id = uuid.uuid4().hex
        self.started_at = utcnow()
        self.t0 = perf_counter()
        self.log = logger.bind(run_id=self.run_id, trigger=trigger)
        self.results: list[UserResult] = []
        self.total = 0
        self.detector = _GitLabDownDetector(settings.gitlab_down_threshold)

    async def start(self, user_ids: Sequence[str] | None) -> list[str]:
        """Record the run, read the schema profile (the app may have been upgraded since
        the last run) and choose its users; named users that cannot run are skipped."""
        async with self.deps.sessionmaker() as s, s.begin():
            self.deps = replace(self.deps, profile=await repo.read_schema_profile(s))
            await repo.create_poll_run(
                s,
                self.run_id,
                self.trigger,
                self.started_at,
                auth_method=self.auth.method if self.auth else None,
                auth_email=self.auth.email if self.auth else None,
                shard=(self.shard.index, self.shard.count) if self.shard else None,
            )
            if user_ids is None:
                users = await repo.users_to_poll(s)
                return [u.id for u in users if self.shard is None or self.shard.holds(u.id)]
            wanted = list(dict.fromkeys(user_ids))
            known = await repo.users_by_ids(s, wanted)
        targets = []
        for uid in wanted:
            if uid not in known:
                self.results.append(_skip(uid, "not_found"))
            elif known[uid].project_count == 0:
                self.results.append(_skip(uid, "no_projects"))
            else:
                targets.append(uid)
        return targets

    def unavailable(self, exc: Exception) -> PollOutcome:
        self.log.error("poll could not start: database unavailable ({})", type(exc).__name__)
        metrics.POLL_RUNS.labels("unavailable").inc()
        summary = self._summary(results=[], error="database unavailable")
        return PollOutcome(summary, status_code=503, retry_after=30)

    async def fan_out(self, targets: list[str], *, manual: bool) -> None:
        """Every target user, at most POLL_CONCURRENCY at once; the rest skipped once GitLab
        is seen down or unreachable (reported as not attempted, their cursors untouched)."""
        self.total = len(targets) + len(self.results)
        if self.on_user_done is not None:
            for i, r in enumerate(self.results, 1):
                self.on_user_done(r, i, self.total)
        semaphore = asyncio.Semaphore(self.deps.settings.poll_concurrency)

        async def one(user_id: str) -> None:
            async with semaphore:
                if self.reachability.tripped:
                    result = _skip(user_id, "gitlab_unreachable")
                elif self.detector.down:
                    result = _skip(user_id, "gitlab_unavailable")
                else:
                    result = await sync_user(self.deps, user_id, self.run_id, manual=manual)
            self._done(result)

        await asyncio.gather(*(one(uid) for uid in targets))

    def _done(self, result: UserResult) -> None:
        self.results.append(result)
        self.detector.observe(result)
        if self.on_user_done is not None:
            self.on_user_done(result, len(self.results), self.total)

    async def finish(self, order: Sequence[str]) -> PollOutcome:
        """Summarize (in the caller's order), record the run, count it in the metrics."""
        position = {uid: i for i, uid in enumerate(order)}
        self.results.sort(key=lambda r: position.get(r.user_id, len(position)))
        error, detail = self._stopped_because()
        down = error is not None
        summary = self._summary(self.results, error=error, detail=detail)
        status_code = 503 if down else 200
        await _record_run(self.deps, summary, status_code, self.log)
        metrics.RUN_DURATION.observe(summary.duration_ms / 1000)
        outcome = "unavailable" if down else ("success" if summary.success else "failure")
        metrics.POLL_RUNS.labels(outcome).inc()
        if summary.success and not down:
            metrics.LAST_SUCCESS.set(utcnow().timestamp())
        self.log.bind(
            processed=summary.processed,
            failed=summary.failed,
            skipped=summary.skipped,
            total=summary.total,
            stored=summary.events.stored,
            updated=summary.events.updated,
            removed=summary.events.removed,
            reconcile_requests=summary.reconciliation.requests,
            duration_ms=summary.duration_ms,
            success=summary.success,
            error=summary.error,
        ).info("poll run finished")
        retry_after = self.deps.settings.gitlab_down_retry_after_seconds if down else None
        return PollOutcome(summary, status_code, retry_after=retry_after)

    def _stopped_because(self) -> tuple[str | None, str | None]:
        """Why the run stopped early (a code and a sentence), or (None, None)."""
        if self.reachability.tripped:
            # Unreachable wins: users failing on it also look "unavailable" to the other one.
            synced = sum(1 for r in self.results if r.status == "processed")
            skipped = sum(1 for r in self.results if r.reason == "gitlab_unreachable")
            return "gitlab_unreachable", (
                f"{self.reachability.describe()}. The run stopped early: {synced} of "
                f"{len(self.results)} users synced, {skipped} not attempted; nothing is lost "
                "(unsynced projects keep their cursors for the next run)"
            )
        if self.detector.down:
            return "gitlab_unavailable", None
        return None, None

    def _summary(
        self, results: list[UserResult], error: str | None, detail: str | None = None
    ) -> PollSummary:
        return summarize(
            results=results,
            run_id=self.run_id,
            trigger=self.trigger,
            started_at=self.started_at,
            duration_ms=round((perf_counter() - self.t0) * 1000),
            error=error,
            detail=detail,
            auth=self.auth,
            shard=self.shard,
        )


def _skip(user_id: str, reason: str) -> UserResult:
    return UserResult(user_id=user_id, status="skipped", reason=reason)


async def _record_run(deps: SyncDeps, summary: PollSummary, status_code: int, log: Logger) -> None:
    try:
        async with deps.sessionmaker() as s, s.begin():
            await repo.finish_poll_run(
                s,
                summary.run_id,
                finished_at=utcnow(),
                success=summary.success,
                status_code=status_code,
                total=summary.total,
                processed=summary.processed,
                failed=summary.failed,
                skipped=summary.skipped,
                skipped_reasons=summary.skipped_reasons,
                events_stored=summary.events.stored,
                events_updated=summary.events.updated,
                error=summary.error,
            )
    except Exception as exc:  # noqa: BLE001 - the summary still goes back to the caller
        log.warning("could not record the run: {}", redact(type(exc).__name__))
