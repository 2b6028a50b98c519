"""The user lease: no two runs (in one process or many) sync one user at once.

A lease is a row in `sync_lease` (user, holder = run id, expiry). It is taken in the
transaction that reads what the sync needs (`claim_user` in user_sync.py), renewed by a
heartbeat while the work runs, and released with LastSync when the user synced, or on its
own otherwise. A crashed process's lease frees itself after LEASE_TTL_SECONDS.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from loguru import logger
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import repository as repo
from app.sync.deps import SyncDeps


class LeaseLost(Exception):
    """Another run took the user over (our lease expired while we worked)."""


@dataclass(frozen=True, slots=True)
class UserLease:
    deps: SyncDeps
    user_id: str
    run_id: str

    async def acquire(self, session: AsyncSession) -> bool:
        """Take the lease inside the caller's transaction; False when another run holds it."""
        return await repo.try_acquire_lease(
            session, self.user_id, self.run_id, self.deps.settings.lease_ttl_seconds
        )

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """The work done under the lease: renewed every TTL/3 while the body runs.

        If the lease turns out to be gone (another run took the user over), the body is
        cancelled and LeaseLost raised. The heartbeat stops when the body ends, so the
        final transaction that releases the lease never looks like a lost lease.
        """
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

    async def release(self, session: AsyncSession | None = None) -> None:
        """Give the lease back: in the caller's transaction, or in its own (best effort)."""
        if session is not None:
            await repo.release_lease(session, self.user_id, self.run_id)
            return
        try:
            async with self.deps.sessionmaker() as s, s.begin():
                await repo.release_lease(s, self.user_id, self.run_id)
        except Exception as exc:  # noqa: BLE001 - the lease expires on its own
            logger.bind(user_id=self.user_id, run_id=self.run_id).warning(
                "lease release failed: {}", type(exc).__name__
            )

    async def _heartbeat(self, lost: asyncio.Event, body: asyncio.Task[object]) -> None:
        ttl = self.deps.settings.lease_ttl_seconds
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                async with self.deps.sessionmaker() as s, s.begin():
                    renewed = await repo.renew_lease(s, self.user_id, self.run_id, ttl)
            except Exception as exc:  # noqa: BLE001 - try again on the next beat
                logger.bind(user_id=self.user_id, run_id=self.run_id).warning(
                    "lease renewal failed: {}", type(exc).__name__
                )
                continue
            if not renewed:
                lost.set()
                body.cancel()
                return
