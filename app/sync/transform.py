"""GitLab payloads -> "Event" rows, exactly as the original event-transformer did. Pure.

``createdAt`` is always timezone-aware UTC: GitLab's API times are UTC, so a time without an
offset is taken as UTC (never as the host's local time) and any other offset is converted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from app.db.rows import EventRow
from app.gitlab.schemas import GitLabIssue, GitLabMergeRequest, GitLabNote

COMMENT_TITLE_PREFIX = "Comment: "
COMMENT_TITLE_MAX = 100


@dataclass(frozen=True, slots=True)
class ProjectRef:
    """What the original looked up per project (getProjectMap)."""

    gitlab_project_id: str
    name: str | None
    path: str | None

    @property
    def event_project(self) -> str:
        return self.name or f"Project {self.gitlab_project_id}"

    @property
    def event_project_id(self) -> str:
        # The original stores the project *path* in "Event"."projectId".
        return self.path or self.gitlab_project_id


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


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
