"""GitLab payloads -> "Event" rows, exactly as the original event-transformer did. Pure.

Two writers of the original app are followed: story 3.5's (`transform_issue`, `..._note`:
the story schema) and the newest app's work-item bundles (`work_item_bundle`: an issue or MR
with every note the user can see, its activity computed from them, threads and people).
Where the newest app is only a convention, it is followed exactly, JavaScript string rules
included, because its own refresh writes the same rows; where it is lossy, this does better
(each such place says so).

``createdAt`` is always timezone-aware UTC: GitLab's API times are UTC, so a time without an
offset is taken as UTC (never as the host's local time) and any other offset is converted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from app.db.profile import ProjectIdConvention, SchemaProfile
from app.db.rows import EventRow, PersonRow, WorkItemBundle
from app.gitlab.schemas import (
    GitLabDiscussion,
    GitLabIssue,
    GitLabMergeRequest,
    GitLabNote,
    GitLabUserRef,
)

COMMENT_TITLE_PREFIX = "Comment: "
COMMENT_TITLE_MAX = 100
# The largest value of the app's INTEGER[] columns: a reference above it cannot be an iid.
_INT4_MAX = 2**31 - 1


@dataclass(frozen=True, slots=True)
class ProjectRef:
    """What the original looked up per project (getProjectMap), and the database's
    "projectId" convention (db/profile.py)."""

    gitlab_project_id: str
    name: str | None
    path: str | None
    convention: ProjectIdConvention = "path"

    @property
    def event_project(self) -> str:
        return self.name or f"Project {self.gitlab_project_id}"

    @property
    def event_project_id(self) -> str:
        """What this service writes in "Event"."projectId": the story app's project *path*,
        or the newest app's GitLab project id (as text)."""
        if self.convention == "id":
            return self.gitlab_project_id
        return self.path or self.gitlab_project_id

    @property
    def event_project_ids(self) -> tuple[str, ...]:
        """Every "projectId" a stored event of this project may have: on a database whose
        app was upgraded, rows written before hold the path until they are rewritten."""
        if self.convention == "id" and self.path and self.path != self.gitlab_project_id:
            return (self.gitlab_project_id, self.path)
        return (self.event_project_id,)


class MonitoredProjectLike(Protocol):
    """What the transform needs of a "MonitoredProject" row (no database types here)."""

    @property
    def gitlabProjectId(self) -> str: ...  # noqa: N802

    @property
    def projectName(self) -> str: ...  # noqa: N802

    @property
    def projectPath(self) -> str: ...  # noqa: N802


def project_ref_of(project: MonitoredProjectLike, profile: SchemaProfile) -> ProjectRef:
    """A monitored project as the transform names it, in the database's convention."""
    return ProjectRef(
        project.gitlabProjectId,
        project.projectName,
        project.projectPath,
        profile.project_id_convention,
    )


def _utc(value: datetime) -> datetime:
    tz = value.tzinfo
    if tz is UTC:  # GitLab's "Z" times, as decoded: already what is wanted
        return value
    return value.replace(tzinfo=UTC) if tz is None else value.astimezone(UTC)


def comment_title(body: str | None) -> str:
    lines = (body or "").split("\n", 1)
    first = lines[0].strip()
    if len(first) > COMMENT_TITLE_MAX:
        first = first[: COMMENT_TITLE_MAX - 3] + "..."
    return COMMENT_TITLE_PREFIX + first


def _transform_item(
    item: GitLabIssue | GitLabMergeRequest, project: ProjectRef, event_type: str, prefix: str
) -> EventRow:
    return EventRow(
        type=event_type,
        title=item.title,
        body=item.description,
        author=item.author.username,
        authorAvatar=item.author.avatar_url,
        project=project.event_project,
        projectId=project.event_project_id,
        labels=list(item.labels),
        gitlabEventId=f"{prefix}-{item.id}",
        gitlabUrl=item.web_url,
        createdAt=_utc(item.created_at),
    )


def transform_issue(issue: GitLabIssue, project: ProjectRef) -> EventRow:
    return _transform_item(issue, project, "issue", "issue")


def transform_merge_request(mr: GitLabMergeRequest, project: ProjectRef) -> EventRow:
    return _transform_item(mr, project, "merge_request", "mr")


def transform_note(note: GitLabNote, project: ProjectRef) -> EventRow:
    return EventRow(
        type="comment",
        title=comment_title(note.body),
        body=note.body,
        author=note.author.username,
        authorAvatar=note.author.avatar_url,
        project=project.event_project,
        projectId=project.event_project_id,
        labels=[],
        gitlabEventId=f"note-{note.id}",
        gitlabUrl=note.web_url or "",
        createdAt=_utc(note.created_at),
    )


# --- the newest app's work items (event-transformer.ts storeWorkItemBundle) -------------

# JavaScript's `\s` and `String.prototype.trim()` whitespace, not Python's (which adds
# \x1c-\x1f and lacks U+FEFF): titles and references must match the app's own writes.
_JS_SPACE = "\t\n\x0b\x0c\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_JS_TRIM = "".join(
    chr(c)
    for c in (
        *b"\t\n\x0b\x0c\r ",
        0xA0,
        0x1680,
        *range(0x2000, 0x200B),
        0x2028,
        0x2029,
        0x202F,
        0x205F,
        0x3000,
        0xFEFF,
    )
)
# extractMentionedIds: /[#!](\d+)/g. JavaScript's \d is ASCII only.
_MENTION = re.compile(r"[#!]([0-9]+)")
# parseClosesIssueIds: /(?:close[sd]?|fix(?:e[sd])?|resolve[sd]?)\s+#(\d+)/gi. Without the
# `u` flag, JavaScript's `i` folds ASCII letters only (Python's would also fold U+017F to s).
_CLOSES = re.compile(
    r"(?:[cC][lL][oO][sS][eE][sSdD]?|[fF][iI][xX](?:[eE][sSdD])?"
    r"|[rR][eE][sS][oO][lL][vV][eE][sSdD]?)"
    f"[{_JS_SPACE}]+"
    r"#([0-9]+)"
)


def _ids(pattern: re.Pattern[str], text: str | None) -> list[int]:
    """The app's reference lists: numbers in order of first appearance, no duplicates.
    Better than the app: a number too big for its INTEGER[] column (which made the app's
    insert fail and lose the whole item) is left out, since no iid can be that big."""
    if not text:
        return []
    numbers = (match.group(1).lstrip("0") or "0" for match in pattern.finditer(text))
    # Checked by length first: int() refuses strings of thousands of digits.
    ids = (int(digits) for digits in numbers if len(digits) <= 10 and int(digits) <= _INT4_MAX)
    return list(dict.fromkeys(ids))  # in order of first appearance, each once


def mentioned_ids(text: str | None) -> list[int]:
    """Every `#N` and `!N` in the text (issue and MR references, as the app reads them)."""
    if not text or ("#" not in text and "!" not in text):  # most comments: nothing to scan
        return []
    return _ids(_MENTION, text)


def closes_issue_ids(text: str | None) -> list[int]:
    """The issues an MR description says it closes ("Closes #2", "fixed #3")."""
    if not text or "#" not in text:
        return []
    return _ids(_CLOSES, text)


def _utf16_len(text: str) -> int:
    if text.isascii():
        return len(text)
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _utf16_prefix(text: str, units: int) -> str:
    """The longest prefix of at most `units` UTF-16 code units (JavaScript's substring
    counts those). Where the app would cut a surrogate pair in half, the whole character
    is left out: half a character cannot be stored as UTF-8."""
    used = 0
    for i, ch in enumerate(text):
        used += 2 if ord(ch) > 0xFFFF else 1
        if used > units:
            return text[:i]
    return text


def work_item_comment_title(body: str | None) -> str:
    """The newest app's comment title: "Comment: " and the first non-blank line, trimmed;
    "Comment" when there is none; past 100 characters (UTF-16 units), 97 and "...".

    The story app took the first line even when blank.
    """
    trimmed = (s.strip(_JS_TRIM) for s in (body or "").split("\n"))
    line = next((s for s in trimmed if s), "Comment")
    if _utf16_len(line) > COMMENT_TITLE_MAX:
        line = _utf16_prefix(line, COMMENT_TITLE_MAX - 3) + "..."
    return COMMENT_TITLE_PREFIX + line


def work_item_status(state: str) -> str:
    """open for opened (and a locked MR, which is still open), else GitLab's state: closed,
    merged. The app maps every issue state but `opened` to closed."""
    if state in ("opened", "locked"):
        return "open"
    return state


def _person(user: GitLabUserRef) -> PersonRow | None:
    if user.id is None:  # "Person"."gitlabId" is required
        return None
    return PersonRow(
        gitlabId=user.id, username=user.username, name=user.name, avatarUrl=user.avatar_url
    )


def people_of(authors: Iterable[GitLabUserRef]) -> list[PersonRow]:
    """One row per GitLab user (authors without an id are left out: the app's "gitlabId"
    is required), merged by `merge_people`."""
    return merge_people(row for row in map(_person, authors) if row is not None)


def merge_people(rows: Iterable[PersonRow]) -> list[PersonRow]:
    """One row per GitLab id, in order of first appearance. As the app's
    deduplicatePeople: a later occurrence wins for the username if not empty, and for the
    name and avatar if not null."""
    people: dict[int, PersonRow] = {}
    for row in rows:
        seen = people.get(row["gitlabId"])
        if seen is None:
            people[row["gitlabId"]] = PersonRow(**row)
            continue
        if row["username"]:
            seen["username"] = row["username"]
        if row["name"] is not None:
            seen["name"] = row["name"]
        if row["avatarUrl"] is not None:
            seen["avatarUrl"] = row["avatarUrl"]
    return list(people.values())


def work_item_bundle(
    item: GitLabIssue | GitLabMergeRequest,
    discussions: Sequence[GitLabDiscussion],
    project: ProjectRef,
) -> WorkItemBundle:
    """An issue or MR with every note the user can see (all its discussions, read whole):
    the item's row with its activity, the notes' rows, and the authors.

    - status: `work_item_status`; assignees: usernames in GitLab's order.
    - participants: the author, then the authors of non-system notes by creation time,
      each once; commentCount: the non-system notes.
    - lastActivityAt: the later of the item's updated_at and its newest note's created_at
      (system notes included): never NULL.
    - unresolvedCommentCount: notes in resolvable threads not resolved yet (the app never
      reads GitLab's `resolvable`/`resolved` and leaves 0).
    - mentionedInIds from the description; closesIssueIds for merge requests.
    - Notes (system notes included, flagged): thread id, parent type and global id, the
      app's title rule; "parentEventId" is set when stored (the same user's item row).
    """
    is_issue = isinstance(item, GitLabIssue)
    event_type = "issue" if is_issue else "merge_request"
    prefix = "issue" if is_issue else "mr"
    project_name = project.event_project
    project_id = project.event_project_id
    base_url = item.web_url.split("#", 1)[0]
    # Every note once, oldest first (a stable sort, as the app's).
    seen: set[int] = set()
    threaded: list[tuple[datetime, str, GitLabNote]] = []
    for discussion in discussions:
        for note in discussion.notes:
            if note.id not in seen:
                seen.add(note.id)
                threaded.append((_utc(note.created_at), discussion.id, note))
    threaded.sort(key=lambda entry: entry[0])

    participants = [item.author.username]
    comments = unresolved = 0
    last_activity = _utc(item.updated_at)
    notes: list[EventRow] = []
    for created, discussion_id, note in threaded:
        last_activity = max(last_activity, created)
        if not note.system:
            comments += 1
            participants.append(note.author.username)
        if note.resolvable and not note.resolved:
            unresolved += 1
        notes.append(
            EventRow(
                type="comment",
                title=work_item_comment_title(note.body),
                body=note.body,
                author=note.author.username,
                authorAvatar=note.author.avatar_url,
                project=project_name,
                projectId=project_id,
                labels=[],
                gitlabEventId=f"note-{note.id}",
                gitlabUrl=f"{base_url}#note_{note.id}",
                createdAt=created,
                iid=None,
                status=None,
                assignees=[],
                participants=[],
                lastActivityAt=None,
                commentCount=0,
                unresolvedCommentCount=0,
                mentionedInIds=mentioned_ids(note.body),
                closesIssueIds=[],
                parentEventId=None,
                parentType=event_type,
                gitlabParentId=item.id,
                discussionId=discussion_id,
                isSystemNote=note.system,
            )
        )
    row = EventRow(
        type=event_type,
        title=item.title,
        body=item.description,
        author=item.author.username,
        authorAvatar=item.author.avatar_url,
        project=project_name,
        projectId=project_id,
        labels=list(item.labels),
        gitlabEventId=f"{prefix}-{item.id}",
        gitlabUrl=item.web_url,
        createdAt=_utc(item.created_at),
        iid=item.iid,
        status=work_item_status(item.state),
        assignees=[a.username for a in item.assignees],
        participants=list(dict.fromkeys(participants)),  # each once, first seen first
        lastActivityAt=last_activity,
        commentCount=comments,
        unresolvedCommentCount=unresolved,
        mentionedInIds=mentioned_ids(item.description),
        closesIssueIds=[] if is_issue else closes_issue_ids(item.description),
        parentEventId=None,
        parentType=None,
        gitlabParentId=None,
        discussionId=None,
        isSystemNote=False,
    )
    people = people_of([item.author, *(note.author for _, _, note in threaded)])
    return WorkItemBundle(item=row, notes=notes, people=people)
