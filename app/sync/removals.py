"""Removing events GitLab no longer shows a user: confirm each one, then delete, log, count.

Shared by the comment check of a complete notes read (project_sync.py) and reconciliation
(reconcile.py). A candidate is removed only after GitLab answers 404 for it on its own
(`GET /projects/:id/issues/:iid`, `.../notes/:note_id`): a listing read with offset
pagination can skip an item when another one is deleted while it is read, and such an item
must not be taken for deleted. A 200 keeps it; any other error stops the removal (nothing is
removed) and is raised to the caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Literal

from loguru import logger

from app import metrics
from app.db import repository as repo
from app.gitlab.client import GitLabClient
from app.gitlab.errors import GitLabAuthError, GitLabForbidden, GitLabNotFound
from app.sync.deletions import (
    Candidates,
    StoredEvent,
    StoredProject,
    item_ref,
    note_id,
)
from app.sync.deps import SyncDeps
from app.sync.transform import ProjectRef

Cause = Literal["access_lost", "reconciliation", "notes"]


async def load_stored(deps: SyncDeps, user_id: str, ref: ProjectRef) -> StoredProject:
    """The user's stored events of the project, indexed for removal decisions."""
    async with deps.session() as s:
        rows = await repo.project_events(s, user_id, ref.event_project_ids, deps.profile)
    return StoredProject.from_events(StoredEvent(*r) for r in rows)


async def _answers_404(request: Awaitable[Any]) -> bool:
    try:
        await request
    except GitLabNotFound:
        return True
    except GitLabForbidden as exc:
        if isinstance(exc, GitLabAuthError):
            raise  # the token lacks a scope: nothing can be confirmed
        return False  # refused, not gone: kept
    return False


async def confirm_gone(
    client: GitLabClient, gitlab_project_id: str, stored: StoredProject, candidates: Candidates
) -> list[str]:
    """The candidates GitLab confirms gone, one request each; a confirmed item takes its
    comments with it. Candidates whose URL names no item (another shape) are kept."""
    checks: list[tuple[list[str], Awaitable[Any]]] = []
    for item in candidates.items:
        ref = item_ref(stored.items[item])
        if ref is not None:
            request = client.item(gitlab_project_id, ref[0], ref[1])
            checks.append(([item, *stored.comments_of(item)], request))
    parents = {c: url for url, ids in stored.comments.items() for c in ids}
    for comment in candidates.comments:
        ref, nid = item_ref(parents[comment]), note_id(comment)
        if ref is not None and nid is not None:
            checks.append(([comment], client.note(gitlab_project_id, ref[0], ref[1], nid)))
    gone = await asyncio.gather(*(_answers_404(request) for _, request in checks))
    return [
        event
        for (events, _), is_gone in zip(checks, gone, strict=True)
        if is_gone
        for event in events
    ]


async def remove_events(
    deps: SyncDeps, user_id: str, gitlab_project_id: str, event_ids: list[str], cause: Cause
) -> int:
    """Delete the events (one transaction); counted and logged with numbers only."""
    if not event_ids:
        return 0
    async with deps.session() as s, s.begin():
        removed = await repo.delete_events(s, user_id, event_ids)
    count_removal(user_id, gitlab_project_id, removed, cause)
    return removed


def count_removal(user_id: str, gitlab_project_id: str, removed: int, cause: Cause) -> None:
    metrics.EVENTS_REMOVED.labels(cause).inc(removed)
    logger.bind(user_id=user_id, gitlab_project_id=gitlab_project_id, cause=cause).info(
        "removed {} events GitLab no longer shows this user", removed
    )


__all__ = [
    "Cause",
    "confirm_gone",
    "count_removal",
    "load_stored",
    "remove_events",
]
