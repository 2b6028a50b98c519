"""app.gitlab.sansio with plain statuses, header dicts and bytes: no HTTP, no event loop.

Headers are given with lower-case names, as the client passes case-insensitive ones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from pydantic import BaseModel, TypeAdapter

from app.gitlab import sansio
from app.gitlab.errors import (
    GitLabAPIError,
    GitLabAuthError,
    GitLabBadResponse,
    GitLabForbidden,
    GitLabInsufficientScope,
    GitLabMalformedResponse,
    GitLabNotFound,
    GitLabOAuthError,
    GitLabRateLimited,
    GitLabUnavailable,
)
from app.gitlab.sansio import Pacing

NOW = 1_714_564_800.0  # 2024-05-01T12:00:00Z

EXPIRED_HEADER = (
    'Bearer realm="Protected by OAuth 2.0", error="invalid_token", '
    'error_description="Token is expired. You can either do re-authorization or token refresh."'
)
EXPIRED_BODY = (
    b'{"error":"invalid_token","error_description":"Token is expired. You can either do '
    b're-authorization or token refresh."}'
)
REVOKED_BODY = (
    b'{"error":"invalid_token","error_description":"Token was revoked. You have to '
    b're-authorize from the user."}'
)


@pytest.fixture
def local_time_not_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run on a host whose local time is far from UTC (the acceptance hosts are not UTC)."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    assert time.timezone != 0
    yield
    monkeypatch.undo()
    time.tzset()


def error(status: int, headers: dict[str, str] | None = None, body: bytes = b"", **kw: float):
    waits = {"now": NOW, "max_wait": 60.0, "fallback_wait": 2.5, **kw}
    return sansio.error_for_status(status, headers or {}, body, "/projects/4/issues", **waits)


def oauth_error(status: int, headers: dict[str, str] | None = None, body: bytes = b"", **kw):
    waits = {"now": NOW, "max_wait": 60.0, "fallback_wait": 2.5, **kw}
    return sansio.oauth_error_for_status(status, headers or {}, body, **waits)


# --- request side -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("project", "ref"),
    [
        (42, "42"),
        ("42", "42"),
        (" 42 ", "42"),
        ("group/sub/proj", "group%2Fsub%2Fproj"),
        (" my group/p+q ", "my%20group%2Fp%2Bq"),
    ],
)
def test_project_ref(project, ref):
    assert sansio.project_ref(project) == ref


def test_format_gitlab_time_is_utc_with_z():
    assert sansio.format_gitlab_time(datetime(2019, 3, 15, 8, 0)) == "2019-03-15T08:00:00Z"
    aware = datetime(2019, 3, 15, 10, 0, 0, 500, tzinfo=UTC).astimezone(
        timezone(timedelta(hours=2))
    )
    assert sansio.format_gitlab_time(aware) == "2019-03-15T10:00:00.000500Z"
    assert sansio.format_gitlab_time(datetime(2019, 3, 15, 8, 0, 1, tzinfo=UTC)) == (
        "2019-03-15T08:00:01Z"
    )


def test_as_utc():
    naive = sansio.as_utc(datetime(2024, 5, 1, 12, 0))
    assert naive == datetime(2024, 5, 1, 12, 0, tzinfo=UTC) and naive.tzinfo is UTC
    plus2 = datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    converted = sansio.as_utc(plus2)
    assert converted.tzinfo is UTC and converted.hour == 12


def test_naive_datetimes_are_utc_on_a_host_that_is_not(local_time_not_utc):
    naive = datetime(2019, 3, 15, 8, 0)
    assert sansio.format_gitlab_time(naive) == "2019-03-15T08:00:00Z"
    assert sansio.as_utc(naive).timestamp() == datetime(2019, 3, 15, 8, 0, tzinfo=UTC).timestamp()
    # An HTTP date in the obsolete "-0000" form parses as a naive datetime: still GMT.
    date = format_datetime(datetime.fromtimestamp(NOW + 20, tz=UTC).replace(tzinfo=None))
    assert date.endswith("-0000")
    wait = sansio.rate_limited_wait({"retry-after": date}, now=NOW, max_wait=600, fallback=1)
    assert wait == pytest.approx(20.0)


# --- pagination ---------------------------------------------------------------------------

GITLAB_LINK = (
    '<https://gitlab.example.com/api/v4/projects/8/issues?id=8&page=2&per_page=3>; rel="next", '
    '<https://gitlab.example.com/api/v4/projects/8/issues?id=8&page=1&per_page=3>; rel="first", '
    '<https://gitlab.example.com/api/v4/projects/8/issues?id=8&page=9&per_page=3>; rel="last"'
)


def test_parse_link_header_as_gitlab_sends_it():
    base = "https://gitlab.example.com/api/v4/projects/8/issues?id=8"
    assert sansio.parse_link_header(GITLAB_LINK) == {
        "next": f"{base}&page=2&per_page=3",
        "first": f"{base}&page=1&per_page=3",
        "last": f"{base}&page=9&per_page=3",
    }


@pytest.mark.parametrize(
    ("header", "links"),
    [
        ("", {}),
        ("garbage", {}),
        ("<https://h/a?page=2>", {}),  # no rel
        ('<https://h/a?page=2>; title="next"', {}),
        ('<https://h/a?page=2>; rel=""', {}),
        ('<https://h/a>; title="x", <https://h/b>; rel="next"', {"next": "https://h/b"}),
        ("<https://h/a?page=2>; rel=next", {"next": "https://h/a?page=2"}),
        ('<https://h/a?page=2>; REL = "Next"', {"next": "https://h/a?page=2"}),
        ('<https://h/a?page=2>;rel="next"', {"next": "https://h/a?page=2"}),
        ('< https://h/a?page=2 >; rel="next"', {"next": "https://h/a?page=2"}),
        (
            '<https://h/a?page=2>; type="text/html"; rel="next last"',
            {"next": "https://h/a?page=2", "last": "https://h/a?page=2"},
        ),
        (
            '<https://h/a?x=1,2&page=2>; rel="next", <https://h/a?page=3>; rel="next"',
            {"next": "https://h/a?x=1,2&page=2"},  # a comma inside <>; the first next wins
        ),
    ],
)
def test_parse_link_header_forms(header, links):
    assert sansio.parse_link_header(header) == links


def test_next_query_is_the_link_query_without_its_host():
    headers = {
        "link": '<http://internal:8080/api/v4/projects/4/issues?page=2&per_page=3>; rel="next"',
        "x-next-page": "7",
    }
    current = [("scope", "all"), ("page", "1")]
    assert sansio.next_page_query(headers, current) == [("page", "2"), ("per_page", "3")]


def test_next_query_keeps_blank_values_and_decodes_escapes():
    headers = {
        "link": "<https://h/api/v4/x?cursor=&updated_after=2024-05-01T12%3A00%3A00%2B02%3A00"
        '&labels[]=a&labels[]=b>; rel="next"'
    }
    assert sansio.next_page_query(headers, []) == [
        ("cursor", ""),
        ("updated_after", "2024-05-01T12:00:00+02:00"),
        ("labels[]", "a"),
        ("labels[]", "b"),
    ]


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        (
            [("scope", "all"), ("page", "1"), ("sort", "desc")],
            [("scope", "all"), ("page", "2"), ("sort", "desc")],
        ),
        ([("scope", "all"), ("sort", "desc")], [("scope", "all"), ("sort", "desc"), ("page", "2")]),
        ([("page", "1"), ("a", "b"), ("page", "9")], [("page", "2"), ("a", "b")]),
        ([], [("page", "2")]),
    ],
)
def test_x_next_page_is_the_fallback(current, expected):
    headers = {"link": '<https://h/first>; rel="first"', "x-next-page": " 2 "}
    assert sansio.next_page_query(headers, current) == expected


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-next-page": ""},
        {"x-next-page": "  "},
        {"link": '<https://h/x?page=1>; rel="first", <https://h/x?page=3>; rel="last"'},
        {"link": '<>; rel="next"'},
    ],
)
def test_no_next_page(headers):
    assert sansio.next_page_query(headers, [("page", "3")]) is None


def test_next_query_does_not_change_the_current_one():
    current = [("page", "1")]
    sansio.next_page_query({"x-next-page": "2"}, current)
    assert current == [("page", "1")]


# --- bodies -------------------------------------------------------------------------------


class Item(BaseModel):
    id: int
    title: str


ITEMS = TypeAdapter(list[Item])


def test_decode_json_validates_the_body():
    assert sansio.decode_json(ITEMS, b'[{"id": 1, "title": "a"}]', status=200, endpoint="/x") == [
        Item(id=1, title="a")
    ]


@pytest.mark.parametrize(
    "body",
    [b"", b"<html>proxy login</html>", json.dumps([{"id": 1, "title": "a"}]).encode()[:12]],
)
def test_malformed_json_is_its_own_retryable_error(body):
    with pytest.raises(GitLabMalformedResponse) as info:
        sansio.decode_json(ITEMS, body, status=200, endpoint="/projects/4/issues")
    assert str(info.value) == "malformed JSON from GitLab on /projects/4/issues"
    assert (info.value.status, info.value.endpoint) == (200, "/projects/4/issues")
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert isinstance(info.value, GitLabBadResponse)  # callers that only know BadResponse


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"message": "not a list"}', "1 invalid field(s), first at the top level"),
        (b'[{"id": 1, "title": "a"}, {"id": "x"}]', "2 invalid field(s), first at 1.id"),
    ],
)
def test_wrong_shape_is_a_bad_response(body, message):
    with pytest.raises(GitLabBadResponse) as info:
        sansio.decode_json(ITEMS, body, status=201, endpoint="/projects/4/issues")
    assert type(info.value) is GitLabBadResponse
    assert str(info.value) == f"unexpected payload from GitLab on /projects/4/issues: {message}"
    assert (info.value.status, info.value.endpoint) == (201, "/projects/4/issues")
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        ({"www-authenticate": EXPIRED_HEADER}, b"", "expired"),
        ({}, EXPIRED_BODY, "expired"),
        ({"www-authenticate": EXPIRED_HEADER}, REVOKED_BODY, "expired"),
        ({}, REVOKED_BODY, "revoked"),
        ({}, b"TOKEN WAS REVOKED", "revoked"),
        ({}, b"\xff\xfe token was revoked", "revoked"),
        ({}, b'{"message":"401 Unauthorized"}', "invalid"),
        ({"www-authenticate": 'Bearer realm="x", error="invalid_token"'}, b"", "invalid"),
        ({}, b"token is\nexpired", "invalid"),
    ],
)
def test_auth_reason(headers, body, reason):
    assert sansio.auth_reason(headers, body) == reason


def test_auth_reason_reads_header_and_body_as_one_text():
    assert sansio.auth_reason({"www-authenticate": "token is"}, b"expired") == "expired"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"error": "invalid_grant", "error_description": "..."}', "invalid_grant"),
        (b'{"error": "a.b-c_9"}', "a.b-c_9"),
        (json.dumps({"error": "e" * 64}).encode(), "e" * 64),  # the longest code echoed
        (json.dumps({"error": "e" * 65}).encode(), None),
        (b'{"error": ""}', None),
        (b'{"error": "Invalid Grant"}', None),
        (b'{"error": "invalid_grant\\n"}', None),
        (b'{"error": "token=secret value"}', None),
        (b'{"error": 5}', None),
        (b'{"message": "x"}', None),
        (b'["error"]', None),
        (b"not json", None),
        (b"\xff\xfe", None),
        (b"[" * 100_000, None),
    ],
)
def test_oauth_error_code(body, code):
    assert sansio.oauth_error_code(body) == code


# --- rate limits --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "3600"}, 60.0),  # capped
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": "garbage"}, 2.5),  # the fallback
        ({}, 2.5),
        ({"retry-after": "nan"}, 2.5),
        ({"retry-after": "inf"}, 60.0),
        ({"ratelimit-reset": str(int(NOW) + 12)}, 12.0),  # GitLab's Unix time
        ({"ratelimit-reset": "12"}, 12.0),  # the IETF draft's seconds
        ({"ratelimit-reset": "nan"}, 2.5),
        (
            {"ratelimit-resettime": format_datetime(datetime.fromtimestamp(NOW + 20, UTC), True)},
            20.0,
        ),
    ],
)
def test_rate_limited_wait(headers, wait):
    got = sansio.rate_limited_wait(headers, now=NOW, max_wait=60.0, fallback=2.5)
    assert got == pytest.approx(wait)


def test_rate_limited_wait_caps_the_fallback_too():
    assert sansio.rate_limited_wait({}, now=NOW, max_wait=1.0, fallback=2.5) == 1.0


def pace(status: int = 200, **headers: str) -> Pacing | None:
    named = {k.replace("_", "-"): v for k, v in headers.items()}
    return sansio.pacing(status, named, now=NOW, low_remaining=20, max_wait=30.0)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"ratelimit_remaining": ""},
        {"ratelimit_remaining": "abc"},
        {"ratelimit_remaining": "nan"},
    ],
)
def test_no_pacing_news_without_a_usable_remaining(headers):
    assert pace(**headers) is None


def test_infinite_remaining_is_no_news():
    assert pace(ratelimit_remaining="inf") is None


def test_a_429_is_no_pacing_news():
    assert pace(429, ratelimit_remaining="0", ratelimit_reset=str(int(NOW) + 10)) is None


def test_quota_above_the_threshold_stops_pacing():
    assert pace(ratelimit_remaining="21") == Pacing(low=False, remaining=21, interval=0.0)
    assert pace(ratelimit_remaining="500").interval == 0.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        # 10 s left for 5 requests: one every 2 s (Reset as GitLab's Unix time).
        ({"ratelimit_remaining": "5", "ratelimit_reset": str(int(NOW) + 10)}, Pacing(True, 5, 2.0)),
        # The same with Reset as seconds (IETF draft form).
        ({"ratelimit_remaining": "5", "ratelimit_reset": "10"}, Pacing(True, 5, 2.0)),
        ({"ratelimit_remaining": "20", "ratelimit_reset": "40"}, Pacing(True, 20, 2.0)),
        ({"ratelimit_remaining": " 5.9 ", "ratelimit_reset": "10"}, Pacing(True, 5, 2.0)),
        # No (usable) Reset: GitLab's one-minute window.
        ({"ratelimit_remaining": "5"}, Pacing(True, 5, 12.0)),
        ({"ratelimit_remaining": "5", "ratelimit_reset": "soon"}, Pacing(True, 5, 12.0)),
        ({"ratelimit_remaining": "5", "ratelimit_reset": "nan"}, Pacing(True, 5, 12.0)),
        # Nothing left: the whole window before the next request, capped.
        ({"ratelimit_remaining": "0", "ratelimit_reset": "10"}, Pacing(True, 0, 10.0)),
        ({"ratelimit_remaining": "0", "ratelimit_reset": "600"}, Pacing(True, 0, 30.0)),
        ({"ratelimit_remaining": "-1", "ratelimit_reset": "10"}, Pacing(True, -1, 10.0)),
        # A reset already past: no spacing.
        ({"ratelimit_remaining": "5", "ratelimit_reset": str(int(NOW) - 10)}, Pacing(True, 5, 0.0)),
    ],
)
def test_low_quota_spreads_what_is_left_over_the_window(headers, expected):
    assert pace(**headers) == expected


def test_pacing_reads_only_ratelimit_reset_for_its_window():
    # Retry-After belongs to a 429's own pause, never to the spacing of later requests.
    assert pace(ratelimit_remaining="5", retry_after="600") == Pacing(True, 5, 12.0)


def test_pacing_is_a_value():
    assert Pacing(low=False, remaining=3).interval == 0.0
    with pytest.raises(AttributeError):
        Pacing(low=False, remaining=3).low = True  # type: ignore[misc]


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 204, 299])
def test_2xx_is_success(status):
    assert error(status) is None
    assert oauth_error(status) is None


@pytest.mark.parametrize(
    "status", [100, 199, 300, 301, 302, 304, 308, 399, 400, 405, 409, 422, 499]
)
def test_any_other_answer_is_never_success(status):
    err = error(status, body=b'[{"id": 1}]')
    assert type(err) is GitLabAPIError
    assert (err.status, err.endpoint) == (status, "/projects/4/issues")
    assert str(err) == f"GitLab {status} on /projects/4/issues"


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        ({"www-authenticate": EXPIRED_HEADER}, EXPIRED_BODY, "expired"),
        ({}, REVOKED_BODY, "revoked"),
        ({}, b'{"message":"401 Unauthorized"}', "invalid"),
    ],
)
def test_401_carries_its_reason(headers, body, reason):
    err = error(401, headers, body)
    assert isinstance(err, GitLabAuthError)
    assert (err.reason, err.status, err.endpoint) == (reason, 401, "/projects/4/issues")
    assert str(err) == f"GitLab 401 ({reason} token) on /projects/4/issues"


@pytest.mark.parametrize(
    ("status", "kind", "message"),
    [
        (403, GitLabForbidden, "GitLab 403 forbidden on /projects/4/issues"),
        (404, GitLabNotFound, "GitLab 404 not found on /projects/4/issues"),
        (500, GitLabUnavailable, "GitLab 500 on /projects/4/issues"),
        (502, GitLabUnavailable, "GitLab 502 on /projects/4/issues"),
        (599, GitLabUnavailable, "GitLab 599 on /projects/4/issues"),
    ],
)
def test_typed_errors(status, kind, message):
    err = error(status, body=b'{"message": "x"}')
    assert type(err) is kind
    assert (err.status, err.endpoint, str(err)) == (status, "/projects/4/issues", message)


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({}, b'{"error":"insufficient_scope","error_description":"x","scope":"api read_api"}'),
        ({"www-authenticate": 'Bearer realm="GitLab", error="insufficient_scope"'}, b""),
        ({"www-authenticate": 'Bearer error="INSUFFICIENT_SCOPE"'}, b"{}"),
    ],
)
def test_403_insufficient_scope_is_a_token_problem_not_a_refusal(headers, body):
    err = error(403, headers, body)
    assert isinstance(err, GitLabInsufficientScope)
    # An auth error (the user must re-authorize) and still a 403.
    assert isinstance(err, GitLabAuthError) and isinstance(err, GitLabForbidden)
    assert (err.reason, err.status, err.endpoint) == (
        "insufficient_scope",
        403,
        "/projects/4/issues",
    )
    assert str(err) == (
        "GitLab 403 insufficient_scope (the token lacks a scope) on /projects/4/issues"
    )


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({}, b'{"message":"403 Forbidden"}'),
        ({}, b'{"error":"forbidden"}'),
        ({"www-authenticate": 'Bearer realm="GitLab"'}, b"not json"),
        ({}, b'"insufficient_scope"'),
    ],
)
def test_other_403s_are_refusals(headers, body):
    assert sansio.insufficient_scope(headers, body) is False
    assert type(error(403, headers, body)) is GitLabForbidden


def test_insufficient_scope_only_decides_403s():
    scope = b'{"error":"insufficient_scope"}'
    assert sansio.insufficient_scope({}, scope) is True
    assert type(error(404, {}, scope)) is GitLabNotFound
    assert type(error(401, {}, scope)) is GitLabAuthError


def test_429_carries_the_wait_it_asks_for():
    err = error(429, {"retry-after": "7"}, b"Retry later")
    assert isinstance(err, GitLabRateLimited)
    assert (err.retry_after, err.status, err.endpoint) == (7.0, 429, "/projects/4/issues")
    assert str(err) == "GitLab 429 rate limited on /projects/4/issues (retry after 7.0 s)"


def test_429_with_delta_ratelimit_reset():
    err = error(429, {"ratelimit-reset": "12", "ratelimit-remaining": "0"})
    assert isinstance(err, GitLabRateLimited) and err.retry_after == 12.0


def test_429_without_any_header_falls_back_to_the_backoff_wait():
    err = error(429, {}, b"Retry later", fallback_wait=2.5)
    assert isinstance(err, GitLabRateLimited) and err.retry_after == 2.5
    assert str(err).endswith("(retry after 2.5 s)")


def test_429_wait_is_capped():
    err = error(429, {"retry-after": "3600"}, max_wait=45.0)
    assert isinstance(err, GitLabRateLimited) and err.retry_after == 45.0


def test_429_reads_the_clock_it_is_given():
    err = error(429, {"ratelimit-reset": str(int(NOW) + 30)}, now=NOW + 10)
    assert isinstance(err, GitLabRateLimited) and err.retry_after == 20.0


def test_messages_never_carry_a_body_or_header():
    secret = "glpat-SECRET"
    for status in (301, 400, 401, 403, 404, 429, 500):
        err = error(status, {"www-authenticate": secret, "retry-after": "1"}, secret.encode())
        assert err is not None and secret not in str(err)


# --- OAuth --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503])
def test_oauth_5xx_is_unavailable(status):
    err = oauth_error(status, body=b"oops")
    assert type(err) is GitLabUnavailable
    assert (err.status, err.endpoint, str(err)) == (
        status,
        "/oauth/token",
        f"GitLab {status} on /oauth/token",
    )


def test_oauth_429_is_rate_limited():
    err = oauth_error(429, {"retry-after": "4"})
    assert isinstance(err, GitLabRateLimited)
    assert (err.retry_after, err.endpoint) == (4.0, "/oauth/token")
    assert str(err) == "GitLab 429 rate limited on /oauth/token (retry after 4.0 s)"
    assert oauth_error(429, fallback_wait=1.5).retry_after == 1.5
    at_reset = oauth_error(429, {"ratelimit-reset": str(int(NOW) + 9)}, now=NOW + 4)
    assert at_reset.retry_after == 5.0


@pytest.mark.parametrize(
    ("status", "body", "code", "message"),
    [
        (400, b'{"error": "invalid_grant"}', "invalid_grant", "400 invalid_grant"),
        (401, b'{"error": "invalid_client"}', "invalid_client", "401 invalid_client"),
        (300, b"", None, "300 unknown error"),
        (302, b"<html>login</html>", None, "302 unknown error"),
        (199, b"", None, "199 unknown error"),
        (499, b"{}", None, "499 unknown error"),
    ],
)
def test_oauth_refusals_are_final(status, body, code, message):
    err = oauth_error(status, body=body)
    assert type(err) is GitLabOAuthError
    assert (err.error, err.status, err.endpoint) == (code, status, "/oauth/token")
    assert str(err) == f"GitLab refused the token refresh: {message}"


def test_default_rate_window_is_gitlab_s_minute():
    assert sansio.DEFAULT_RATE_WINDOW_S == 60.0
