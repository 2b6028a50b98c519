"""Pure decisions about removing a user's events. No I/O: `sync/access.py` and
`sync/reconcile.py` read and write, these functions decide.

- What a complete listing says may be gone (`find_candidates`): stored items it no longer
  lists (with their comments), and stored comments missing from an item's complete notes.
- When a removal is too big to trust at once (`exceeds_guard`, `fingerprint`): an empty
  answer from a proxy, a cache or a partial outage must not wipe a user's history.
- When a (user, project) is reconciled (`spread_offset`, `next_slot`): on a fixed grid per
  pair, so a day's reconciliations spread over the day instead of landing all at once.
- When a refused project counts as lost (`access_loss_step`): two runs, far enough apart.

Events are linked to GitLab through the formats `transform.py` writes: item events are
`issue-<id>` / `mr-<id>` with the item's web_url, comments are `note-<id>` with
`<item web_url>#note_<id>`, so a comment's item is its URL before the `#`.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, NamedTuple

from app.gitlab.schemas import NoteableType

# backfill_from of a project whose whole history was fetched (SYNC_BACKFILL_DAYS=0).
ALL_HISTORY = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH = ALL_HISTORY
_ITEM_URL = re.compile(r"/-/(issues|merge_requests|work_items)/(\d+)/?$")
_NOTE_ID = re.compile(r"^note-(\d+)$")


class StoredEvent(NamedTuple):
    """One stored event of a user's project, as much as removal decisions need."""

    event_id: str
    type: str
    url: str
    # A system note (stored on the newest app's schema only).
    system: bool = False
    # False: written before the app's newer columns existed (repository.project_events).
    complete: bool = True


def parent_url(comment_url: str) -> str:
    """The item's web_url of a comment event's gitlabUrl (`<item url>#note_<id>`)."""
    return comment_url.split("#", 1)[0]


def item_ref(url: str) -> tuple[NoteableType, int] | None:
    """(noteable type, iid) from an item's web_url; None when the URL has another shape."""
    m = _ITEM_URL.search(url)
    if m is None:
        return None
    kind: NoteableType = "MergeRequest" if m.group(1) == "merge_requests" else "Issue"
    return kind, int(m.group(2))


def note_id(event_id: str) -> int | None:
    m = _NOTE_ID.match(event_id)
    return int(m.group(1)) if m else None


@dataclass(frozen=True, slots=True)
class StoredProject:
    """A user's stored events of one project: items by event id, comments by item URL."""

    items: dict[str, str] = field(default_factory=dict)  # item event id -> web_url
    comments: dict[str, list[str]] = field(default_factory=dict)  # item url -> comment ids
    total: int = 0
    system: frozenset[str] = frozenset()  # comment ids of system notes
    # Item urls whose row or a comment's row lacks the newer columns (StoredEvent.complete).
    incomplete: frozenset[str] = frozenset()

    @classmethod
    def from_events(cls, events: Iterable[StoredEvent]) -> StoredProject:
        items: dict[str, str] = {}
        comments: dict[str, list[str]] = {}
        system: set[str] = set()
        incomplete: set[str] = set()
        total = 0
        for e in events:
            total += 1
            if e.type == "comment":
                url = parent_url(e.url)
                comments.setdefault(url, []).append(e.event_id)
                if e.system:
                    system.add(e.event_id)
            else:
                url = e.url
                items[e.event_id] = url
            if not e.complete:
                incomplete.add(url)
        return cls(items, comments, total, frozenset(system), frozenset(incomplete))

    def comments_of(self, item_event_id: str) -> list[str]:
        url = self.items.get(item_event_id)
        return [] if url is None else self.comments.get(url, [])

    def user_comment_count(self, item_event_id: str) -> int:
        """The item's stored comments that are not system notes (GitLab's user_notes_count
        counts those)."""
        return sum(1 for c in self.comments_of(item_event_id) if c not in self.system)

    def is_complete(self, item_event_id: str) -> bool:
        """The item's row and its comments' rows have every newer column the schema has."""
        url = self.items.get(item_event_id)
        return url is None or url not in self.incomplete


@dataclass(frozen=True, slots=True)
class Candidates:
    """Events a complete listing no longer shows: to be confirmed, then removed."""

    items: list[str] = field(default_factory=list)
    # Comments of those items: they go with their item, confirmed by it.
    item_comments: list[str] = field(default_factory=list)
    # Comments missing from their (still listed) item's complete notes.
    comments: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.items) + len(self.item_comments) + len(self.comments)

    def all_ids(self) -> list[str]:
        return [*self.items, *self.item_comments, *self.comments]


def find_candidates(
    stored: StoredProject, listed: set[str], notes_read: dict[str, set[str]]
) -> Candidates:
    """Stored items not in `listed` (the item event ids of a complete listing) with their
    comments, and the comments `missing_comments` finds."""
    gone = sorted(set(stored.items) - listed)
    item_comments = sorted(c for i in gone for c in stored.comments_of(i))
    return Candidates(gone, item_comments, missing_comments(stored, notes_read))


def missing_comments(stored: StoredProject, notes_read: dict[str, set[str]]) -> list[str]:
    """Stored comments of the items in `notes_read` (item event id -> the comment event ids
    of its complete notes, just read) that those notes no longer hold."""
    return sorted(
        c for item, read in notes_read.items() for c in stored.comments_of(item) if c not in read
    )


def exceeds_guard(removals: int, total: int, max_removals: int) -> bool:
    """More than half of a project's events, or more than `max_removals`: not trusted at once."""
    return removals > max_removals or 2 * removals > total


def fingerprint(event_ids: Sequence[str]) -> str:
    """Identifies a set of removals (order-free), to compare one reconciliation's with the next."""
    digest = hashlib.sha256("\n".join(sorted(event_ids)).encode()).hexdigest()
    return f"{len(event_ids)}:{digest}"


def spread_offset(user_id: str, gitlab_project_id: str, interval_s: float) -> float:
    """A stable offset in [0, interval_s) per (user, project): the pair's place in the day."""
    raw = hashlib.sha256(f"{user_id}\n{gitlab_project_id}".encode()).digest()
    return int.from_bytes(raw[:8], "big") / 2**64 * interval_s


def next_slot(after: datetime, interval_s: float, offset_s: float) -> datetime:
    """The first time strictly after `after` on the grid offset_s + k * interval_s (seconds
    since 1970): the same phase every interval, across restarts and replicas."""
    since = (after - _EPOCH).total_seconds() - offset_s
    k = math.floor(since / interval_s) + 1
    return _EPOCH + timedelta(seconds=offset_s + k * interval_s)


def first_reconcile_at(
    now: datetime, interval_s: float, user_id: str, gitlab_project_id: str
) -> datetime:
    """A project's first reconciliation: a whole interval after its first sync (which just
    read everything), at the pair's place in the interval."""
    offset = spread_offset(user_id, gitlab_project_id, interval_s)
    return next_slot(now + timedelta(seconds=interval_s), interval_s, offset)


AccessStep = Literal["first", "wait", "remove"]


def access_loss_step(check_at: datetime | None, now: datetime, confirm_minutes: int) -> AccessStep:
    """What a run that finds the project refused (the token working) does: record the first
    confirmation, wait for the window, or remove (a second run at least the window later)."""
    if check_at is None:
        return "first"
    if now - check_at >= timedelta(minutes=confirm_minutes):
        return "remove"
    return "wait"


__all__ = [
    "ALL_HISTORY",
    "AccessStep",
    "Candidates",
    "StoredEvent",
    "StoredProject",
    "access_loss_step",
    "exceeds_guard",
    "find_candidates",
    "fingerprint",
    "first_reconcile_at",
    "item_ref",
    "missing_comments",
    "next_slot",
    "note_id",
    "parent_url",
    "spread_offset",
]
