"""The test oracle: what a correct sync stores for one user and one project.

Written from the world's data and visibility rules only, independently of app/sync, so a
sync bug cannot hide behind a shared helper.
"""

from __future__ import annotations

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


def expected_events(world: World, username: str, project_ref: int | str) -> list[dict[str, Any]]:
    """Every issue, MR and non-system note `username` can see in the project, as events.

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
                    if n.system or not world.can_see_note(project, n, user):
                        continue
                    na = world.users[n.author_id]
                    out.append(
                        {
                            "gitlabEventId": f"note-{n.id}",
                            "type": "comment",
                            "title": comment_title(n.body),
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
