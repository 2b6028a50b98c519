"""schemas.Decoder: msgspec decodes, pydantic referees; what is accepted, the values and the
errors are pydantic's (the models before msgspec)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from app.db.models import new_id, new_ids
from app.gitlab import schemas
from app.gitlab.schemas import GitLabDiscussion, GitLabIssue, GitLabNote, GitLabUserRef

AUTHOR = {"username": "alice", "id": 7, "name": "Alice", "avatar_url": None}
ISSUE = {
    "id": 11,
    "iid": 1,
    "project_id": 5,
    "author": AUTHOR,
    "web_url": "https://gitlab.example/g/p/-/issues/1",
    "created_at": "2024-01-01T10:00:00.123Z",
    "updated_at": "2024-01-02T10:00:00Z",
}
NOTE = {
    "id": 21,
    "author": AUTHOR,
    "body": "hi",
    "created_at": "2024-01-01T10:00:00Z",
    "updated_at": "2024-01-01T10:00:00Z",
}


def body(value: object) -> bytes:
    return json.dumps(value).encode()


def referee(decoder: schemas.Decoder, raw: bytes) -> object:
    """What the pydantic models alone give (or raise), as Structs."""
    checked = decoder._referee.validate_json(raw)
    if decoder._many:
        return [schemas._convert(m, decoder._item) for m in checked]
    return schemas._convert(checked, decoder._item)


def test_a_plain_page_is_msgspecs_own_structs():
    (issue,) = schemas.ISSUES.validate_json(body([ISSUE]))
    assert isinstance(issue, GitLabIssue) and isinstance(issue.author, GitLabUserRef)
    assert issue.created_at == datetime(2024, 1, 1, 10, 0, 0, 123000, tzinfo=UTC)
    assert (issue.title, issue.labels, issue.assignees, issue.user_notes_count) == ("", [], [], 1)


def test_nulls_read_as_the_defaults():
    nulls = {"title": None, "labels": None, "assignees": None, "user_notes_count": None}
    (issue,) = schemas.ISSUES.validate_json(body([{**ISSUE, **nulls}]))
    assert (issue.title, issue.labels, issue.assignees, issue.user_notes_count) == ("", [], [], 1)
    flags = {"system": None, "resolvable": None, "resolved": None}
    (note,) = schemas.NOTES.validate_json(body([{**NOTE, **flags}]))
    assert (note.system, note.resolvable, note.resolved) == (False, False, False)
    (thread,) = schemas.DISCUSSIONS.validate_json(body([{"id": "d", "notes": None}]))
    assert thread.notes == []


@pytest.mark.parametrize(
    "change",
    [
        {"id": "11"},  # a number as text: pydantic's lax mode takes it, msgspec does not
        {"created_at": "2024-01-01"},  # a date without a time
        {"created_at": "2024-01-01T10:00:00.1234567Z"},  # truncated, never rounded
        {"updated_at": 1700000000},  # a Unix time
        {"confidential": "true"},
    ],
)
def test_what_msgspec_refuses_pydantic_decides(change):
    raw = body([{**ISSUE, **change}])
    assert schemas.ISSUES.validate_json(raw) == referee(schemas.ISSUES, raw)


def test_a_long_fraction_is_truncated_as_pydantic_does():
    raw = body([{**NOTE, "created_at": "2024-01-01T10:00:00.1234569Z"}])
    (note,) = schemas.NOTES.validate_json(raw)
    assert note.created_at.microsecond == 123456


@pytest.mark.parametrize(
    "raw",
    [
        body([{**ISSUE, "author": None}]),
        body([{**ISSUE, "id": "x"}]),
        body({"message": "not a list"}),
        b'[{"id": 1,',
        b'[{"title": "\\ud800"}]',
    ],
)
def test_refused_bodies_raise_pydantics_error(raw):
    with pytest.raises(ValidationError) as fast:
        schemas.ISSUES.validate_json(raw)
    with pytest.raises(ValidationError) as slow:
        schemas.ISSUES._referee.validate_json(raw)
    assert str(fast.value) == str(slow.value)


def test_model_validate_builds_the_same_structs():
    assert GitLabIssue.model_validate(ISSUE) == schemas.ISSUE.validate_json(body(ISSUE))
    assert GitLabNote.model_validate(NOTE) == schemas.NOTE.validate_json(body(NOTE))
    thread = {"id": "d", "notes": [NOTE]}
    assert (
        GitLabDiscussion.model_validate(thread)
        == schemas.DISCUSSIONS.validate_json(body([thread]))[0]
    )


def test_ids_are_random_version_4_uuids_in_hex():
    ids = [new_id(), *new_ids(500)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        value = uuid.UUID(hex=text)
        assert (value.version, value.variant, value.hex) == (4, uuid.RFC_4122, text)
    assert new_ids(0) == []
