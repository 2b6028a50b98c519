"""Reconciliation: items and comments a user can no longer see leave their events.

GitLab has no "deleted since" feed, and an incremental listing (`updated_after`) never shows
what was deleted, made confidential or hidden: only a complete listing does, by what it no
longer holds. So every RECONCILE_INTERVAL_HOURS each (user, project) that synced in this run
is listed whole within the window its history was synced with (`backfill_from`), issues and
merge requests of every state, on a grid that spreads the pairs over the interval
(deletions.next_slot). Then:

- stored items it no longer lists are candidates, with their comments;
- an item whose stored comment count differs from its `user_notes_count` has its notes read
  whole; its stored comments they no longer hold are candidates (an unchanged count means
  nothing to read: the cost stays near the listing's pages);
- listed items not stored (made visible again without an edit: a member re-added to a
  public project, an issue no longer confidential) are stored with their notes, unless the
  window is unknown (a project synced before this version: reconciliation only removes).
- On the newest app's schema (work items), an item is read as a work item (every thread)
  and rewritten whole when it is missing, when its stored comments (system notes aside)
  differ from its `user_notes_count`, or when its row or its comments' rows lack the newer
  columns: rows written before the app was upgraded get their activity, links and
  "projectId" convention here.

Removal happens only after both listings completed, every page fetched without an error
(any error stops the reconciliation: nothing removed, due again soon). Then either each
candidate is confirmed gone by GitLab itself (a 404 on its own URL, removals.py) and removed,
or, when the candidates are more than half of the project's stored events or more than
RECONCILE_MAX_REMOVALS, nothing is removed and the set is held: the next reconciliation
removes it only if it finds exactly the same set (an empty answer from a proxy, a cache or a
partial outage must not wipe a user's history). Cursors and LastSync are never touched.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta

from loguru import logger

from app import metrics
from app.db import repository as repo
from app.db.models import utcnow
from app.db.rows import CursorRow, EventRow, ProjectRow
from app.gitlab.client import GitLabClient, RequestInfo
from app.gitlab.schemas import GitLabIssue, GitLabMergeRequest, NoteableType
from app.sync.deletions import (
    ALL_HISTORY,
    Candidates,
    StoredProject,
    exceeds_guard,
    find_candidates,
    fingerprint,
    next_slot,
    spread_offset,
)
from app.sync.deps import SyncDeps
from app.sync.removals import confirm_gone, count_removal, load_stored
from app.sync.results import ReconcileCounts, UserResult
from app.sync.threads import read_work_item
from app.sync.transform import (
    ProjectRef,
    merge_people,
    project_ref_of,
    transform_issue,
    transform_merge_request,
    transform_note,
)

Item = GitLabIssue | GitLabMergeRequest
# A failed reconciliation is tried again after this (or the interval, if shorter).
RETRY_AFTER_FAILURE = timedelta(hours=1)


def is_due(cursor: CursorRow | None, now: datetime) -> bool:
    """Synced at least once, readable, and its time has come."""
    return (
        cursor is not None
        and cursor.cursor_at is not None
        and cursor.access_lost_at is None
        and cursor.reconcile_due_at is not None
        and cursor.reconcile_due_at <= now
    )


async def reconcile_due(
    deps: SyncDeps,
    user_id: str,
    token: str,
    cursors: dict[str, CursorRow],
    projects: Sequence[ProjectRow],
    result: UserResult,
) -> None:
    """Reconcile the projects (synced in this run) that are due; never raises for one
    reconciliation's failure, which is counted, logged, and tried again later."""
    if deps.settings.reconcile_interval_hours <= 0:
        return
    now = utcnow()
    due = [p for p in projects if is_due(cursors.get(p.gitlabProjectId), now)]
    if not due:
        return
    counts = result.reconciliation

    def count_request(info: RequestInfo) -> None:
        counts.requests += 1
        metrics.RECONCILE_REQUESTS.inc()
        metrics.GITLAB_REQUESTS.labels(info.endpoint, str(info.status or "error")).inc()

    # A client of its own: its requests are counted apart from the sync's.
    client = GitLabClient(
        deps.gitlab_wire(),
        deps.settings,
        token,
        on_request=count_request,
        reachability=deps.reachability,
    )
    for project in due:
        await _reconcile_or_postpone(deps, user_id, client, project, cursors, result)


async def _reconcile_or_postpone(
    deps: SyncDeps,
    user_id: str,
    client: GitLabClient,
    project: ProjectRow,
    cursors: dict[str, CursorRow],
    result: UserResult,
) -> None:
    pid = project.gitlabProjectId
    log = logger.bind(user_id=user_id, gitlab_project_id=pid)
    try:
        await _reconcile(deps, user_id, client, project, cursors[pid], result)
    except Exception as exc:  # noqa: BLE001 - nothing was removed; the sync itself succeeded
        result.reconciliation.failed += 1
        metrics.RECONCILIATIONS.labels("failed").inc()
        log.warning("reconciliation failed, nothing removed: {}", type(exc).__name__)
        interval = timedelta(hours=deps.settings.reconcile_interval_hours)
        async with deps.session() as s, s.begin():
            due = utcnow() + min(interval, RETRY_AFTER_FAILURE)
            await repo.schedule_reconciliation(s, user_id, pid, due)


async def _reconcile(
    deps: SyncDeps,
    user_id: str,
    client: GitLabClient,
    project: ProjectRow,
    cursor: CursorRow,
    result: UserResult,
) -> None:
    """List, decide, remove (or hold), schedule the next one."""
    ref = project_ref_of(project, deps.profile)
    stored = await load_stored(deps, user_id, ref)
    inventory = _Inventory(deps, user_id, client, ref, stored, cursor.backfill_from, result)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(inventory.read("Issue"))
        tg.create_task(inventory.read("MergeRequest"))
    candidates = find_candidates(stored, inventory.listed, inventory.notes_read)
    gone, held = await _decide(deps, client, ref, stored, candidates, cursor.reconcile_held)
    now = utcnow()
    interval_s = deps.settings.reconcile_interval_hours * 3600
    due = next_slot(now, interval_s, spread_offset(user_id, ref.gitlab_project_id, interval_s))
    async with deps.session() as s, s.begin():
        removed = await repo.delete_events(s, user_id, gone, deps.profile)
        await repo.record_reconciliation(
            s, user_id, ref.gitlab_project_id, reconciled_at=now, due_at=due, held=held
        )
    _report(user_id, ref.gitlab_project_id, removed, held, candidates, result)


async def _decide(
    deps: SyncDeps,
    client: GitLabClient,
    ref: ProjectRef,
    stored: StoredProject,
    candidates: Candidates,
    previously_held: str | None,
) -> tuple[list[str], str | None]:
    """(events to remove, fingerprint of a held set). A big set is held unless the previous
    reconciliation held exactly this one; a small set is confirmed by GitLab item by item."""
    if candidates.count == 0:
        return [], None
    if exceeds_guard(candidates.count, stored.total, deps.settings.reconcile_max_removals):
        held = fingerprint(candidates.all_ids())
        if held == previously_held:
            return candidates.all_ids(), None
        return [], held
    return await confirm_gone(client, ref.gitlab_project_id, stored, candidates), None


def _report(
    user_id: str,
    gitlab_project_id: str,
    removed: int,
    held: str | None,
    candidates: Candidates,
    result: UserResult,
) -> None:
    counts: ReconcileCounts = result.reconciliation
    counts.projects += 1
    result.removed += removed
    outcome = "held" if held else ("removed" if removed else "clean")
    counts.held += held is not None
    metrics.RECONCILIATIONS.labels(outcome).inc()
    if removed:
        count_removal(user_id, gitlab_project_id, removed, "reconciliation")
    if held:
        logger.bind(user_id=user_id, gitlab_project_id=gitlab_project_id).warning(
            "reconciliation would remove {} events: held until the next one finds the same",
            candidates.count,
        )


class _Inventory:
    """One reconciliation's complete listings: what GitLab lists, the notes read whole, and
    the listed items that were missing (stored with their notes)."""

    def __init__(
        self,
        deps: SyncDeps,
        user_id: str,
        client: GitLabClient,
        ref: ProjectRef,
        stored: StoredProject,
        backfill_from: datetime | None,
        result: UserResult,
    ) -> None:
        self.deps, self.user_id, self.client, self.ref = deps, user_id, client, ref
        self.stored = stored
        # The window the history was synced with; unknown (None): list all, store nothing.
        self.updated_after = None if backfill_from in (None, ALL_HISTORY) else backfill_from
        self.stores_missing = backfill_from is not None
        self.result = result
        self.listed: set[str] = set()
        self.notes_read: dict[str, set[str]] = {}

    async def read(self, kind: NoteableType) -> None:
        async for page in self._pages(kind):
            if self.deps.profile.work_items:
                await self._store_work_items(page)
                continue
            rows = [self._row(item) for item in page]
            self.listed.update(row["gitlabEventId"] for row in rows)
            missing = [
                (item, row)
                for item, row in zip(page, rows, strict=True)
                if row["gitlabEventId"] not in self.stored.items and self.stores_missing
            ]
            recount = [
                (item, row)
                for item, row in zip(page, rows, strict=True)
                if row["gitlabEventId"] in self.stored.items
                and len(self.stored.comments_of(row["gitlabEventId"])) != item.user_notes_count
            ]
            await self._store(kind, missing, recount)

    async def _store_work_items(self, page: Sequence[Item]) -> None:
        """Work items: listed, and rewritten whole (every thread read) where stored rows
        cannot be trusted to match: missing, a comment count that differs, or rows without
        the newer columns."""
        rewrite: list[Item] = []
        for item in page:
            key = f"{'issue' if isinstance(item, GitLabIssue) else 'mr'}-{item.id}"
            self.listed.add(key)
            if key not in self.stored.items:
                if self.stores_missing:
                    rewrite.append(item)
            elif (
                not self.stored.is_complete(key)
                or self.stored.user_comment_count(key) != item.user_notes_count
            ):
                rewrite.append(item)
        if not rewrite:
            return
        bundles = await asyncio.gather(*(read_work_item(self.client, self.ref, i) for i in rewrite))
        for bundle in bundles:
            self.notes_read[bundle.item["gitlabEventId"]] = {
                n["gitlabEventId"] for n in bundle.notes
            }
        people = merge_people(p for b in bundles for p in b.people)
        async with self.deps.session() as s, s.begin():
            stored = await repo.store_work_items(
                s, self.user_id, self.deps.profile, bundles, people
            )
        for counts in (stored.items, stored.notes):
            self.result.stored += counts.inserted
            self.result.updated += counts.updated

    def _pages(self, kind: NoteableType) -> AsyncIterator[Sequence[Item]]:
        pid = self.ref.gitlab_project_id
        if kind == "Issue":
            return self.client.issues(pid, self.updated_after)
        return self.client.merge_requests(pid, self.updated_after)

    def _row(self, item: Item) -> EventRow:
        if isinstance(item, GitLabIssue):
            return transform_issue(item, self.ref)
        return transform_merge_request(item, self.ref)

    async def _store(
        self,
        kind: NoteableType,
        missing: list[tuple[Item, EventRow]],
        recount: list[tuple[Item, EventRow]],
    ) -> None:
        """Missing items with all their notes, and all notes of the recounted items."""
        read = [*[(i, r) for i, r in missing if i.user_notes_count > 0], *recount]
        parts = await asyncio.gather(*(self._notes(kind, item) for item, _ in read))
        for (_, row), part in zip(read, parts, strict=True):
            self.notes_read[row["gitlabEventId"]] = {n["gitlabEventId"] for n in part}
        rows = [row for _, row in missing] + [n for part in parts for n in part]
        if not rows:
            return
        async with self.deps.session() as s, s.begin():
            counts = await repo.upsert_events(s, self.user_id, rows)
        self.result.stored += counts.inserted
        self.result.updated += counts.updated

    async def _notes(self, kind: NoteableType, item: Item) -> list[EventRow]:
        rows: list[EventRow] = []
        pid = self.ref.gitlab_project_id
        async for page in self.client.notes(
            pid, kind, item.iid, None, noteable_web_url=item.web_url
        ):
            rows.extend(transform_note(note, self.ref) for note in page)
        return rows


__all__ = ["RETRY_AFTER_FAILURE", "is_due", "reconcile_due"]
