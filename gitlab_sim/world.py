"""The simulator's in-memory GitLab: users, tokens, projects, issues, MRs, notes.

Everything is guarded by one re-entrant lock because the HTTP server runs in another thread
than the tests that mutate the world. Times are integer milliseconds since the epoch (UTC):
cheap to compare and bisect, rendered as GitLab's `2024-05-01T10:00:00.123Z` on the way out.
"""

from __future__ import annotations

import hashlib
import random
import secrets
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from gitlab_sim.faults import FaultInjector, FaultSpec
from gitlab_sim.requestlog import RequestLog

ItemKind = Literal["issue", "merge_request"]
TokenKind = Literal["personal", "oauth_access", "oauth_refresh"]

THROTTLED_TOUCH_MS = 60_000  # GitLab's ThrottledTouch interval: 1 minute
OAUTH_EXPIRES_IN = 7200
_MAX_KEY = 1 << 62


def iso_ms(ms: int) -> str:
    """GitLab's timestamp format: UTC, milliseconds, trailing Z."""
    dt = datetime.fromtimestamp(ms // 1000, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


class SimError(Exception):
    """A control-API mistake (unknown user, project...): answered as 4xx by the control routes."""

    def __init__(self, message: str, status: int = 404) -> None:
        self.status = status
        super().__init__(message)


@dataclass(slots=True)
class User:
    id: int
    username: str
    name: str
    avatar_url: str | None
    created_ms: int


@dataclass(slots=True)
class Token:
    value: str
    user_id: int
    kind: TokenKind
    created_ms: int
    expires_ms: int | None = None
    revoked: bool = False
    # Access token <-> refresh token of one OAuth grant, revoked together on rotation.
    pair: str | None = None
    scope: str = "api"


@dataclass(slots=True, eq=False)
class Note:
    id: int
    body: str
    author_id: int
    created_ms: int
    updated_ms: int
    system: bool
    internal: bool
    parent: Item
    # Its thread (the Discussions API's id, 40 hex). A standalone note is a thread of its
    # own (`individual`); replying to it turns that into a thread, as in GitLab.
    discussion_id: str = ""
    individual: bool = True
    resolved: bool = False
    resolved_by: int | None = None
    resolved_ms: int | None = None

    @property
    def resolvable(self) -> bool:
        """Notes of threads (not standalone notes, not system notes) can be resolved."""
        return not self.individual and not self.system


@dataclass(slots=True, eq=False)
class Item:
    kind: ItemKind
    id: int
    iid: int
    project_id: int
    title: str
    description: str | None
    state: str
    author_id: int
    labels: list[str]
    created_ms: int
    updated_ms: int
    confidential: bool = False
    closed_ms: int | None = None
    merged_ms: int | None = None
    moved_to_id: int | None = None  # an issue moved to another project (kept, closed)
    notes: list[Note] = field(default_factory=list)
    user_notes_count: int = 0  # non-system notes, kept in step with `notes`
    assignee_ids: list[int] = field(default_factory=list)

    def discussions(self) -> list[list[Note]]:
        """The item's threads in GitLab's order (by their first note), notes oldest first."""
        threads: dict[str, list[Note]] = {}
        for n in sorted(self.notes, key=lambda n: (n.created_ms, n.id)):
            threads.setdefault(n.discussion_id or f"note-{n.id}", []).append(n)
        return list(threads.values())


class ItemIndex:
    """One project's issues (or MRs), kept sorted three ways so listing is slicing + bisect."""

    def __init__(self) -> None:
        self.by_iid: dict[int, Item] = {}
        self._id_items: list[Item] = []  # ids only grow, so appending keeps this sorted
        self._cre_keys: list[tuple[int, int]] = []
        self._cre_items: list[Item] = []
        self._upd_keys: list[tuple[int, int]] = []
        self._upd_items: list[Item] = []

    def __len__(self) -> int:
        return len(self._id_items)

    def bulk_load(self, items: Iterable[Item]) -> None:
        for it in items:
            self.by_iid[it.iid] = it
            self._id_items.append(it)
        self._id_items.sort(key=lambda i: i.id)
        cre = sorted(self._id_items, key=lambda i: (i.created_ms, i.id))
        self._cre_items = cre
        self._cre_keys = [(i.created_ms, i.id) for i in cre]
        upd = sorted(self._id_items, key=lambda i: (i.updated_ms, i.id))
        self._upd_items = upd
        self._upd_keys = [(i.updated_ms, i.id) for i in upd]

    def add(self, item: Item) -> None:
        self.by_iid[item.iid] = item
        if self._id_items and self._id_items[-1].id > item.id:
            pos = bisect_left(self._id_items, item.id, key=lambda i: i.id)
            self._id_items.insert(pos, item)
        else:
            self._id_items.append(item)
        self._insert(self._cre_keys, self._cre_items, (item.created_ms, item.id), item)
        self._insert(self._upd_keys, self._upd_items, (item.updated_ms, item.id), item)

    def remove(self, item: Item) -> None:
        """A hard delete (GitLab's DELETE of an issue or MR): gone from every listing."""
        del self.by_iid[item.iid]
        self._id_items.remove(item)
        for keys, items, key in (
            (self._cre_keys, self._cre_items, (item.created_ms, item.id)),
            (self._upd_keys, self._upd_items, (item.updated_ms, item.id)),
        ):
            pos = bisect_left(keys, key)
            del keys[pos]
            del items[pos]

    def set_updated(self, item: Item, updated_ms: int) -> None:
        pos = bisect_left(self._upd_keys, (item.updated_ms, item.id))
        del self._upd_keys[pos]
        del self._upd_items[pos]
        item.updated_ms = updated_ms
        self._insert(self._upd_keys, self._upd_items, (updated_ms, item.id), item)

    @staticmethod
    def _insert(keys: list, items: list, key: tuple[int, int], item: Item) -> None:
        pos = bisect_right(keys, key)
        keys.insert(pos, key)
        items.insert(pos, item)

    def ascending(
        self, order_by: str, after_ms: int | None = None, before_ms: int | None = None
    ) -> list[Item]:
        """Items in ascending (order_by, id) order with updated_at in [after, before]."""
        if order_by == "updated_at":
            lo = 0 if after_ms is None else bisect_left(self._upd_keys, (after_ms, -1))
            hi = (
                len(self._upd_keys)
                if before_ms is None
                else bisect_right(self._upd_keys, (before_ms, _MAX_KEY))
            )
            return self._upd_items[lo:hi]
        items = self._cre_items if order_by == "created_at" else self._id_items
        if after_ms is None and before_ms is None:
            return list(items)
        lo_ms = -_MAX_KEY if after_ms is None else after_ms
        hi_ms = _MAX_KEY if before_ms is None else before_ms
        return [i for i in items if lo_ms <= i.updated_ms <= hi_ms]


@dataclass(slots=True, eq=False)
class Project:
    id: int
    name: str
    path_with_namespace: str
    visibility: Literal["private", "internal", "public"]
    members: set[int]
    created_ms: int
    issues: ItemIndex = field(default_factory=ItemIndex)
    merge_requests: ItemIndex = field(default_factory=ItemIndex)

    def index(self, kind: ItemKind) -> ItemIndex:
        return self.issues if kind == "issue" else self.merge_requests


@dataclass(slots=True)
class OAuthApp:
    client_id: str
    client_secret: str
    redirect_uri: str


@dataclass(slots=True)
class SimConfig:
    latency_ms: float = 0.0
    rate_limit_per_minute: int = 1_000_000  # high enough never to trigger unless lowered
    offset_cap: int = 50_000  # issues only, as GitLab's max offset for keyset-capable types
    totals_threshold: int = 10_000  # above this, x-total / x-total-pages / rel=last vanish

    def as_dict(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency_ms,
            "rate_limit_per_minute": self.rate_limit_per_minute,
            "offset_cap": self.offset_cap,
            "totals_threshold": self.totals_threshold,
        }


class World:
    """The whole simulated GitLab, plus the server-side knobs (config, faults, request log).

    Build one with `gitlab_sim.generate.generate_world(seed=...)` or empty with `World()`.
    All public methods are thread-safe.
    """

    def __init__(
        self,
        *,
        oauth_app: OAuthApp | None = None,
        config: SimConfig | None = None,
        base_url: str = "http://127.0.0.1",
        token_seed: int | None = None,
    ) -> None:
        self.lock = threading.RLock()
        self.users: dict[int, User] = {}
        self.usernames: dict[str, User] = {}
        self.tokens: dict[str, Token] = {}
        self.projects: dict[int, Project] = {}
        self.project_paths: dict[str, Project] = {}
        self.notes: dict[int, Note] = {}
        # Deleted projects (id and path): the oracle answers [] for them, not an error.
        self.deleted_projects: dict[int, str] = {}
        self.oauth_app = oauth_app or OAuthApp(
            client_id="sim-oauth-client-id",
            client_secret="sim-oauth-client-secret",
            redirect_uri="http://127.0.0.1/oauth/callback",
        )
        self.config = config or SimConfig()
        # Where web_url links point; the server sets it to its own address once bound.
        self.base_url = base_url.rstrip("/")
        self.faults = FaultInjector()
        self.request_log = RequestLog()
        self.clock_offset_ms = 0
        # Rendered JSON of items and notes (gitlab_sim.render.json_array): a bench must
        # measure the service, not the simulator re-encoding unchanged items on every page.
        self.rendered: dict[tuple[str, int], tuple[tuple[Any, ...], bytes]] = {}
        self._next_id = {
            "user": 1,
            "project": 1,
            "issue": 1,
            "merge_request": 1,
            "note": 1,
            "discussion": 1,
        }
        # Tokens made at run time are random unless a seed asks for reproducible ones.
        self._token_rng = random.Random(token_seed) if token_seed is not None else None

    # --- clock ------------------------------------------------------------------------
    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.clock_offset_ms

    def advance_clock(self, seconds: float) -> int:
        """Move the simulated clock forward (ThrottledTouch and token expiry tests)."""
        with self.lock:
            self.clock_offset_ms += int(seconds * 1000)
            return self.now_ms()

    # --- ids and tokens ---------------------------------------------------------------
    def _take_id(self, kind: str) -> int:
        n = self._next_id[kind]
        self._next_id[kind] = n + 1
        return n

    def new_discussion_id(self) -> str:
        """A thread id shaped like GitLab's (40 hex digits), reproducible per world."""
        n = self._take_id("discussion")
        return hashlib.sha1(f"discussion-{n}".encode(), usedforsecurity=False).hexdigest()

    def _reserve_ids(self, kind: str, up_to: int) -> None:
        self._next_id[kind] = max(self._next_id[kind], up_to + 1)

    def _token_hex(self, n: int = 10) -> str:
        if self._token_rng is not None:
            return "".join(self._token_rng.choice("0123456789abcdef") for _ in range(n * 2))
        return secrets.token_hex(n)

    # --- lookups ----------------------------------------------------------------------
    def user(self, ref: int | str) -> User:
        with self.lock:
            if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
                u = self.users.get(int(ref))
            else:
                u = self.usernames.get(ref)
            if u is None:
                raise SimError(f"unknown user {ref!r}")
            return u

    def project(self, ref: int | str) -> Project:
        with self.lock:
            if isinstance(ref, int) or ref.isdigit():
                p = self.projects.get(int(ref))
            else:
                p = self.project_paths.get(ref)
            if p is None:
                raise SimError(f"unknown project {ref!r}")
            return p

    def item(self, project_ref: int | str, kind: ItemKind, iid: int) -> Item:
        with self.lock:
            it = self.project(project_ref).index(kind).by_iid.get(int(iid))
            if it is None:
                raise SimError(f"unknown {kind} {iid} in project {project_ref!r}")
            return it

    def note(self, note_id: int) -> Note:
        with self.lock:
            n = self.notes.get(int(note_id))
            if n is None:
                raise SimError(f"unknown note {note_id}")
            return n

    def token_record(self, value: str) -> Token | None:
        with self.lock:
            return self.tokens.get(value)

    def personal_token(self, user_ref: int | str) -> str:
        """The user's first personal access token (every generated user has one)."""
        with self.lock:
            u = self.user(user_ref)
            for t in self.tokens.values():
                if t.user_id == u.id and t.kind == "personal" and not t.revoked:
                    return t.value
            return self.create_personal_token(u.id)

    # --- visibility -------------------------------------------------------------------
    @staticmethod
    def is_member(project: Project, user: User | None) -> bool:
        return user is not None and user.id in project.members

    def can_see_project(self, project: Project, user: User | None) -> bool:
        return project.visibility != "private" or self.is_member(project, user)

    def can_see_item(self, project: Project, item: Item, user: User | None) -> bool:
        if not item.confidential:
            return True
        return user is not None and (user.id in project.members or user.id == item.author_id)

    def can_see_note(self, project: Project, note: Note, user: User | None) -> bool:
        return not note.internal or self.is_member(project, user)

    # --- users, projects, tokens --------------------------------------------------------
    def create_user(
        self,
        username: str,
        name: str | None = None,
        avatar_url: str | None = None,
        *,
        user_id: int | None = None,
        token: str | None = None,
    ) -> User:
        with self.lock:
            if username in self.usernames:
                raise SimError(f"username {username!r} taken", 409)
            uid = user_id if user_id is not None else self._take_id("user")
            self._reserve_ids("user", uid)
            u = User(uid, username, name or username, avatar_url, self.now_ms())
            self.users[uid] = u
            self.usernames[username] = u
            self.create_personal_token(uid, value=token)
            return u

    def create_personal_token(
        self, user_ref: int | str, *, value: str | None = None, expires_in: int | None = None
    ) -> str:
        with self.lock:
            u = self.user(user_ref)
            value = value or f"sim-{u.username}-token-{self._token_hex()}"
            now = self.now_ms()
            expires = None if expires_in is None else now + expires_in * 1000
            self.tokens[value] = Token(value, u.id, "personal", now, expires)
            return value

    def create_oauth_tokens(
        self, user_ref: int | str, *, expires_in: int = OAUTH_EXPIRES_IN
    ) -> dict[str, Any]:
        """A fresh OAuth grant (access + refresh) for a user, as /oauth/token would answer."""
        with self.lock:
            u = self.user(user_ref)
            now = self.now_ms()
            access = f"sim-oauth-access-{u.username}-{self._token_hex()}"
            refresh = f"sim-oauth-refresh-{u.username}-{self._token_hex()}"
            self.tokens[access] = Token(
                access, u.id, "oauth_access", now, now + expires_in * 1000, pair=refresh
            )
            self.tokens[refresh] = Token(refresh, u.id, "oauth_refresh", now, None, pair=access)
            return {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": expires_in,
                "refresh_token": refresh,
                "created_at": now // 1000,
                "scope": "api",
                "expires_at": iso_ms(now + expires_in * 1000),
                "user_id": u.id,
                "username": u.username,
            }

    def expire_token(self, value: str) -> None:
        with self.lock:
            t = self._require_token(value)
            t.expires_ms = self.now_ms() - 1000

    def revoke_token(self, value: str) -> None:
        with self.lock:
            self._require_token(value).revoked = True

    def _require_token(self, value: str) -> Token:
        t = self.tokens.get(value)
        if t is None:
            raise SimError("unknown token")
        return t

    def refresh_oauth(
        self, refresh_token: str, client_id: str, client_secret: str, redirect_uri: str | None
    ) -> tuple[int, dict[str, Any]]:
        """POST /oauth/token grant_type=refresh_token: (status, body) exactly as GitLab."""
        with self.lock:
            app = self.oauth_app
            if client_id != app.client_id or client_secret != app.client_secret:
                return 401, {
                    "error": "invalid_client",
                    "error_description": (
                        "Client authentication failed due to unknown client, no client "
                        "authentication included, or unsupported authentication method."
                    ),
                }
            t = self.tokens.get(refresh_token)
            if (
                t is None
                or t.kind != "oauth_refresh"
                or t.revoked
                or (redirect_uri is not None and redirect_uri != app.redirect_uri)
            ):
                return 400, {
                    "error": "invalid_grant",
                    "error_description": (
                        "The provided authorization grant is invalid, expired, revoked, does "
                        "not match the redirection URI used in the authorization request, or "
                        "was issued to another client."
                    ),
                }
            # Rotation: the whole old pair dies; only the new pair works from now on.
            t.revoked = True
            if t.pair and t.pair in self.tokens:
                self.tokens[t.pair].revoked = True
            grant = self.create_oauth_tokens(t.user_id)
            body = {k: grant[k] for k in ("access_token", "token_type", "expires_in")}
            body.update(
                refresh_token=grant["refresh_token"],
                created_at=grant["created_at"],
                scope=grant["scope"],
            )
            return 200, body

    def create_project(
        self,
        path_with_namespace: str,
        *,
        visibility: Literal["private", "internal", "public"] = "private",
        members: Sequence[int | str] = (),
        name: str | None = None,
        project_id: int | None = None,
    ) -> Project:
        with self.lock:
            if path_with_namespace in self.project_paths:
                raise SimError(f"project {path_with_namespace!r} exists", 409)
            pid = project_id if project_id is not None else self._take_id("project")
            self._reserve_ids("project", pid)
            p = Project(
                id=pid,
                name=name or path_with_namespace.rsplit("/", 1)[-1],
                path_with_namespace=path_with_namespace,
                visibility=visibility,
                members={self.user(m).id for m in members},
                created_ms=self.now_ms(),
            )
            self.projects[pid] = p
            self.project_paths[path_with_namespace] = p
            return p

    def add_member(self, project_ref: int | str, user_ref: int | str) -> None:
        with self.lock:
            self.project(project_ref).members.add(self.user(user_ref).id)

    def remove_member(self, project_ref: int | str, user_ref: int | str) -> None:
        with self.lock:
            self.project(project_ref).members.discard(self.user(user_ref).id)

    def set_visibility(self, project_ref: int | str, visibility: str) -> None:
        with self.lock:
            if visibility not in ("private", "internal", "public"):
                raise SimError("visibility must be private, internal or public", 400)
            self.project(project_ref).visibility = visibility  # type: ignore[assignment]

    # --- issues and merge requests -------------------------------------------------------
    def create_item(
        self,
        project_ref: int | str,
        kind: ItemKind,
        title: str,
        *,
        description: str | None = None,
        labels: Sequence[str] = (),
        author: int | str | None = None,
        state: str = "opened",
        confidential: bool = False,
        assignees: Sequence[int | str] = (),
    ) -> Item:
        with self.lock:
            p = self.project(project_ref)
            _check_state(kind, state)
            if author is None:
                author_id = min(p.members) if p.members else min(self.users)
            else:
                author_id = self.user(author).id
            idx = p.index(kind)
            now = self.now_ms()
            iid = max(idx.by_iid, default=0) + 1
            it = Item(
                kind=kind,
                id=self._take_id(kind),
                iid=iid,
                project_id=p.id,
                title=title,
                description=description,
                state=state,
                author_id=author_id,
                labels=list(labels),
                created_ms=now,
                updated_ms=now,
                confidential=confidential and kind == "issue",
                closed_ms=now if state == "closed" else None,
                merged_ms=now if state == "merged" else None,
                assignee_ids=[self.user(a).id for a in assignees],
            )
            idx.add(it)
            return it

    def create_issue(self, project_ref: int | str, title: str, **kw: Any) -> Item:
        return self.create_item(project_ref, "issue", title, **kw)

    def create_merge_request(self, project_ref: int | str, title: str, **kw: Any) -> Item:
        return self.create_item(project_ref, "merge_request", title, **kw)

    _UNSET: Any = object()

    def update_item(
        self,
        project_ref: int | str,
        kind: ItemKind,
        iid: int,
        *,
        title: str | None = None,
        description: str | None = _UNSET,
        labels: Sequence[str] | None = None,
        state: str | None = None,
        confidential: bool | None = None,
        assignees: Sequence[int | str] | None = None,
        system_notes: bool = True,
    ) -> Item:
        """Edit an issue/MR; updated_at = now. Label, state, assignee and description
        changes leave system notes, as GitLab does."""
        with self.lock:
            p = self.project(project_ref)
            it = self.item(p.id, kind, iid)
            now = self.now_ms()
            events: list[str] = []
            if title is not None:
                it.title = title
            if description is not World._UNSET and description != it.description:
                it.description = description
                events.append("changed the description")
            if labels is not None:
                added = [x for x in labels if x not in it.labels]
                removed = [x for x in it.labels if x not in labels]
                if added:
                    events.append("added " + " ".join(f"~{x}" for x in added) + " label")
                if removed:
                    events.append("removed " + " ".join(f"~{x}" for x in removed) + " label")
                it.labels = list(labels)
            if state is not None and state != it.state:
                _check_state(kind, state)
                it.state = state
                if state == "closed":
                    it.closed_ms = now
                if state == "merged":
                    it.merged_ms = now
                events.append({"closed": "closed", "merged": "merged"}.get(state, "reopened"))
            if assignees is not None:
                ids = [self.user(a).id for a in assignees]
                added_ids = [i for i in ids if i not in it.assignee_ids]
                removed_ids = [i for i in it.assignee_ids if i not in ids]
                if added_ids:
                    names = " ".join(f"@{self.users[i].username}" for i in added_ids)
                    events.append(f"assigned to {names}")
                if removed_ids:
                    names = " ".join(f"@{self.users[i].username}" for i in removed_ids)
                    events.append(f"unassigned {names}")
                it.assignee_ids = ids
            if confidential is not None and kind == "issue" and confidential != it.confidential:
                it.confidential = confidential
                events.append(
                    "made the issue confidential" if confidential else "made the issue visible"
                )
            p.index(kind).set_updated(it, now)
            if system_notes:
                for body in events:
                    self._append_note(it, body, it.author_id, system=True, internal=False)
            return it

    def update_issue(self, project_ref: int | str, iid: int, **kw: Any) -> Item:
        return self.update_item(project_ref, "issue", iid, **kw)

    def update_merge_request(self, project_ref: int | str, iid: int, **kw: Any) -> Item:
        return self.update_item(project_ref, "merge_request", iid, **kw)

    # --- deletions and moves (hard deletes, as GitLab's DELETE endpoints) -----------------
    def delete_item(self, project_ref: int | str, kind: ItemKind, iid: int) -> None:
        """Delete an issue or MR with its notes: it leaves every listing and answers 404."""
        with self.lock:
            it = self.item(project_ref, kind, iid)
            self.project(project_ref).index(kind).remove(it)
            for n in it.notes:
                self.notes.pop(n.id, None)

    def delete_note(self, note_id: int) -> None:
        """Delete a note. Its parent's user_notes_count drops, its updated_at does not move
        (GitLab destroys the note without touching the noteable)."""
        with self.lock:
            n = self.note(note_id)
            n.parent.notes.remove(n)
            if not n.system:
                n.parent.user_notes_count -= 1
            del self.notes[n.id]

    def delete_project(self, project_ref: int | str) -> None:
        """The project and everything in it: 404 for everyone from now on."""
        with self.lock:
            p = self.project(project_ref)
            for kind in ("issue", "merge_request"):
                for it in list(p.index(kind).by_iid.values()):  # type: ignore[arg-type]
                    for n in it.notes:
                        self.notes.pop(n.id, None)
            del self.projects[p.id]
            del self.project_paths[p.path_with_namespace]
            self.deleted_projects[p.id] = p.path_with_namespace

    def move_issue(self, project_ref: int | str, iid: int, to_project_ref: int | str) -> Item:
        """GitLab's issue move: a new issue (with copies of the notes) in the target project;
        the original is closed, gets `moved_to_id`, and stays listed in its project."""
        with self.lock:
            old = self.item(project_ref, "issue", iid)
            new = self.create_item(
                to_project_ref,
                "issue",
                old.title,
                description=old.description,
                labels=old.labels,
                author=old.author_id,
                confidential=old.confidential,
            )
            for n in old.notes:
                self._append_note(new, n.body, n.author_id, system=n.system, internal=n.internal)
            self.update_item(project_ref, "issue", iid, state="closed")
            old.moved_to_id = new.id
            target = self.project(to_project_ref).path_with_namespace
            self._append_note(
                old, f"moved to {target}#{new.iid}", old.author_id, system=True, internal=False
            )
            return new

    # --- notes ------------------------------------------------------------------------
    def add_note(
        self,
        project_ref: int | str,
        kind: ItemKind,
        iid: int,
        body: str,
        *,
        author: int | str | None = None,
        system: bool = False,
        internal: bool = False,
        thread: bool = False,
        reply_to: int | None = None,
    ) -> Note:
        """A note on an issue/MR. `thread`: it starts a thread (resolvable, as a review
        comment); `reply_to`: a reply in that note's thread (a standalone note replied to
        becomes a thread)."""
        with self.lock:
            it = self.item(project_ref, kind, iid)
            author_id = it.author_id if author is None else self.user(author).id
            discussion: str | None = None
            if reply_to is not None:
                first = self.note(reply_to)
                if first.parent is not it:
                    raise SimError(f"note {reply_to} is not on this {kind}", 400)
                discussion = first.discussion_id
                for n in it.notes:  # the thread is no longer a standalone note
                    if n.discussion_id == discussion:
                        n.individual = False
            note = self._append_note(
                it,
                body,
                author_id,
                system=system,
                internal=internal,
                discussion_id=discussion,
                individual=not (thread or reply_to is not None) or system,
            )
            self._throttled_touch(it)
            return note

    def resolve_thread(
        self, note_id: int, *, resolved: bool = True, by: int | str | None = None
    ) -> list[Note]:
        """Resolve (or reopen) the thread of `note_id`: every resolvable note of it. Saving
        a note touches its issue/MR (ThrottledTouch), as any note update."""
        with self.lock:
            first = self.note(note_id)
            if not first.resolvable:
                raise SimError(f"note {note_id} is not in a resolvable thread", 400)
            it = first.parent
            now = self.now_ms()
            who = it.author_id if by is None else self.user(by).id
            changed = [n for n in it.notes if n.discussion_id == first.discussion_id]
            for n in changed:
                if n.resolvable:
                    n.resolved = resolved
                    n.resolved_by = who if resolved else None
                    n.resolved_ms = now if resolved else None
                    n.updated_ms = now
            self._throttled_touch(it)
            return changed

    def edit_note(self, note_id: int, body: str) -> Note:
        with self.lock:
            n = self.note(note_id)
            n.body = body
            n.updated_ms = self.now_ms()
            self._throttled_touch(n.parent)
            return n

    def _append_note(
        self,
        it: Item,
        body: str,
        author_id: int,
        *,
        system: bool,
        internal: bool,
        discussion_id: str | None = None,
        individual: bool = True,
    ) -> Note:
        now = self.now_ms()
        n = Note(self._take_id("note"), body, author_id, now, now, system, internal, it)
        n.discussion_id = discussion_id or self.new_discussion_id()
        n.individual = individual
        it.notes.append(n)
        if not system:
            it.user_notes_count += 1
        self.notes[n.id] = n
        return n

    def _throttled_touch(self, it: Item) -> None:
        # GitLab skips touching a noteable updated less than a minute ago, so a note can be
        # newer than its parent's updated_at: the reason syncs must overlap by >= 60 s.
        now = self.now_ms()
        if now - it.updated_ms >= THROTTLED_TOUCH_MS:
            self.projects[it.project_id].index(it.kind).set_updated(it, now)

    # --- server knobs ------------------------------------------------------------------
    def configure(self, **changes: Any) -> SimConfig:
        with self.lock:
            for k, v in changes.items():
                if v is None:
                    continue
                if not hasattr(self.config, k):
                    raise SimError(f"unknown config key {k!r}", 400)
                setattr(self.config, k, type(getattr(self.config, k))(v))
            return self.config

    def add_fault(self, spec: FaultSpec | None = None, **kw: Any) -> FaultSpec:
        return self.faults.add(spec or FaultSpec(**kw))

    def clear_faults(self) -> None:
        self.faults.clear()

    def requests(self) -> list[dict[str, Any]]:
        return self.request_log.entries()

    def request_counts(self) -> dict[str, int]:
        return self.request_log.counts()

    def clear_requests(self) -> None:
        self.request_log.clear()

    # --- control-API views ----------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        with self.lock:
            users = []
            for u in self.users.values():
                toks = [t for t in self.tokens.values() if t.user_id == u.id]
                users.append(
                    {
                        "id": u.id,
                        "username": u.username,
                        "name": u.name,
                        "avatar_url": u.avatar_url,
                        "token": next((t.value for t in toks if t.kind == "personal"), None),
                        "tokens": [
                            {
                                "token": t.value,
                                "kind": t.kind,
                                "expires_at": None
                                if t.expires_ms is None
                                else iso_ms(t.expires_ms),
                                "revoked": t.revoked,
                            }
                            for t in toks
                        ],
                    }
                )
            projects = [
                {
                    "id": p.id,
                    "name": p.name,
                    "path_with_namespace": p.path_with_namespace,
                    "visibility": p.visibility,
                    "members": sorted(p.members),
                    "member_usernames": sorted(self.users[m].username for m in p.members),
                    "issues_count": len(p.issues),
                    "merge_requests_count": len(p.merge_requests),
                    "web_url": f"{self.base_url}/{p.path_with_namespace}",
                }
                for p in self.projects.values()
            ]
            return {
                "base_url": self.base_url,
                "api_url": f"{self.base_url}/api/v4",
                "now": iso_ms(self.now_ms()),
                "users": users,
                "projects": projects,
                "oauth_app": {
                    "client_id": self.oauth_app.client_id,
                    "client_secret": self.oauth_app.client_secret,
                    "redirect_uri": self.oauth_app.redirect_uri,
                },
                "config": self.config.as_dict(),
            }


def _check_state(kind: ItemKind, state: str) -> None:
    allowed = ("opened", "closed") if kind == "issue" else ("opened", "closed", "merged")
    if state not in allowed:
        raise SimError(f"state must be one of {allowed}", 400)
