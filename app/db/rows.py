"""Row shapes the repository stores, shared by the sync core and the database layer.

Plain typed dicts, no SQLAlchemy: `sync/transform.py` builds them without touching the
database, and `db/repository.py` writes them without knowing where they came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, NotRequired, TypedDict


class EventRow(TypedDict):
    """Columns of "Event" that come from GitLab (id/userId/updatedAt are added on store).

    The story schema's columns always; the newest app's columns (db/profile.py) only in rows
    of a work-item bundle, and each is written only where the database has it.
    """

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
    iid: NotRequired[int | None]
    status: NotRequired[str | None]
    assignees: NotRequired[list[str]]
    participants: NotRequired[list[str]]
    lastActivityAt: NotRequired[datetime | None]
    commentCount: NotRequired[int]
    unresolvedCommentCount: NotRequired[int]
    mentionedInIds: NotRequired[list[int]]
    closesIssueIds: NotRequired[list[int]]
    # Comments: the database id of the same user's item row, filled in when stored.
    parentEventId: NotRequired[str | None]
    parentType: NotRequired[str | None]
    gitlabParentId: NotRequired[int | None]
    discussionId: NotRequired[str | None]
    isSystemNote: NotRequired[bool]


class PersonRow(TypedDict):
    """A GitLab user as the newest app's "Person" keeps it (per polling user)."""

    gitlabId: int
    username: str
    name: str | None
    avatarUrl: str | None


@dataclass(frozen=True, slots=True)
class WorkItemBundle:
    """An issue or MR with every note the user can see, as the newest app stores them: the
    item's row (with its activity computed from the notes), the notes' rows (linked to the
    item's row when stored) and the authors."""

    item: EventRow
    notes: list[EventRow]
    people: list[PersonRow]


class CursorMove(NamedTuple):
    """A project's cursor moving after a successful fetch (repository.advance_cursors).

    `backfill_from` is kept only by the project's first sync, `reconcile_due_at` only when
    none is scheduled."""

    cursor_at: datetime
    backfill_from: datetime | None = None
    reconcile_due_at: datetime | None = None


# --- what a sync reads before it starts (plain rows: no ORM instance per read) ----------------


@dataclass(frozen=True, slots=True)
class AccountRow:
    """The user's GitLab account row (its token pair)."""

    id: str
    accessToken: str | None  # noqa: N815
    refreshToken: str | None  # noqa: N815
    accessTokenExpiresAt: datetime | None  # noqa: N815


@dataclass(frozen=True, slots=True)
class ProjectRow:
    """A "MonitoredProject" row."""

    id: str
    userId: str  # noqa: N815
    gitlabProjectId: str  # noqa: N815
    projectName: str  # noqa: N815
    projectPath: str  # noqa: N815
    createdAt: datetime  # noqa: N815


@dataclass(frozen=True, slots=True)
class CursorRow:
    """A `sync_cursor` row: a (user, project)'s watermark, access and reconciliation marks."""

    gitlab_project_id: str
    cursor_at: datetime | None = None
    last_success_at: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    backfill_from: datetime | None = None
    access_check_at: datetime | None = None
    access_lost_at: datetime | None = None
    reconcile_due_at: datetime | None = None
    reconciled_at: datetime | None = None
    reconcile_held: str | None = None
    reconcile_held_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class LastSyncRow:
    """The user's "LastSync" row."""

    lastSyncAt: datetime  # noqa: N815
    updatedAt: datetime  # noqa: N815


@dataclass(frozen=True, slots=True)
class ClaimRows:
    """What a user's sync reads once its lease is held: token, projects, cursors."""

    account: AccountRow | None
    projects: list[ProjectRow]
    cursors: dict[str, CursorRow]
