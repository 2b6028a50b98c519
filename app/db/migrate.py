"""Bring a database to the current schema: create it, adopt the original's, or upgrade.

`upgrade_to_head` is synchronous and safe to call from inside a running event loop (the
work then happens in a worker thread). The alembic Config is built in code with
`script_location` inside this package, so it works installed without pyproject.toml.

A database made by the original TypeScript app (Prisma) has the original tables but no
`alembic_version`: it is stamped at the baseline revision (which describes exactly that
schema) and then upgraded, so nothing of the original is re-created or lost.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import pool
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.db.engine import settle_failed_sqlite_opens
from app.db.profile import SchemaProfile
from app.db.repository.schema import schema_columns
from app.settings import normalize_database_url

BASELINE_REVISION = "0001"
ORIGINAL_TABLES = ("user", "account", "MonitoredProject", "Event", "LastSync")
OWN_TABLES = ("sync_cursor", "sync_lease", "poll_run", "sync_user")
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Arbitrary fixed key: replicas starting together must not create/adopt concurrently.
_PG_LOCK_KEY = 0x67697E6D6967  # "gi~mig"
_CONNECT_TIMEOUT = 10.0

T = TypeVar("T")

# The original app's objects we must never create, alter or drop: tables we do not own
# (and Prisma's own bookkeeping) and the PostgreSQL-only full-text index, which the
# models cannot express.
IGNORED_TABLES = frozenset({"session", "verification", "UserQuery", "_prisma_migrations"})
IGNORED_INDEXES = frozenset({"events_fts_idx"})
# SQLAlchemy does not reflect index sort order on SQLite, so this DESC index always looks
# changed there; the index itself is created correctly by the migrations.
SQLITE_UNREFLECTABLE_INDEXES = frozenset({"Event_userId_createdAt_idx"})


class MigrationError(Exception):
    """The database could not be brought to the current schema; one-line message.

    `connecting` is true when the database could not even be reached (the cause is the
    driver's error), so a caller can describe that cause its own way.
    """

    def __init__(self, message: str, *, connecting: bool = False) -> None:
        super().__init__(message)
        self.connecting = connecting


@contextlib.contextmanager
def _quiet_alembic() -> Iterator[None]:
    """Alembic's INFO lines (plugin set-up, "Context impl", each revision) stay unseen:
    the caller reports the one line `upgrade_to_head` returns. At DEBUG they show."""
    log = logging.getLogger("alembic")
    before = log.level
    if not log.isEnabledFor(logging.DEBUG):
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(before)


def include_object_for(dialect_name: str) -> Callable[..., bool]:
    """Alembic `include_object` hook for autogenerate on the given dialect."""
    ignored_indexes = IGNORED_INDEXES
    if dialect_name == "sqlite":
        ignored_indexes = ignored_indexes | SQLITE_UNREFLECTABLE_INDEXES

    def include_object(
        obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
    ) -> bool:
        if type_ == "table":
            return name not in IGNORED_TABLES
        if type_ == "index" and name in ignored_indexes:
            return False
        # Columns, indexes and constraints of ignored tables come with their table.
        table = getattr(obj, "table", None)
        return not (table is not None and getattr(table, "name", None) in IGNORED_TABLES)

    return include_object


def _config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser interpolation: a URL-encoded password may contain '%'.
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def upgrade_to_head(url: str) -> str:
    """Create, adopt or upgrade the database at `url`; return what was done, in one line."""
    url = _normalize(url)
    with _quiet_alembic():
        return _run(lambda: _with_connection(url, _upgrade_sync))


def schema_profile(url: str) -> SchemaProfile:
    """Which version of the original app's schema the database has (db/profile.py)."""
    url = _normalize(url)
    return _run(lambda: _with_connection(url, _profile_sync))


def _profile_sync(conn: Connection) -> SchemaProfile:
    return SchemaProfile.from_columns(*schema_columns(conn))


def current_revision(url: str) -> str | None:
    """The database's alembic revision, or None if it has none (empty or original-only)."""
    url = _normalize(url)
    return _run(lambda: _with_connection(url, _current_sync))


# --- internals ---------------------------------------------------------------------------


def _normalize(url: str) -> str:
    try:
        return normalize_database_url(url)
    except ValueError as exc:
        raise MigrationError(f"invalid database URL: {exc}") from None


def _run(make_coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coro())
    # asyncio.run cannot nest in a running loop; a private loop in a worker thread can.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="migrate") as ex:
        return ex.submit(lambda: asyncio.run(make_coro())).result()


def _engine(url: str) -> AsyncEngine:
    connect_args: dict[str, Any] = {"timeout": _CONNECT_TIMEOUT}
    # NullPool: the connection really closes afterwards, releasing the session lock.
    engine = create_async_engine(url, poolclass=pool.NullPool, connect_args=connect_args)
    if engine.dialect.name == "sqlite":
        settle_failed_sqlite_opens(engine)
    return engine


def _safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return "(unparsable URL)"


def _one_line(exc: BaseException, url: str) -> str:
    orig = getattr(exc, "orig", None) or exc
    # SQLAlchemy's asyncpg adapter wraps the driver's error; its class says more.
    if orig.__cause__ is not None and type(orig).__name__ == "Error":
        orig = orig.__cause__
    text = str(orig).strip()
    try:
        password = make_url(url).password
    except Exception:  # noqa: BLE001
        password = None
    if password:
        text = text.replace(str(password), "***")
    text = " ".join(text.split())
    if len(text) > 300:
        text = text[:297] + "..."
    name = type(orig).__name__
    return f"{name}: {text}" if text else name


async def _with_connection(url: str, fn: Callable[[Connection], T]) -> T:
    engine = _engine(url)
    try:
        try:
            conn = await engine.connect()
        except Exception as exc:
            raise MigrationError(
                f"cannot connect to database {_safe_url(url)}: {_one_line(exc, url)}",
                connecting=True,
            ) from exc
        try:
            return await conn.run_sync(fn)
        except MigrationError:
            raise
        except Exception as exc:
            raise MigrationError(
                f"migrating database {_safe_url(url)} failed: {_one_line(exc, url)}"
            ) from exc
        finally:
            await conn.close()
    finally:
        await engine.dispose()


def _current_sync(conn: Connection) -> str | None:
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    return MigrationContext.configure(conn).get_current_revision()


def _upgrade_sync(conn: Connection) -> str:
    is_pg = conn.dialect.name == "postgresql"
    if is_pg:
        # Session-level lock: held across the commits of stamp and upgrade.
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
        conn.commit()
    try:
        return _decide_and_migrate(conn)
    finally:
        if is_pg:
            conn.rollback()
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
            conn.commit()


def _decide_and_migrate(conn: Connection) -> str:
    cfg = _config(conn.engine.url.render_as_string(hide_password=False))
    # Run alembic on this very connection, under the lock taken above.
    cfg.attributes["connection"] = conn
    script = ScriptDirectory.from_config(cfg)
    head = script.get_current_head()

    insp = sa.inspect(conn)
    tables = set(insp.get_table_names())
    current = _current_sync(conn) if "alembic_version" in tables else None
    # alembic must begin its own transaction, not join our autobegun one.
    conn.commit()

    if current is not None:
        if current == head:
            return f"already at {head} (head)"
        try:
            script.get_revision(current)
        except CommandError:
            raise MigrationError(
                f"database is at revision {current!r}, unknown to this version "
                "(was it migrated by a newer gitlab-insights?)"
            ) from None
        _alembic(conn, command.upgrade, cfg, "head")
        return f"upgraded from {current} to {head}"

    if tables & set(ORIGINAL_TABLES):
        _check_adoptable(insp, tables)
        _alembic(conn, command.stamp, cfg, BASELINE_REVISION)
        _alembic(conn, command.upgrade, cfg, "head")
        return f"adopted existing database (baseline {BASELINE_REVISION}), upgraded to {head}"

    if own := tables & set(OWN_TABLES):
        raise MigrationError(
            f"database has this service's tables ({', '.join(sorted(own))}) but no "
            "alembic_version and no original tables; refusing to guess its state"
        )
    _alembic(conn, command.upgrade, cfg, "head")
    return f"created schema at {head}"


def _alembic(conn: Connection, fn: Callable[..., Any], cfg: Config, rev: str) -> None:
    try:
        fn(cfg, rev)
    except CommandError as exc:
        raise MigrationError(
            f"alembic {fn.__name__} {rev} failed: {' '.join(str(exc).split())}"
        ) from exc
    conn.commit()


def _check_adoptable(insp: sa.Inspector, tables: set[str]) -> None:
    """Adopt only a database that really has the original schema the baseline describes."""
    from app.db.models import Base

    missing_tables = [t for t in ORIGINAL_TABLES if t not in tables]
    if missing_tables:
        raise MigrationError(
            "database has some of the original app's tables but not "
            + ", ".join(f'"{t}"' for t in missing_tables)
            + "; cannot adopt it"
        )
    problems = []
    for t in ORIGINAL_TABLES:
        have = {c["name"] for c in insp.get_columns(t)}
        want = {c.name for c in Base.metadata.tables[t].columns}
        problems += [f'"{t}".{c}' for c in sorted(want - have)]
    if problems:
        raise MigrationError(
            "existing database lacks columns of the original schema: "
            + ", ".join(problems)
            + "; cannot adopt it"
        )
    if own := tables & set(OWN_TABLES):
        raise MigrationError(
            f"database has the original tables and this service's ({', '.join(sorted(own))}) "
            "but no alembic_version; refusing to guess its revision"
        )
