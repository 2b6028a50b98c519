"""GitLabClient and OAuth refresh against respx mocks: pagination, errors, retries, pacing.

Fixtures follow GitLab's documented payloads (extra fields included, as GitLab sends them).
Every wait goes through `app.retry.sleep`, switched off with `retry.recorded_waits()`; the
client's clock is a fake one that the recorded waits advance: no test sleeps for real.
The decisions themselves (status -> error, headers -> wait, Link -> next query) are tested
without HTTP in test_gitlab_sansio.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from urllib.parse import parse_qs

import httpx
import pytest
import respx
from loguru import logger

from app import retry
from app.gitlab.client import GitLabClient, RequestInfo
from app.gitlab.errors import (
    GitLabAPIError,
    GitLabAuthError,
    GitLabBadResponse,
    GitLabForbidden,
    GitLabNotFound,
    GitLabOAuthError,
    GitLabRateLimited,
    GitLabUnavailable,
)
from app.gitlab.oauth import refresh_access_token
from app.settings import Settings, load_settings

TOKEN = "glpat-SECRET-token-value"
INSTANCE = "https://gitlab.example.com"
API = INSTANCE + "/api/v4"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


# --- fixtures ---------------------------------------------------------------------------


class FakeTime:
    """A clock moved by the waits `retry.recorded_waits()` records (which return at once)."""

    def __init__(self, sleeps: list[float], now: float = 1_714_564_800.0) -> None:
        self.sleeps = sleeps
        self._start = now

    @property
    def now(self) -> float:
        return self._start + sum(self.sleeps)

    @now.setter
    def now(self, value: float) -> None:
        self._start = value - sum(self.sleeps)

    def clock(self) -> float:
        return self.now


def make_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "gitlab_instance_url": INSTANCE,
        "gitlab_backoff_base": 0,
        "gitlab_backoff_max": 0,
        "gitlab_rate_limit_max_wait": 0,
        "gitlab_max_attempts": 4,
        "gitlab_per_page": 100,
        "gitlab_oauth_client_id": "app-id",
        "gitlab_oauth_client_secret": "app-CLIENT-secret",
        "gitlab_oauth_redirect_uri": "https://insights.example.com/api/auth/callback/gitlab",
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture
def fake_time() -> Iterator[FakeTime]:
    with retry.recorded_waits() as waits:
        yield FakeTime(waits)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


def client_for(http: httpx.AsyncClient, fake_time: FakeTime, **overrides: object) -> GitLabClient:
    return GitLabClient(http, make_settings(**overrides), TOKEN, clock=fake_time.clock)


def ts(minutes: float) -> str:
    """A GitLab timestamp `minutes` after T0, millisecond precision like GitLab renders it."""
    value = T0 + timedelta(minutes=minutes)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def issue(id_: int, updated: float = 0, project_id: int = 4) -> dict:
    """Shaped like GitLab's documented issue (doc/api/issues.md), extra fields included."""
    return {
        "project_id": project_id,
        "milestone": {"id": 11, "iid": 3, "title": "v3.0", "state": "closed"},
        "author": {
            "state": "active",
            "web_url": "https://gitlab.example.com/root",
            "avatar_url": None,
            "username": "root",
            "id": 1,
            "name": "Administrator",
        },
        "description": "Omnis vero earum sunt corporis dolor et placeat.",
        "state": "closed",
        "iid": id_ - 1000,
        "assignees": [{"username": "lennie", "id": 9, "avatar_url": None}],
        "type": "ISSUE",
        "labels": ["foo", "bar"],
        "upvotes": 4,
        "id": id_,
        "title": f"Issue {id_}",
        "updated_at": ts(updated),
        "created_at": ts(-1000),
        "closed_at": None,
        "user_notes_count": 1,
        "web_url": f"http://gitlab.example.com/my-group/my-project/issues/{id_ - 1000}",
        "references": {"short": "#1", "relative": "#1", "full": "my-group/my-project#1"},
        "time_stats": {"time_estimate": 0, "total_time_spent": 0},
        "confidential": False,
        "_links": {"self": "http://gitlab.example.com/api/v4/projects/4/issues/41"},
    }


def merge_request(id_: int, state: str = "merged") -> dict:
    """Shaped like GitLab's documented merge request (doc/api/merge_requests.md)."""
    return {
        "id": id_,
        "iid": id_,
        "project_id": 3,
        "title": "test1",
        "description": "fixed login page css paddings",
        "state": state,
        "merged_by": {"id": 87854, "username": "DouweM", "avatar_url": None},
        "merged_at": "2018-09-07T11:16:17.520Z",
        "created_at": "2017-04-29T08:46:00Z",
        "updated_at": "2017-04-29T08:46:00Z",
        "target_branch": "main",
        "source_branch": "test1",
        "author": {"id": 1, "name": "Administrator", "username": "admin", "avatar_url": None},
        "labels": ["Community contribution", "Manage"],
        "draft": False,
        "sha": "8888888888888888888888888888888888888888",
        "user_notes_count": 1,
        "web_url": f"http://gitlab.example.com/my-group/my-project/merge_requests/{id_}",
    }


def note(id_: int, updated: float, *, system: bool = False, **extra: object) -> dict:
    """Shaped like GitLab's documented note (doc/api/notes.md)."""
    payload: dict = {
        "id": id_,
        "body": "Comment for MR",
        "author": {"id": 1, "username": "pipin", "name": "Pip", "state": "active"},
        "created_at": ts(updated),
        "updated_at": ts(updated),
        "system": system,
        "noteable_id": 2,
        "resolvable": False,
        "confidential": False,
        "internal": False,
    }
    payload.update(extra)
    return payload


def page(items: list, *, next_url: str | None = None, **headers: str) -> httpx.Response:
    """A GitLab page; deliberately no x-total / x-total-pages (GitLab omits them >10k)."""
    h = {"x-per-page": "100", **headers}
    if next_url:
        h["Link"] = f'<{next_url}>; rel="next", <{API}/first>; rel="first"'
    return httpx.Response(200, json=items, headers=h)


def query(request: httpx.Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.url.query.decode()).items()}


async def collect(pages) -> list:
    out = []
    async for p in pages:
        out.append(p)
    return out


# --- pagination -------------------------------------------------------------------------


async def test_issues_follow_link_next_through_a_short_page_without_totals(http, mock, fake_time):
    route = mock.get(f"{API}/projects/4/issues").mock(
        side_effect=[
            page([issue(1009, 9), issue(1008, 8), issue(1007, 7)], next_url=f"{API}/p?page=2"),
            # Short page while more exist: must not end the listing.
            page([issue(1006, 6)], next_url=f"{API}/p?page=3&per_page=3"),
            page([issue(1005, 5), issue(1004, 4)]),
        ]
    )
    client = client_for(http, fake_time, gitlab_per_page=3)

    pages = await collect(client.issues(4, T0))

    assert [[i.id for i in p] for p in pages] == [[1009, 1008, 1007], [1006], [1005, 1004]]
    assert route.call_count == 3
    first = query(route.calls[0].request)
    assert first == {
        "scope": "all",
        "order_by": "updated_at",
        "sort": "desc",
        "per_page": "3",
        "updated_after": "2024-05-01T12:00:00Z",
    }
    # The next pages use the Link URL's query as given.
    assert query(route.calls[1].request) == {"page": "2"}
    assert query(route.calls[2].request) == {"page": "3", "per_page": "3"}


async def test_x_next_page_is_the_fallback_when_there_is_no_link(http, mock, fake_time):
    route = mock.get(f"{API}/projects/4/issues").mock(
        side_effect=[
            page([issue(1002)], **{"x-next-page": "2", "x-page": "1"}),
            page([issue(1001)], **{"x-next-page": "", "x-page": "2"}),
        ]
    )
    pages = await collect(client_for(http, fake_time).issues(4, None))

    assert [i.id for p in pages for i in p] == [1002, 1001]
    second = query(route.calls[1].request)
    assert second["page"] == "2"
    assert second["scope"] == "all" and second["sort"] == "desc"
    assert "updated_after" not in query(route.calls[0].request)


async def test_many_pages_have_no_cap(http, mock, fake_time):
    responses = [
        page([issue(2000 + n)], next_url=f"{API}/projects/4/issues?page={n + 2}") for n in range(60)
    ]
    responses.append(page([]))
    mock.get(f"{API}/projects/4/issues").mock(side_effect=responses)

    pages = await collect(client_for(http, fake_time).issues(4, None))

    assert sum(len(p) for p in pages) == 60


async def test_merge_requests_ask_for_every_state(http, mock, fake_time):
    route = mock.get(f"{API}/projects/3/merge_requests").mock(
        return_value=page([merge_request(1, "merged"), merge_request(2, "closed")])
    )
    pages = await collect(client_for(http, fake_time).merge_requests(3, T0))

    assert [(m.id, m.state) for p in pages for m in p] == [(1, "merged"), (2, "closed")]
    q = query(route.calls[0].request)
    assert q["scope"] == "all" and q["state"] == "all"
    assert q["order_by"] == "updated_at" and q["sort"] == "desc"


async def test_duplicates_from_shifting_offset_pages_are_yielded_once(http, mock, fake_time):
    # An issue created while paging pushes 1008 from page 1 onto page 2.
    mock.get(f"{API}/projects/4/issues").mock(
        side_effect=[
            page([issue(1009, 9), issue(1008, 8)], next_url=f"{API}/x?page=2"),
            page([issue(1008, 8), issue(1007, 7)]),
        ]
    )
    pages = await collect(client_for(http, fake_time).issues(4, None))

    assert [i.id for p in pages for i in p] == [1009, 1008, 1007]


async def test_offset_cap_405_switches_to_keyset_without_loss_or_duplicates(http, mock, fake_time):
    offset_pages = [
        page([issue(1010, 10), issue(1009, 9), issue(1008, 8)], next_url=f"{API}/x?page=2"),
        page([issue(1007, 7), issue(1006, 6), issue(1005, 5)], next_url=f"{API}/x?page=3"),
        httpx.Response(
            405,
            json={
                "error": "Offset pagination has a maximum allowed offset of 6 for requests "
                "that return objects of type Issue. Remaining records can be retrieved using "
                "keyset pagination."
            },
        ),
    ]
    # Keyset restarts just above the oldest item seen: 1006 and 1005 come again, and 1004
    # shares 1005's timestamp (same second) but was never yielded.
    keyset_pages = [
        page(
            [issue(1006, 6), issue(1005, 5), issue(1004, 5)],
            next_url=f"{API}/projects/4/issues?cursor=eyJpZCI6MTAwNH0&pagination=keyset",
        ),
        page([issue(1003, 3), issue(1002, 2), issue(1001, 1)]),
    ]

    def respond(request: httpx.Request) -> httpx.Response:
        q = query(request)
        if q.get("pagination") == "keyset":
            return keyset_pages.pop(0)
        return offset_pages.pop(0)

    route = mock.get(f"{API}/projects/4/issues").mock(side_effect=respond)

    pages = await collect(client_for(http, fake_time).issues(4, T0))

    ids = [i.id for p in pages for i in p]
    assert ids == [1010, 1009, 1008, 1007, 1006, 1005, 1004, 1003, 1002, 1001]
    assert len(ids) == len(set(ids))
    assert route.call_count == 5
    first_keyset = query(route.calls[3].request)
    assert first_keyset == {
        "scope": "all",
        "order_by": "updated_at",
        "sort": "desc",
        "per_page": "100",
        "updated_after": "2024-05-01T12:00:00Z",
        "pagination": "keyset",
        # oldest seen (T0 + 5 min) plus one second of slack for GitLab's rounding
        "updated_before": "2024-05-01T12:05:01Z",
    }
    assert query(route.calls[4].request) == {"cursor": "eyJpZCI6MTAwNH0", "pagination": "keyset"}


@pytest.mark.parametrize("status", [301, 302, 304, 400, 409])
async def test_redirects_and_other_4xx_are_final_errors_never_data(http, mock, fake_time, status):
    # Redirects are not followed (the token must not travel): one means a wrong instance URL
    # or a login page. Even with a JSON list for a body it must never read as an empty page.
    route = mock.get(f"{API}/projects/4/issues").mock(
        return_value=httpx.Response(
            status, json=[], headers={"Location": "https://login.example.com/"}
        )
    )
    with pytest.raises(GitLabAPIError) as info:
        await collect(client_for(http, fake_time).issues(4, None))
    assert type(info.value) is GitLabAPIError
    assert (info.value.status, route.call_count) == (status, 1)


async def test_405_on_merge_requests_is_an_error(http, mock, fake_time):
    mock.get(f"{API}/projects/3/merge_requests").mock(return_value=httpx.Response(405, json={}))
    with pytest.raises(GitLabAPIError) as info:
        await collect(client_for(http, fake_time).merge_requests(3, None))
    assert info.value.status == 405


async def test_semaphore_is_free_while_the_caller_processes_a_page(http, mock, fake_time):
    mock.get(f"{API}/projects/4/issues").mock(
        side_effect=[page([issue(1002)], next_url=f"{API}/x?page=2"), page([issue(1001)])]
    )
    mock.get(f"{API}/user").mock(return_value=httpx.Response(200, json={"id": 1, "username": "u"}))
    client = client_for(http, fake_time, gitlab_user_concurrency=1)
    async for _ in client.issues(4, None):
        # With one slot, a request made while the caller holds a page must get through.
        other = asyncio.ensure_future(client.current_user())
        for _ in range(50):  # scheduling points, not time
            if other.done():
                break
            await asyncio.sleep(0)
        assert other.done() and (await other).id == 1


# --- notes ------------------------------------------------------------------------------


async def test_notes_newest_first_stop_after_the_page_reaching_older_notes(http, mock, fake_time):
    since = T0 + timedelta(minutes=50)
    route = mock.get(f"{API}/projects/5/merge_requests/2/notes").mock(
        side_effect=[
            page(
                [note(310, 90), note(309, 80, system=True), note(308, 70)],
                next_url=f"{API}/x?page=2",
            ),
            # Short page, then a note older than `since`: stop after this page.
            page([note(307, 50), note(306, 40)], next_url=f"{API}/x?page=3"),
            page([note(305, 30)]),
        ]
    )
    web = "http://gitlab.example.com/my-group/my-project/merge_requests/2"
    pages = await collect(
        client_for(http, fake_time).notes(5, "MergeRequest", 2, since, noteable_web_url=web)
    )

    notes = [n for p in pages for n in p]
    assert [n.id for n in notes] == [310, 308, 307]  # system note excluded, 306 too old
    assert route.call_count == 2
    q = query(route.calls[0].request)
    assert q == {"sort": "desc", "order_by": "updated_at", "per_page": "100"}
    for n in notes:
        assert n.web_url == f"{web}#note_{n.id}"
        assert (n.project_id, n.noteable_type, n.noteable_iid) == (5, "MergeRequest", 2)


async def test_notes_keep_gitlab_fields_and_include_system_notes_when_configured(
    http, mock, fake_time
):
    mock.get(f"{API}/projects/5/issues/7/notes").mock(
        return_value=page(
            [
                note(2, 10, system=True),
                note(1, 5, project_id=5, noteable_type="Issue", noteable_iid=7),
            ]
        )
    )
    client = client_for(http, fake_time, include_system_notes=True)
    pages = await collect(client.notes(5, "Issue", 7, None, noteable_web_url="http://g/x/issues/7"))

    assert [n.id for p in pages for n in p] == [2, 1]
    assert pages[0][0].web_url == "http://g/x/issues/7#note_2"


async def test_naive_gitlab_timestamps_are_utc(http, mock, fake_time):
    # A timestamp without an offset is UTC (GitLab's), compared with an aware `since`.
    route = mock.get(f"{API}/projects/5/issues/7/notes").mock(
        side_effect=[
            page(
                [note(3, 60) | {"updated_at": "2024-05-01T13:00:00"}, note(2, 30)],
                next_url=f"{API}/x?page=2",
            ),
            page([note(1, 10) | {"updated_at": "2024-05-01T12:10:00"}]),
        ]
    )
    since = T0 + timedelta(minutes=20)
    pages = await collect(
        client_for(http, fake_time).notes(5, "Issue", 7, since, noteable_web_url="http://g/i/7")
    )
    assert [n.id for p in pages for n in p] == [3, 2]
    assert route.call_count == 2


async def test_notes_without_since_read_every_page(http, mock, fake_time):
    route = mock.get(f"{API}/projects/5/issues/7/notes").mock(
        side_effect=[page([note(3, 3)], next_url=f"{API}/x?page=2"), page([note(1, 1)])]
    )
    pages = await collect(
        client_for(http, fake_time).notes(5, "Issue", 7, None, noteable_web_url="http://g/i/7")
    )
    assert [n.id for p in pages for n in p] == [3, 1]
    assert route.call_count == 2


async def test_notes_reject_an_unknown_noteable_type(http, fake_time):
    with pytest.raises(ValueError):
        await collect(
            client_for(http, fake_time).notes(5, "Epic", 1, None, noteable_web_url="x")  # type: ignore[arg-type]
        )


# --- single resources, URLs, headers ---------------------------------------------------


async def test_project_path_is_url_encoded_and_bearer_token_sent(http, mock, fake_time):
    route = mock.get(url__regex=r".*/projects/.*").mock(
        return_value=httpx.Response(
            200,
            json={
                "id": 42,
                "name": "proj",
                "path_with_namespace": "group/sub/proj",
                "web_url": "https://gitlab.example.com/group/sub/proj",
                "visibility": "private",
            },
        )
    )
    project = await client_for(http, fake_time).project("group/sub/proj")

    assert project.id == 42
    request = route.calls[0].request
    assert request.url.raw_path == b"/api/v4/projects/group%2Fsub%2Fproj"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"


async def test_numeric_project_ids_are_used_as_is(http, mock, fake_time):
    route = mock.get(f"{API}/projects/42").mock(
        return_value=httpx.Response(200, json={"id": 42, "name": "p", "path_with_namespace": "g/p"})
    )
    client = client_for(http, fake_time)
    await client.project(42)
    await client.project("42")
    assert route.call_count == 2


@pytest.mark.parametrize(
    "instance", ["https://git.example.com/gitlab", "https://git.example.com/gitlab/"]
)
async def test_base_url_with_sub_path_and_trailing_slash(http, mock, fake_time, instance):
    route = mock.get("https://git.example.com/gitlab/api/v4/user").mock(
        return_value=httpx.Response(200, json={"id": 1, "username": "root", "name": "Admin"})
    )
    client = client_for(http, fake_time, gitlab_instance_url=instance)

    user = await client.current_user()

    assert (user.id, user.username) == (1, "root")
    assert route.call_count == 1


async def test_next_link_on_another_host_is_fetched_from_the_configured_host(http, mock, fake_time):
    # GitLab behind a proxy may advertise its internal external_url: the token stays home.
    route = mock.get("https://git.example.com/gitlab/api/v4/projects/4/issues").mock(
        side_effect=[
            page([issue(1002)], next_url="http://internal:8080/api/v4/projects/4/issues?page=2"),
            page([issue(1001)]),
        ]
    )
    client = client_for(http, fake_time, gitlab_instance_url="https://git.example.com/gitlab")
    pages = await collect(client.issues(4, None))

    assert [i.id for p in pages for i in p] == [1002, 1001]
    assert query(route.calls[1].request) == {"page": "2"}


async def test_timeouts_come_from_settings(http, mock, fake_time):
    route = mock.get(f"{API}/user").mock(
        return_value=httpx.Response(200, json={"id": 1, "username": "u"})
    )
    client = client_for(http, fake_time, gitlab_connect_timeout=2.5, gitlab_read_timeout=17)
    await client.current_user()
    timeout = route.calls[0].request.extensions["timeout"]
    assert timeout["connect"] == 2.5 and timeout["read"] == 17


# --- errors -----------------------------------------------------------------------------

EXPIRED_HEADER = (
    'Bearer realm="Protected by OAuth 2.0", error="invalid_token", '
    'error_description="Token is expired. You can either do re-authorization or token refresh."'
)


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (
            httpx.Response(
                401,
                headers={"WWW-Authenticate": EXPIRED_HEADER},
                json={
                    "error": "invalid_token",
                    "error_description": "Token is expired. You can either do "
                    "re-authorization or token refresh.",
                },
            ),
            "expired",
        ),
        (
            httpx.Response(
                401,
                json={
                    "error": "invalid_token",
                    "error_description": "Token was revoked. You have to re-authorize from "
                    "the user.",
                },
            ),
            "revoked",
        ),
        (httpx.Response(401, json={"message": "401 Unauthorized"}), "invalid"),
    ],
)
async def test_401_reasons_are_not_retried(http, mock, fake_time, response, reason):
    route = mock.get(f"{API}/projects/42/issues").mock(return_value=response)
    with pytest.raises(GitLabAuthError) as info:
        await collect(client_for(http, fake_time).issues(42, T0))

    assert info.value.reason == reason
    assert info.value.status == 401
    assert info.value.endpoint == "/projects/42/issues"
    assert route.call_count == 1
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (403, {"error": "insufficient_scope"}, GitLabForbidden),
        (404, {"message": "404 Project Not Found"}, GitLabNotFound),
    ],
)
async def test_403_and_404_are_typed_and_not_retried(http, mock, fake_time, status, body, error):
    route = mock.get(f"{API}/projects/42/issues").mock(
        return_value=httpx.Response(status, json=body)
    )
    with pytest.raises(error) as info:
        await collect(client_for(http, fake_time).issues(42, T0))

    assert route.call_count == 1
    assert info.value.status == status
    assert info.value.endpoint == "/projects/42/issues"
    message = str(info.value)
    assert TOKEN not in message and "?" not in message and "gitlab.example.com" not in message
    assert fake_time.sleeps == []


async def test_5xx_is_retried_then_succeeds(http, mock, fake_time):
    route = mock.get(f"{API}/user").mock(
        side_effect=[
            httpx.Response(503, text="Service Unavailable"),
            httpx.Response(502, text="<html>Bad Gateway</html>"),
            httpx.Response(200, json={"id": 1, "username": "u"}),
        ]
    )
    user = await client_for(http, fake_time).current_user()

    assert user.id == 1
    assert route.call_count == 3
    assert fake_time.sleeps == []  # a zero backoff base really sleeps zero


async def test_exhausted_5xx_raises_unavailable_after_max_attempts(http, mock, fake_time):
    route = mock.get(f"{API}/projects/42/issues").mock(return_value=httpx.Response(500))
    with pytest.raises(GitLabUnavailable) as info:
        await collect(client_for(http, fake_time, gitlab_max_attempts=3).issues(42, T0))

    assert route.call_count == 3
    assert info.value.status == 500
    assert info.value.endpoint == "/projects/42/issues"
    assert "?" not in str(info.value) and TOKEN not in str(info.value)


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("peer closed connection without sending complete body"),
    ],
)
async def test_transport_errors_are_retried_then_unavailable(http, mock, fake_time, exc):
    route = mock.get(f"{API}/projects/42/issues").mock(side_effect=exc)
    with pytest.raises(GitLabUnavailable) as info:
        await collect(client_for(http, fake_time).issues(42, T0))

    assert route.call_count == 4
    assert info.value.status is None
    assert info.value.__cause__ is None  # httpx's error names the full URL with its query
    assert "updated_after" not in str(info.value)


async def test_backoff_is_exponential_with_full_jitter_and_capped(http, mock, fake_time):
    mock.get(f"{API}/user").mock(return_value=httpx.Response(503))
    client = client_for(
        http, fake_time, gitlab_backoff_base=1, gitlab_backoff_max=3, gitlab_max_attempts=5
    )
    with pytest.raises(GitLabUnavailable):
        await client.current_user()

    assert len(fake_time.sleeps) <= 4
    for wait, ceiling in zip(fake_time.sleeps, [1, 2, 3, 3], strict=False):
        assert 0 <= wait <= ceiling


async def test_truncated_json_is_retried(http, mock, fake_time):
    route = mock.get(f"{API}/projects/4/issues").mock(
        side_effect=[
            httpx.Response(200, content=json.dumps([issue(1001)]).encode()[:57]),
            page([issue(1001)]),
        ]
    )
    pages = await collect(client_for(http, fake_time).issues(4, None))

    assert [i.id for p in pages for i in p] == [1001]
    assert route.call_count == 2


async def test_persistently_malformed_json_raises_bad_response(http, mock, fake_time):
    route = mock.get(f"{API}/projects/4/issues").mock(
        return_value=httpx.Response(200, text="<html>proxy login</html>")
    )
    with pytest.raises(GitLabBadResponse) as info:
        await collect(client_for(http, fake_time).issues(4, None))

    assert route.call_count == 4
    assert info.value.endpoint == "/projects/4/issues"
    assert "/projects/4/issues" in str(info.value)


async def test_wrong_shape_raises_bad_response_at_once(http, mock, fake_time):
    route = mock.get(f"{API}/projects/4/issues").mock(
        return_value=httpx.Response(200, json={"message": "not a list"})
    )
    with pytest.raises(GitLabBadResponse) as info:
        await collect(client_for(http, fake_time).issues(4, None))
    assert route.call_count == 1
    assert "/projects/4/issues" in str(info.value)

    route2 = mock.get(f"{API}/projects/5/issues").mock(
        return_value=httpx.Response(200, json=[{"id": 1, "title": "no author or dates"}])
    )
    with pytest.raises(GitLabBadResponse):
        await collect(client_for(http, fake_time).issues(5, None))
    assert route2.call_count == 1


# --- rate limits ------------------------------------------------------------------------


async def test_429_waits_retry_after_seconds(http, mock, fake_time):
    route = mock.get(f"{API}/user").mock(
        side_effect=[
            httpx.Response(429, text="Retry later", headers={"Retry-After": "7"}),
            httpx.Response(200, json={"id": 1, "username": "u"}),
        ]
    )
    await client_for(http, fake_time, gitlab_rate_limit_max_wait=60).current_user()

    assert fake_time.sleeps == [7.0]
    assert route.call_count == 2


async def test_429_waits_retry_after_http_date(http, mock, fake_time):
    at = datetime.fromtimestamp(fake_time.now + 30, tz=UTC)
    mock.get(f"{API}/user").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": format_datetime(at, usegmt=True)}),
            httpx.Response(200, json={"id": 1, "username": "u"}),
        ]
    )
    await client_for(http, fake_time, gitlab_rate_limit_max_wait=60).current_user()

    assert fake_time.sleeps == [pytest.approx(30.0)]


async def test_429_without_retry_after_waits_until_ratelimit_reset(http, mock, fake_time):
    mock.get(f"{API}/user").mock(
        side_effect=[
            httpx.Response(
                429,
                headers={
                    "RateLimit-Reset": str(int(fake_time.now) + 12),
                    "RateLimit-Remaining": "0",
                },
            ),
            httpx.Response(200, json={"id": 1, "username": "u"}),
        ]
    )
    await client_for(http, fake_time, gitlab_rate_limit_max_wait=60).current_user()

    assert fake_time.sleeps == [12.0]


async def test_429_wait_is_capped(http, mock, fake_time):
    mock.get(f"{API}/user").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "3600"}),
            httpx.Response(200, json={"id": 1, "username": "u"}),
        ]
    )
    await client_for(http, fake_time, gitlab_rate_limit_max_wait=45).current_user()
    assert fake_time.sleeps == [45.0]


async def test_429_with_zero_max_wait_sleeps_zero(http, mock, fake_time):
    mock.get(f"{API}/user").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "30"}),
            httpx.Response(200, json={"id": 1, "username": "u"}),
        ]
    )
    await client_for(http, fake_time).current_user()
    assert fake_time.sleeps == []


async def test_429_budget_is_bounded(http, mock, fake_time):
    route = mock.get(f"{API}/user").mock(
        return_value=httpx.Response(429, headers={"Retry-After": "5"})
    )
    with pytest.raises(GitLabRateLimited) as info:
        await client_for(http, fake_time, gitlab_rate_limit_max_wait=60).current_user()

    assert route.call_count == 4
    assert info.value.retry_after == 5.0
    assert info.value.endpoint == "/user"
    assert fake_time.sleeps == [5.0, 5.0, 5.0]


async def test_a_429_then_three_503s_still_succeeds(http, mock, fake_time):
    route = mock.get(f"{API}/projects/4/issues").mock(
        side_effect=[
            page([issue(1002)], next_url=f"{API}/x?page=2"),
            httpx.Response(429, headers={"Retry-After": "1"}),
            httpx.Response(503),
            httpx.Response(503),
            httpx.Response(503),
            page([issue(1001)]),
        ]
    )
    pages = await collect(client_for(http, fake_time).issues(4, None))

    assert [i.id for p in pages for i in p] == [1002, 1001]
    assert route.call_count == 6


async def test_429_pauses_the_other_requests_of_the_client(http, mock, fake_time):
    mock.get(f"{API}/user").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "10"}),
            httpx.Response(200, json={"id": 1, "username": "u"}),
            httpx.Response(200, json={"id": 1, "username": "u"}),
        ]
    )
    client = client_for(http, fake_time, gitlab_rate_limit_max_wait=60)
    await client.current_user()
    fake_time.now -= 5  # another request that starts 5 s into the 10 s pause must wait the rest
    await client.current_user()

    assert fake_time.sleeps == [10.0, 5.0]


async def test_low_ratelimit_remaining_spaces_requests(http, mock, fake_time):
    reset = int(fake_time.now) + 10
    mock.get(f"{API}/user").mock(
        side_effect=[
            httpx.Response(
                200,
                json={"id": 1, "username": "u"},
                headers={"RateLimit-Remaining": "5", "RateLimit-Reset": str(reset)},
            ),
            httpx.Response(
                200,
                json={"id": 1, "username": "u"},
                headers={"RateLimit-Remaining": "500", "RateLimit-Reset": str(reset + 60)},
            ),
            httpx.Response(200, json={"id": 1, "username": "u"}),
        ]
    )
    client = client_for(
        http, fake_time, gitlab_rate_limit_max_wait=60, gitlab_rate_limit_low_remaining=20
    )
    await client.current_user()
    assert fake_time.sleeps == []
    await client.current_user()  # 10 s left for 5 requests: one every 2 s
    assert fake_time.sleeps == [2.0]
    await client.current_user()  # quota recovered: no more pacing
    assert fake_time.sleeps == [2.0]


async def test_low_ratelimit_remaining_with_reset_in_seconds_spaces_requests(http, mock, fake_time):
    # RateLimit-Reset in the IETF draft's delta-seconds form: 10 s left for 5 requests.
    mock.get(f"{API}/user").mock(
        side_effect=[
            httpx.Response(
                200,
                json={"id": 1, "username": "u"},
                headers={"RateLimit-Remaining": "5", "RateLimit-Reset": "10"},
            ),
            httpx.Response(200, json={"id": 1, "username": "u"}),
        ]
    )
    client = client_for(http, fake_time, gitlab_rate_limit_max_wait=60)
    await client.current_user()
    await client.current_user()
    assert fake_time.sleeps == [2.0]


async def test_429_without_any_header_waits_the_backoff_and_retries(http, mock, fake_time):
    route = mock.get(f"{API}/user").mock(
        side_effect=[
            httpx.Response(429, text="Retry later"),
            httpx.Response(200, json={"id": 1, "username": "u"}),
        ]
    )
    client = client_for(
        http, fake_time, gitlab_backoff_base=1, gitlab_backoff_max=1, gitlab_rate_limit_max_wait=60
    )
    assert (await client.current_user()).id == 1
    assert route.call_count == 2
    assert len(fake_time.sleeps) <= 1 and all(0 <= w <= 1 for w in fake_time.sleeps)


async def test_low_ratelimit_remaining_wait_is_capped(http, mock, fake_time):
    mock.get(f"{API}/user").mock(
        side_effect=[
            httpx.Response(
                200,
                json={"id": 1, "username": "u"},
                headers={
                    "RateLimit-Remaining": "0",
                    "RateLimit-Reset": str(int(fake_time.now) + 600),
                },
            ),
            httpx.Response(200, json={"id": 1, "username": "u"}),
        ]
    )
    client = client_for(http, fake_time, gitlab_rate_limit_max_wait=30)
    await client.current_user()
    await client.current_user()
    assert fake_time.sleeps == [30.0]


# --- concurrency, metrics, logs ---------------------------------------------------------


async def test_in_flight_requests_never_exceed_the_bound(fake_time):
    in_flight = 0
    peak = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        for _ in range(5):  # let every other task run before answering
            await asyncio.sleep(0)
        in_flight -= 1
        return httpx.Response(200, json={"id": 1, "username": "u"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(slow)) as http:
        client = client_for(http, fake_time, gitlab_user_concurrency=3)
        users = await asyncio.gather(*(client.current_user() for _ in range(20)))

    assert len(users) == 20
    assert peak == 3


async def test_retry_waits_do_not_hold_the_semaphore(http, mock, fake_time):
    order: list[str] = []

    def answer(*responses: httpx.Response):
        pending = list(responses)

        def respond(request: httpx.Request) -> httpx.Response:
            order.append(request.url.path)
            return pending.pop(0)

        return respond

    mock.get(f"{API}/user").mock(
        side_effect=answer(
            httpx.Response(503),
            httpx.Response(429, headers={"Retry-After": "3"}),
            httpx.Response(200, json={"id": 1, "username": "u"}),
        )
    )
    mock.get(f"{API}/projects/42").mock(
        side_effect=answer(
            httpx.Response(200, json={"id": 42, "name": "p", "path_with_namespace": "g/p"})
        )
    )
    client = client_for(
        http,
        fake_time,
        gitlab_user_concurrency=1,
        gitlab_backoff_base=1,
        gitlab_backoff_max=1,
        gitlab_rate_limit_max_wait=60,
    )
    await asyncio.gather(client.current_user(), client.project(42))

    # The single slot went to the other request while /user waited to retry.
    assert order.index("/api/v4/projects/42") < len(order) - 1
    assert 3.0 in fake_time.sleeps


async def test_on_request_reports_each_attempt_with_a_template(http, mock, fake_time):
    seen: list[RequestInfo] = []
    mock.get(f"{API}/projects/group%2Fproj/issues").mock(
        side_effect=[httpx.ConnectError("down"), httpx.Response(503), page([issue(1001)])]
    )
    client = GitLabClient(
        http,
        make_settings(),
        TOKEN,
        on_request=seen.append,
        clock=fake_time.clock,
    )
    await collect(client.issues("group/proj", None))

    assert [(i.method, i.endpoint, i.status, i.attempt) for i in seen] == [
        ("GET", "/projects/:id/issues", None, 1),
        ("GET", "/projects/:id/issues", 503, 2),
        ("GET", "/projects/:id/issues", 200, 3),
    ]
    assert all(i.duration_s >= 0 for i in seen)


async def test_a_failing_on_request_hook_does_not_break_requests(http, mock, fake_time):
    def broken(info: RequestInfo) -> None:
        raise RuntimeError("metrics down")

    mock.get(f"{API}/user").mock(return_value=httpx.Response(200, json={"id": 1, "username": "u"}))
    client = GitLabClient(http, make_settings(), TOKEN, on_request=broken, clock=fake_time.clock)
    assert (await client.current_user()).id == 1


async def test_logs_never_contain_the_token_or_the_query(http, mock, fake_time):
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="DEBUG", format="{message}")
    try:
        mock.get(f"{API}/projects/42/issues").mock(
            side_effect=[
                httpx.Response(503),
                httpx.Response(429, headers={"Retry-After": "1"}),
                page([issue(1001)], next_url=f"{API}/x?page=2&private_token={TOKEN}"),
                httpx.Response(401, json={"message": "401 Unauthorized"}),
            ]
        )
        client = client_for(http, fake_time)
        with pytest.raises(GitLabAuthError):
            await collect(client.issues(42, T0))
    finally:
        logger.remove(sink)

    text = "\n".join(lines)
    assert "/projects/42/issues" in text and "attempt" in text
    assert TOKEN not in text and "updated_after" not in text and "page=2" not in text
    assert TOKEN not in repr(client)


# --- OAuth refresh ----------------------------------------------------------------------

TOKEN_ANSWER = {
    "access_token": "new-ACCESS",
    "token_type": "Bearer",
    "expires_in": 7200,
    "refresh_token": "new-REFRESH",
    "created_at": 1_714_564_800,
    "scope": "read_api",
}


async def test_oauth_refresh_posts_the_form_to_the_instance_sub_path(http, mock, fake_time):
    route = mock.post("https://git.example.com/gitlab/oauth/token").mock(
        return_value=httpx.Response(200, json=TOKEN_ANSWER)
    )
    settings = make_settings(gitlab_instance_url="https://git.example.com/gitlab/")

    answer = await refresh_access_token(http, settings, "old-REFRESH")

    assert (answer.access_token, answer.refresh_token, answer.expires_in) == (
        "new-ACCESS",
        "new-REFRESH",
        7200,
    )
    request = route.calls[0].request
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert {k: v[0] for k, v in parse_qs(request.content.decode()).items()} == {
        "grant_type": "refresh_token",
        "refresh_token": "old-REFRESH",
        "client_id": "app-id",
        "client_secret": "app-CLIENT-secret",
        "redirect_uri": "https://insights.example.com/api/auth/callback/gitlab",
    }


@pytest.mark.parametrize("status", [400, 401])
async def test_oauth_invalid_grant_is_final(http, mock, fake_time, status):
    route = mock.post(f"{INSTANCE}/oauth/token").mock(
        return_value=httpx.Response(
            status,
            json={
                "error": "invalid_grant",
                "error_description": "The provided authorization grant is invalid, expired, "
                "revoked, does not match the redirection URI used in the authorization "
                "request, or was issued to another client.",
            },
        )
    )
    with pytest.raises(GitLabOAuthError) as info:
        await refresh_access_token(http, make_settings(), "old-REFRESH")

    assert route.call_count == 1
    assert (info.value.error, info.value.status) == ("invalid_grant", status)
    message = str(info.value)
    assert "old-REFRESH" not in message and "app-CLIENT-secret" not in message


async def test_oauth_5xx_is_retried_then_succeeds(http, mock, fake_time):
    route = mock.post(f"{INSTANCE}/oauth/token").mock(
        side_effect=[
            httpx.Response(502),
            httpx.ConnectError("reset"),
            httpx.Response(200, json=TOKEN_ANSWER),
        ]
    )
    answer = await refresh_access_token(http, make_settings(), "old")
    assert answer.access_token == "new-ACCESS"
    assert route.call_count == 3


async def test_oauth_persistent_5xx_raises_unavailable(http, mock, fake_time):
    route = mock.post(f"{INSTANCE}/oauth/token").mock(return_value=httpx.Response(503))
    with pytest.raises(GitLabUnavailable) as info:
        await refresh_access_token(http, make_settings(), "old-REFRESH")
    assert route.call_count == 4
    assert info.value.endpoint == "/oauth/token"
    assert "old-REFRESH" not in str(info.value)


async def test_oauth_without_configuration_fails_without_a_request(http, mock, fake_time):
    route = mock.post(f"{INSTANCE}/oauth/token")
    with pytest.raises(GitLabOAuthError) as info:
        await refresh_access_token(http, make_settings(gitlab_oauth_client_secret=""), "old")
    assert info.value.error == "not_configured"
    assert route.call_count == 0


async def test_oauth_logs_never_contain_secrets(http, mock, fake_time):
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="DEBUG", format="{message}")
    try:
        mock.post(f"{INSTANCE}/oauth/token").mock(
            side_effect=[httpx.Response(500), httpx.Response(200, json=TOKEN_ANSWER)]
        )
        await refresh_access_token(http, make_settings(), "old-REFRESH")
    finally:
        logger.remove(sink)
    text = "\n".join(lines)
    assert "/oauth/token" in text
    for secret in ("old-REFRESH", "app-CLIENT-secret", "new-ACCESS", "new-REFRESH"):
        assert secret not in text
