"""The events upsert on both databases: what goes in comes back out, byte for byte, and the
inserted/updated/unchanged counts are right (PostgreSQL sends a page as one JSON document,
SQLite as rows: both must agree)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import sqlalchemy as sa

from app.db import repository as repo
from app.db.models import Event
from app.db.rows import EventRow

AWKWARD = [
    'quote " backslash \\ slash / tab \t newline \n end',
    "unicode: é ü 漢字 emoji 🎉 rtl עברית",
    '{"looks": ["like", "json"]}',
    "",
]


def _row(n: int, **over: object) -> EventRow:
    row: EventRow = {
        "type": "issue",
        "title": AWKWARD[n % len(AWKWARD)],
        "body": None if n % 2 else AWKWARD[(n + 1) % len(AWKWARD)],
        "author": f"user-{n}",
        "authorAvatar": None if n % 3 else f"http://127.0.0.1/a/{n}.png",
        "project": "Group / Project",
        "projectId": "group/project",
        "labels": [] if n % 2 else ["bug", 'with "quote"', "a,b", "{brace}", "ü", "z-last"],
        "gitlabEventId": f"issue-{n}",
        "gitlabUrl": f"http://127.0.0.1/group/project/-/issues/{n}",
        # Microseconds and a non-UTC offset: stored as UTC at millisecond precision.
        "createdAt": datetime(2024, 3, 1, 12, 30, 45, 123987, tzinfo=timezone(timedelta(hours=5)))
        + timedelta(minutes=n),
    }
    row.update(over)  # type: ignore[typeddict-item]
    return row


async def _user(sessionmaker) -> str:
    async with sessionmaker() as s, s.begin():
        user = await repo.create_user_with_account(
            s,
            email="store@example.com",
            name=None,
            access_token="t",
            refresh_token=None,
            expires_at=None,
        )
        return user.id


async def _stored(sessionmaker, user_id: str) -> dict[str, dict[str, object]]:
    async with sessionmaker() as s:
        rows = (await s.execute(sa.select(Event).where(Event.userId == user_id))).scalars()
        return {
            e.gitlabEventId: {
                "type": e.type,
                "title": e.title,
                "body": e.body,
                "author": e.author,
                "authorAvatar": e.authorAvatar,
                "project": e.project,
                "projectId": e.projectId,
                "labels": e.labels,
                "gitlabEventId": e.gitlabEventId,
                "gitlabUrl": e.gitlabUrl,
                "createdAt": e.createdAt,
            }
            for e in rows
        }


async def _upsert(sessionmaker, user_id: str, rows: list[EventRow]) -> repo.UpsertCounts:
    async with sessionmaker() as s, s.begin():
        return await repo.upsert_events(s, user_id, rows)


async def test_upsert_round_trips_every_column_and_counts_changes(sessionmaker) -> None:
    user_id = await _user(sessionmaker)
    rows = [_row(n) for n in range(8)]

    counts = await _upsert(sessionmaker, user_id, rows)
    assert (counts.inserted, counts.updated) == (8, 0)

    stored = await _stored(sessionmaker, user_id)
    for row in rows:
        want = dict(row)
        created = row["createdAt"].astimezone(UTC)
        want["createdAt"] = created.replace(microsecond=created.microsecond // 1000 * 1000)
        assert stored[row["gitlabEventId"]] == want
    assert stored["issue-0"]["createdAt"] == datetime(2024, 3, 1, 7, 30, 45, 123000, tzinfo=UTC)

    # The same page again changes nothing and reports nothing.
    counts = await _upsert(sessionmaker, user_id, rows)
    assert (counts.inserted, counts.updated) == (0, 0)

    # A changed title, a reordered label list and one new row, in one page.
    changed = [
        _row(1, title="edited"),
        _row(2, labels=list(reversed(rows[2]["labels"]))),
        _row(3),
        _row(9),
    ]
    counts = await _upsert(sessionmaker, user_id, changed)
    assert (counts.inserted, counts.updated) == (1, 2)
    stored = await _stored(sessionmaker, user_id)
    assert stored["issue-1"]["title"] == "edited"
    assert stored["issue-2"]["labels"] == list(reversed(rows[2]["labels"]))
    assert len(stored) == 9


async def test_duplicate_keys_in_one_page_keep_the_last(sessionmaker) -> None:
    user_id = await _user(sessionmaker)
    counts = await _upsert(sessionmaker, user_id, [_row(1, title="first"), _row(1, title="last")])
    assert (counts.inserted, counts.updated) == (1, 0)
    assert (await _stored(sessionmaker, user_id))["issue-1"]["title"] == "last"
