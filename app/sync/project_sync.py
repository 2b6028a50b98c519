"""One project of one user: list issues and merge requests, fetch their new notes, store
them page by page, and move the project's cursor once everything since the last one is stored.

The invariant: a project's cursor only moves after every page fetched since the previous
cursor is stored. A failure anywhere leaves it where it was, so the next attempt or run
fetches the gap again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from app import metrics
from app.db import repository as repo
from app.db.models import utcnow
from app.db.rows import CursorMove, CursorRow, EventRow, ProjectRow, WorkItemBundle
from app.gitlab.client import GitLabClient
from app.gitlab.errors import GitLabBadResponse
from app.gitlab.schemas import GitLabIssue, GitLabMergeRequest, NoteableType
from app.settings import Settings
from app.sync import access
from app.sync.deletions import (
    ALL_HISTORY,
    Candidates,
    StoredProject,
    first_reconcile_at,
    missing_comments,
)
from app.sync.deps import SyncDeps
from app.sync.removals import confirm_gone, load_stored, remove_events
from app.sync.threads import read_work_item
from app.sync.transform import (
    merge_people,
    project_ref_of,
    transform_issue,
    transform_merge_request,
    transform_note,
)

# Pages of one list whose notes and storage may run while the next page is fetched.
PAGES_IN_FLIGHT = 4
# Re-listings of items changed during a multi-page fetch before the project is retried later.
RELIST_PASSES = 3

Item = GitLabIssue | GitLabMergeRequest


@dataclass(slots=True)
class ProjectOutcome:
    project: ProjectRow
    stored: int = 0
    updated: int = 0
    removed: int = 0
    # Set while the user cannot read the project (its events removed); not an error.
    access_lost_at: datetime | None = None
    error: BaseException | None = None
    pages_stored: int = 0
    # A listing that stored nothing leaves its cursor to the caller, who writes every such
    # cursor of the user in one statement (with LastSync): no transaction per idle project.
    pending_cursor: CursorMove | None = None


def _adopted(project: ProjectRow, cursor: CursorRow | None, last_sync_at: datetime | None) -> bool:
    """Covered by the original app's per-user LastSync (an adopted database), never by a
    cursor of ours. Not after an access loss: those events were removed."""
    lost = cursor is not None and cursor.access_lost_at is not None
    return not lost and last_sync_at is not None and project.createdAt <= last_sync_at


def fetch_since(
    settings: Settings,
    project: ProjectRow,
    cursor: CursorRow | None,
    last_sync_at: datetime | None,
    now: datetime,
    *,
    work_items: bool = False,
) -> datetime | None:
    """Where this project's fetch starts: cursor minus overlap, else LastSync, else backfill.

    `work_items` (the newest app's schema): LastSync is no watermark there. The newest app
    fetches only the 25 most recently updated open issues and MRs and moves LastSync anyway
    (its Refresh button too), so a project without a cursor of ours is backfilled.
    """
    overlap = timedelta(seconds=settings.sync_overlap_seconds)
    if cursor is not None and cursor.cursor_at is not None:
        return cursor.cursor_at - overlap
    # Adopted database: the original's per-user LastSync covers projects that existed then.
    # A project added after it never had its history fetched, so it is backfilled, and so is
    # one whose access came back after a loss.
    if not work_items and last_sync_at is not None and _adopted(project, cursor, last_sync_at):
        return last_sync_at - overlap
    if settings.sync_backfill_days == 0:
        return None
    return now - timedelta(days=settings.sync_backfill_days)


def backfill_from(
    project: ProjectRow,
    cursor: CursorRow | None,
    last_sync_at: datetime | None,
    since: datetime | None,
) -> datetime | None:
    """Where the stored history begins, kept by the project's first sync for reconciliation:
    `since` (ALL_HISTORY for everything), or None (unknown) for a project the original app
    synced, which may have stored older items."""
    if _adopted(project, cursor, last_sync_at):
        return None
    return since if since is not None else ALL_HISTORY


def first_reconcile_due(
    settings: Settings, user_id: str, project: ProjectRow, now: datetime
) -> datetime | None:
    hours = settings.reconcile_interval_hours
    if hours <= 0:
        return None
    return first_reconcile_at(now, hours * 3600, user_id, project.gitlabProjectId)


async def sync_project(
    deps: SyncDeps,
    user_id: str,
    client: GitLabClient,
    project: ProjectRow,
    since_cursor: CursorRow | None,
    last_sync_at: datetime | None,
) -> ProjectOutcome:
    """Sync one project; its errors are returned in the outcome, never raised.

    A project marked lost is only asked for (`GET /projects/:id`) until it answers again; a
    refused listing is checked for an access loss (access.py).

    The cursor is written here when the fetch stored pages (their progress is kept even if
    the user fails later); otherwise it is returned as `pending_cursor`.
    """
    outcome = ProjectOutcome(project=project)
    try:
        outcome.access_lost_at = await access.still_lost(client, project, since_cursor)
        if outcome.access_lost_at is None:
            await _fetch(deps, user_id, client, since_cursor, last_sync_at, outcome)
    except Exception as exc:  # noqa: BLE001 - reported per project; the cursor stays put
        outcome.error = first_leaf(exc)
    if access.is_refusal(outcome.error):
        await _check_refusal(deps, user_id, client, since_cursor, outcome)
    return outcome


async def _fetch(
    deps: SyncDeps,
    user_id: str,
    client: GitLabClient,
    cursor: CursorRow | None,
    last_sync_at: datetime | None,
    outcome: ProjectOutcome,
) -> None:
    """Both listings stored, deleted comments removed, then the cursor moved."""
    project = outcome.project
    # The cursor moves to when this fetch STARTED: anything changed during the fetch is at
    # or after it, so the next run sees it (the original lost such changes).
    fetch_started = utcnow()
    since = fetch_since(
        deps.settings,
        project,
        cursor,
        last_sync_at,
        fetch_started,
        work_items=deps.profile.work_items,
    )
    listing = _Listing(deps, user_id, client, project, since, fetch_started, outcome)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(listing.sync("Issue"))
        tg.create_task(listing.sync("MergeRequest"))
    await listing.remove_deleted_comments()
    move = CursorMove(
        fetch_started,
        backfill_from=backfill_from(project, cursor, last_sync_at, since),
        reconcile_due_at=first_reconcile_due(deps.settings, user_id, project, fetch_started),
    )
    if not outcome.pages_stored and not outcome.removed:
        outcome.pending_cursor = move
        return
    async with deps.statement() as db:  # one statement: no transaction around it
        await repo.advance_cursors(db, user_id, {project.gitlabProjectId: move})


async def _check_refusal(
    deps: SyncDeps,
    user_id: str,
    client: GitLabClient,
    cursor: CursorRow | None,
    outcome: ProjectOutcome,
) -> None:
    """A refused listing: an access loss confirmed a second time is no error (the events are
    gone, the project marked); otherwise the refusal, or the checks' own error, is reported."""
    try:
        loss = await access.confirm_refusal(deps, user_id, client, outcome.project, cursor)
    except Exception as exc:  # noqa: BLE001 - a 401 here skips the user, a 5xx is retried
        outcome.error = first_leaf(exc)
        return
    if loss is not None:
        outcome.error, outcome.access_lost_at, outcome.removed = None, loss.at, loss.removed


def first_leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups from task groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


class _Listing:
    """The issue and merge request listings of one project fetch, stored as they arrive."""

    def __init__(
        self,
        deps: SyncDeps,
        user_id: str,
        client: GitLabClient,
        project: ProjectRow,
        since: datetime | None,
        fetch_started: datetime,
        outcome: ProjectOutcome,
    ) -> None:
        self.deps = deps
        self.user_id = user_id
        self.client = client
        self.project = project
        self.ref = project_ref_of(project, deps.profile)
        self.since = since
        self.fetch_started = fetch_started
        self.outcome = outcome
        # The newest app's schema: every note of a changed item is read (its threads), the
        # item stored with them as a work item (transform.work_item_bundle).
        self.work_items = deps.profile.work_items
        # Item event id -> its comment event ids, for items whose notes were read whole
        # (no `since`): the stored comments they lack were deleted at GitLab.
        self.notes_read: dict[str, set[str]] = {}
        # Work items: item url -> comments linked to its row that its threads no longer hold.
        self.unlisted_comments: dict[str, list[str]] = {}

    async def sync(self, kind: NoteableType) -> None:
        """Every page of issues (or MRs) since `since`, with their new notes, stored.

        An item edited while a listing of several pages is read jumps to the already-read
        first page (updated_at desc), so that listing never shows it. Its updated_at is then
        at or after `fetch_started`: such items are listed again, their notes fetched from
        `since`, until one listing fits on one page (one consistent answer). Without this the
        next run would list the item again but read its notes only from its own `since`, and
        every comment older than that would be lost for good.
        """
        handled: dict[int, datetime] = {}  # item id -> the updated_at stored in this fetch
        pages = await self._drain(kind, self.since, handled)
        for _ in range(RELIST_PASSES):
            if pages <= 1:
                return
            pages = await self._drain(kind, self.fetch_started, handled)
        if pages > 1:
            raise GitLabBadResponse(
                "listing kept changing while it was read; retrying later", endpoint=""
            )

    async def _drain(
        self, kind: NoteableType, updated_after: datetime | None, handled: dict[int, datetime]
    ) -> int:
        """Store one listing (pages in flight bounded); return how many HTTP pages it took."""
        pages = 0

        def count() -> None:
            nonlocal pages
            pages += 1

        gate = asyncio.Semaphore(PAGES_IN_FLIGHT)
        async with asyncio.TaskGroup() as tg:
            async for page in self._pages(kind, updated_after, count):
                fresh = [it for it in page if handled.get(it.id) != it.updated_at]
                handled.update((it.id, it.updated_at) for it in fresh)
                if fresh:
                    # Bounded: at most PAGES_IN_FLIGHT pages held in memory at once.
                    await gate.acquire()
                    tg.create_task(self._store_page(kind, fresh, gate))
        return pages

    def _pages(
        self, kind: NoteableType, updated_after: datetime | None, on_page: Callable[[], None]
    ) -> AsyncIterator[Sequence[Item]]:
        pid = self.project.gitlabProjectId
        if kind == "Issue":
            return self.client.issues(pid, updated_after, on_page=on_page)
        return self.client.merge_requests(pid, updated_after, on_page=on_page)

    async def _store_page(
        self, kind: NoteableType, page: Sequence[Item], gate: asyncio.Semaphore
    ) -> None:
        """A page and its items' new notes, stored in one transaction."""
        try:
            if self.work_items:
                reads = (read_work_item(self.client, self.ref, item) for item in page)
                bundles = await asyncio.gather(*reads)
                pending = self._write_work_items(kind, bundles)
            else:
                pending = self._write(kind, *await self._rows_and_notes(kind, page))
            # A failing sibling listing cancels this task; a statement cut off mid-way would
            # cost the connection (on PostgreSQL the one holding the user's lock). So the
            # write finishes first (storing it is harmless), then the cancellation goes on.
            write = asyncio.ensure_future(pending)
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                await write
                raise
        finally:
            gate.release()

    async def _rows_and_notes(
        self, kind: NoteableType, page: Sequence[Item]
    ) -> tuple[list[EventRow], list[EventRow]]:
        """The story schema: the items' rows, and their notes new since `since`."""
        rows = [self._row(item) for item in page]
        noted = [item for item in page if item.user_notes_count > 0]
        parts = await asyncio.gather(*(self._notes(kind, item) for item in noted))
        if self.since is None:  # every note of these items was read
            ids = {item.id: row["gitlabEventId"] for item, row in zip(page, rows, strict=True)}
            for item, part in zip(noted, parts, strict=True):
                self.notes_read[ids[item.id]] = {row["gitlabEventId"] for row in part}
        return rows, [row for part in parts for row in part]

    async def _write_work_items(self, kind: NoteableType, bundles: list[WorkItemBundle]) -> None:
        people = merge_people(p for b in bundles for p in b.people)
        async with self.deps.statement() as db:  # one statement on PostgreSQL
            stored = await repo.store_work_items(
                db, self.user_id, self.deps.profile, bundles, people
            )
        for bundle in bundles:
            read = {note["gitlabEventId"] for note in bundle.notes}
            gone = stored.linked.get(bundle.item["gitlabEventId"], set()) - read
            if gone:
                self.unlisted_comments.setdefault(bundle.item["gitlabUrl"], []).extend(sorted(gone))
        self._count(kind, stored.items, stored.notes)

    async def remove_deleted_comments(self) -> None:
        """Stored comments of the items whose notes were read whole that GitLab no longer
        lists, each confirmed gone by GitLab first (removals.py)."""
        if self.unlisted_comments:
            stored = StoredProject(comments=self.unlisted_comments)
            candidates = Candidates(
                comments=[c for ids in self.unlisted_comments.values() for c in ids]
            )
        elif self.notes_read:
            stored = await load_stored(self.deps, self.user_id, self.ref)
            candidates = Candidates(comments=missing_comments(stored, self.notes_read))
        else:
            return
        if not candidates.comments:
            return
        pid = self.project.gitlabProjectId
        gone = await confirm_gone(self.client, pid, stored, candidates)
        self.outcome.removed += await remove_events(self.deps, self.user_id, pid, gone, "notes")

    async def _write(self, kind: NoteableType, rows: list[EventRow], notes: list[EventRow]) -> None:
        async with self.deps.statement() as db:  # one statement on PostgreSQL
            items_counts, notes_counts = await repo.upsert_page(db, self.user_id, rows, notes)
        self._count(kind, items_counts, notes_counts)

    def _count(
        self, kind: NoteableType, items_counts: repo.UpsertCounts, notes_counts: repo.UpsertCounts
    ) -> None:
        self.outcome.pages_stored += 1
        label = "issue" if kind == "Issue" else "merge_request"
        for name, counts in ((label, items_counts), ("comment", notes_counts)):
            self.outcome.stored += counts.inserted
            self.outcome.updated += counts.updated
            metrics.EVENTS.labels(name, "stored").inc(counts.inserted)
            metrics.EVENTS.labels(name, "updated").inc(counts.updated)

    def _row(self, item: Item) -> EventRow:
        if isinstance(item, GitLabIssue):
            return transform_issue(item, self.ref)
        return transform_merge_request(item, self.ref)

    async def _notes(self, kind: NoteableType, item: Item) -> list[EventRow]:
        rows: list[EventRow] = []
        async for page in self.client.notes(
            self.project.gitlabProjectId,
            kind,
            item.iid,
            self.since,
            noteable_web_url=item.web_url,
        ):
            rows.extend(transform_note(note, self.ref) for note in page)
        return rows
