"""The GitLab API v4 routes our client uses, with GitLab's auth, visibility and pagination.

Visibility of confidential issues and internal notes is applied AFTER the page is cut, as
GitLab does, so pages can be shorter than per_page while more pages exist.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import re
from base64 import b64decode
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from gitlab_sim import render
from gitlab_sim.world import Item, ItemKind, Project, SimError, User, World

router = APIRouter()

MAX_PER_PAGE = 100
DEFAULT_PER_PAGE = 20

EXPIRED = "Token is expired. You can either do re-authorization or token refresh."
REVOKED = "Token was revoked. You have to re-authorize from the user."


class ApiError(Exception):
    """Answered as `status` with the GitLab-shaped `body` (see app.create_app)."""

    def __init__(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers or {}


def _world(request: Request) -> World:
    return request.app.state.world


def token_from_headers(headers: Any, query: dict[str, str] | None = None) -> str | None:
    """The token a request carries: PRIVATE-TOKEN, Authorization: Bearer, or the query."""
    tok = headers.get("private-token")
    if tok:
        return tok.strip()
    auth = headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    if query:
        return query.get("private_token") or query.get("access_token")
    return None


def authenticate(request: Request) -> User:
    world = _world(request)
    token = token_from_headers(request.headers, dict(request.query_params))
    rec = world.token_record(token) if token else None
    if rec is None or rec.kind == "oauth_refresh":
        raise ApiError(401, {"message": "401 Unauthorized"})
    for bad, description in ((rec.revoked, REVOKED), (_expired(world, rec), EXPIRED)):
        if bad:
            raise ApiError(
                401,
                {"error": "invalid_token", "error_description": description},
                {
                    "WWW-Authenticate": (
                        'Bearer realm="Protected by OAuth 2.0", error="invalid_token", '
                        f'error_description="{description}"'
                    )
                },
            )
    return world.users[rec.user_id]


def _expired(world: World, rec: Any) -> bool:
    return rec.expires_ms is not None and world.now_ms() >= rec.expires_ms


def _visible_project(world: World, ref: str, user: User) -> Project:
    ref = unquote(ref)
    p = world.projects.get(int(ref)) if ref.isdigit() else world.project_paths.get(ref.strip("/"))
    if p is None or not world.can_see_project(p, user):
        raise ApiError(404, {"message": "404 Project Not Found"})
    return p


# --- query parameters ----------------------------------------------------------------
def _int_param(q: dict[str, str], name: str, default: int) -> int:
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, {"error": f"{name} is invalid"}) from None


def _page_params(q: dict[str, str]) -> tuple[int, int]:
    page = max(_int_param(q, "page", 1), 1)
    per_page = _int_param(q, "per_page", DEFAULT_PER_PAGE)
    if per_page < 1:
        per_page = DEFAULT_PER_PAGE
    return page, min(per_page, MAX_PER_PAGE)


def _choice(q: dict[str, str], name: str, allowed: Sequence[str], default: str) -> str:
    v = q.get(name) or default
    if v not in allowed:
        raise ApiError(400, {"error": f"{name} does not have a valid value"})
    return v


def parse_time_ms(raw: str, name: str, *, upper: bool) -> int:
    """ISO 8601 (Z, +00:00, naive = UTC) to ms. Rounded so the bound stays inclusive."""
    try:
        dt = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise ApiError(400, {"error": f"{name} is invalid"}) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    exact = dt.timestamp() * 1000
    # Our stamps are whole ms: an item at .123 is "on or after" .1229 but not .1231.
    return math.floor(exact + 1e-6) if upper else math.ceil(exact - 1e-6)


def _time_range(q: dict[str, str]) -> tuple[int | None, int | None]:
    after = q.get("updated_after")
    before = q.get("updated_before")
    return (
        None if not after else parse_time_ms(after, "updated_after", upper=False),
        None if not before else parse_time_ms(before, "updated_before", upper=True),
    )


# --- pagination ----------------------------------------------------------------------
def _url_with(request: Request, **params: str) -> str:
    # Keep the path exactly as sent (an encoded project path stays encoded) and every param.
    raw_path = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path
    raw_path = raw_path.split("?", 1)[0]
    pairs = [(k, v) for k, v in parse_qsl(request.url.query, keep_blank_values=True)]
    pairs = [(k, v) for k, v in pairs if k not in params]
    pairs.extend(params.items())
    host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
    return f"{request.url.scheme}://{host}{raw_path}?{urlencode(pairs)}"


def offset_paginate(
    request: Request, rows_asc: Sequence[Any], *, desc: bool, page: int, per_page: int
) -> tuple[list[Any], dict[str, str]]:
    """Cut one page of `rows_asc` (read backwards when desc) and GitLab's headers for it."""
    world = _world(request)
    total = len(rows_asc)
    start = (page - 1) * per_page
    if desc:
        hi = max(total - start, 0)
        lo = max(hi - per_page, 0)
        rows = list(reversed(rows_asc[lo:hi]))
    else:
        rows = list(rows_asc[start : start + per_page])
    has_next = start + per_page < total
    total_pages = max(math.ceil(total / per_page), 1)
    show_totals = total <= world.config.totals_threshold
    pp = str(per_page)
    links = []
    if page > 1:
        links.append(f'<{_url_with(request, page=str(page - 1), per_page=pp)}>; rel="prev"')
    if has_next:
        links.append(f'<{_url_with(request, page=str(page + 1), per_page=pp)}>; rel="next"')
    links.append(f'<{_url_with(request, page="1", per_page=pp)}>; rel="first"')
    if show_totals:
        links.append(f'<{_url_with(request, page=str(total_pages), per_page=pp)}>; rel="last"')
    headers = {
        "Link": ", ".join(links),
        "x-next-page": str(page + 1) if has_next else "",
        "x-page": str(page),
        "x-per-page": pp,
        "x-prev-page": str(page - 1) if page > 1 else "",
    }
    if show_totals:
        headers["x-total"] = str(total)
        headers["x-total-pages"] = str(total_pages)
    return rows, headers


_KEY_FUNCS: dict[str, Callable[[Item], tuple[int, int]]] = {
    "updated_at": lambda i: (i.updated_ms, i.id),
    "created_at": lambda i: (i.created_ms, i.id),
    "id": lambda i: (i.id, i.id),
}


def _encode_cursor(order_by: str, sort: str, key: tuple[int, int]) -> str:
    raw = json.dumps({"o": order_by, "s": sort, "k": list(key)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, order_by: str, sort: str) -> tuple[int, int]:
    try:
        data = json.loads(b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_"))
        key = (int(data["k"][0]), int(data["k"][1]))
    except (ValueError, KeyError, TypeError, IndexError, binascii.Error):
        raise ApiError(400, {"message": "400 Bad request - Invalid cursor value"}) from None
    if data.get("o") != order_by or data.get("s") != sort:
        raise ApiError(400, {"message": "400 Bad request - cursor does not match order"})
    return key


def keyset_paginate(
    request: Request, rows_asc: list[Item], *, order_by: str, sort: str, per_page: int
) -> tuple[list[Item], dict[str, str]]:
    keyf = _KEY_FUNCS[order_by]
    cursor = request.query_params.get("cursor")
    if sort == "asc":
        start = (
            0
            if not cursor
            else bisect_right(rows_asc, _decode_cursor(cursor, order_by, sort), key=keyf)
        )
        rows = rows_asc[start : start + per_page]
        has_next = start + per_page < len(rows_asc)
    else:
        end = (
            len(rows_asc)
            if not cursor
            else bisect_left(rows_asc, _decode_cursor(cursor, order_by, sort), key=keyf)
        )
        rows = list(reversed(rows_asc[max(end - per_page, 0) : end]))
        has_next = end - per_page > 0
    headers = {"x-per-page": str(per_page)}
    if has_next and rows:
        nxt = _encode_cursor(order_by, sort, keyf(rows[-1]))
        headers["Link"] = f'<{_url_with(request, cursor=nxt, per_page=str(per_page))}>; rel="next"'
    return rows, headers


# --- routes --------------------------------------------------------------------------
@router.get("/api/v4/version")
async def version(request: Request) -> JSONResponse:
    authenticate(request)
    return JSONResponse({"version": "17.11.0-sim", "revision": "simulator"})


@router.get("/api/v4/user")
async def current_user(request: Request) -> JSONResponse:
    world = _world(request)
    with world.lock:
        user = authenticate(request)
        return JSONResponse(render.current_user(world.base_url, user))


@router.get("/api/v4/projects")
async def list_projects(request: Request) -> JSONResponse:
    world = _world(request)
    q = dict(request.query_params)
    with world.lock:
        user = authenticate(request)
        page, per_page = _page_params(q)
        membership = q.get("membership", "").lower() in ("1", "true")
        rows = [
            p
            for p in sorted(world.projects.values(), key=lambda p: p.id)
            if (world.is_member(p, user) if membership else world.can_see_project(p, user))
        ]
        sort = _choice(q, "sort", ("asc", "desc"), "desc")
        rows, headers = offset_paginate(
            request, rows, desc=sort == "desc", page=page, per_page=per_page
        )
        body = [render.project(world.base_url, p) for p in rows]
    return JSONResponse(body, headers=headers)


@router.get("/api/v4/projects/{ref:path}/issues/{iid:int}/notes/{note_id:int}")
async def issue_note(ref: str, iid: int, note_id: int, request: Request) -> JSONResponse:
    return _single_note(request, ref, "issue", iid, note_id)


@router.get("/api/v4/projects/{ref:path}/merge_requests/{iid:int}/notes/{note_id:int}")
async def merge_request_note(ref: str, iid: int, note_id: int, request: Request) -> JSONResponse:
    return _single_note(request, ref, "merge_request", iid, note_id)


@router.get("/api/v4/projects/{ref:path}/issues/{iid:int}/notes")
async def issue_notes(ref: str, iid: int, request: Request) -> Response:
    return _notes(request, ref, "issue", iid)


@router.get("/api/v4/projects/{ref:path}/merge_requests/{iid:int}/notes")
async def merge_request_notes(ref: str, iid: int, request: Request) -> Response:
    return _notes(request, ref, "merge_request", iid)


@router.get("/api/v4/projects/{ref:path}/issues/{iid:int}/discussions")
async def issue_discussions(ref: str, iid: int, request: Request) -> Response:
    return _discussions(request, ref, "issue", iid)


@router.get("/api/v4/projects/{ref:path}/merge_requests/{iid:int}/discussions")
async def merge_request_discussions(ref: str, iid: int, request: Request) -> Response:
    return _discussions(request, ref, "merge_request", iid)


@router.get("/api/v4/projects/{ref:path}/issues/{iid:int}")
async def get_issue(ref: str, iid: int, request: Request) -> JSONResponse:
    return _single(request, ref, "issue", iid)


@router.get("/api/v4/projects/{ref:path}/merge_requests/{iid:int}")
async def get_merge_request(ref: str, iid: int, request: Request) -> JSONResponse:
    return _single(request, ref, "merge_request", iid)


@router.get("/api/v4/projects/{ref:path}/issues")
async def list_issues(ref: str, request: Request) -> Response:
    return _list_items(request, ref, "issue")


@router.get("/api/v4/projects/{ref:path}/merge_requests")
async def list_merge_requests(ref: str, request: Request) -> Response:
    return _list_items(request, ref, "merge_request")


@router.get("/api/v4/projects/{ref:path}")
async def get_project(ref: str, request: Request) -> JSONResponse:
    world = _world(request)
    with world.lock:
        user = authenticate(request)
        p = _visible_project(world, ref, user)
        return JSONResponse(render.project(world.base_url, p))


_NOT_FOUND = {"issue": "404 Issue Not Found", "merge_request": "404 Merge Request Not Found"}


def _visible_item(world: World, p: Project, kind: ItemKind, iid: int, user: User) -> Item:
    it = p.index(kind).by_iid.get(iid)
    if it is None or not world.can_see_item(p, it, user):
        raise ApiError(404, {"message": _NOT_FOUND[kind]})
    return it


def _single(request: Request, ref: str, kind: ItemKind, iid: int) -> JSONResponse:
    world = _world(request)
    with world.lock:
        user = authenticate(request)
        p = _visible_project(world, ref, user)
        it = _visible_item(world, p, kind, iid, user)
        return JSONResponse(render.item(world, p, it))


_ISSUE_STATES = ("opened", "closed", "all")
_MR_STATES = ("opened", "closed", "merged", "locked", "all")


def _list_items(request: Request, ref: str, kind: ItemKind) -> Response:
    world = _world(request)
    q = dict(request.query_params)
    with world.lock:
        user = authenticate(request)
        p = _visible_project(world, ref, user)
        page, per_page = _page_params(q)
        order_by = _choice(q, "order_by", ("created_at", "updated_at", "id"), "created_at")
        sort = _choice(q, "sort", ("asc", "desc"), "desc")
        state = _choice(q, "state", _ISSUE_STATES if kind == "issue" else _MR_STATES, "all")
        scope = _choice(q, "scope", ("all", "created_by_me", "assigned_to_me"), "all")
        after, before = _time_range(q)

        rows = p.index(kind).ascending(order_by, after, before)
        if state != "all":
            rows = [i for i in rows if i.state == state]
        if scope == "created_by_me":
            rows = [i for i in rows if i.author_id == user.id]
        elif scope == "assigned_to_me":
            rows = [i for i in rows if user.id in i.assignee_ids]

        if q.get("pagination") == "keyset":
            if kind != "issue":
                raise ApiError(
                    405,
                    {"message": "Keyset pagination is not yet available for this type of request"},
                )
            page_rows, headers = keyset_paginate(
                request, rows, order_by=order_by, sort=sort, per_page=per_page
            )
        else:
            cap = world.config.offset_cap
            # GitLab's check: page * per_page beyond the cap, on keyset-capable types only.
            if kind == "issue" and cap > 0 and page * per_page > cap:
                raise ApiError(
                    405,
                    {
                        "message": (
                            f"Offset pagination has a maximum allowed offset of {cap} for "
                            "requests that return objects of type Issue. Remaining records "
                            "can be retrieved using keyset pagination."
                        )
                    },
                )
            page_rows, headers = offset_paginate(
                request, rows, desc=sort == "desc", page=page, per_page=per_page
            )
        body = render.items_json(world, p, (i for i in page_rows if world.can_see_item(p, i, user)))
    return Response(body, headers=headers, media_type="application/json")


def _single_note(
    request: Request, ref: str, kind: ItemKind, iid: int, note_id: int
) -> JSONResponse:
    world = _world(request)
    with world.lock:
        user = authenticate(request)
        p = _visible_project(world, ref, user)
        it = _visible_item(world, p, kind, iid, user)
        n = next((n for n in it.notes if n.id == note_id), None)
        if n is None or not world.can_see_note(p, n, user):
            raise ApiError(404, {"message": "404 Note Not Found"})
        return JSONResponse(render.note(world, p, n))


def _notes(request: Request, ref: str, kind: ItemKind, iid: int) -> Response:
    world = _world(request)
    q = dict(request.query_params)
    with world.lock:
        user = authenticate(request)
        p = _visible_project(world, ref, user)
        it = _visible_item(world, p, kind, iid, user)
        page, per_page = _page_params(q)
        order_by = _choice(q, "order_by", ("created_at", "updated_at"), "created_at")
        sort = _choice(q, "sort", ("asc", "desc"), "desc")
        if q.get("pagination") == "keyset":
            raise ApiError(
                405, {"message": "Keyset pagination is not yet available for this type of request"}
            )
        # `since` / `updated_after` are deliberately ignored: GitLab has no time filter here.
        if order_by == "updated_at":
            rows = sorted(it.notes, key=lambda n: (n.updated_ms, n.id))
        else:
            rows = sorted(it.notes, key=lambda n: (n.created_ms, n.id))
        page_rows, headers = offset_paginate(
            request, rows, desc=sort == "desc", page=page, per_page=per_page
        )
        body = render.notes_json(world, p, (n for n in page_rows if world.can_see_note(p, n, user)))
    return Response(body, headers=headers, media_type="application/json")


def _discussions(request: Request, ref: str, kind: ItemKind, iid: int) -> Response:
    """An item's threads, paginated by thread (oldest first, as GitLab); notes the user may
    not read are dropped after the page is cut, and a thread left empty with them."""
    world = _world(request)
    q = dict(request.query_params)
    with world.lock:
        user = authenticate(request)
        p = _visible_project(world, ref, user)
        it = _visible_item(world, p, kind, iid, user)
        page, per_page = _page_params(q)
        page_rows, headers = offset_paginate(
            request, it.discussions(), desc=False, page=page, per_page=per_page
        )
        visible = [[n for n in t if world.can_see_note(p, n, user)] for t in page_rows]
        body = render.discussions_json(world, p, (t for t in visible if t))
    return Response(body, headers=headers, media_type="application/json")


# --- the listings' fast path ---------------------------------------------------------
# The routes a sync calls thousands of times, matched in the router's order (the same
# patterns as the `{ref:path}` routes above) and answered without FastAPI's routing and
# dependency machinery, which cost the simulator more CPU per page than the page itself.
_FAST_ROUTES: list[tuple[re.Pattern[str], Callable[..., Response] | None]] = [
    (
        re.compile(r"^/api/v4/projects/(?P<ref>.*)/issues/(?P<iid>[0-9]+)/notes$"),
        lambda request, ref, iid: _notes(request, ref, "issue", int(iid)),
    ),
    (
        re.compile(r"^/api/v4/projects/(?P<ref>.*)/merge_requests/(?P<iid>[0-9]+)/notes$"),
        lambda request, ref, iid: _notes(request, ref, "merge_request", int(iid)),
    ),
    (
        re.compile(r"^/api/v4/projects/(?P<ref>.*)/issues/(?P<iid>[0-9]+)/discussions$"),
        lambda request, ref, iid: _discussions(request, ref, "issue", int(iid)),
    ),
    (
        re.compile(r"^/api/v4/projects/(?P<ref>.*)/merge_requests/(?P<iid>[0-9]+)/discussions$"),
        lambda request, ref, iid: _discussions(request, ref, "merge_request", int(iid)),
    ),
    (re.compile(r"^/api/v4/projects/(?P<ref>.*)/issues/[0-9]+$"), None),
    (re.compile(r"^/api/v4/projects/(?P<ref>.*)/merge_requests/[0-9]+$"), None),
    (
        re.compile(r"^/api/v4/projects/(?P<ref>.*)/issues$"),
        lambda request, ref: _list_items(request, ref, "issue"),
    ),
    (
        re.compile(r"^/api/v4/projects/(?P<ref>.*)/merge_requests$"),
        lambda request, ref: _list_items(request, ref, "merge_request"),
    ),
]


def fast_listing(scope: dict[str, Any], app: Any) -> Response | None:
    """The answer to a GET of a listing route, or None: let the FastAPI app route it."""
    if scope["method"] != "GET":
        return None
    path = scope["path"]
    for pattern, handler in _FAST_ROUTES:
        m = pattern.match(path)
        if m is not None:
            if handler is None:
                return None  # a single issue/MR: an earlier route than the listings
            request = Request({**scope, "app": app})
            try:
                return handler(request, **m.groupdict())
            except ApiError as exc:  # what create_fastapi's exception handlers answer
                return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)
            except SimError as exc:
                return JSONResponse({"error": str(exc)}, status_code=exc.status)
            except ValueError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
    return None


# --- OAuth ---------------------------------------------------------------------------
@router.post("/oauth/token")
async def oauth_token(request: Request) -> JSONResponse:
    world = _world(request)
    raw = (await request.body()).decode("utf-8", "replace")
    ctype = request.headers.get("content-type", "")
    if "json" in ctype:
        try:
            form = {k: str(v) for k, v in json.loads(raw or "{}").items()}
        except (ValueError, AttributeError):
            form = {}
    else:
        form = dict(parse_qsl(raw, keep_blank_values=True))
    client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("basic "):
        # RFC 6749 lets the client authenticate with HTTP Basic instead of form fields.
        with contextlib.suppress(ValueError, binascii.Error):
            client_id, _, client_secret = b64decode(auth[6:]).decode().partition(":")
    if form.get("grant_type") != "refresh_token":
        return JSONResponse(
            {
                "error": "unsupported_grant_type",
                "error_description": "The authorization grant type is not supported by the "
                "authorization server.",
            },
            status_code=400,
        )
    status, body = world.refresh_oauth(
        form.get("refresh_token", ""), client_id, client_secret, form.get("redirect_uri")
    )
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    return JSONResponse(body, status_code=status, headers=headers)
