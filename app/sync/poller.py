"""One poll run: choose the users, sync them concurrently, summarize, record the run."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import perf_counter

from loguru import logger

from app import metrics
from app.db import repository as repo
from app.db.models import utcnow
from app.logging import redact
from app.sync.deps import SyncDeps
from app.sync.results import PollSummary, RunAuth, UserResult, summarize
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
    trigger: str = "api",
    manual: bool | None = None,
    on_user_done: ProgressCallback | None = None,
    auth: RunAuth | None = None,
) -> PollOutcome:
    """Sync every user with monitored projects, or the given users.

    Naming users is a manual refresh (users synced within MIN_REFRESH_INTERVAL are skipped
    as "fresh") unless `manual=False` says the caller is a schedule fanning out per user.
    `auth` (how an /api/poll caller authenticated) is recorded with the run and summary.
    """
    settings = deps.settings
    run_id = uuid.uuid4().hex
    started_at = utcnow()
    t0 = perf_counter()
    log = logger.bind(run_id=run_id, trigger=trigger)
    if manual is None:
        manual = user_ids is not None
    results: list[UserResult] = []
    metrics.RUNS_IN_PROGRESS.inc()
    try:
        try:
            async with deps.sessionmaker() as s, s.begin():
                await repo.create_poll_run(
                    s,
                    run_id,
                    trigger,
                    started_at,
                    auth_method=auth.method if auth else None,
                    auth_email=auth.email if auth else None,
                )
                if user_ids is None:
                    targets = [u.id for u in await repo.users_to_poll(s)]
                else:
                    known = await repo.users_by_ids(s, list(dict.fromkeys(user_ids)))
                    targets = []
                    for uid in dict.fromkeys(user_ids):
                        if uid not in known:
                            results.append(_skip(uid, "not_found"))
                        elif known[uid].project_count == 0:
                            results.append(_skip(uid, "no_projects"))
                        else:
                            targets.append(uid)
        except Exception as exc:  # noqa: BLE001 - no database, no run
            log.error("poll could not start: database unavailable ({})", type(exc).__name__)
            outcome = PollOutcome(
                summarize(
                    results=[],
                    run_id=run_id,
                    trigger=trigger,
                    started_at=started_at,
                    duration_ms=round((perf_counter() - t0) * 1000),
                    error="database unavailable",
                    auth=auth,
                ),
                status_code=503,
                retry_after=30,
            )
            metrics.POLL_RUNS.labels("unavailable").inc()
            return outcome

        total = len(targets) + len(results)
        detector = _GitLabDownDetector(settings.gitlab_down_threshold)
        semaphore = asyncio.Semaphore(settings.poll_concurrency)

        def done(result: UserResult) -> None:
            results.append(result)
            detector.observe(result)
            if on_user_done is not None:
                on_user_done(result, len(results), total)

        async def one(user_id: str) -> None:
            async with semaphore:
                if detector.down:
                    done(_skip(user_id, "gitlab_unavailable"))
                    return
                done(await sync_user(deps, user_id, run_id, manual=manual))

        if on_user_done is not None:
            for i, r in enumerate(results, 1):
                on_user_done(r, i, total)
        await asyncio.gather(*(one(uid) for uid in targets))

        # Keep the caller's order: easier to read and to compare.
        order = {uid: i for i, uid in enumerate(user_ids or targets)}
        results.sort(key=lambda r: order.get(r.user_id, len(order)))
        duration_ms = round((perf_counter() - t0) * 1000)
        error = "gitlab unavailable" if detector.down else None
        summary = summarize(
            results=results,
            run_id=run_id,
            trigger=trigger,
            started_at=started_at,
            duration_ms=duration_ms,
            error=error,
            auth=auth,
        )
        status_code = 503 if detector.down else 200
        await _finish(deps, summary, status_code, log)
        metrics.RUN_DURATION.observe(duration_ms / 1000)
        metrics.POLL_RUNS.labels(
            "unavailable" if detector.down else ("success" if summary.success else "failure")
        ).inc()
        if summary.success and not detector.down:
            metrics.LAST_SUCCESS.set(utcnow().timestamp())
        log.bind(
            processed=summary.processed,
            failed=summary.failed,
            skipped=summary.skipped,
            total=summary.total,
            stored=summary.events.stored,
            updated=summary.events.updated,
            duration_ms=duration_ms,
            success=summary.success,
        ).info("poll run finished")
        return PollOutcome(
            summary,
            status_code,
            retry_after=settings.gitlab_down_retry_after_seconds if detector.down else None,
        )
    finally:
        metrics.RUNS_IN_PROGRESS.dec()


def _skip(user_id: str, reason: str) -> UserResult:
    return UserResult(user_id=user_id, status="skipped", reason=reason)


async def _finish(deps: SyncDeps, summary: PollSummary, status_code: int, log) -> None:
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
                events_stored=summary.events.stored,
                events_updated=summary.events.updated,
                error=summary.error,
            )
    except Exception as exc:  # noqa: BLE001 - the summary still goes back to the caller
        log.warning("could not record the run: {}", redact(type(exc).__name__))
