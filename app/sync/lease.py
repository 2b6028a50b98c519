"""The user lease: no two runs (in one process or many) sync one user at once.

On PostgreSQL (LEASE_BACKEND=advisory, the default) the lease is a session advisory lock
on a stable 64-bit hash of the user id, taken on a connection the lease checks out and holds
for the whole sync: PostgreSQL frees it the moment that connection drops (a SIGKILLed
process's users are free for the next poll), and it costs no writes and no heartbeat. Every
statement of the user's sync runs on that connection (`session()`, one transaction at a
time), so a user never waits for a second pooled connection while holding one.

Elsewhere (SQLite; LEASE_BACKEND=table for transaction-mode poolers such as PgBouncer, where
a session lock would stay with a pooled server connection) the lease is a row in
`sync_lease` (user, holder = run id, expiry), taken in the transaction that reads what the
sync needs, renewed by a heartbeat, released with LastSync; a crashed process's row frees
itself after LEASE_TTL_SECONDS.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from loguru import logger
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from app.db import repository as repo
from app.db.rows import LastSyncRow
from app.sync.deps import SyncDeps

_KEY_NAMESPACE = b"gitlab-insights:user-sync:"


class LeaseLost(Exception):
    """Another run took the user over (our lease expired while we worked)."""


class LeaseConnectionLost(LeaseLost):
    """The connection holding an advisory lock dropped (database gone): so did the lock."""


def advisory_key(user_id: str) -> int:
    """A stable signed 64-bit key for the user (the same in every process and release)."""
    digest = hashlib.blake2b(_KEY_NAMESPACE + user_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class UserLease:
    """One run's claim on one user: `acquire` in a transaction, `held()` around the work,
    `release` at the end; `session()` gives the sync its sessions."""

    def __init__(self, deps: SyncDeps, user_id: str, run_id: str) -> None:
        self.deps = deps
        self.user_id = user_id
        self.run_id = run_id
        settings = deps.settings
        self.advisory = not settings.is_sqlite and settings.lease_backend == "advisory"
        self._conn: AsyncConnection | None = None  # advisory: the connection holding the lock
        self._locked = False
        self._spent = False  # the lock was given back: nothing may run as its holder any more
        self._release_after_commit = False
        self._autocommit = False  # the connection runs statements without BEGIN/COMMIT
        self._gate = asyncio.Lock()  # one transaction at a time on that connection

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session for this user's sync: on the lock's connection (advisory), else pooled."""
        if not self.advisory:
            async with self.deps.sessionmaker() as s:
                yield s
            return
        async with self._gate:
            conn = await self._connection()
            if self._autocommit:  # back to transactions (no round trip: BEGIN comes later)
                await conn.execution_options(isolation_level=conn.default_isolation_level)
                self._autocommit = False
            async with self.deps.sessionmaker(bind=conn) as s:
                yield s
            if self._release_after_commit:  # reached only when the transaction committed
                await self._unlock()

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncConnection]:
        """Advisory leases: the lock's connection for statements that each stand alone, run
        without BEGIN and COMMIT (one statement is atomic by itself; those two would be two
        round trips more per statement). Several statements in one block are not atomic
        together: callers put what must be written together in one statement."""
        if not self.advisory:
            raise RuntimeError("autocommit() is for advisory leases")
        async with self._gate:
            conn = await self._connection()
            if not self._autocommit:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                self._autocommit = True
            try:
                yield conn
            finally:
                if conn.in_transaction():  # SQLAlchemy's bookkeeping only: nothing to end
                    await conn.rollback()

    @asynccontextmanager
    async def statement(self) -> AsyncIterator[AsyncSession | AsyncConnection]:
        """Where a write that is one statement runs: `autocommit()` on an advisory lease,
        else a session in a transaction of its own."""
        if self.advisory:
            async with self.autocommit() as conn:
                yield conn
            return
        async with self.session() as s, s.begin():
            yield s

    async def lock(
        self, conn: AsyncConnection, fresh_after: datetime | None
    ) -> tuple[LastSyncRow | None, bool | None]:
        """Advisory leases, on `conn` from `autocommit()`: the user's LastSync and the lock,
        in one statement (repository.lock_user). The lock is None (not taken) when LastSync
        moved after `fresh_after`, else whether it was taken."""
        if self._conn is None or conn is not self._conn:
            raise RuntimeError("an advisory lease is locked on the connection of autocommit()")
        last, locked = await repo.lock_user(
            conn, self.user_id, advisory_key(self.user_id), fresh_after
        )
        self._locked = bool(locked)
        return last, locked

    async def acquire(self, session: AsyncSession) -> bool:
        """Take the lease inside the caller's transaction; False when another run holds it.

        Advisory: `session` must come from `session()` (the lock lives on its connection)."""
        if not self.advisory:
            return await repo.try_acquire_lease(
                session, self.user_id, self.run_id, self.deps.settings.lease_ttl_seconds
            )
        if self._conn is None or session.bind is not self._conn:
            raise RuntimeError("an advisory lease is acquired in a session from lease.session()")
        self._locked = await repo.try_advisory_lock(session, advisory_key(self.user_id))
        return self._locked

    async def abandon(self) -> None:
        """Undo a claim that did not complete. Advisory: free the lock if it was taken and
        hand the connection back; a table lease went with the claim's rolled-back transaction."""
        if self.advisory:
            async with self._gate:
                await self._unlock()

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """The work done under the lease.

        Table leases are renewed every TTL/3 while the body runs; if the lease turns out to be
        gone (another run took the user over), the body is cancelled and LeaseLost raised. An
        advisory lock needs no renewal: it lasts as long as its connection.
        """
        if self.advisory:
            yield
            return
        async with self._heartbeat_running():
            yield

    async def release(self, session: AsyncSession | None = None) -> None:
        """Give the lease back: with the caller's transaction, or at once (best effort).

        Advisory: with `session` the lock is freed once that transaction committed, so no
        other run sees the user free before what it wrote is visible."""
        if self.advisory:
            if session is not None:
                self._release_after_commit = True
                return
            async with self._gate:  # after any write still finishing (shielded page stores)
                await self._unlock()
            return
        if session is not None:
            await repo.release_lease(session, self.user_id, self.run_id)
            return
        try:
            async with self.deps.sessionmaker() as s, s.begin():
                await repo.release_lease(s, self.user_id, self.run_id)
        except Exception as exc:  # noqa: BLE001 - the lease expires on its own
            self._warn("lease release failed", exc)

    # --- advisory lock ------------------------------------------------------------------------

    async def _connection(self) -> AsyncConnection:
        if self._spent:
            raise LeaseLost(f"lease on user {self.user_id} was already released")
        if self._conn is None:
            self._conn = await _engine(self.deps).connect()
            self._autocommit = False
        elif self._conn.invalidated or self._conn.closed:
            # The connection dropped: so did the lock, and another run may hold the user.
            raise LeaseConnectionLost(f"connection holding user {self.user_id}'s lock was lost")
        return self._conn

    async def _unlock(self) -> None:
        """Free the lock and hand the connection back. If the unlock cannot be confirmed the
        connection is discarded instead: closing it frees the lock at the server."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if self._locked and not conn.invalidated:
                if conn.in_transaction():
                    await conn.rollback()
                # Autocommit: one round trip, no BEGIN/COMMIT around a lock call.
                auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await repo.advisory_unlock(auto, advisory_key(self.user_id))
        except BaseException as exc:
            await conn.invalidate()
            if not isinstance(exc, Exception):
                raise
            self._warn("advisory unlock failed (connection discarded)", exc)
        finally:
            self._spent, self._locked = self._spent or self._locked, False
            await conn.close()

    # --- table lease heartbeat ------------------------------------------------------------------

    @asynccontextmanager
    async def _heartbeat_running(self) -> AsyncIterator[None]:
        # The heartbeat stops when the body ends, so the final transaction that releases the
        # lease never looks like a lost lease.
        body = asyncio.current_task()
        assert body is not None, "held() runs inside a task"
        lost = asyncio.Event()
        beat = asyncio.create_task(self._heartbeat(lost, body))
        try:
            yield
        except asyncio.CancelledError:
            if not lost.is_set():
                raise
            body.uncancel()  # our own cancellation: it ends here, as LeaseLost
            raise LeaseLost(f"lease on user {self.user_id} lost") from None
        finally:
            beat.cancel()

    async def _heartbeat(self, lost: asyncio.Event, body: asyncio.Task[Any]) -> None:
        ttl = self.deps.settings.lease_ttl_seconds
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                async with self.deps.sessionmaker() as s, s.begin():
                    renewed = await repo.renew_lease(s, self.user_id, self.run_id, ttl)
            except Exception as exc:  # noqa: BLE001 - try again on the next beat
                self._warn("lease renewal failed", exc)
                continue
            if not renewed:
                lost.set()
                body.cancel()
                return

    def _warn(self, what: str, exc: BaseException) -> None:
        logger.bind(user_id=self.user_id, run_id=self.run_id).warning(
            "{}: {}", what, type(exc).__name__
        )


def _engine(deps: SyncDeps) -> AsyncEngine:
    bind = deps.sessionmaker.kw.get("bind")
    assert isinstance(bind, AsyncEngine), "the sessionmaker is bound to the engine"
    return bind
