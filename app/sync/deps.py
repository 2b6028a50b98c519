"""What a sync needs from the outside world, built once by `app/runtime.py`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

import httpx
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from app.db.profile import STORY, SchemaProfile
from app.gitlab.reachability import ReachabilityDetector
from app.gitlab.transport import GitLabWire
from app.settings import Settings

# Where a user's sync opens its sessions: `UserLease.session` (on the lease's connection on
# PostgreSQL) or a sessionmaker.
SessionFactory = Callable[[], AbstractAsyncContextManager[AsyncSession]]
# Where it runs a write that is one statement (`UserLease.statement`): the lease's
# connection outside any transaction on PostgreSQL, else a session in a transaction.
StatementFactory = Callable[[], AbstractAsyncContextManager[AsyncSession | AsyncConnection]]


@dataclass(frozen=True, slots=True)
class SyncDeps:
    """Settings, the database's sessionmaker and the shared GitLab HTTP client.

    One per process (the API lifespan, a CLI command, the Inngest functions), shared by the
    user tasks (and `http`'s connection pools); a user's sync uses a copy whose `sessions`
    are its lease's (user_sync.py).
    """

    settings: Settings
    sessionmaker: async_sessionmaker
    http: httpx.AsyncClient
    # The wire GitLab API requests go over (transport.py); None: through `http` (tests).
    gitlab: GitLabWire | None = None
    # Inside one user's sync: the lease's sessions (on PostgreSQL with advisory leases, the
    # connection holding the user's lock), so the sync never needs a second connection.
    sessions: SessionFactory | None = None
    statements: StatementFactory | None = None
    # What the database has of the original app's newer schema (db/profile.py), read at the
    # start of every run (poller.py): the app may be upgraded while this service runs.
    profile: SchemaProfile = STORY
    # A poll run's detector of an unreachable GitLab, shared by all the run's GitLab clients
    # (set by poller.py for the run; None outside a run).
    reachability: ReachabilityDetector | None = None

    def gitlab_wire(self) -> GitLabWire | httpx.AsyncClient:
        return self.gitlab if self.gitlab is not None else self.http

    def session(self) -> AbstractAsyncContextManager[AsyncSession]:
        """A session for the sync's reads and writes (see `sessions`)."""
        return (self.sessions or self.sessionmaker)()

    def statement(self) -> AbstractAsyncContextManager[AsyncSession | AsyncConnection]:
        """Where a write that is one statement runs (see `statements`); its own
        transaction when no lease gives one."""
        return self.statements() if self.statements is not None else self._transaction()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncSession | AsyncConnection]:
        async with self.session() as s, s.begin():
            yield s
