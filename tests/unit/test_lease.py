"""UserLease on SQLite and PostgreSQL: one holder at a time, release, and held()'s heartbeat.

Another run taking the user over is simulated by rewriting the `sync_lease` row from the
test; LEASE_TTL_SECONDS is at its minimum (1 s) so the heartbeat beats every third of a
second. Waits for the heartbeat are bounded by `asyncio.timeout`, never asserted on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa

from app.db.models import SyncLease, utcnow
from app.sync.deps import SyncDeps
from app.sync.lease import LeaseLost, UserLease
from tests.support import add_user, make_settings, query

TTL = 1.0  # the smallest LEASE_TTL_SECONDS allowed: a beat every TTL/3
BOUND = 15.0  # upper bound on any wait for the heartbeat (a hang fails, it never passes)


@pytest.fixture
async def deps(db_url, sessionmaker) -> AsyncIterator[SyncDeps]:
    # The table lease on both databases; the advisory lock (PostgreSQL) is tested below.
    settings = make_settings(db_url, lease_ttl_seconds=TTL, lease_backend="table")
    async with httpx.AsyncClient() as http:
        yield SyncDeps(settings=settings, sessionmaker=sessionmaker, http=http)


@pytest.fixture
def user_id(db_url) -> str:
    return add_user(db_url, "lease@example.com", "lease-test-token")


class Abort(Exception):
    """Makes a caller's transaction fail (roll back)."""


async def acquire(deps: SyncDeps, lease: UserLease) -> bool:
    async with deps.sessionmaker() as s, s.begin():
        return await lease.acquire(s)


async def lease_row(deps: SyncDeps, user_id: str) -> tuple[str, datetime] | None:
    async with deps.sessionmaker() as s:
        stmt = sa.select(SyncLease.holder, SyncLease.expires_at).where(SyncLease.user_id == user_id)
        row = (await s.execute(stmt)).one_or_none()
    return None if row is None else (row[0], row[1])


async def take_over(deps: SyncDeps, user_id: str, how: str) -> None:
    """What another run does once our lease expired: overwrite it, or it vanished."""
    async with deps.sessionmaker() as s, s.begin():
        if how == "deleted":
            await s.execute(sa.delete(SyncLease).where(SyncLease.user_id == user_id))
        else:
            await s.execute(
                sa.update(SyncLease)
                .where(SyncLease.user_id == user_id)
                .values(holder="another-run", acquired_at=utcnow(), expires_at=utcnow())
            )


async def wait_for_renewal(deps: SyncDeps, user_id: str, holder: str) -> datetime:
    """Block until the heartbeat moved our lease's expiry; return the new expiry."""
    row = await lease_row(deps, user_id)
    assert row is not None and row[0] == holder
    first = row[1]
    async with asyncio.timeout(BOUND):
        while True:
            await asyncio.sleep(0.02)
            row = await lease_row(deps, user_id)
            assert row is not None and row[0] == holder
            if row[1] > first:
                return row[1]


def count_lease_renewals(engine) -> list[str]:
    """Every UPDATE of sync_lease sent on `engine` (the heartbeat's renewals)."""
    statements: list[str] = []

    @sa.event.listens_for(engine.sync_engine, "before_cursor_execute")
    def record(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("UPDATE") and "sync_lease" in statement:
            statements.append(statement)

    return statements


async def settle(before: set[asyncio.Task]) -> None:
    """Let tasks started since `before` (the heartbeat) finish; bounded."""
    async with asyncio.timeout(BOUND):
        while asyncio.all_tasks() - before:
            await asyncio.sleep(0.01)


# --- acquire and release --------------------------------------------------------------------


async def test_acquire_succeeds_and_a_second_holder_is_refused_while_live(deps, user_id):
    first, second = UserLease(deps, user_id, "run-1"), UserLease(deps, user_id, "run-2")
    assert await acquire(deps, first) is True
    assert await acquire(deps, second) is False
    row = await lease_row(deps, user_id)
    assert row is not None and row[0] == "run-1"
    assert row[1] > utcnow()  # live: expires in the future


async def test_acquire_is_part_of_the_callers_transaction(deps, user_id):
    first, second = UserLease(deps, user_id, "run-1"), UserLease(deps, user_id, "run-2")
    with pytest.raises(Abort):
        async with deps.sessionmaker() as s, s.begin():
            assert await first.acquire(s) is True
            raise Abort  # the caller's transaction fails: rolled back with the lease
    assert await lease_row(deps, user_id) is None
    assert await acquire(deps, second) is True


async def test_an_expired_lease_is_taken_over(deps, user_id):
    first, second = UserLease(deps, user_id, "run-1"), UserLease(deps, user_id, "run-2")
    assert await acquire(deps, first)
    async with deps.sessionmaker() as s, s.begin():
        await s.execute(
            sa.update(SyncLease)
            .where(SyncLease.user_id == user_id)
            .values(expires_at=utcnow() - timedelta(seconds=5))
        )
    assert await acquire(deps, second) is True
    row = await lease_row(deps, user_id)
    assert row is not None and row[0] == "run-2" and row[1] > utcnow()


async def test_release_frees_the_lease(deps, user_id):
    first, second = UserLease(deps, user_id, "run-1"), UserLease(deps, user_id, "run-2")
    assert await acquire(deps, first)
    await first.release()
    assert await lease_row(deps, user_id) is None
    assert await acquire(deps, second) is True


async def test_release_never_frees_another_holders_lease(deps, user_id):
    first, second = UserLease(deps, user_id, "run-1"), UserLease(deps, user_id, "run-2")
    assert await acquire(deps, first)
    await second.release()
    row = await lease_row(deps, user_id)
    assert row is not None and row[0] == "run-1"
    assert await acquire(deps, second) is False


async def test_release_in_the_callers_session_follows_its_transaction(deps, user_id):
    first, second = UserLease(deps, user_id, "run-1"), UserLease(deps, user_id, "run-2")
    assert await acquire(deps, first)
    with pytest.raises(Abort):
        async with deps.sessionmaker() as s, s.begin():
            await first.release(s)
            raise Abort  # the caller's transaction failed: the lease stays
    assert await acquire(deps, second) is False
    async with deps.sessionmaker() as s, s.begin():
        await first.release(s)
    assert await lease_row(deps, user_id) is None
    assert await acquire(deps, second) is True


# --- held(): the heartbeat --------------------------------------------------------------------


async def test_held_renews_the_lease_while_the_body_runs(deps, user_id):
    lease = UserLease(deps, user_id, "run-1")
    assert await acquire(deps, lease)
    async with lease.held():
        renewed = await wait_for_renewal(deps, user_id, "run-1")
        again = await wait_for_renewal(deps, user_id, "run-1")
    assert again > renewed > utcnow() - timedelta(seconds=TTL)


@pytest.mark.parametrize("how", ["overwritten", "deleted"])
async def test_lost_lease_cancels_the_body_and_raises_lease_lost(deps, user_id, how):
    lease = UserLease(deps, user_id, "run-1")
    assert await acquire(deps, lease)
    body_cancelled = False
    reached_end = False
    with pytest.raises(LeaseLost):
        async with asyncio.timeout(BOUND), lease.held():
            await wait_for_renewal(deps, user_id, "run-1")  # the heartbeat is beating
            await take_over(deps, user_id, how)
            try:
                await asyncio.sleep(BOUND * 2)
            except asyncio.CancelledError:
                body_cancelled = True
                raise
            reached_end = True
    assert body_cancelled and not reached_end
    # The cancellation ended as LeaseLost: the task itself is not left cancelling.
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)  # and it can go on awaiting
    if how == "overwritten":
        row = await lease_row(deps, user_id)
        assert row is not None and row[0] == "another-run"  # never taken back


async def test_body_finishing_normally_stops_the_heartbeat(deps, user_id, engine):
    lease = UserLease(deps, user_id, "run-1")
    assert await acquire(deps, lease)
    renewals = count_lease_renewals(engine)
    before = asyncio.all_tasks()
    async with lease.held():
        await wait_for_renewal(deps, user_id, "run-1")
        assert renewals  # the heartbeat's UPDATEs are what we count
    await settle(before)
    counted = len(renewals)
    row = await lease_row(deps, user_id)
    # Three beats' worth of waiting: a live heartbeat would have renewed (and, the lease
    # being gone, cancelled this task with LeaseLost).
    await take_over(deps, user_id, "deleted")
    await asyncio.sleep(TTL)
    assert len(renewals) == counted
    assert row is not None and row[0] == "run-1"


async def test_body_error_propagates_unchanged_and_stops_the_heartbeat(deps, user_id, engine):
    lease = UserLease(deps, user_id, "run-1")
    assert await acquire(deps, lease)
    renewals = count_lease_renewals(engine)
    before = asyncio.all_tasks()
    with pytest.raises(ValueError, match="body failed"):
        async with lease.held():
            raise ValueError("body failed")
    await settle(before)
    counted = len(renewals)
    await asyncio.sleep(TTL)
    assert len(renewals) == counted


async def test_outside_cancellation_propagates_as_cancelled_error(deps, user_id, engine):
    lease = UserLease(deps, user_id, "run-1")
    assert await acquire(deps, lease)
    renewals = count_lease_renewals(engine)
    entered = asyncio.Event()
    outcome: list[str] = []

    async def work() -> None:
        try:
            async with lease.held():
                entered.set()
                await asyncio.sleep(BOUND * 2)
        except LeaseLost:
            outcome.append("lease_lost")
            raise
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    before = asyncio.all_tasks()
    task = asyncio.create_task(work())
    async with asyncio.timeout(BOUND):
        await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert outcome == ["cancelled"]
    await settle(before)
    counted = len(renewals)
    await asyncio.sleep(TTL)
    assert len(renewals) == counted  # the heartbeat went with the body


async def test_deadline_around_held_surfaces_as_timeout_not_lease_lost(deps, user_id):
    """user_sync wraps held() in asyncio.timeout: its expiry must stay a TimeoutError."""
    lease = UserLease(deps, user_id, "run-1")
    assert await acquire(deps, lease)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05), lease.held():
            await asyncio.sleep(BOUND * 2)
    row = await lease_row(deps, user_id)
    assert row is not None and row[0] == "run-1"


# --- the advisory lock (PostgreSQL's default) ------------------------------------------------


@pytest.fixture
async def pg_deps(pg_url) -> AsyncIterator[SyncDeps]:
    from app.db.engine import create_engine, create_sessionmaker

    settings = make_settings(pg_url)
    assert settings.lease_backend == "advisory"
    engine = create_engine(settings)
    try:
        async with httpx.AsyncClient() as http:
            yield SyncDeps(settings, create_sessionmaker(engine), http)
    finally:
        await engine.dispose()


async def claim(lease: UserLease) -> bool:
    """What claim_user does: acquire in a session on the lease's own connection."""
    async with lease.session() as s, s.begin():
        got = await lease.acquire(s)
    if not got:
        await lease.abandon()  # hands the connection back
    return got


def advisory_holders(db_url: str) -> list[tuple]:
    return query(
        db_url,
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )


async def test_advisory_second_holder_is_refused_until_released(pg_deps, pg_url):
    uid = add_user(pg_url, "adv@example.com", "adv-token")
    first, second = UserLease(pg_deps, uid, "run-1"), UserLease(pg_deps, uid, "run-2")
    assert first.advisory
    assert await claim(first) is True
    assert await claim(second) is False
    assert len(advisory_holders(pg_url)) == 1
    assert query(pg_url, "SELECT count(*) FROM sync_lease") == [(0,)]  # no row written
    async with first.held(), first.session() as s:  # nothing to renew: the body just runs
        assert await s.scalar(sa.text("SELECT 1")) == 1
    await first.release()
    assert advisory_holders(pg_url) == []
    assert await claim(second) is True
    await second.release()


async def test_advisory_release_with_a_transaction_frees_the_lock_after_commit(pg_deps, pg_url):
    uid = add_user(pg_url, "adv@example.com", "adv-token")
    first, second = UserLease(pg_deps, uid, "run-1"), UserLease(pg_deps, uid, "run-2")
    assert await claim(first)
    with pytest.raises(Abort):
        async with first.session() as s, s.begin():
            await first.release(s)
            raise Abort  # the transaction failed: the lock stays
    assert await claim(second) is False
    async with first.session() as s, s.begin():
        await first.release(s)
    assert advisory_holders(pg_url) == []
    assert await claim(second) is True
    await second.release()


async def test_advisory_lock_is_freed_when_the_holding_connection_closes(pg_deps, pg_url):
    """A dead process's connection: PostgreSQL frees its lock at once, and the old holder
    never carries on on a new connection (it would hold nothing)."""
    uid = add_user(pg_url, "adv@example.com", "adv-token")
    first, second = UserLease(pg_deps, uid, "run-1"), UserLease(pg_deps, uid, "run-2")
    assert await claim(first)
    ((pid,),) = advisory_holders(pg_url)
    query(pg_url, f"SELECT pg_terminate_backend({int(pid)})")
    async with asyncio.timeout(BOUND):
        while advisory_holders(pg_url):
            await asyncio.sleep(0.02)
    assert await claim(second) is True
    with pytest.raises(sa.exc.DBAPIError):
        async with first.session() as s:
            await s.execute(sa.text("SELECT 1"))
    with pytest.raises(LeaseLost):
        async with first.session() as s:
            await s.execute(sa.text("SELECT 1"))
    await first.release()  # harmless: the lock is long gone, and not second's to lose
    assert len(advisory_holders(pg_url)) == 1
    await second.release()
    assert advisory_holders(pg_url) == []


async def test_advisory_lease_is_not_used_after_its_release(pg_deps, pg_url):
    """A released lease never quietly checks out a new, unlocked connection."""
    uid = add_user(pg_url, "adv@example.com", "adv-token")
    lease = UserLease(pg_deps, uid, "run-1")
    assert await claim(lease)
    await lease.release()
    with pytest.raises(LeaseLost):
        async with lease.session():
            pass
