"""An issue or MR read as the newest app's work item: every thread, then its bundle."""

from __future__ import annotations

from app.db.rows import WorkItemBundle
from app.gitlab.client import GitLabClient
from app.gitlab.schemas import GitLabDiscussion, GitLabIssue, GitLabMergeRequest, NoteableType
from app.sync.transform import ProjectRef, work_item_bundle


async def read_work_item(
    client: GitLabClient, ref: ProjectRef, item: GitLabIssue | GitLabMergeRequest
) -> WorkItemBundle:
    """The item with its threads read whole: GitLab has no time filter on discussions, and
    the item's activity, counts and participants need every note it has."""
    kind: NoteableType = "Issue" if isinstance(item, GitLabIssue) else "MergeRequest"
    discussions: list[GitLabDiscussion] = []
    async for page in client.discussions(ref.gitlab_project_id, kind, item.iid):
        discussions.extend(page)
    return work_item_bundle(item, discussions, ref)


__all__ = ["read_work_item"]
