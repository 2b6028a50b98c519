"""The transform is the original's, field by field (original-story-3.5, seed-schema)."""

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from app.gitlab.schemas import GitLabIssue, GitLabMergeRequest, GitLabNote
from app.sync.transform import (
    ProjectRef,
    comment_title,
    transform_issue,
    transform_merge_request,
    transform_note,
)

PROJECT = ProjectRef("4", "My Project", "my-group/my-project")

ISSUE = {
    "id": 41,
    "iid": 1,
    "project_id": 4,
    "title": "Ut commodi ullam eos dolores perferendis nihil sunt.",
    "description": "Omnis vero earum sunt corporis dolor et placeat.",
    "state": "closed",
    "author": {"username": "root", "avatar_url": None, "id": 1, "name": "Administrator"},
    "labels": ["foo", "bar, baz"],
    "web_url": "http://gitlab.example.com/my-group/my-project/issues/1",
    "created_at": "2016-01-04T15:31:46.176Z",
    "updated_at": "2016-01-04T15:31:46.176Z",
    "user_notes_count": 1,
    "milestone": {"id": 11},
}


def test_issue_row():
    row = transform_issue(GitLabIssue.model_validate(ISSUE), PROJECT)
    assert row == {
        "type": "issue",
        "title": ISSUE["title"],
        "body": ISSUE["description"],
        "author": "root",
        "authorAvatar": None,
        "project": "My Project",
        "projectId": "my-group/my-project",
        "labels": ["foo", "bar, baz"],
        "gitlabEventId": "issue-41",
        "gitlabUrl": ISSUE["web_url"],
        "createdAt": datetime(2016, 1, 4, 15, 31, 46, 176000, tzinfo=UTC),
    }


def test_merge_request_row_with_null_description_and_labels():
    mr = GitLabMergeRequest.model_validate(
        {
            **ISSUE,
            "id": 7,
            "state": "merged",
            "description": None,
            "labels": None,
            "author": {"username": "DouweM", "avatar_url": "https://x/avatar.png"},
            "web_url": "http://gitlab.example.com/my-group/my-project/-/merge_requests/1",
        }
    )
    row = transform_merge_request(mr, PROJECT)
    assert row["type"] == "merge_request"
    assert row["gitlabEventId"] == "mr-7"
    assert row["body"] is None
    assert row["labels"] == []
    assert row["authorAvatar"] == "https://x/avatar.png"


def test_fallback_project_name_and_path():
    row = transform_issue(GitLabIssue.model_validate(ISSUE), ProjectRef("4", None, None))
    assert row["project"] == "Project 4"
    assert row["projectId"] == "4"


def note(body, **fields):
    return GitLabNote.model_validate(
        {
            "id": 301,
            "body": body,
            "author": {"username": "pipin"},
            "created_at": fields.pop("created_at", "2013-10-02T08:57:14Z"),
            "updated_at": "2013-10-02T08:57:14Z",
            "system": False,
            "noteable_type": "MergeRequest",
            "noteable_iid": 2,
            "project_id": 5,
            "web_url": "http://gitlab.example.com/g/p/-/merge_requests/2#note_301",
            **fields,
        }
    )


def test_comment_row():
    row = transform_note(
        note(
            "  Looks good  \nsecond line",
            author={"username": "pipin", "avatar_url": "https://x/pipin.png"},
        ),
        PROJECT,
    )
    assert row == {
        "type": "comment",
        "title": "Comment: Looks good",
        "body": "  Looks good  \nsecond line",
        "author": "pipin",
        "authorAvatar": "https://x/pipin.png",
        "project": "My Project",
        "projectId": "my-group/my-project",
        "labels": [],
        "gitlabEventId": "note-301",
        "gitlabUrl": "http://gitlab.example.com/g/p/-/merge_requests/2#note_301",
        "createdAt": datetime(2013, 10, 2, 8, 57, 14, tzinfo=UTC),
    }


def test_comment_row_without_url_body_or_avatar_and_fallback_project():
    row = transform_note(note(None, web_url=None), ProjectRef("5", None, None))
    assert row["gitlabUrl"] == ""
    assert row["title"] == "Comment: "
    assert row["body"] is None
    assert row["authorAvatar"] is None
    assert row["project"] == "Project 5"
    assert row["projectId"] == "5"


def test_comment_title_is_the_first_of_several_lines():
    assert comment_title("first\nsecond") == "Comment: first"
    assert comment_title("first\nsecond\nthird") == "Comment: first"
    assert comment_title(" first \n second \n third \n fourth") == "Comment: first"
    assert comment_title("\nsecond\nthird") == "Comment: "
    row = transform_note(note("first\nsecond\nthird"), PROJECT)
    assert row["title"] == "Comment: first"
    assert row["body"] == "first\nsecond\nthird"


def test_comment_title_truncation_boundaries():
    assert comment_title("a" * 100) == "Comment: " + "a" * 100
    assert comment_title("a" * 101) == "Comment: " + "a" * 97 + "..."
    assert comment_title("  " + "a" * 100 + "  \nb") == "Comment: " + "a" * 100
    assert comment_title("a" * 99 + "bc") == "Comment: " + "a" * 97 + "..."
    assert comment_title("") == "Comment: "
    assert comment_title(None) == "Comment: "
    assert comment_title("x\r\ny") == "Comment: x"
    assert comment_title("héllo ✓ 日本") == "Comment: héllo ✓ 日本"


# --- createdAt is aware UTC, whatever the host's time zone -----------------------------------


@pytest.fixture
def new_york_tz(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run on a host whose local time is not UTC (UTC-5 in January), then restore."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    assert time.timezone != 0
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("new_york_tz")
@pytest.mark.parametrize(
    ("created_at", "expected"),
    [
        # GitLab's own form.
        ("2016-01-04T15:31:46.176Z", datetime(2016, 1, 4, 15, 31, 46, 176000, tzinfo=UTC)),
        # No offset: GitLab's times are UTC, never the host's local time.
        ("2016-01-04T15:31:46.176", datetime(2016, 1, 4, 15, 31, 46, 176000, tzinfo=UTC)),
        # Another offset: the same instant, expressed in UTC.
        ("2016-01-04T15:31:46.176+02:00", datetime(2016, 1, 4, 13, 31, 46, 176000, tzinfo=UTC)),
    ],
)
def test_created_at_is_utc_on_a_non_utc_host(created_at: str, expected: datetime) -> None:
    rows = [
        transform_issue(GitLabIssue.model_validate({**ISSUE, "created_at": created_at}), PROJECT),
        transform_merge_request(
            GitLabMergeRequest.model_validate({**ISSUE, "created_at": created_at}), PROJECT
        ),
        transform_note(note("hi", created_at=created_at), PROJECT),
    ]
    for row in rows:
        value = row["createdAt"]
        assert value == expected
        assert value.utcoffset() == timedelta(0)
