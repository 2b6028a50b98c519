"""Hostile but legal GitLab payloads: null and missing optional fields, a 1 MB description,
unicode and control characters, labels containing commas. Stored faithfully (equal to ground
truth, and unchanged on the next run), never crashing a user's sync."""

from __future__ import annotations

import json
from typing import Any

import pytest

import gitlab_sim.server as sim_server
from gitlab_sim.server import SimulatorServer
from tests.support import LiveServer, add_user, assert_equal_truth, make_settings, project_tuple

# Optional fields GitLab may omit; they are dropped when null, empty or false.
_OPTIONAL = {"description", "labels", "avatar_url", "confidential", "system", "title"}
# Fields dropped always: the sync must not need them.
_ALWAYS = {"user_notes_count", "references", "time_stats", "noteable_type", "noteable_iid"}

NASTY = (
    "Ünïcödé ✓ 🚀 日本語 עברית \u202eevil\u202c zero\u200bwidth e\u0301 "
    "ctrl:\x01\x02\x07\x08\x0b\x0c\x1b[31m\x1f\x7f tab\t cr\r lf\n <script>alert(1)</script> "
    '\'; DROP TABLE "Event"; -- %s {0} \\u0000 \\\\'
)


def _strip(value: Any) -> Any:
    if isinstance(value, list):
        return [_strip(v) for v in value]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k in _ALWAYS or (k in _OPTIONAL and v in (None, [], False)):
                continue
            out[k] = _strip(v)
        return out
    return value


class MissingFields:
    """ASGI wrapper: GitLab list answers without their optional fields."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/api/v4/projects/"):
            await self.app(scope, receive, send)
            return
        start: dict = {}
        chunks: list[bytes] = []

        async def capture(message):
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        body = b"".join(chunks)
        if start.get("status") == 200 and body[:1] == b"[":
            body = json.dumps(_strip(json.loads(body)), ensure_ascii=False).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def sim(monkeypatch):
    original = sim_server.create_app
    monkeypatch.setattr(sim_server, "create_app", lambda world: MissingFields(original(world)))
    with SimulatorServer(seed=51, users=2, projects=2, issues=4, merge_requests=2, notes=2) as s:
        yield s


def test_hostile_payloads_are_stored_faithfully(db_url, sim):
    w = sim.world
    w.create_user("nullavatar", avatar_url=None)
    w.add_member(1, "nullavatar")
    huge = ("0123456789abcdef" * 65536)[: 1024 * 1024]  # 1 MB
    items = [
        w.create_issue(1, "no description", description=None, labels=[], author="nullavatar"),
        w.create_issue(1, NASTY, description=NASTY, labels=["a, b", ",", "x,y,z", " spaced "]),
        w.create_issue(1, "huge", description=huge, labels=["big"]),
        w.create_merge_request(1, "", description="", labels=["Ünïcödé, too"]),
        w.create_issue(1, "x" * 2000, description="long title"),
    ]
    w.add_note(1, "issue", items[0].iid, NASTY, author="nullavatar")
    w.add_note(1, "issue", items[1].iid, huge)
    w.add_note(1, "issue", items[1].iid, "\n\n   \n")  # a blank first line: title "Comment: "
    w.add_note(1, "merge_request", items[3].iid, "🚀" * 200)  # title cut inside emoji runs
    uid = add_user(db_url, "u1@example.com", sim.token("nullavatar"), [project_tuple(sim, 1)])
    other = add_user(db_url, "u2@example.com", sim.token("user1"), [project_tuple(sim, 2)])

    with LiveServer(make_settings(db_url, sim.url, gitlab_per_page=3)) as server:
        r = server.poll()
        assert r.status_code == 200, r.text
        s = {u["user_id"]: u for u in r.json()["users"]}
        assert s[uid]["status"] == "processed", s[uid]
        assert s[other]["status"] == "processed", s[other]
        assert_equal_truth(db_url, uid, sim, "nullavatar", [1])
        assert_equal_truth(db_url, other, sim, "user1", [2])
        # Faithful means byte-identical: the next run finds nothing to rewrite.
        again = server.poll().json()
        assert again["events"] == {"stored": 0, "updated": 0, "removed": 0}, again["events"]
    # The wrapper really removed fields (the test would prove nothing otherwise).
    entries = [e for e in w.requests() if e["kind"] == "issues"]
    assert entries
