"""Row shapes the repository stores, shared by the sync core and the database layer.

Plain typed dicts, no SQLAlchemy: `sync/transform.py` builds them without touching the
database, and `db/repository.py` writes them without knowing where they came from.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple, TypedDict


class EventRow(TypedDict):
    """Columns of "Event" that come from GitLab (id/userId/updatedAt are added on store)."""

    type: str
    title: str
    body: str | None
    author: str
    authorAvatar: str | None
    project: str
    projectId: str
    labels: list[str]
    gitlabEventId: str
    gitlabUrl: str
    createdAt: datetime


class CursorMove(NamedTuple):
    """A project's cursor moving after a successful fetch (repository.advance_cursors).

    `backfill_from` is kept only by the project's first sync, `reconcile_due_at` only when
    none is scheduled."""

    cursor_at: datetime
    backfill_from: datetime | None = None
    reconcile_due_at: datetime | None = None
