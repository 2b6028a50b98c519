"""A SQLite database that cannot be opened (a missing folder) leaves no aiosqlite worker
thread behind: aiosqlite queues that thread's stop without awaiting it, and a thread still
running when `asyncio.run` closes the loop dies with "Event loop is closed" on stderr
(app.db.engine.settle_failed_sqlite_opens)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from sqlalchemy.exc import OperationalError

from app.db import migrate
from app.db.engine import create_engine
from app.settings import load_settings


def workers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.endswith("(_connection_worker_thread)")}


async def open_runtime_engine(url: str) -> None:
    engine = create_engine(load_settings(database_url=url))
    try:
        async with engine.connect():
            pass
    finally:
        await engine.dispose()


def open_for_migration(url: str) -> None:
    migrate.current_revision(url)


@pytest.mark.parametrize("opener", ["engine", "migrate"])
def test_a_failed_sqlite_open_ends_its_worker_thread(tmp_path, monkeypatch, opener) -> None:
    errors: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    url = f"sqlite+aiosqlite:///{tmp_path}/no/such/dir/x.db"
    before = workers()
    for _ in range(5):  # the race is lost most of the time, not always: try it a few times
        if opener == "engine":
            with pytest.raises(OperationalError):
                asyncio.run(open_runtime_engine(url))
        else:
            with pytest.raises(migrate.MigrationError):
                open_for_migration(url)
        # The loop is closed now: any worker still alive would report to it.
        assert not [t for t in workers() - before if t.is_alive()]
    assert errors == []
