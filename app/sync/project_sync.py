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
from app.db.models import MonitoredProject, SyncCursor, utcnow
from app.db.rows import EventRow
from app.gitlab.client import GitLabClient
from app.gitlab.errors import GitLabBadResponse
from app.gitlab.schemas import GitLabIssue, GitLabMergeRequest, NoteableType
from app.settings import Settings
from app.sync.deps import SessionFactory, SyncDeps
from app.sync.transform import ProjectRef, transform_issue, transform_merge_request, transform_note

# Pages of one list whose notes and storage may run while the next page is fetched.
PAGES_IN_FLIGHT = 4
# Re-listings of items changed during a multi-page fetch before the project is retried later.
RELIST_PASSES = 3

Item = GitLabIssue | GitLabMergeRequest


@dataclass(slots=True)
class ProjectOutcome:
    project: MonitoredProject
    stored: int = 0
    updated: int = 0
    error: BaseException | None = None
    pages_stored: int = 0
    # A listing that stored nothing leaves its cursor to the caller, who writes every such
    # cursor of the user in one statement (with LastSync): no transaction per idle project.
    pending_cursor: datetime | None = None


def fetch_since(
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


async def sync_project(
    deps: SyncDeps,
    user_id: str,
    client: GitLabClient,
    project: MonitoredProject,
    since_cursor: SyncCursor | None,
    last_sync_at: datetime | None,
    sessions: SessionFactory | None = None,
) -> ProjectOutcome:
    """Sync one project; its errors are returned in the outcome, never raised.

    The cursor is written here when the fetch stored pages (their progress is kept even if
    the user fails later); otherwise it is returned as `pending_cursor`.
    """
    outcome = ProjectOutcome(project=project)
    # The cursor moves to when this fetch STARTED: anything changed during the fetch is at
    # or after it, so the next run sees it (the original lost such changes).
    fetch_started = utcnow()
    since = fetch_since(deps.settings, project, since_cursor, last_sync_at, fetch_started)
    sessions = sessions or deps.sessionmaker
    listing = _Listing(sessions, user_id, client, project, since, fetch_started, outcome)
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(listing.sync("Issue"))
            tg.create_task(listing.sync("MergeRequest"))
        if not outcome.pages_stored:
            outcome.pending_cursor = fetch_started
            return outcome
        async with sessions() as s, s.begin():
            await repo.advance_cursor(s, user_id, project.gitlabProjectId, fetch_started)
    except Exception as exc:  # noqa: BLE001 - reported per project; the cursor stays put
        outcome.error = first_leaf(exc)
    return outcome


def first_leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups from task groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


class _Listing:
    """The issue and merge request listings of one project fetch, stored as they arrive."""

    def __init__(
        self,
        sessions: SessionFactory,
        user_id: str,
        client: GitLabClient,
        project: MonitoredProject,
        since: datetime | None,
        fetch_started: datetime,
        outcome: ProjectOutcome,
    ) -> None:
        self.sessions = sessions
        self.user_id = user_id
        self.client = client
        self.project = project
        self.ref = ProjectRef(project.gitlabProjectId, project.projectName, project.projectPath)
        self.since = since
        self.fetch_started = fetch_started
        self.outcome = outcome

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
            rows = [self._row(item) for item in page]
            noted = [item for item in page if item.user_notes_count > 0]
            notes: list[EventRow] = []
            for part in await asyncio.gather(*(self._notes(kind, item) for item in noted)):
                notes.extend(part)
            # A failing sibling listing cancels this task; a statement cut off mid-way would
            # cost the connection (on PostgreSQL the one holding the user's lock). So the
            # write finishes first (storing it is harmless), then the cancellation goes on.
            write = asyncio.ensure_future(self._write(kind, rows, notes))
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                await write
                raise
        finally:
            gate.release()

    async def _write(self, kind: NoteableType, rows: list[EventRow], notes: list[EventRow]) -> None:
        async with self.sessions() as s, s.begin():
            items_counts = await repo.upsert_events(s, self.user_id, rows)
            notes_counts = await repo.upsert_events(s, self.user_id, notes)
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
