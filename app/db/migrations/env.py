"""Alembic environment: async engines, URL supplied by code, never by a global.

`app.db.migrate` runs migrations on a connection it already holds (so it can decide
between creating and adopting under one lock) and passes it in `config.attributes`.
Without one, the URL comes from the Config's `sqlalchemy.url` or `-x url=...` (CLI use).
"""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from app.db.migrate import include_object_for
from app.db.models import Base

config = context.config
target_metadata = Base.metadata


def _configure_kwargs(connection: Connection) -> dict[str, Any]:
    return {
        "connection": connection,
        "target_metadata": target_metadata,
        "include_object": include_object_for(connection.dialect.name),
        "compare_type": True,
        # SQLite cannot ALTER most things; batch mode recreates tables instead.
        "render_as_batch": connection.dialect.name == "sqlite",
    }


def do_run_migrations(connection: Connection) -> None:
    context.configure(**_configure_kwargs(connection))
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise RuntimeError(
            "no database URL: set sqlalchemy.url on the Config (app.db.migrate does) "
            "or pass -x url=..."
        )
    from app.settings import normalize_database_url

    return normalize_database_url(url)


async def run_async_migrations() -> None:
    engine = create_async_engine(_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
    else:
        asyncio.run(run_async_migrations())


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        include_object=include_object_for(make_url(_url()).get_dialect().name),
        compare_type=True,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
