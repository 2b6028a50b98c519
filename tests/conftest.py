"""Shared fixtures: a fresh database per test on SQLite and on PostgreSQL.

PostgreSQL comes from TEST_DATABASE_URL (a server where the role may CREATE DATABASE).
Without it the PostgreSQL half is skipped locally; with CI=true it fails instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from app.db.migrate import upgrade_to_head
from app.settings import normalize_database_url

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_URL = os.environ.get("TEST_DATABASE_URL", "")

_pg_template: str | None = None


def _with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


async def _pg_admin(sql: str) -> None:
    import asyncpg

    parts = urlsplit(PG_URL)
    dsn = urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _require_pg() -> None:
    if not PG_URL:
        if IN_CI:
            pytest.fail("CI=true but TEST_DATABASE_URL is not set: PostgreSQL tests are mandatory")
        pytest.skip("TEST_DATABASE_URL not set")
    try:
        asyncio.run(_pg_admin("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        if IN_CI:
            pytest.fail(f"PostgreSQL unreachable in CI: {type(exc).__name__}")
        pytest.skip(f"PostgreSQL unreachable: {type(exc).__name__}")


def new_pg_database(*, migrated: bool) -> str:
    """Create a uniquely named database; migrated ones are cloned from a template."""
    global _pg_template
    _require_pg()
    name = "gi_test_" + uuid.uuid4().hex[:12]
    if migrated:
        if _pg_template is None:
            tmpl = "gi_tmpl_" + uuid.uuid4().hex[:8]
            asyncio.run(_pg_admin(f'CREATE DATABASE "{tmpl}"'))
            upgrade_to_head(normalize_database_url(_with_database(PG_URL, tmpl)))
            _pg_template = tmpl
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{_pg_template}"'))
    else:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    return normalize_database_url(_with_database(PG_URL, name))


def drop_pg_database(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    with contextlib.suppress(Exception):
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session", autouse=True)
def _drop_template() -> Iterator[None]:
    yield
    if _pg_template:
        drop_pg_database(_with_database(PG_URL, _pg_template))


def _make_db(kind: str, tmp_path, migrated: bool) -> Iterator[str]:
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/test-{uuid.uuid4().hex[:8]}.db"
        if migrated:
            upgrade_to_head(url)
        yield url
    else:
        url = new_pg_database(migrated=migrated)
        try:
            yield url
        finally:
            drop_pg_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> Iterator[str]:
    """URL of a fresh database migrated to head."""
    yield from _make_db(request.param, tmp_path, migrated=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request, tmp_path) -> Iterator[str]:
    """URL of a fresh, empty database (no tables)."""
    yield from _make_db(request.param, tmp_path, migrated=False)


@pytest.fixture
def pg_url(tmp_path) -> Iterator[str]:
    """A fresh migrated PostgreSQL database only (for PostgreSQL-specific tests)."""
    yield from _make_db("postgresql", tmp_path, migrated=True)


@pytest.fixture
async def engine(db_url) -> AsyncIterator:
    from app.db.engine import create_engine
    from app.settings import load_settings

    eng = create_engine(load_settings(database_url=db_url))
    yield eng
    await eng.dispose()


@pytest.fixture
def sessionmaker(engine):
    from app.db.engine import create_sessionmaker

    return create_sessionmaker(engine)
