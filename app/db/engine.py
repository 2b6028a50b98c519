"""Async engine and session factory for PostgreSQL (asyncpg) and SQLite (aiosqlite)."""

from __future__ import annotations

import asyncio
import threading
from time import perf_counter
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.util import await_

from app import metrics
from app.settings import Settings

# What a database that cannot be reached (down, dropped, pool exhausted) raises: a driver
# error wrapped by SQLAlchemy, a pool timeout, or a socket error / timeout while connecting.
DATABASE_UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    DBAPIError,
    PoolTimeoutError,
    OSError,
    TimeoutError,
)


class TimedPool(AsyncAdaptedQueuePool):
    """The default async pool, timing every checkout (queue wait, connect, pre-ping)."""

    def connect(self) -> Any:
        started = perf_counter()
        try:
            return super().connect()
        finally:
            metrics.DB_CONNECTION_WAIT.observe(perf_counter() - started)


def create_engine(settings: Settings) -> AsyncEngine:
    url = settings.database_url
    # recreate() (dispose, invalidation) builds the same class: the timing survives it.
    kwargs: dict[str, Any] = {"pool_pre_ping": settings.is_sqlite, "poolclass": TimedPool}
    if settings.is_sqlite:
        # Many concurrent writers on one file: wait for the lock instead of failing.
        kwargs["connect_args"] = {"timeout": 30}
    else:
        # The original's createdAt defaults are CURRENT_TIMESTAMP in a column holding UTC:
        # pin the session time zone so a server in another zone cannot skew them.
        kwargs["connect_args"] = {"server_settings": {"timezone": "UTC"}}
        kwargs.update(
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_pool_size,
            pool_timeout=settings.db_pool_timeout,
        )
    engine = create_async_engine(url, **kwargs)
    if settings.is_sqlite:
        settle_failed_sqlite_opens(engine)
        _configure_sqlite(engine)
    else:
        _ping_on_checkout(engine)  # before the checkout counter: a failed ping is no checkout
    _count_checkouts(engine)
    return engine


def _ping_on_checkout(engine: AsyncEngine) -> None:
    """PostgreSQL's pre-ping: one simple-protocol `SELECT 1` when a pooled connection is
    checked out again.

    SQLAlchemy's asyncpg pre-ping takes three round trips (BEGIN, a prepared ";", ROLLBACK,
    so that it works behind PgBouncer's transaction mode): ~0.8 ms of CPU per checkout, and
    a poll checks out at least one connection per user. A simple query needs no transaction
    in that mode. A failed ping raises DisconnectionError, which the pool handles as it does
    a failed pre-ping: the connection is replaced and the checkout tried again.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(_dbapi_conn: Any, record: Any) -> None:
        record.info["gi_fresh"] = True  # just opened: nothing to check

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if record.info.pop("gi_fresh", False):
            return
        try:
            await_(dbapi_conn.driver_connection.execute("SELECT 1"))
        except Exception as exc:
            raise DisconnectionError("pooled connection failed its ping") from exc


def _count_checkouts(engine: AsyncEngine) -> None:
    """Connections in use, across every engine of the process (inc/dec, never set)."""

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(_dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        record.info["gi_checked_out"] = True
        metrics.DB_POOL_CHECKED_OUT.inc()

    @event.listens_for(engine.sync_engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        # Also fires for invalidated connections; the flag keeps inc/dec paired.
        if record is not None and record.info.pop("gi_checked_out", False):
            metrics.DB_POOL_CHECKED_OUT.dec()


def settle_failed_sqlite_opens(engine: AsyncEngine) -> None:
    """Open SQLite connections through `_open_aiosqlite`, which cleans up after a failed open.

    The same arguments SQLAlchemy would pass to `aiosqlite.connect`; only the failure path
    differs (see `_open_aiosqlite`).
    """

    @event.listens_for(engine.sync_engine, "do_connect")
    def _do_connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        return dialect.dbapi.connect(*cargs, async_creator_fn=_open_aiosqlite, **cparams)


async def _open_aiosqlite(*args: Any, **kwargs: Any) -> Any:
    """`aiosqlite.connect`, waiting for the worker thread of a connection that failed to open.

    On a failed open (a missing folder, no permission) aiosqlite queues the stop of its
    worker thread without awaiting it; the thread then reports to this event loop, often
    after `asyncio.run` has closed it: "Event loop is closed" raised in that thread, on
    stderr. Waiting here ends the thread while the loop still runs.
    """
    import aiosqlite

    conn = aiosqlite.connect(*args, **kwargs)
    # Before 0.22 the connection is the thread; since, it holds one. Daemon, as SQLAlchemy
    # makes it: a connection never closed must not keep the process alive.
    worker = conn if isinstance(conn, threading.Thread) else conn._thread
    worker.daemon = True
    try:
        return await conn
    except Exception:
        await asyncio.to_thread(worker.join, 5)
        raise


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker:
    return async_sessionmaker(engine, expire_on_commit=False)
