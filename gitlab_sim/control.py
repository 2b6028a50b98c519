"""/_sim control routes (no auth): inspect and mutate the world, faults, config, request log.

Each route is a thin wrapper over a World method, so in-process tests and HTTP-driven tools
(benchmark, demo) share one behaviour.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from gitlab_sim import render
from gitlab_sim.expected import expected_events
from gitlab_sim.faults import FaultSpec
from gitlab_sim.world import ItemKind, SimError, World, iso_ms

router = APIRouter(prefix="/_sim")


def _world(request: Request) -> World:
    return request.app.state.world


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserIn(_Body):
    username: str
    name: str | None = None
    avatar_url: str | None = None


class ProjectIn(_Body):
    path_with_namespace: str
    name: str | None = None
    visibility: Literal["private", "internal", "public"] = "private"
    members: list[int | str] = []


class MemberIn(_Body):
    user: int | str


class ItemIn(_Body):
    title: str
    description: str | None = None
    labels: list[str] = []
    author: int | str | None = None
    state: str = "opened"
    confidential: bool = False
    assignees: list[int | str] = []


class ItemPatch(_Body):
    title: str | None = None
    description: str | None = None
    labels: list[str] | None = None
    state: str | None = None
    confidential: bool | None = None
    assignees: list[int | str] | None = None


class NoteIn(_Body):
    body: str
    author: int | str | None = None
    system: bool = False
    internal: bool = False
    # Start a (resolvable) thread, or reply in the thread of that note.
    thread: bool = False
    reply_to: int | None = None


class ResolveIn(_Body):
    resolved: bool = True
    by: int | str | None = None


class NotePatch(_Body):
    body: str


class OAuthIn(_Body):
    user: int | str
    expires_in: int = 7200


class PersonalTokenIn(_Body):
    user: int | str
    expires_in: int | None = None


class TokenRef(_Body):
    token: str


class FaultIn(_Body):
    kind: Literal["status", "rate_limit", "slow", "drop", "malformed", "truncated", "empty"]
    status: int = 503
    path: str | None = None
    method: str | None = None
    count: int | None = None
    probability: float | None = None
    seed: int = 0
    min_page: int | None = None
    retry_after: int = 1
    retry_after_format: Literal["seconds", "date"] = "seconds"
    body_format: Literal["json", "text"] = "json"
    forbidden_reason: Literal["insufficient_scope", "forbidden"] = "insufficient_scope"
    delay: float = 5.0


class MoveIn(_Body):
    to_project: int | str


class ConfigIn(_Body):
    latency_ms: float | None = None
    rate_limit_per_minute: int | None = None
    offset_cap: int | None = None
    totals_threshold: int | None = None


class ClockIn(_Body):
    advance_seconds: float


def _kind(segment: str) -> ItemKind:
    if segment not in ("issues", "merge_requests"):
        raise SimError(f"unknown collection {segment!r}: use issues or merge_requests")
    return "issue" if segment == "issues" else "merge_request"


# --- world ---------------------------------------------------------------------------
@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.post("/prerender")
async def prerender(request: Request) -> dict[str, int]:
    """Fill the rendered-JSON cache with every item and note (see render.prerender)."""
    world = _world(request)
    with world.lock:
        return {"rendered": render.prerender(world)}


@router.get("/world")
async def get_world(request: Request) -> dict[str, Any]:
    return _world(request).describe()


@router.post("/users", status_code=201)
async def create_user(body: UserIn, request: Request) -> dict[str, Any]:
    world = _world(request)
    u = world.create_user(body.username, body.name, body.avatar_url)
    return {
        "id": u.id,
        "username": u.username,
        "name": u.name,
        "avatar_url": u.avatar_url,
        "token": world.personal_token(u.id),
    }


@router.post("/projects", status_code=201)
async def create_project(body: ProjectIn, request: Request) -> dict[str, Any]:
    world = _world(request)
    p = world.create_project(
        body.path_with_namespace, visibility=body.visibility, members=body.members, name=body.name
    )
    with world.lock:
        return {**render.project(world.base_url, p), "members": sorted(p.members)}


@router.post("/projects/{pid}/members", status_code=201)
async def add_member(pid: int, body: MemberIn, request: Request) -> dict[str, Any]:
    world = _world(request)
    world.add_member(pid, body.user)
    return {"project_id": pid, "members": sorted(world.project(pid).members)}


@router.delete("/projects/{pid}/members/{user}")
async def remove_member(pid: int, user: str, request: Request) -> dict[str, Any]:
    world = _world(request)
    world.remove_member(pid, user)
    return {"project_id": pid, "members": sorted(world.project(pid).members)}


@router.delete("/projects/{pid}")
async def delete_project(pid: int, request: Request) -> dict[str, Any]:
    _world(request).delete_project(pid)
    return {"deleted": pid}


@router.delete("/projects/{pid}/{segment}/{iid}")
async def delete_item(pid: int, segment: str, iid: int, request: Request) -> dict[str, Any]:
    _world(request).delete_item(pid, _kind(segment), iid)
    return {"deleted": iid}


@router.post("/projects/{pid}/issues/{iid}/move", status_code=201)
async def move_issue(pid: int, iid: int, body: MoveIn, request: Request) -> dict[str, Any]:
    world = _world(request)
    new = world.move_issue(pid, iid, body.to_project)
    with world.lock:
        return render.item(world, world.project(new.project_id), new)


@router.delete("/notes/{note_id}")
async def delete_note(note_id: int, request: Request) -> dict[str, Any]:
    _world(request).delete_note(note_id)
    return {"deleted": note_id}


@router.post("/projects/{pid}/{segment}", status_code=201)
async def create_item(pid: int, segment: str, body: ItemIn, request: Request) -> dict[str, Any]:
    world = _world(request)
    it = world.create_item(pid, _kind(segment), **body.model_dump())
    with world.lock:
        return render.item(world, world.project(pid), it)


@router.patch("/projects/{pid}/{segment}/{iid}")
async def update_item(
    pid: int, segment: str, iid: int, body: ItemPatch, request: Request
) -> dict[str, Any]:
    world = _world(request)
    it = world.update_item(pid, _kind(segment), iid, **body.model_dump(exclude_unset=True))
    with world.lock:
        return render.item(world, world.project(pid), it)


@router.post("/projects/{pid}/{segment}/{iid}/notes", status_code=201)
async def add_note(
    pid: int, segment: str, iid: int, body: NoteIn, request: Request
) -> dict[str, Any]:
    world = _world(request)
    n = world.add_note(
        pid,
        _kind(segment),
        iid,
        body.body,
        author=body.author,
        system=body.system,
        internal=body.internal,
        thread=body.thread,
        reply_to=body.reply_to,
    )
    with world.lock:
        return render.note(world, world.project(pid), n)


@router.post("/notes/{note_id}/resolve")
async def resolve_thread(note_id: int, body: ResolveIn, request: Request) -> dict[str, Any]:
    """Resolve (or, with resolved=false, reopen) the thread of a note."""
    world = _world(request)
    notes = world.resolve_thread(note_id, resolved=body.resolved, by=body.by)
    return {"resolved": body.resolved, "notes": [n.id for n in notes]}


@router.patch("/notes/{note_id}")
async def edit_note(note_id: int, body: NotePatch, request: Request) -> dict[str, Any]:
    world = _world(request)
    n = world.edit_note(note_id, body.body)
    with world.lock:
        return render.note(world, world.project(n.parent.project_id), n)


# --- tokens --------------------------------------------------------------------------
@router.post("/tokens/oauth", status_code=201)
async def create_oauth(body: OAuthIn, request: Request) -> dict[str, Any]:
    return _world(request).create_oauth_tokens(body.user, expires_in=body.expires_in)


@router.post("/tokens/personal", status_code=201)
async def create_personal(body: PersonalTokenIn, request: Request) -> dict[str, Any]:
    world = _world(request)
    return {"token": world.create_personal_token(body.user, expires_in=body.expires_in)}


@router.post("/tokens/expire")
async def expire_token(body: TokenRef, request: Request) -> dict[str, str]:
    _world(request).expire_token(body.token)
    return {"status": "expired"}


@router.post("/tokens/revoke")
async def revoke_token(body: TokenRef, request: Request) -> dict[str, str]:
    _world(request).revoke_token(body.token)
    return {"status": "revoked"}


# --- oracle, log, faults, config --------------------------------------------------------
@router.get("/expected")
async def expected(
    request: Request,
    username: str = Query(...),
    project_id: str = Query(...),
    newest: bool = Query(False, description="as on the newest app's schema (system notes)"),
) -> list[dict[str, Any]]:
    return expected_events(_world(request), username, project_id, newest=newest)


@router.get("/requests")
async def get_requests(request: Request) -> dict[str, Any]:
    world = _world(request)
    entries = world.requests()
    return {"total": len(entries), "counts": world.request_counts(), "requests": entries}


@router.delete("/requests")
async def clear_requests(request: Request) -> dict[str, str]:
    _world(request).clear_requests()
    return {"status": "cleared"}


@router.get("/faults")
async def list_faults(request: Request) -> list[dict[str, Any]]:
    return [f.as_dict() for f in _world(request).faults.list()]


@router.post("/faults", status_code=201)
async def add_fault(body: FaultIn, request: Request) -> dict[str, Any]:
    return _world(request).add_fault(FaultSpec(**body.model_dump())).as_dict()


@router.delete("/faults")
async def clear_faults(request: Request) -> dict[str, str]:
    _world(request).clear_faults()
    return {"status": "cleared"}


@router.delete("/faults/{fault_id}")
async def remove_fault(fault_id: int, request: Request) -> JSONResponse:
    found = _world(request).faults.remove(fault_id)
    return JSONResponse({"removed": found}, status_code=200 if found else 404)


@router.get("/config")
async def get_config(request: Request) -> dict[str, Any]:
    return _world(request).config.as_dict()


@router.post("/config")
async def set_config(body: ConfigIn, request: Request) -> dict[str, Any]:
    return _world(request).configure(**body.model_dump(exclude_unset=True)).as_dict()


@router.post("/clock")
async def advance_clock(body: ClockIn, request: Request) -> dict[str, Any]:
    world = _world(request)
    now = world.advance_clock(body.advance_seconds)
    return {"now": iso_ms(now), "offset_seconds": world.clock_offset_ms / 1000}
