"""The GitLab simulator over real HTTP on 127.0.0.1: it must behave like GitLab where our
client depends on it (pagination, visibility, auth, OAuth, ThrottledTouch, faults)."""

from __future__ import annotations

import email.utils
import json
import socket
import subprocess
import sys
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from gitlab_sim.expected import comment_title, expected_events
from gitlab_sim.generate import generate_world
from gitlab_sim.server import SimulatorServer
from gitlab_sim.world import SimConfig, World, iso_ms

NOW_MS = 1_780_000_000_000  # fixed "now" for determinism checks


@pytest.fixture(scope="module")
def sim():
    """A read-only shared simulator; tests that mutate build their own."""
    with SimulatorServer(seed=11, users=4, projects=4, issues=40, merge_requests=20, notes=3) as s:
        yield s


@pytest.fixture
def fresh():
    with SimulatorServer(seed=3, users=4, projects=4, issues=10, merge_requests=5, notes=2) as s:
        yield s


def client(sim: SimulatorServer, username: str | None = None, **kw) -> httpx.Client:
    headers = {"PRIVATE-TOKEN": sim.token(username)} if username else {}
    return httpx.Client(base_url=sim.api_url, headers=headers, timeout=5, **kw)


def walk(c: httpx.Client, url: str, **params) -> list[httpx.Response]:
    """Follow rel="next" until it is absent (the only correct stop condition)."""
    pages = [c.get(url, params=params)]
    while "next" in pages[-1].links:
        assert len(pages) < 10_000
        pages.append(c.get(pages[-1].links["next"]["url"]))
    return pages


def public_project_with_outsider(world: World):
    """(project, non-member username) for a public project."""
    for p in world.projects.values():
        if p.visibility == "public":
            outsiders = [u for u in world.users.values() if u.id not in p.members]
            if outsiders:
                return p, outsiders[0].username
    raise AssertionError("seed has no public project with an outsider")


# --- pagination -----------------------------------------------------------------------
def test_pagination_headers_and_link_rels(sim):
    p = sim.world.project(1)
    member = sim.world.users[min(p.members)].username
    with client(sim, member) as c:
        params = {
            "per_page": 7,
            "page": 2,
            "order_by": "updated_at",
            "sort": "asc",
            "updated_after": "2000-01-01T00:00:00+00:00",
        }
        r = c.get("/projects/group-a%2Fproject-1/issues", params=params)
        assert r.status_code == 200
        total = len(p.issues)
        assert r.headers["x-page"] == "2"
        assert r.headers["x-per-page"] == "7"
        assert r.headers["x-prev-page"] == "1"
        assert r.headers["x-next-page"] == "3"
        assert r.headers["x-total"] == str(total)
        pages = -(-total // 7)
        assert r.headers["x-total-pages"] == str(pages)
        assert set(r.links) == {"prev", "next", "first", "last"}
        nxt = urlsplit(r.links["next"]["url"])
        assert nxt.scheme == "http" and nxt.netloc == urlsplit(sim.url).netloc
        assert nxt.path == "/api/v4/projects/group-a%2Fproject-1/issues"
        q = parse_qs(nxt.query)
        assert q["page"] == ["3"] and q["per_page"] == ["7"]
        assert q["updated_after"] == ["2000-01-01T00:00:00+00:00"]  # kept, %2B-encoded
        assert "%2B00%3A00" in r.links["next"]["url"]
        assert q["order_by"] == ["updated_at"] and q["sort"] == ["asc"]
        assert parse_qs(urlsplit(r.links["last"]["url"]).query)["page"] == [str(pages)]

        last = c.get("/projects/1/issues", params={"per_page": 7, "page": pages})
        assert last.headers["x-next-page"] == ""
        assert "next" not in last.links and "prev" in last.links
        first = c.get("/projects/1/issues", params={"per_page": 7})
        assert first.headers["x-prev-page"] == "" and "prev" not in first.links
        # per_page is capped at 100
        assert c.get("/projects/1/issues", params={"per_page": 500}).headers["x-per-page"] == "100"


def test_desc_updated_at_order_and_mr_state_filter(sim):
    p = sim.world.project(1)
    member = sim.world.users[min(p.members)].username
    with client(sim, member) as c:
        body = c.get(
            "/projects/1/issues", params={"order_by": "updated_at", "per_page": 100}
        ).json()
        stamps = [i["updated_at"] for i in body]
        assert stamps == sorted(stamps, reverse=True)
        states = {
            s: [m["state"] for m in c.get("/projects/1/merge_requests", params={"state": s}).json()]
            for s in ("all", "opened", "closed", "merged")
        }
        assert {"opened", "closed", "merged"} == set(states["all"]) or len(states["all"]) < 3
        for s in ("opened", "closed", "merged"):
            assert set(states[s]) <= {s}


def test_more_than_10000_records_omits_totals_and_last():
    world = generate_world(seed=2, users=2, projects=1, issues=1, big_project_issues=10_050)
    world.config.totals_threshold = 10_000
    with SimulatorServer(world) as s, client(s, "user1") as c:
        r = c.get("/projects/big-group%2Fmonorepo/issues", params={"per_page": 100})
        assert r.status_code == 200
        assert "x-total" not in r.headers and "x-total-pages" not in r.headers
        assert "last" not in r.links
        assert r.headers["x-next-page"] == "2" and "next" in r.links
        last = c.get(r.links["next"]["url"].replace("page=2", "page=101"))
        assert last.headers["x-next-page"] == "" and len(last.json()) == 50


def test_short_pages_while_more_exist_deliver_every_visible_item_once(sim):
    p, outsider = public_project_with_outsider(sim.world)
    visible = {
        i.id
        for i in p.issues.by_iid.values()
        if sim.world.can_see_item(p, i, sim.world.user(outsider))
    }
    assert len(visible) < len(p.issues)  # the seed hides some confidential issues
    with client(sim, outsider) as c:
        pages = walk(c, f"/projects/{p.id}/issues", per_page=5, order_by="updated_at")
    ids = [i["id"] for r in pages for i in r.json()]
    assert len(ids) == len(set(ids)) and set(ids) == visible
    short_with_next = [r for r in pages if len(r.json()) < 5 and "next" in r.links]
    assert short_with_next, "expected a short page before the end"


def test_internal_notes_filtered_after_pagination(fresh):
    w = fresh.world
    p, outsider = public_project_with_outsider(w)
    member = w.users[min(p.members)].username
    it = w.create_issue(p.id, "many notes", author=member)
    for k in range(12):
        w.add_note(p.id, "issue", it.iid, f"note {k}", author=member, internal=k % 3 == 0)
    w.add_note(p.id, "issue", it.iid, "added ~bug label", system=True)
    with client(fresh, outsider) as c:
        pages = walk(c, f"/projects/{p.id}/issues/{it.iid}/notes", per_page=4, sort="asc")
    bodies = [n["body"] for r in pages for n in r.json()]
    assert bodies == [f"note {k}" for k in range(12) if k % 3] + ["added ~bug label"]
    assert any(len(r.json()) < 4 and "next" in r.links for r in pages)
    with client(fresh, member) as c:
        notes = c.get(f"/projects/{p.id}/issues/{it.iid}/notes", params={"per_page": 100}).json()
    assert len(notes) == 13 and sum(n["internal"] for n in notes) == 4
    assert [n["system"] for n in notes].count(True) == 1


def test_notes_ignore_time_filters_and_sort(fresh):
    w = fresh.world
    it = next(i for i in w.project(1).issues.by_iid.values() if i.notes)
    member = w.users[min(w.project(1).members)].username
    with client(fresh, member) as c:
        url = f"/projects/1/issues/{it.iid}/notes"
        plain = c.get(url, params={"per_page": 100}).json()
        filtered = c.get(
            url,
            params={
                "per_page": 100,
                "since": "2100-01-01T00:00:00Z",
                "updated_after": "2100-01-01",
            },
        ).json()
        assert plain == filtered and len(plain) == len(it.notes)
        asc = c.get(url, params={"per_page": 100, "sort": "asc"}).json()
        assert asc == list(reversed(plain))
        by_upd = c.get(url, params={"per_page": 100, "order_by": "updated_at"}).json()
        assert [n["updated_at"] for n in by_upd] == sorted(
            (n["updated_at"] for n in by_upd), reverse=True
        )
        n = plain[0]
        assert n["noteable_type"] == "Issue" and n["noteable_iid"] == it.iid
        assert n["noteable_id"] == it.id and n["project_id"] == 1


def test_offset_cap_405_and_keyset_continues():
    world = generate_world(seed=4, users=2, projects=1, issues=250, merge_requests=120, notes=0)
    world.config.offset_cap = 100
    with SimulatorServer(world) as s, client(s, "user1") as c:
        ok = c.get("/projects/1/issues", params={"per_page": 10, "page": 10})
        assert ok.status_code == 200
        r = c.get("/projects/1/issues", params={"per_page": 10, "page": 11})
        assert r.status_code == 405
        assert r.json() == {
            "message": "Offset pagination has a maximum allowed offset of 100 for requests that "
            "return objects of type Issue. Remaining records can be retrieved using keyset "
            "pagination."
        }
        pages = walk(
            c,
            "/projects/1/issues",
            pagination="keyset",
            per_page=30,
            order_by="updated_at",
            sort="desc",
        )
        items = [i for p in pages for i in p.json()]
        assert len(pages) == 9 and "next" not in pages[-1].links
        assert all("cursor" in parse_qs(urlsplit(p.links["next"]["url"]).query) for p in pages[:-1])
        assert len({i["id"] for i in items}) == 250
        keys = [(i["updated_at"], i["id"]) for i in items]
        assert keys == sorted(keys, reverse=True)
        asc = walk(
            c, "/projects/1/issues", pagination="keyset", per_page=100, order_by="id", sort="asc"
        )
        assert [i["id"] for p in asc for i in p.json()] == sorted(i["id"] for i in items)
        # merge requests: no cap, no keyset
        far = c.get("/projects/1/merge_requests", params={"per_page": 100, "page": 2})
        assert far.status_code == 200 and len(far.json()) == 20
        assert (
            c.get("/projects/1/merge_requests", params={"pagination": "keyset"}).status_code == 405
        )


def test_updated_after_and_before_are_inclusive(sim):
    p = sim.world.project(1)
    member = sim.world.users[min(p.members)].username
    it = sorted(p.issues.by_iid.values(), key=lambda i: i.updated_ms)[len(p.issues) // 2]
    stamp = iso_ms(it.updated_ms)
    plus = stamp.replace("Z", "+00:00")
    one_ms_later = iso_ms(it.updated_ms + 1)
    with client(sim, member) as c:

        def ids(**params):
            r = c.get("/projects/1/issues", params={"per_page": 100, **params})
            assert r.status_code == 200, r.text
            return {i["id"] for i in r.json()}

        assert it.id in ids(updated_after=stamp)
        assert it.id in ids(updated_after=plus)  # httpx sends + as %2B
        assert it.id not in ids(updated_after=one_ms_later)
        assert it.id in ids(updated_before=stamp)
        assert it.id in ids(updated_after=stamp, updated_before=stamp)
        assert ids(updated_after=stamp) == {
            i.id for i in p.issues.by_iid.values() if i.updated_ms >= it.updated_ms
        }
        # an unencoded + arrives as a space: GitLab rejects it, so do we
        bad = c.get(f"/projects/1/issues?updated_after={plus}")
        assert bad.status_code == 400


# --- visibility and auth --------------------------------------------------------------
def test_confidential_issues_visible_to_members_and_author(fresh):
    w = fresh.world
    p, outsider = public_project_with_outsider(w)
    member = w.users[min(p.members)].username
    secret = w.create_issue(p.id, "secret", author=member, confidential=True)
    own = w.create_issue(p.id, "my secret", author=outsider, confidential=True)
    with client(fresh, outsider) as c:
        ids = {i["id"] for i in c.get(f"/projects/{p.id}/issues", params={"per_page": 100}).json()}
        assert own.id in ids and secret.id not in ids
        r = c.get(f"/projects/{p.id}/issues/{secret.iid}")
        assert r.status_code == 404 and r.json() == {"message": "404 Issue Not Found"}
        assert c.get(f"/projects/{p.id}/issues/{secret.iid}/notes").status_code == 404
    with client(fresh, member) as c:
        ids = {i["id"] for i in c.get(f"/projects/{p.id}/issues", params={"per_page": 100}).json()}
        assert {own.id, secret.id} <= ids
    exp = {e["gitlabEventId"] for e in expected_events(w, outsider, p.id)}
    assert f"issue-{own.id}" in exp and f"issue-{secret.id}" not in exp


def test_private_project_404_for_non_members(sim):
    w = sim.world
    p = next(p for p in w.projects.values() if p.visibility == "private")
    outsider = next(u.username for u in w.users.values() if u.id not in p.members)
    member = w.users[min(p.members)].username
    not_found = {"message": "404 Project Not Found"}
    encoded = p.path_with_namespace.replace("/", "%2F")
    with client(sim, outsider) as c:
        for url in (f"/projects/{p.id}", f"/projects/{encoded}", f"/projects/{p.id}/issues"):
            r = c.get(url)
            assert (r.status_code, r.json()) == (404, not_found), url
        assert c.get("/projects/9999").json() == not_found
        assert c.get("/no/such/route").json() == {"error": "404 Not Found"}
    with client(sim, member) as c:
        body = c.get(f"/projects/{encoded}").json()
        assert body["id"] == p.id and body["path_with_namespace"] == p.path_with_namespace
        assert body["web_url"] == f"{sim.url}/{p.path_with_namespace}"


def test_401_shapes(fresh):
    with httpx.Client(base_url=fresh.api_url) as c:
        assert c.get("/user").json() == {"message": "401 Unauthorized"}
        r = c.get("/user", headers={"Authorization": "Bearer nope"})
        assert (r.status_code, r.json()) == (401, {"message": "401 Unauthorized"})
        grant = fresh.world.create_oauth_tokens("user2")
        bearer = {"Authorization": f"Bearer {grant['access_token']}"}
        assert c.get("/user", headers=bearer).json()["username"] == "user2"

        fresh.world.expire_token(grant["access_token"])
        r = c.get("/user", headers=bearer)
        expired = "Token is expired. You can either do re-authorization or token refresh."
        assert r.status_code == 401
        assert r.json() == {"error": "invalid_token", "error_description": expired}
        assert r.headers["WWW-Authenticate"] == (
            'Bearer realm="Protected by OAuth 2.0", error="invalid_token", '
            f'error_description="{expired}"'
        )
        pat = fresh.world.create_personal_token("user3")
        httpx.post(f"{fresh.url}/_sim/tokens/revoke", json={"token": pat}).raise_for_status()
        r = c.get("/user", headers={"PRIVATE-TOKEN": pat})
        revoked = "Token was revoked. You have to re-authorize from the user."
        assert r.json() == {"error": "invalid_token", "error_description": revoked}
        assert f'error_description="{revoked}"' in r.headers["WWW-Authenticate"]


def test_oauth_refresh_rotation_and_invalid_grant(fresh):
    app = fresh.world.oauth_app
    grant = httpx.post(f"{fresh.url}/_sim/tokens/oauth", json={"user": "user1"}).json()
    form = {
        "grant_type": "refresh_token",
        "refresh_token": grant["refresh_token"],
        "client_id": app.client_id,
        "client_secret": app.client_secret,
        "redirect_uri": app.redirect_uri,
    }
    with httpx.Client(base_url=fresh.url) as c:
        r = c.post("/oauth/token", data=form)
        assert r.status_code == 200
        new = r.json()
        assert new["token_type"] == "Bearer" and new["expires_in"] == 7200
        assert {"access_token", "refresh_token", "created_at", "scope"} <= set(new)
        assert new["refresh_token"] != grant["refresh_token"]
        ok = c.get("/api/v4/user", headers={"Authorization": f"Bearer {new['access_token']}"})
        assert ok.json()["username"] == "user1"
        old = c.get("/api/v4/user", headers={"Authorization": f"Bearer {grant['access_token']}"})
        assert old.status_code == 401 and "revoked" in old.json()["error_description"]

        again = c.post("/oauth/token", data=form)
        assert again.status_code == 400
        assert again.json()["error"] == "invalid_grant"
        assert again.json()["error_description"].startswith("The provided authorization grant")

        fresh_form = dict(form, refresh_token=new["refresh_token"])
        bad_client = c.post("/oauth/token", data=dict(fresh_form, client_secret="wrong"))
        assert bad_client.status_code == 401 and bad_client.json()["error"] == "invalid_client"
        bad_uri = c.post("/oauth/token", data=dict(fresh_form, redirect_uri="http://evil/cb"))
        assert bad_uri.status_code == 400 and bad_uri.json()["error"] == "invalid_grant"
        # neither failure burned the new refresh token
        assert c.post("/oauth/token", data=fresh_form).status_code == 200


# --- ThrottledTouch -------------------------------------------------------------------
def test_throttled_touch(fresh):
    w = fresh.world
    p = w.project(1)
    member = w.users[min(p.members)].username
    it = min(p.issues.by_iid.values(), key=lambda i: i.updated_ms)  # touched long ago
    with client(fresh, member) as c:

        def parent_updated() -> str:
            return c.get(f"/projects/1/issues/{it.iid}").json()["updated_at"]

        sim_url = f"{fresh.url}/_sim/projects/1/issues/{it.iid}/notes"
        n1 = httpx.post(sim_url, json={"body": "first", "author": member}).json()
        assert parent_updated() == n1["created_at"]  # stale parent: touched
        httpx.post(f"{fresh.url}/_sim/clock", json={"advance_seconds": 30})
        n2 = httpx.post(sim_url, json={"body": "second", "author": member}).json()
        assert parent_updated() == n1["created_at"] < n2["created_at"]  # within 60 s: not
        # ...so a watermark at the parent's updated_at would miss this note
        listed = c.get("/projects/1/issues", params={"updated_after": n2["created_at"]}).json()
        assert it.id not in {i["id"] for i in listed}
        w.advance_clock(31)
        edited = httpx.patch(f"{fresh.url}/_sim/notes/{n2['id']}", json={"body": "edited"}).json()
        assert edited["updated_at"] > edited["created_at"]
        assert parent_updated() == edited["updated_at"]  # 61 s later: touched again


def test_item_mutations_stamp_updated_at(fresh):
    base = f"{fresh.url}/_sim/projects/2"
    created = httpx.post(
        f"{base}/merge_requests",
        json={"title": "New MR", "description": None, "labels": ["a, b"], "author": "user2"},
    ).json()
    assert created["state"] == "opened" and created["labels"] == ["a, b"]
    assert (
        created["web_url"] == f"{fresh.url}/group-b/sub/project-2/-/merge_requests/{created['iid']}"
    )
    fresh.world.advance_clock(5)
    merged = httpx.patch(
        f"{base}/merge_requests/{created['iid']}", json={"state": "merged", "labels": []}
    ).json()
    assert merged["state"] == "merged" and merged["updated_at"] > created["updated_at"]
    it = fresh.world.item(2, "merge_request", created["iid"])
    assert [n.body for n in it.notes if n.system] == ["removed ~a, b label", "merged"]
    assert merged["user_notes_count"] == 0


# --- faults ---------------------------------------------------------------------------
def _add_fault(sim, **spec) -> dict:
    r = httpx.post(f"{sim.url}/_sim/faults", json=spec)
    assert r.status_code == 201, r.text
    return r.json()


@pytest.mark.parametrize("status", [500, 502, 503])
def test_fault_status_next_n(fresh, status):
    _add_fault(fresh, kind="status", status=status, path=r"/issues$", count=2)
    with client(fresh, "user2") as c:
        got = [c.get("/projects/2/issues").status_code for _ in range(3)]
        assert got == [status, status, 200]
        assert c.get("/user").status_code == 200  # path did not match


def test_fault_429_retry_after_seconds_date_and_text(fresh):
    with client(fresh, "user2") as c:
        _add_fault(fresh, kind="rate_limit", retry_after=7, count=1)
        r = c.get("/user")
        assert r.status_code == 429 and r.headers["Retry-After"] == "7"
        assert r.json() == {"message": "Retry later"}
        assert email.utils.parsedate_to_datetime(r.headers["RateLimit-ResetTime"])
        _add_fault(
            fresh,
            kind="rate_limit",
            retry_after=30,
            retry_after_format="date",
            body_format="text",
            count=1,
        )
        r = c.get("/user")
        assert r.status_code == 429 and r.text.strip() == "Retry later"
        when = email.utils.parsedate_to_datetime(r.headers["Retry-After"]).timestamp()
        assert 20 < when - time.time() <= 31
        assert c.get("/user").status_code == 200


def test_fault_slow_past_client_timeout(fresh):
    _add_fault(fresh, kind="slow", delay=0.6, count=1)
    with client(fresh, "user2") as c:
        with pytest.raises(httpx.ReadTimeout):
            c.get("/user", timeout=httpx.Timeout(5, read=0.2))
        assert c.get("/user").status_code == 200


def test_fault_drop_connection(fresh):
    _add_fault(fresh, kind="drop", path="/issues", count=1)
    with client(fresh, "user2") as c:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            c.get("/projects/2/issues")
        assert c.get("/projects/2/issues").status_code == 200


@pytest.mark.parametrize("kind", ["malformed", "truncated"])
def test_fault_bad_json_bodies(fresh, kind):
    _add_fault(fresh, kind=kind, path="/merge_requests", count=1)
    with client(fresh, "user2") as c:
        bad = c.get("/projects/2/merge_requests")
        good = c.get("/projects/2/merge_requests")
    assert bad.status_code == 200 and good.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(bad.content)
    if kind == "truncated":
        assert good.content.startswith(bad.content) and len(bad.content) < len(good.content)
        assert bad.headers["x-total"] == good.headers["x-total"]


def test_fault_mid_pagination_and_not_on_control(fresh):
    _add_fault(fresh, kind="status", status=503, min_page=2)
    with client(fresh, "user2") as c:
        first = c.get("/projects/2/issues", params={"per_page": 3})
        assert first.status_code == 200
        assert c.get(first.links["next"]["url"]).status_code == 503
    assert httpx.get(f"{fresh.url}/_sim/world").status_code == 200
    assert httpx.delete(f"{fresh.url}/_sim/faults").status_code == 200
    with client(fresh, "user2") as c:
        assert c.get("/projects/2/issues", params={"page": 2}).status_code == 200


def test_fault_empty_is_an_incident_answering_a_complete_empty_listing(fresh):
    _add_fault(fresh, kind="empty", path=r"/issues$", count=1)
    with client(fresh, "user2") as c:
        empty = c.get("/projects/2/issues", params={"per_page": 3})
        real = c.get("/projects/2/issues", params={"per_page": 3})
    assert empty.status_code == 200 and empty.json() == []
    assert "next" not in empty.links and empty.headers["x-next-page"] == ""
    assert real.json() and "next" in real.links


def test_fault_403_forbidden_or_missing_scope(fresh):
    _add_fault(fresh, kind="status", status=403, path=r"/issues$", count=1)
    _add_fault(fresh, kind="status", status=403, forbidden_reason="forbidden", count=1)
    with client(fresh, "user2") as c:
        scope = c.get("/projects/2/issues")
        plain = c.get("/user")
    assert scope.status_code == 403 and scope.json()["error"] == "insufficient_scope"
    assert plain.status_code == 403 and plain.json() == {"message": "403 Forbidden"}


# --- deletions, moves, visibility changes -----------------------------------------------------
def test_deleted_items_notes_and_projects_leave_every_answer(fresh):
    w, base = fresh.world, f"{fresh.url}/_sim"
    p = next(q for q in w.projects.values() if q.visibility == "private" and q.members)
    user = w.users[min(p.members)].username
    issue = w.create_issue(p.id, "to delete", author=user)
    w.add_note(p.id, "issue", issue.iid, "goes with it", author=user)
    keep = w.create_issue(p.id, "keeps its other note", author=user)
    gone = w.add_note(p.id, "issue", keep.iid, "deleted", author=user)
    stays = w.add_note(p.id, "issue", keep.iid, "kept", author=user)
    touched = keep.updated_ms
    with client(fresh, user) as c:
        assert c.get(f"/projects/{p.id}/issues/{keep.iid}/notes/{gone.id}").json()["id"] == gone.id
        assert httpx.delete(f"{base}/notes/{gone.id}").status_code == 200
        assert c.get(f"/projects/{p.id}/issues/{keep.iid}/notes/{gone.id}").status_code == 404
        notes = c.get(f"/projects/{p.id}/issues/{keep.iid}/notes").json()
        assert [n["id"] for n in notes] == [stays.id]
        after = c.get(f"/projects/{p.id}/issues/{keep.iid}").json()
        assert after["user_notes_count"] == 1 and keep.updated_ms == touched  # not touched
        assert httpx.delete(f"{base}/projects/{p.id}/issues/{issue.iid}").status_code == 200
        assert c.get(f"/projects/{p.id}/issues/{issue.iid}").status_code == 404
        listed = {i["id"] for r in walk(c, f"/projects/{p.id}/issues") for i in r.json()}
        assert issue.id not in listed and keep.id in listed
        events = {e["gitlabEventId"] for e in expected_events(w, user, p.id)}
        assert f"issue-{issue.id}" not in events and f"note-{gone.id}" not in events
        assert httpx.delete(f"{base}/projects/{p.id}").status_code == 200
        assert c.get(f"/projects/{p.id}").status_code == 404
        assert c.get(f"/projects/{p.id}/issues").status_code == 404
        assert c.get("/user").status_code == 200  # the token still works
    assert expected_events(w, user, p.id) == []
    assert expected_events(w, user, p.path_with_namespace) == []


def test_moved_issue_stays_closed_in_its_project_and_appears_in_the_target(fresh):
    w = fresh.world
    src, dst = sorted(w.projects.values(), key=lambda q: q.id)[:2]
    user = w.users[min(src.members)].username
    w.add_member(dst.id, user)
    old = w.create_issue(src.id, "moving", author=user)
    w.add_note(src.id, "issue", old.iid, "travels along", author=user)
    r = httpx.post(
        f"{fresh.url}/_sim/projects/{src.id}/issues/{old.iid}/move", json={"to_project": dst.id}
    )
    assert r.status_code == 201, r.text
    new = r.json()
    with client(fresh, user) as c:
        stale = c.get(f"/projects/{src.id}/issues/{old.iid}").json()
        assert stale["state"] == "closed" and stale["moved_to_id"] == new["id"]
        assert stale["user_notes_count"] == 1
        notes = c.get(f"/projects/{dst.id}/issues/{new['iid']}/notes").json()
        assert [n["body"] for n in notes] == ["travels along"]


def test_confidential_change_and_membership_change_hide_items(fresh):
    w = fresh.world
    p, outsider = public_project_with_outsider(w)
    member = w.users[min(p.members)].username
    it = w.create_issue(p.id, "soon confidential", author=member)
    with client(fresh, outsider) as c:
        assert c.get(f"/projects/{p.id}/issues/{it.iid}").status_code == 200
        r = httpx.patch(
            f"{fresh.url}/_sim/projects/{p.id}/issues/{it.iid}", json={"confidential": True}
        )
        assert r.status_code == 200
        assert c.get(f"/projects/{p.id}/issues/{it.iid}").status_code == 404
    assert [n.body for n in it.notes if n.system] == ["made the issue confidential"]
    outsider_events = {e["gitlabEventId"] for e in expected_events(w, outsider, p.id)}
    assert f"issue-{it.id}" not in outsider_events
    w.add_member(p.id, outsider)
    assert f"issue-{it.id}" in {e["gitlabEventId"] for e in expected_events(w, outsider, p.id)}


def test_fault_probability_is_seeded():
    def run() -> list[int]:
        with SimulatorServer(seed=1, users=2, projects=1, issues=1, merge_requests=0) as s:
            s.world.add_fault(kind="status", status=500, probability=0.5, seed=42, method="GET")
            with client(s, "user1") as c:
                return [c.get("/user").status_code for _ in range(20)]

    a, b = run(), run()
    assert a == b and 500 in a and 200 in a


# --- rate limits, latency, request log ----------------------------------------------------
def test_rate_limit_headers_and_429(fresh):
    httpx.post(f"{fresh.url}/_sim/config", json={"rate_limit_per_minute": 3}).raise_for_status()
    with client(fresh, "user3") as c:
        rs = [c.get("/user") for _ in range(4)]
    assert [r.status_code for r in rs] == [200, 200, 200, 429]
    assert rs[0].headers["RateLimit-Limit"] == "3"
    assert rs[0].headers["RateLimit-Remaining"] == "2"
    assert rs[2].headers["RateLimit-Observed"] == "3"
    assert int(rs[0].headers["RateLimit-Reset"]) > time.time()
    assert rs[0].headers["RateLimit-Name"]
    assert 1 <= int(rs[3].headers["Retry-After"]) <= 60
    assert email.utils.parsedate_to_datetime(rs[3].headers["RateLimit-ResetTime"])
    assert rs[3].json() == {"message": "Retry later"}
    with client(fresh, "user4") as c:  # per token
        assert c.get("/user").status_code == 200


def test_latency(fresh):
    fresh.world.configure(latency_ms=150)
    with client(fresh, "user1") as c:
        t = time.perf_counter()
        c.get("/user")
        assert time.perf_counter() - t >= 0.15  # a lower bound: load only makes it longer
    # Control routes are never delayed: with a minute of latency they still answer within
    # a 10-s timeout (a timeout, not a speed assertion: a delayed route would take 60 s).
    fresh.world.configure(latency_ms=60_000)
    assert httpx.get(f"{fresh.url}/_sim/config", timeout=10).status_code == 200
    fresh.world.configure(latency_ms=0)


def test_request_log(fresh):
    httpx.delete(f"{fresh.url}/_sim/requests")
    tok = fresh.token("user2")
    with client(fresh, "user2") as c:
        c.get("/projects/2/issues", params={"per_page": 2, "private_token": tok})
        c.get("/projects/2/merge_requests")
        c.get("/projects/2/issues/1/notes")
        c.get("/projects/9999")
    log = httpx.get(f"{fresh.url}/_sim/requests").json()
    assert log["total"] == 4
    assert log["counts"] == {"issues": 1, "merge_requests": 1, "issue_notes": 1, "projects": 1}
    first = log["requests"][0]
    assert first["method"] == "GET" and first["path"] == "/api/v4/projects/2/issues"
    assert first["query"] == {"per_page": "2"} and first["status"] == 200
    assert first["username"] == "user2"
    assert log["requests"][-1]["status"] == 404
    assert tok not in json.dumps(log)
    httpx.delete(f"{fresh.url}/_sim/requests")
    assert httpx.get(f"{fresh.url}/_sim/requests").json()["total"] == 0


def test_prerender_leaves_every_answer_as_it_was_and_later_edits_show(fresh):
    """POST /_sim/prerender (used by the benchmark) only fills the cache: the pages are the
    same bytes, and an item edited afterwards is rendered anew, not served stale."""
    with client(fresh, "user2") as c:
        before = [r.content for r in walk(c, "/projects/2/issues", per_page=3)]
        notes_before = c.get("/projects/2/issues/1/notes").content
        r = httpx.post(f"{fresh.url}/_sim/prerender")
        assert r.status_code == 200 and r.json()["rendered"] > 0
        assert [r.content for r in walk(c, "/projects/2/issues", per_page=3)] == before
        assert c.get("/projects/2/issues/1/notes").content == notes_before
        fresh.world.update_item(2, "issue", 1, title="renamed after prerender")
        titles = [i["title"] for r in walk(c, "/projects/2/issues", per_page=3) for i in r.json()]
        assert "renamed after prerender" in titles


# --- control API, oracle, determinism --------------------------------------------------------
def test_control_world_users_projects_memberships(fresh):
    base = f"{fresh.url}/_sim"
    u = httpx.post(f"{base}/users", json={"username": "newbie", "name": "Nöö Bie"}).json()
    assert u["token"].startswith("sim-newbie-token-")
    proj = httpx.post(
        f"{base}/projects",
        json={"path_with_namespace": "x/y/z", "visibility": "private", "members": ["user1"]},
    ).json()
    with httpx.Client(base_url=fresh.api_url, headers={"PRIVATE-TOKEN": u["token"]}) as c:
        assert c.get(f"/projects/{proj['id']}").status_code == 404
        httpx.post(f"{base}/projects/{proj['id']}/members", json={"user": "newbie"})
        assert c.get("/projects/x%2Fy%2Fz").json()["id"] == proj["id"]
    world = httpx.get(f"{base}/world").json()
    assert {"users", "projects", "oauth_app"} <= set(world)
    assert set(world["oauth_app"]) == {"client_id", "client_secret", "redirect_uri"}
    newp = next(p for p in world["projects"] if p["id"] == proj["id"])
    assert sorted(newp["members"]) == sorted([1, u["id"]]) and newp["visibility"] == "private"
    for user in world["users"]:
        assert user["token"].startswith(f"sim-{user['username']}-token-")
        assert "glpat-" not in user["token"]


def test_expected_oracle(fresh):
    w = fresh.world
    p, outsider = public_project_with_outsider(w)
    member = w.users[min(p.members)].username
    it = w.create_issue(p.id, "oracle", description=None, labels=["x, y"], author=member)
    long_line = "  " + "é" * 120 + "  \nmore"
    n_long = w.add_note(p.id, "issue", it.iid, long_line, author=member)
    n_int = w.add_note(p.id, "issue", it.iid, "secret", author=member, internal=True)
    n_sys = w.add_note(p.id, "issue", it.iid, "added ~x label", system=True)
    r = httpx.get(f"{fresh.url}/_sim/expected", params={"username": outsider, "project_id": p.id})
    events = {e["gitlabEventId"]: e for e in r.json()}
    issue = events[f"issue-{it.id}"]
    web = f"{fresh.url}/{p.path_with_namespace}/-/issues/{it.iid}"
    assert issue == {
        "gitlabEventId": f"issue-{it.id}",
        "type": "issue",
        "title": "oracle",
        "body": None,
        "author": member,
        "authorAvatar": w.user(member).avatar_url,
        "labels": ["x, y"],
        "gitlabUrl": web,
        "createdAt": iso_ms(it.created_ms),
    }
    note = events[f"note-{n_long.id}"]
    assert note["title"] == "Comment: " + "é" * 97 + "..."
    assert note["gitlabUrl"] == f"{web}#note_{n_long.id}" and note["labels"] == []
    assert note["type"] == "comment" and note["body"] == long_line
    assert f"note-{n_int.id}" not in events and f"note-{n_sys.id}" not in events
    member_events = {e["gitlabEventId"] for e in expected_events(w, member, p.id)}
    assert f"note-{n_int.id}" in member_events
    assert any(e["type"] == "merge_request" for e in events.values())
    private = next(q for q in w.projects.values() if q.visibility == "private")
    stranger = next(u.username for u in w.users.values() if u.id not in private.members)
    assert expected_events(w, stranger, private.id) == []
    assert comment_title("short\nsecond") == "Comment: short"
    assert comment_title("x" * 100) == "Comment: " + "x" * 100


def test_expected_matches_what_the_api_serves(sim):
    """Walking the API as a user yields exactly the oracle's events (sanity of both)."""
    w = sim.world
    p, outsider = public_project_with_outsider(w)
    with client(sim, outsider) as c:
        got = set()
        for kind, prefix, seg in (("issue", "issue", "issues"), ("mr", "mr", "merge_requests")):
            for r in walk(c, f"/projects/{p.id}/{seg}", per_page=100):
                for item in r.json():
                    got.add(f"{prefix}-{item['id']}")
                    if item["user_notes_count"]:
                        for nr in walk(
                            c, f"/projects/{p.id}/{seg}/{item['iid']}/notes", per_page=100
                        ):
                            got |= {f"note-{n['id']}" for n in nr.json() if not n["system"]}
            assert kind
    assert got == {e["gitlabEventId"] for e in expected_events(w, outsider, p.id)}


def test_determinism_same_seed_same_data():
    def snapshot(seed: int):
        w = generate_world(
            seed=seed, users=5, projects=5, issues=20, merge_requests=10, now_ms=NOW_MS
        )
        d = w.describe()
        d.pop("now")
        for user in d["users"]:
            user.pop("tokens")
        events = {
            (u.username, p.id): expected_events(w, u.username, p.id)
            for u in w.users.values()
            for p in w.projects.values()
        }
        return d, events

    a, b = snapshot(9), snapshot(9)
    assert a == b
    assert snapshot(10) != a
    d, events = a
    visibilities = {p["visibility"] for p in d["projects"]}
    assert visibilities == {"private", "public"}
    paths = [p["path_with_namespace"] for p in d["projects"]]
    assert any(path.count("/") >= 2 for path in paths)
    shared = [p for p in d["projects"] if len(p["members"]) >= 2]
    assert shared
    all_events = [e for evs in events.values() for e in evs]
    assert any(e["body"] is None for e in all_events)
    assert any(e["authorAvatar"] is None for e in all_events)
    assert any("," in label for e in all_events for label in e["labels"])
    assert any(not e["title"].isascii() for e in all_events)
    times = [e["createdAt"] for e in all_events]
    assert min(times) >= iso_ms(NOW_MS - 30 * 86_400_000) and max(times) <= iso_ms(NOW_MS)


def test_big_project_generates_and_pages():
    # Speed is measured by the benchmark (bench/), never asserted here: CI machines are noisy.
    world = generate_world(
        seed=5,
        users=2,
        projects=1,
        issues=1,
        big_project_issues=50_000,
        big_project_notes=0,
        config=SimConfig(),
    )
    with SimulatorServer(world) as s, client(s, "user1") as c:
        r = c.get(
            "/projects/2/issues",
            params={
                "per_page": 100,
                "page": 400,
                "order_by": "updated_at",
                "updated_after": "2000-01-01T00:00:00Z",
            },
        )
        assert r.status_code == 200 and len(r.json()) == 100
        assert c.get("/projects/2/issues", params={"per_page": 100, "page": 501}).status_code == 405


def test_python_m_entry_point_serves():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gitlab_sim",
            "serve",
            "--port",
            str(port),
            "--seed",
            "3",
            "--issues",
            "3",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                world = httpx.get(f"http://127.0.0.1:{port}/_sim/world").json()
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        assert world["base_url"] == f"http://127.0.0.1:{port}"
        token = world["users"][0]["token"]
        r = httpx.get(f"http://127.0.0.1:{port}/api/v4/user", headers={"PRIVATE-TOKEN": token})
        assert r.json()["username"] == "user1"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)  # also closes the pipe (a ResourceWarning otherwise)
