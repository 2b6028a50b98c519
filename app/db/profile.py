"""Which version of the original app's schema the database has: its schema profile.

The database belongs to the original app, whose schema grew after story 3.5: its newest
version adds work-item columns and comment threading to "Event", and a "Person" table. This
service never adds them (the app's own migrations or `prisma db push` do, and must not
collide); it reads which exist and writes exactly those. A fresh database created by this
service stays on the story schema.

The profile is read once per run (`repository.read_schema_profile`) and handed to the sync
with its other dependencies; no flavour checks are scattered elsewhere. Pure: no I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# "Event" columns of the newest app: issues and merge requests as work items...
WORK_ITEM_COLUMNS = (
    "iid",
    "status",
    "assignees",
    "participants",
    "lastActivityAt",
    "commentCount",
    "unresolvedCommentCount",
    "mentionedInIds",
    "closesIssueIds",
)
# ... and comments in threads, linked to their issue or merge request.
THREAD_COLUMNS = ("parentEventId", "parentType", "gitlabParentId", "discussionId", "isSystemNote")
NEWER_EVENT_COLUMNS = WORK_ITEM_COLUMNS + THREAD_COLUMNS

# The "Person" columns this service writes (the app's Prisma model; `email` is never written).
PERSON_COLUMNS = frozenset(
    {"id", "userId", "gitlabId", "username", "name", "avatarUrl", "createdAt", "updatedAt"}
)

# SQL types of the newer columns, as the app's Prisma schema declares them.
ColumnKind = Literal["text", "int", "bool", "time", "text[]", "int[]"]
NEWER_COLUMN_KINDS: dict[str, ColumnKind] = {
    "iid": "int",
    "status": "text",
    "assignees": "text[]",
    "participants": "text[]",
    "lastActivityAt": "time",
    "commentCount": "int",
    "unresolvedCommentCount": "int",
    "mentionedInIds": "int[]",
    "closesIssueIds": "int[]",
    "parentEventId": "text",
    "parentType": "text",
    "gitlabParentId": "int",
    "discussionId": "text",
    "isSystemNote": "bool",
}

Flavour = Literal["story", "newest", "partial"]
ProjectIdConvention = Literal["path", "id"]


@dataclass(frozen=True, slots=True)
class SchemaProfile:
    """The optional parts of the original app's schema that this database has."""

    # The newer "Event" columns present (a subset of NEWER_EVENT_COLUMNS).
    event_columns: frozenset[str] = frozenset()
    # "Person" exists with the columns this service writes.
    has_person: bool = False

    @property
    def flavour(self) -> Flavour:
        """story: none of the newer parts; newest: all of them; partial: some (an app
        migrated with `prisma migrate` only lacks "iid" and "discussionId")."""
        if not self.event_columns and not self.has_person:
            return "story"
        if self.event_columns == frozenset(NEWER_EVENT_COLUMNS) and self.has_person:
            return "newest"
        return "partial"

    @property
    def work_items(self) -> bool:
        """The app reads work items: every note of a changed item is read (threads, counts,
        activity), system notes are stored, and "projectId" holds the GitLab project id."""
        return bool(self.event_columns)

    @property
    def project_id_convention(self) -> ProjectIdConvention:
        """What "Event"."projectId" holds: the story app stored the project's path; the
        newest app's writers store the GitLab project id (its closes/closed-by joins compare
        it), so one convention holds per database."""
        return "id" if self.work_items else "path"

    @property
    def missing(self) -> list[str]:
        """The newer parts this database lacks (for status output)."""
        gone = [f'"Event".{c}' for c in NEWER_EVENT_COLUMNS if c not in self.event_columns]
        return gone if self.has_person else [*gone, '"Person"']

    def describe(self) -> str:
        """One line for logs and status: the flavour, and what a partial one lacks."""
        if self.flavour != "partial":
            return self.flavour
        return f"partial (lacks {', '.join(self.missing)})"

    @classmethod
    def from_columns(
        cls, event_columns: set[str] | frozenset[str], person_columns: set[str] | None
    ) -> SchemaProfile:
        """From what the database has: the "Event" columns, and "Person"'s (None: absent)."""
        return cls(
            event_columns=frozenset(c for c in NEWER_EVENT_COLUMNS if c in event_columns),
            has_person=person_columns is not None and person_columns >= PERSON_COLUMNS,
        )


STORY = SchemaProfile()
NEWEST = SchemaProfile(frozenset(NEWER_EVENT_COLUMNS), has_person=True)

__all__ = [
    "NEWER_COLUMN_KINDS",
    "NEWER_EVENT_COLUMNS",
    "NEWEST",
    "PERSON_COLUMNS",
    "STORY",
    "THREAD_COLUMNS",
    "WORK_ITEM_COLUMNS",
    "ColumnKind",
    "Flavour",
    "ProjectIdConvention",
    "SchemaProfile",
]
