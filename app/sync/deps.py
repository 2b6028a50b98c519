"""What a sync needs from the outside world, built once by `app/runtime.py`."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.settings import Settings

# Where a user's sync opens its sessions: `UserLease.session` (on the lease's connection on
# PostgreSQL) or a sessionmaker.
SessionFactory = Callable[[], AbstractAsyncContextManager[AsyncSession]]


@dataclass(frozen=True, slots=True)
class SyncDeps:
    """Settings, the database's sessionmaker and the shared GitLab HTTP client.

    One per process (the API lifespan, a CLI command, the Inngest functions): every user
    task opens its own sessions from `sessionmaker` and shares `http`'s connection pools.
    """

    settings: Settings
    sessionmaker: async_sessionmaker
    http: httpx.AsyncClient
