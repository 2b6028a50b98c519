"""A monitored project the user can no longer read: confirmed twice, then its events removed.

GitLab answers a user removed from a private project (or a deleted project) with
`404 Project Not Found`, exactly as for a project that never existed, while the token itself
still works. So a listing refused with 404, or 403 other than `insufficient_scope`, is
checked: `GET /user` must answer 200 (otherwise the token is the problem and the user is
skipped for re-authorization) and `GET /projects/:id` must refuse too (otherwise only the
listing was refused, e.g. issues disabled: reported, nothing removed). A run where both hold
is a confirmation. The first one is recorded (`access_check_at`); one at least
ACCESS_LOSS_CONFIRM_MINUTES later removes the user's events of the project, keeps its
MonitoredProject row and marks it `access_lost_at`. A 401, a 403 insufficient_scope, a 5xx, a
timeout or a 429 never gets here: they are not refusals.

While the mark is set, a run asks only `GET /projects/:id`. Once it answers, the project is
synced with no cursor, which backfills it like a newly added one (`fetch_since`); the first
successful sync clears the mark.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from loguru import logger

from app import metrics
from app.db import repository as repo
from app.db.models import utcnow
from app.db.rows import CursorRow, ProjectRow
from app.gitlab.client import GitLabClient
from app.gitlab.errors import GitLabAuthError, GitLabForbidden, GitLabNotFound
from app.sync.deletions import access_loss_step
from app.sync.deps import SyncDeps
from app.sync.removals import count_removal
from app.sync.transform import project_ref_of


@dataclass(frozen=True, slots=True)
class AccessLoss:
    at: datetime
    removed: int


def is_refusal(exc: BaseException | None) -> bool:
    """A 404, or a 403 that is not about the token's scope: the project may be out of reach."""
    return isinstance(exc, GitLabNotFound | GitLabForbidden) and not isinstance(
        exc, GitLabAuthError
    )


async def _project_refused(client: GitLabClient, project: ProjectRow) -> bool:
    try:
        await client.project(project.gitlabProjectId)
    except (GitLabNotFound, GitLabForbidden) as exc:
        if is_refusal(exc):
            return True
        raise
    return False


async def still_lost(
    client: GitLabClient, project: ProjectRow, cursor: CursorRow | None
) -> datetime | None:
    """For a project marked lost: the mark's time while GitLab still refuses it, None once it
    answers (access is back: the caller syncs, which backfills)."""
    if cursor is None or cursor.access_lost_at is None:
        return None
    if await _project_refused(client, project):
        return cursor.access_lost_at
    logger.bind(gitlab_project_id=project.gitlabProjectId).info(
        "access to a lost project is back: backfilling it"
    )
    return None


async def confirm_refusal(
    deps: SyncDeps,
    user_id: str,
    client: GitLabClient,
    project: ProjectRow,
    cursor: CursorRow | None,
) -> AccessLoss | None:
    """After a refused listing: the loss if this run confirms it for the second time (the
    events are then removed), else None. GitLab errors of the checks are raised."""
    await client.current_user()  # a 401 or a missing scope raises: the token, not the project
    pid = project.gitlabProjectId
    refused = await _project_refused(client, project)
    first_check = cursor.access_check_at if cursor is not None else None
    if not refused:
        if first_check is not None:  # this run saw the project: confirmations start over
            async with deps.session() as s, s.begin():
                await repo.record_access_check(s, user_id, pid, None)
        return None
    now = utcnow()
    step = access_loss_step(first_check, now, deps.settings.access_loss_confirm_minutes)
    if step == "wait":
        return None
    ref = project_ref_of(project, deps.profile)
    async with deps.session() as s, s.begin():
        if step == "first":
            await repo.record_access_check(s, user_id, pid, now)
            logger.bind(user_id=user_id, gitlab_project_id=pid).warning(
                "project refused while the token works: access loss to be confirmed"
            )
            return None
        removed = await repo.delete_project_events(s, user_id, ref.event_project_ids)
        await repo.mark_access_lost(s, user_id, pid, now)
    metrics.ACCESS_LOST.inc()
    count_removal(user_id, pid, removed, "access_lost")
    return AccessLoss(at=now, removed=removed)


__all__ = ["AccessLoss", "confirm_refusal", "is_refusal", "still_lost"]
