"""The test oracle: what a correct sync stores for one user and one project.

Written from the world's data and visibility rules only, independently of app/sync, so a
sync bug cannot hide behind a shared helper.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from gitlab_sim.render import item_web_url
from gitlab_sim.world import iso_ms

if TYPE_CHECKING:
    from gitlab_sim.world import World

_TITLE_MAX = 100


def comment_title(body: str) -> str:
    """ "Comment: " + the body's first line, stripped; over 100 chars: 97 chars + "..."."""
    first = body.split("\n", 1)[0].strip() if body else ""
    if len(first) > _TITLE_MAX:
        first = first[:97] + "..."
    return "Comment: " + first


def _deleted(world: World, project_ref: int | str) -> bool:
    ref = str(project_ref)
    if ref.isdigit():
        return int(ref) in world.deleted_projects
    return ref in world.deleted_projects.values() and ref not in world.project_paths


def expected_events(
    world: World, username: str, project_ref: int | str, *, newest: bool = False
) -> list[dict[str, Any]]:
    """Every issue, MR and non-system note `username` can see in the project, as events.
    `newest`: as on the newest app's schema, with system notes and its comment titles.

    Visibility and deletions are the world's current state: a project the user cannot see
    (not a member of a private one) or a deleted one yields []; confidential issues only for
    members and their author; internal notes only for members; deleted issues, MRs and notes
    are simply absent; a moved issue stays (closed) in its old project. Sorted by type then
    global id.
    """
    with world.lock:
        user = world.user(username)
        if _deleted(world, project_ref):
            return []
        project = world.project(project_ref)
        if not world.can_see_project(project, user):
            return []
        out: list[dict[str, Any]] = []
        for kind, prefix in (("issue", "issue"), ("merge_request", "mr")):
            for it in sorted(project.index(kind).by_iid.values(), key=lambda i: i.id):  # type: ignore[arg-type]
                if not world.can_see_item(project, it, user):
                    continue
                author = world.users[it.author_id]
                url = item_web_url(world.base_url, project, it)
                out.append(
                    {
                        "gitlabEventId": f"{prefix}-{it.id}",
                        "type": kind,
                        "title": it.title,
                        "body": it.description,
                        "author": author.username,
                        "authorAvatar": author.avatar_url,
                        "labels": list(it.labels),
                        "gitlabUrl": url,
                        "createdAt": iso_ms(it.created_ms),
                    }
                )
                for n in it.notes:
                    if (n.system and not newest) or not world.can_see_note(project, n, user):
                        continue
                    na = world.users[n.author_id]
                    out.append(
                        {
                            "gitlabEventId": f"note-{n.id}",
                            "type": "comment",
                            "title": work_item_title(n.body) if newest else comment_title(n.body),
                            "body": n.body,
                            "author": na.username,
                            "authorAvatar": na.avatar_url,
                            "labels": [],
                            "gitlabUrl": f"{url}#note_{n.id}",
                            "createdAt": iso_ms(n.created_ms),
                        }
                    )
        order = {"issue": 0, "merge_request": 1, "comment": 2}
        out.sort(key=lambda e: (order[e["type"]], int(e["gitlabEventId"].rsplit("-", 1)[1])))
        return out


# --- the newest app's work items ----------------------------------------------------------

_MENTION = re.compile(r"[#!]([0-9]+)")
_CLOSES = re.compile(r"(?:close[sd]?|fix(?:e[sd])?|resolve[sd]?)\s+#([0-9]+)", re.I | re.A)


def _refs(pattern: re.Pattern[str], text: str | None) -> list[int]:
    out: list[int] = []
    for m in pattern.finditer(text or ""):
        if int(m.group(1)) not in out:
            out.append(int(m.group(1)))
    return out


def work_item_title(body: str) -> str:
    """The newest app's: the first non-blank line, stripped ("Comment" if none), 100 max."""
    lines = [line.strip() for line in (body or "").split("\n") if line.strip()]
    first = lines[0] if lines else "Comment"
    if len(first) > _TITLE_MAX:
        first = first[:97] + "..."
    return "Comment: " + first


def expected_work_items(
    world: World, username: str, project_ref: int | str
) -> dict[str, dict[str, Any]]:
    """What the newest app's columns hold for `username`'s rows of one project, by event id.

    Items: iid, status, assignees, participants, lastActivityAt, commentCount,
    unresolvedCommentCount, mentionedInIds, closesIssueIds, projectId (the GitLab id).
    Comments (system notes too): the item's event id (`parent`), parentType, gitlabParentId,
    discussionId, isSystemNote, mentionedInIds, title. Visibility as `expected_events`.
    """
    out: dict[str, dict[str, Any]] = {}
    with world.lock:
        user = world.user(username)
        if _deleted(world, project_ref):
            return out
        project = world.project(project_ref)
        if not world.can_see_project(project, user):
            return out
        for kind, prefix in (("issue", "issue"), ("merge_request", "mr")):
            for it in project.index(kind).by_iid.values():  # type: ignore[arg-type]
                if not world.can_see_item(project, it, user):
                    continue
                key = f"{prefix}-{it.id}"
                notes = sorted(
                    (n for n in it.notes if world.can_see_note(project, n, user)),
                    key=lambda n: (n.created_ms, n.id),
                )
                participants = [world.users[it.author_id].username]
                for n in notes:
                    name = world.users[n.author_id].username
                    if not n.system and name not in participants:
                        participants.append(name)
                out[key] = {
                    "type": kind,
                    "iid": it.iid,
                    "status": {"opened": "open"}.get(it.state, it.state),
                    "assignees": [world.users[a].username for a in it.assignee_ids],
                    "participants": participants,
                    "lastActivityAt": iso_ms(max([it.updated_ms, *(n.created_ms for n in notes)])),
                    "commentCount": sum(1 for n in notes if not n.system),
                    "unresolvedCommentCount": sum(
                        1 for n in notes if n.resolvable and not n.resolved
                    ),
                    "mentionedInIds": _refs(_MENTION, it.description),
                    "closesIssueIds": [] if kind == "issue" else _refs(_CLOSES, it.description),
                    "projectId": str(project.id),
                    "parent": None,
                    "isSystemNote": False,
                }
                for n in notes:
                    out[f"note-{n.id}"] = {
                        "type": "comment",
                        "parent": key,
                        "parentType": kind,
                        "gitlabParentId": it.id,
                        "discussionId": n.discussion_id,
                        "isSystemNote": n.system,
                        "mentionedInIds": _refs(_MENTION, n.body),
                        "title": work_item_title(n.body),
                        "projectId": str(project.id),
                    }
    return out


def expected_people(world: World, username: str, project_refs: list[int]) -> dict[int, dict]:
    """The "Person" rows `username` should have: every author of an item or note (system
    notes included) they can see in these projects."""
    people: dict[int, dict[str, Any]] = {}
    with world.lock:
        user = world.user(username)
        for ref in project_refs:
            if _deleted(world, ref):
                continue
            project = world.project(ref)
            if not world.can_see_project(project, user):
                continue
            for kind in ("issue", "merge_request"):
                for it in project.index(kind).by_iid.values():  # type: ignore[arg-type]
                    if not world.can_see_item(project, it, user):
                        continue
                    authors = [it.author_id] + [
                        n.author_id for n in it.notes if world.can_see_note(project, n, user)
                    ]
                    for a in authors:
                        u = world.users[a]
                        people[u.id] = {
                            "username": u.username,
                            "name": u.name,
                            "avatarUrl": u.avatar_url,
                        }
    return people
