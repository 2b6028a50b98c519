"""GitLab-shaped JSON for users, projects, issues, MRs and notes (modelled on the API docs'
sample payloads, extra fields included so clients learn to ignore them)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from gitlab_sim.world import Item, Note, Project, User, iso_ms

if TYPE_CHECKING:
    from gitlab_sim.world import World


def item_web_url(base_url: str, project: Project, item: Item) -> str:
    segment = "issues" if item.kind == "issue" else "merge_requests"
    return f"{base_url}/{project.path_with_namespace}/-/{segment}/{item.iid}"


def user_ref(base_url: str, u: User) -> dict[str, Any]:
    return {
        "id": u.id,
        "username": u.username,
        "name": u.name,
        "state": "active",
        "locked": False,
        "avatar_url": u.avatar_url,
        "web_url": f"{base_url}/{u.username}",
    }


def current_user(base_url: str, u: User) -> dict[str, Any]:
    d = user_ref(base_url, u)
    d.update(
        created_at=iso_ms(u.created_ms),
        bio="",
        public_email=None,
        bot=False,
        two_factor_enabled=False,
        external=False,
    )
    return d


def project(base_url: str, p: Project) -> dict[str, Any]:
    namespace_path = p.path_with_namespace.rsplit("/", 1)[0]
    path = p.path_with_namespace.rsplit("/", 1)[-1]
    return {
        "id": p.id,
        "description": None,
        "name": p.name,
        "name_with_namespace": f"{namespace_path.replace('/', ' / ')} / {p.name}",
        "path": path,
        "path_with_namespace": p.path_with_namespace,
        "created_at": iso_ms(p.created_ms),
        "default_branch": "main",
        "visibility": p.visibility,
        "web_url": f"{base_url}/{p.path_with_namespace}",
        "namespace": {
            "id": 1000 + p.id,
            "name": namespace_path.rsplit("/", 1)[-1],
            "path": namespace_path.rsplit("/", 1)[-1],
            "kind": "group",
            "full_path": namespace_path,
        },
        "last_activity_at": iso_ms(p.created_ms),
        "archived": False,
    }


def item(world: World, p: Project, it: Item) -> dict[str, Any]:
    base = world.base_url
    author = user_ref(base, world.users[it.author_id])
    web_url = item_web_url(base, p, it)
    is_issue = it.kind == "issue"
    api_self = f"{base}/api/v4/projects/{p.id}/{'issues' if is_issue else 'merge_requests'}"
    sigil = "#" if is_issue else "!"
    d: dict[str, Any] = {
        "id": it.id,
        "iid": it.iid,
        "project_id": p.id,
        "title": it.title,
        "description": it.description,
        "state": it.state,
        "created_at": iso_ms(it.created_ms),
        "updated_at": iso_ms(it.updated_ms),
        "closed_at": None if it.closed_ms is None else iso_ms(it.closed_ms),
        "closed_by": None,
        "labels": list(it.labels),
        "milestone": None,
        "author": author,
        "assignees": [user_ref(base, world.users[a]) for a in it.assignee_ids],
        "assignee": user_ref(base, world.users[it.assignee_ids[0]]) if it.assignee_ids else None,
        "upvotes": 0,
        "downvotes": 0,
        "user_notes_count": it.user_notes_count,
        "web_url": web_url,
        "references": {
            "short": f"{sigil}{it.iid}",
            "relative": f"{sigil}{it.iid}",
            "full": f"{p.path_with_namespace}{sigil}{it.iid}",
        },
        "time_stats": {
            "time_estimate": 0,
            "total_time_spent": 0,
            "human_time_estimate": None,
            "human_total_time_spent": None,
        },
        "task_completion_status": {"count": 0, "completed_count": 0},
        "discussion_locked": None,
        "imported": False,
        "imported_from": "none",
    }
    if is_issue:
        d.update(
            type="ISSUE",
            issue_type="issue",
            confidential=it.confidential,
            moved_to_id=it.moved_to_id,
            merge_requests_count=0,
            due_date=None,
            has_tasks=False,
            severity="UNKNOWN",
            _links={
                "self": f"{api_self}/{it.iid}",
                "notes": f"{api_self}/{it.iid}/notes",
                "award_emoji": f"{api_self}/{it.iid}/award_emoji",
                "project": f"{base}/api/v4/projects/{p.id}",
                "closed_as_duplicate_of": None,
            },
        )
    else:
        d.update(
            merged_by=author if it.state == "merged" else None,
            merge_user=author if it.state == "merged" else None,
            merged_at=None if it.merged_ms is None else iso_ms(it.merged_ms),
            target_branch="main",
            source_branch=f"feature-{it.iid}",
            source_project_id=p.id,
            target_project_id=p.id,
            reviewers=[],
            draft=False,
            work_in_progress=False,
            merge_status="can_be_merged",
            detailed_merge_status="mergeable" if it.state == "opened" else "not_open",
            sha=f"{it.id:040x}",
            merge_commit_sha=None,
            squash_commit_sha=None,
            reference=f"!{it.iid}",
            squash=False,
            has_conflicts=False,
            blocking_discussions_resolved=True,
        )
    return d


def note(world: World, p: Project, n: Note) -> dict[str, Any]:
    parent = n.parent
    d: dict[str, Any] = {
        "id": n.id,
        "type": None if n.individual else "DiscussionNote",
        "body": n.body,
        "attachment": None,
        "author": user_ref(world.base_url, world.users[n.author_id]),
        "created_at": iso_ms(n.created_ms),
        "updated_at": iso_ms(n.updated_ms),
        "system": n.system,
        "noteable_id": parent.id,
        "noteable_type": "Issue" if parent.kind == "issue" else "MergeRequest",
        "project_id": p.id,
        "noteable_iid": parent.iid,
        "resolvable": n.resolvable,
        "confidential": n.internal,
        "internal": n.internal,
        "imported": False,
        "imported_from": "none",
    }
    if n.resolvable:  # GitLab adds these to resolvable notes only
        d.update(
            resolved=n.resolved,
            resolved_by=None
            if n.resolved_by is None
            else user_ref(world.base_url, world.users[n.resolved_by]),
            resolved_at=None if n.resolved_ms is None else iso_ms(n.resolved_ms),
        )
    return d


def discussion(world: World, p: Project, notes: list[Note]) -> dict[str, Any]:
    """One thread as the Discussions API renders it (the caller passes its visible notes)."""
    return {
        "id": notes[0].discussion_id,
        "individual_note": notes[0].individual,
        "notes": [note(world, p, n) for n in notes],
    }


def _dumps(value: Any) -> bytes:
    # Byte for byte what fastapi's JSONResponse renders.
    return json.dumps(
        value, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


def _item_state(world: World, it: Item) -> tuple[Any, ...]:
    # Every field of an item that `item` renders and the world can change (users and
    # project paths never change once created).
    return (
        world.base_url,
        it.title,
        it.description,
        it.state,
        tuple(it.labels),
        it.updated_ms,
        it.closed_ms,
        it.merged_ms,
        it.confidential,
        it.user_notes_count,
        tuple(it.assignee_ids),
    )


def _note_state(world: World, n: Note) -> tuple[Any, ...]:
    return (world.base_url, n.body, n.updated_ms, n.system, n.internal, n.individual, n.resolved)


def _cached(world: World, key: tuple[str, int], state: tuple[Any, ...], build: Any) -> bytes:
    hit = world.rendered.get(key)
    if hit is not None and hit[0] == state:
        return hit[1]
    data = _dumps(build())
    world.rendered[key] = (state, data)
    return data


def items_json(world: World, p: Project, items: Iterable[Item]) -> bytes:
    """A JSON array of `item` renderings, each encoded once until the item changes."""
    parts = [
        _cached(world, (it.kind, it.id), _item_state(world, it), lambda it=it: item(world, p, it))
        for it in items
    ]
    return b"[" + b",".join(parts) + b"]"


def notes_json(world: World, p: Project, notes: Iterable[Note]) -> bytes:
    """A JSON array of `note` renderings, each encoded once until the note changes."""
    parts = [
        _cached(world, ("note", n.id), _note_state(world, n), lambda n=n: note(world, p, n))
        for n in notes
    ]
    return b"[" + b",".join(parts) + b"]"


def discussions_json(world: World, p: Project, threads: Iterable[list[Note]]) -> bytes:
    """A JSON array of threads, each note's rendering taken from the notes' cache."""
    parts = []
    for notes in threads:
        rendered = [
            _cached(world, ("note", n.id), _note_state(world, n), lambda n=n: note(world, p, n))
            for n in notes
        ]
        head = _dumps({"id": notes[0].discussion_id, "individual_note": notes[0].individual})
        parts.append(head[:-1] + b',"notes":[' + b",".join(rendered) + b"]}")
    return b"[" + b",".join(parts) + b"]"


def prerender(world: World) -> int:
    """Encode every item and note into the JSON cache now (benchmarks call it before a
    measured poll, so the simulator's CPU there is serving pages, not first encodings)."""
    count = 0
    for p in world.projects.values():
        for index in (p.issues, p.merge_requests):
            for it in index.by_iid.values():
                items_json(world, p, (it,))
                notes_json(world, p, it.notes)
                count += 1 + len(it.notes)
    return count
