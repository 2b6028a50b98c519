"""The newest app's work items: the rules of its event-transformer, as its own writes do them
(newest-original-app.md section 2), and the schema profile that decides when they apply."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from app.db.profile import NEWER_EVENT_COLUMNS, NEWEST, STORY, SchemaProfile
from app.gitlab.schemas import GitLabDiscussion, GitLabIssue, GitLabMergeRequest
from app.sync.transform import (
    ProjectRef,
    closes_issue_ids,
    mentioned_ids,
    merge_people,
    people_of,
    project_ref_of,
    work_item_bundle,
    work_item_comment_title,
    work_item_status,
)

REF = ProjectRef("278964", "My Project", "group/my-project", "id")


def author(uid: int, name: str, avatar: str | None = None) -> dict[str, Any]:
    return {"id": uid, "username": name, "name": name.title(), "avatar_url": avatar}


ISSUE: dict[str, Any] = {
    "id": 9001,
    "iid": 3,
    "project_id": 278964,
    "title": "Crash",
    "description": "See #1, !2 and #1 again",
    "state": "opened",
    "author": author(1, "ada", "https://a/ada.png"),
    "assignees": [author(3, "cy"), author(2, "bob")],
    "labels": ["bug"],
    "web_url": "https://gitlab.example/group/my-project/-/issues/3",
    "created_at": "2025-01-01T10:00:00.000Z",
    "updated_at": "2025-01-02T10:00:00.000Z",
    "user_notes_count": 3,
}


def note(nid: int, who: dict[str, Any], at: str, body: str = "hi", **kw: Any) -> dict[str, Any]:
    return {
        "id": nid,
        "body": body,
        "author": who,
        "created_at": at,
        "updated_at": at,
        "system": False,
        "noteable_id": 9001,
        "noteable_type": "Issue",
        "noteable_iid": 3,
        **kw,
    }


def discussions(*threads: tuple[str, list[dict[str, Any]]]) -> list[GitLabDiscussion]:
    return [
        GitLabDiscussion.model_validate(
            {"id": did, "individual_note": len(notes) == 1, "notes": notes}
        )
        for did, notes in threads
    ]


# --- references ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        (None, []),
        ("", []),
        ("See #1, !2 and #1 again", [1, 2]),
        ("&#123; and #12abc", [123, 12]),  # no word boundary, as the app's /[#!](\d+)/g
        ("#007 is #7", [7]),
        ("#٣ is not ASCII", []),  # JavaScript's \d is ASCII only
        ("#99999999999 and #2147483648 and #2147483647", [2147483647]),
        ("#" + "9" * 5000, []),  # no int() on a huge number
        ("#0 and !000", [0]),  # parseInt: zeros are the number 0, once
        ("#00000000042", [42]),  # leading zeros do not make a number too big
    ],
)
def test_mentioned_ids(text: str | None, ids: list[int]) -> None:
    assert mentioned_ids(text) == ids


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("Closes #1, #2", [1]),  # only the first #N after a keyword
        ("fixes #3\nFIXED #4 resolve #5 Resolves #6 close #7 closed #8", [3, 4, 5, 6, 7, 8]),
        ("prefix #3 and disclosed #4", [3, 4]),  # no word boundary, as the app
        ("Closes: #5 and closes group/p#6 and fix#7", []),
        ("Fixes\u00a0#9 and fixes\t\n#10", [9, 10]),  # JavaScript's \s
        ("\u017fclose #11", [11]),  # "close" still matches after the long s
        ("\u017fixes #12", []),  # but the long s is no "f" (ASCII case folding only)
        ("Closes #1 closes #1", [1]),
    ],
)
def test_closes_issue_ids(text: str, ids: list[int]) -> None:
    assert closes_issue_ids(text) == ids


# --- comment titles ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "title"),
    [
        (None, "Comment: Comment"),
        ("", "Comment: Comment"),
        ("\n  \n\t", "Comment: Comment"),
        ("\n\n  Reproduced  \nlog", "Comment: Reproduced"),  # the first non-blank line
        ("\ufeffBOM first\n", "Comment: BOM first"),  # JavaScript's trim() strips U+FEFF
        ("\x1cnot stripped", "Comment: \x1cnot stripped"),  # ... and not U+001C
        # Blank is JavaScript's blank: a line of U+FEFF and U+3000 is skipped, a line of
        # U+001C (whitespace to Python, not to JavaScript) is the first non-blank one.
        ("\ufeff\u3000\nsecond", "Comment: second"),
        ("\x1c\nsecond", "Comment: \x1c"),
        ("line\r\nnext", "Comment: line"),
        ("a" * 100, "Comment: " + "a" * 100),
        ("a" * 101, "Comment: " + "a" * 97 + "..."),
    ],
)
def test_work_item_comment_title(body: str | None, title: str) -> None:
    assert work_item_comment_title(body) == title


def test_comment_title_counts_utf16_units_and_never_splits_a_character() -> None:
    emoji = "\U0001f680"  # two UTF-16 units
    assert work_item_comment_title(emoji * 50) == "Comment: " + emoji * 50  # 100 units
    # 51 emoji = 102 units: cut at 97 units, which would split the 49th; it is left out.
    assert work_item_comment_title(emoji * 51) == "Comment: " + emoji * 48 + "..."
    assert work_item_comment_title("x" + emoji * 50) == "Comment: x" + emoji * 48 + "..."


def test_comment_title_utf16_boundary_between_one_and_two_units() -> None:
    # U+FFFF, the last character of the BMP (a noncharacter, but valid text), is one unit.
    last_bmp = "\uffff"
    assert work_item_comment_title(last_bmp * 100) == "Comment: " + last_bmp * 100
    assert work_item_comment_title(last_bmp * 101) == "Comment: " + last_bmp * 97 + "..."
    # U+10000, the first character outside it, is two (a surrogate pair).
    first_astral = "\U00010000"
    assert work_item_comment_title(first_astral * 50) == "Comment: " + first_astral * 50
    assert work_item_comment_title(first_astral * 51) == "Comment: " + first_astral * 48 + "..."


@pytest.mark.parametrize(
    ("state", "status"),
    [("opened", "open"), ("locked", "open"), ("closed", "closed"), ("merged", "merged")],
)
def test_status(state: str, status: str) -> None:
    assert work_item_status(state) == status


# --- bundles -------------------------------------------------------------------------------------


def test_issue_bundle_activity_threads_and_people() -> None:
    bob, cy, ada = author(2, "bob"), author(3, "cy"), author(1, "ada", "https://a/ada.png")
    threads = discussions(
        ("d1", [note(11, bob, "2025-01-01T11:00:00Z", "first\n#5")]),
        (
            "d2",
            [
                note(12, cy, "2025-01-01T12:00:00Z", resolvable=True, resolved=False),
                note(14, bob, "2025-01-01T14:00:00Z", resolvable=True, resolved=False),
            ],
        ),
        ("d3", [note(13, ada, "2025-01-03T09:00:00Z", "added ~bug label", system=True)]),
        ("d4", [note(15, ada, "2025-01-01T15:00:00Z", resolvable=True, resolved=True)]),
    )
    bundle = work_item_bundle(GitLabIssue.model_validate(ISSUE), threads, REF)
    item = bundle.item
    assert item["gitlabEventId"] == "issue-9001" and item["iid"] == 3
    assert item["status"] == "open"
    assert item["assignees"] == ["cy", "bob"]  # GitLab's order
    assert item["participants"] == ["ada", "bob", "cy"]  # author, then commenters by time
    assert item["commentCount"] == 4  # system notes aside
    assert item["unresolvedCommentCount"] == 2
    # The system note (Jan 3) is the latest activity, later than updated_at (Jan 2).
    assert item["lastActivityAt"] == datetime(2025, 1, 3, 9, tzinfo=UTC)
    assert item["mentionedInIds"] == [1, 2] and item["closesIssueIds"] == []
    assert item["projectId"] == "278964" and item["project"] == "My Project"
    assert item["parentEventId"] is None and item["isSystemNote"] is False

    by_id = {n["gitlabEventId"]: n for n in bundle.notes}
    assert [n["gitlabEventId"] for n in bundle.notes] == [
        "note-11",
        "note-12",
        "note-14",
        "note-15",
        "note-13",
    ]  # by creation time
    first = by_id["note-11"]
    assert first["discussionId"] == "d1" and first["parentType"] == "issue"
    assert first["gitlabParentId"] == 9001 and first["isSystemNote"] is False
    assert first["title"] == "Comment: first" and first["mentionedInIds"] == [5]
    assert first["gitlabUrl"] == ISSUE["web_url"] + "#note_11"
    assert first["assignees"] == [] and first["participants"] == []
    assert first["iid"] is None and first["status"] is None and first["lastActivityAt"] is None
    assert by_id["note-13"]["isSystemNote"] is True
    assert by_id["note-14"]["discussionId"] == "d2"
    # Every author once, the item's first, then the notes' by time (system notes too), as
    # GitLab sends them (name, avatar); bob's later note does not add him twice.
    assert bundle.people == [
        {"gitlabId": 1, "username": "ada", "name": "Ada", "avatarUrl": "https://a/ada.png"},
        {"gitlabId": 2, "username": "bob", "name": "Bob", "avatarUrl": None},
        {"gitlabId": 3, "username": "cy", "name": "Cy", "avatarUrl": None},
    ]


MR: dict[str, Any] = {
    **ISSUE,
    "id": 77,
    "iid": 5,
    "description": "Fixes #3, see !4",
    "labels": ["bug", "ui"],
    "web_url": "https://gitlab.example/group/my-project/-/merge_requests/5",
    # An offset other than Z: stored as the same instant in UTC.
    "created_at": "2025-01-01T11:00:00+01:00",
}


def test_merge_request_bundle_rows_field_by_field() -> None:
    """Every column of sections 2.1 and 2.2: the counts, people and activity live on the
    item's row; a comment row carries its own text, author and links to its thread and
    item, and empty values for the rest."""
    bob = author(2, "bob", "https://a/bob.png")
    threads = discussions(
        (
            "d1",
            [
                note(
                    21,
                    bob,
                    "2025-01-01T12:00:00Z",
                    "LGTM\nfixes #3 too",
                    noteable_id=77,
                    noteable_type="MergeRequest",
                    resolvable=True,
                    resolved=False,
                )
            ],
        )
    )
    bundle = work_item_bundle(GitLabMergeRequest.model_validate(MR), threads, REF)
    assert bundle.item == {
        "type": "merge_request",
        "title": "Crash",
        "body": "Fixes #3, see !4",
        "author": "ada",
        "authorAvatar": "https://a/ada.png",
        "project": "My Project",
        "projectId": "278964",
        "labels": ["bug", "ui"],
        "gitlabEventId": "mr-77",
        "gitlabUrl": MR["web_url"],
        "createdAt": datetime(2025, 1, 1, 10, tzinfo=UTC),
        "iid": 5,
        "status": "open",
        "assignees": ["cy", "bob"],
        "participants": ["ada", "bob"],
        "lastActivityAt": datetime(2025, 1, 2, 10, tzinfo=UTC),  # updated_at: the note is older
        "commentCount": 1,
        "unresolvedCommentCount": 1,
        "mentionedInIds": [3, 4],
        "closesIssueIds": [3],
        "parentEventId": None,
        "parentType": None,
        "gitlabParentId": None,
        "discussionId": None,
        "isSystemNote": False,
    }
    assert bundle.notes == [
        {
            "type": "comment",
            "title": "Comment: LGTM",
            "body": "LGTM\nfixes #3 too",
            "author": "bob",
            "authorAvatar": "https://a/bob.png",
            "project": "My Project",
            "projectId": "278964",
            "labels": [],
            "gitlabEventId": "note-21",
            "gitlabUrl": MR["web_url"] + "#note_21",
            "createdAt": datetime(2025, 1, 1, 12, tzinfo=UTC),
            "iid": None,
            "status": None,
            "assignees": [],
            "participants": [],
            "lastActivityAt": None,
            "commentCount": 0,  # the counts are the item's, even for an unresolved note
            "unresolvedCommentCount": 0,
            "mentionedInIds": [3],
            "closesIssueIds": [],  # only the MR's description closes issues, not a comment
            "parentEventId": None,  # set when stored: the database id of the item's row
            "parentType": "merge_request",
            "gitlabParentId": 77,
            "discussionId": "d1",
            "isSystemNote": False,
        }
    ]


def test_an_issue_closes_nothing() -> None:
    # "Closes #4" in an issue's description is a mention: only merge requests close issues.
    issue = GitLabIssue.model_validate({**ISSUE, "description": "Closes #4"})
    item = work_item_bundle(issue, [], REF).item
    assert item["mentionedInIds"] == [4] and item["closesIssueIds"] == []


@pytest.mark.parametrize("fragment", ["#top", "#a#b"])
def test_comment_url_is_the_item_url_without_fragment(fragment: str) -> None:
    # GitLab's web_url has no fragment; if one came, it is dropped, as the client does on
    # the story path: a comment's URL holds one `#`, and its item is the URL before it
    # (deletions.parent_url).
    base = ISSUE["web_url"]
    issue = GitLabIssue.model_validate({**ISSUE, "web_url": base + fragment})
    threads = discussions(("d1", [note(11, author(2, "bob"), "2025-01-01T11:00:00Z")]))
    (comment,) = work_item_bundle(issue, threads, REF).notes
    assert comment["gitlabUrl"] == base + "#note_11"


def test_item_without_notes_has_its_updated_at_as_activity() -> None:
    bundle = work_item_bundle(GitLabIssue.model_validate(ISSUE), [], REF)
    assert bundle.item["lastActivityAt"] == datetime(2025, 1, 2, 10, tzinfo=UTC)
    assert bundle.item["participants"] == ["ada"] and bundle.item["commentCount"] == 0
    assert bundle.notes == []


def test_merge_request_bundle_closes_and_states() -> None:
    mr = GitLabMergeRequest.model_validate(
        {**ISSUE, "id": 77, "state": "merged", "description": "Fixes #3", "assignees": None}
    )
    bundle = work_item_bundle(mr, [], REF)
    assert bundle.item["gitlabEventId"] == "mr-77" and bundle.item["type"] == "merge_request"
    assert bundle.item["status"] == "merged" and bundle.item["closesIssueIds"] == [3]
    assert bundle.item["assignees"] == []


def test_a_note_listed_twice_counts_once() -> None:
    bob = author(2, "bob")
    twice = note(11, bob, "2025-01-01T11:00:00Z")
    threads = discussions(("d1", [twice]), ("d1b", [twice]))
    bundle = work_item_bundle(GitLabIssue.model_validate(ISSUE), threads, REF)
    assert bundle.item["commentCount"] == 1 and len(bundle.notes) == 1


def test_people_merge_like_the_app() -> None:
    rows = people_of(
        GitLabIssue.model_validate(
            {**ISSUE, "author": {"username": "ghost", "avatar_url": None}}  # no id: left out
        ).assignees
    )
    assert [r["username"] for r in rows] == ["cy", "bob"]
    merged = merge_people(
        [
            {"gitlabId": 1, "username": "ada", "name": "Ada", "avatarUrl": "a.png"},
            {"gitlabId": 1, "username": "", "name": None, "avatarUrl": None},
            {"gitlabId": 2, "username": "bob", "name": None, "avatarUrl": None},
            {"gitlabId": 1, "username": "ada2", "name": "Ada L", "avatarUrl": None},
            {"gitlabId": 2, "username": "bob", "name": None, "avatarUrl": "b.png"},
        ]
    )
    assert merged == [
        {"gitlabId": 1, "username": "ada2", "name": "Ada L", "avatarUrl": "a.png"},
        {"gitlabId": 2, "username": "bob", "name": None, "avatarUrl": "b.png"},  # a later avatar
    ]


# --- the schema profile and the projectId convention ---------------------------------------


def test_profiles() -> None:
    assert STORY.flavour == "story" and not STORY.work_items
    assert STORY.project_id_convention == "path"
    assert NEWEST.flavour == "newest" and NEWEST.work_items
    assert NEWEST.project_id_convention == "id"
    person = {"id", "userId", "gitlabId", "username", "name", "avatarUrl", "createdAt", "updatedAt"}
    migrated_only = SchemaProfile.from_columns(
        set(NEWER_EVENT_COLUMNS) - {"iid", "discussionId"} | {"id", "title"}, person | {"email"}
    )
    assert migrated_only.flavour == "partial" and migrated_only.work_items
    assert migrated_only.describe() == 'partial (lacks "Event".iid, "Event".discussionId)'
    assert SchemaProfile.from_columns({"id", "title"}, None) == STORY
    assert SchemaProfile.from_columns(set(NEWER_EVENT_COLUMNS), {"id"}).has_person is False


def test_project_ref_conventions() -> None:
    story = ProjectRef("42", "Name", "g/p")
    assert story.event_project_id == "g/p" and story.event_project_ids == ("g/p",)
    newest = ProjectRef("42", "Name", "g/p", "id")
    assert newest.event_project_id == "42"
    # Rows written before the app was upgraded still hold the path.
    assert newest.event_project_ids == ("42", "g/p")


@dataclass
class Monitored:
    """A "MonitoredProject" row, as much as the transform reads."""

    gitlabProjectId: str  # noqa: N815
    projectName: str  # noqa: N815
    projectPath: str  # noqa: N815


def test_project_ref_of_a_monitored_project_follows_the_schema() -> None:
    project = Monitored("278964", "My Project", "group/my-project")
    assert project_ref_of(project, NEWEST) == REF
    story = project_ref_of(project, STORY)
    assert story == ProjectRef("278964", "My Project", "group/my-project", "path")
    assert story.event_project_id == "group/my-project"
