"""app.sync.tokens on SQLite and PostgreSQL, refreshing against the simulator's /oauth/token.

Every token is unique to its test (the simulator's world is seeded per test), so the checks
that `redact` hides a token start from a token it did not hide before.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa

from app.db import repository as repo
from app.db.engine import create_engine, create_sessionmaker
from app.db.models import Account, utcnow
from app.gitlab.transport import create_http_client
from app.logging import redact
from app.settings import Settings
from app.sync import tokens
from app.sync.deps import SyncDeps
from app.sync.results import UserSkipped
from gitlab_sim.server import SimulatorServer
from tests.support import add_user, make_settings, oauth_settings

EXPIRED = timedelta(hours=-1)


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    seed = uuid.uuid4().int % 1_000_000  # fresh token values in every test
    with SimulatorServer(seed=seed, users=1, projects=1, issues=1, merge_requests=0) as s:
        yield s


@asynccontextmanager
async def sync_deps(settings: Settings, sessionmaker) -> AsyncIterator[SyncDeps]:
    http = create_http_client(settings)
    try:
        yield SyncDeps(settings=settings, sessionmaker=sessionmaker, http=http)
    finally:
        await http.aclose()


async def account_of(deps: SyncDeps, user_id: str) -> Account | None:
    async with deps.sessionmaker() as s:
        return await repo.get_gitlab_account(s, user_id)


def oauth_calls(sim: SimulatorServer) -> int:
    return sum(1 for r in sim.world.requests() if r["path"] == "/oauth/token")


def seed_oauth_user(db_url: str, sim: SimulatorServer, *, expires_in: timedelta) -> tuple:
    """A user whose account holds a real OAuth grant of the simulator's user1."""
    grant = sim.world.create_oauth_tokens("user1")
    uid = add_user(
        db_url,
        "oauth@example.com",
        grant["access_token"],
        refresh_token=grant["refresh_token"],
        expires_at=utcnow() + expires_in,
    )
    return uid, grant


async def whoami(sim: SimulatorServer, token: str) -> httpx.Response:
    async with httpx.AsyncClient() as c:
        return await c.get(f"{sim.api_url}/user", headers={"Authorization": f"Bearer {token}"})


# --- the stored token ----------------------------------------------------------------------


@pytest.mark.parametrize("expires_in", [None, timedelta(hours=2)])
async def test_valid_token_is_returned_as_is(db_url, sessionmaker, sim, expires_in):
    token = f"valid-{uuid.uuid4().hex}"
    expires_at = None if expires_in is None else utcnow() + expires_in
    uid = add_user(db_url, "v@example.com", token, refresh_token="r" * 20, expires_at=expires_at)
    async with sync_deps(oauth_settings(db_url, sim), sessionmaker) as deps:
        assert await tokens.access_token(deps, uid, await account_of(deps, uid)) == token
    assert oauth_calls(sim) == 0


async def test_no_account_is_skipped_as_no_token(db_url, sessionmaker, sim):
    uid = add_user(db_url, "none@example.com", "unused-token-value")
    async with sync_deps(oauth_settings(db_url, sim), sessionmaker) as deps:
        async with deps.sessionmaker() as s, s.begin():
            await s.execute(sa.delete(Account).where(Account.userId == uid))
        account = await account_of(deps, uid)
        assert account is None
        with pytest.raises(UserSkipped) as skipped:
            await tokens.access_token(deps, uid, account)
    assert skipped.value.reason == "no_token"


async def test_account_without_token_is_skipped_as_no_token(db_url, sessionmaker, sim):
    uid = add_user(db_url, "empty@example.com", None, expires_at=utcnow() + EXPIRED)
    async with sync_deps(oauth_settings(db_url, sim), sessionmaker) as deps:
        account = await account_of(deps, uid)
        assert account is not None and account.accessToken is None
        with pytest.raises(UserSkipped) as skipped:
            await tokens.access_token(deps, uid, account)
    assert skipped.value.reason == "no_token"
    assert oauth_calls(sim) == 0


async def test_expired_token_without_oauth_configured_is_skipped(db_url, sessionmaker, sim):
    uid, grant = seed_oauth_user(db_url, sim, expires_in=EXPIRED)
    settings = make_settings(db_url, sim.url)  # no GITLAB_OAUTH_* settings
    assert not settings.oauth_refresh_configured
    async with sync_deps(settings, sessionmaker) as deps:
        with pytest.raises(UserSkipped) as skipped:
            await tokens.access_token(deps, uid, await account_of(deps, uid))
        stored = await account_of(deps, uid)
    assert skipped.value.reason == "token_expired"
    assert oauth_calls(sim) == 0
    assert stored is not None and stored.accessToken == grant["access_token"]


async def test_expired_token_without_refresh_token_is_skipped(db_url, sessionmaker, sim):
    uid = add_user(db_url, "norefresh@example.com", "stale-token-1234", expires_at=utcnow())
    async with sync_deps(oauth_settings(db_url, sim), sessionmaker) as deps:
        with pytest.raises(UserSkipped) as skipped:
            await tokens.access_token(deps, uid, await account_of(deps, uid))
    assert skipped.value.reason == "token_expired"
    assert oauth_calls(sim) == 0


# --- refresh ---------------------------------------------------------------------------------


async def test_expired_token_is_refreshed_and_the_new_pair_stored(db_url, sessionmaker, sim):
    uid, grant = seed_oauth_user(db_url, sim, expires_in=EXPIRED)
    async with sync_deps(oauth_settings(db_url, sim), sessionmaker) as deps:
        before = utcnow()
        new_token = await tokens.access_token(deps, uid, await account_of(deps, uid))
        # Read back from another session: committed by the time the token is returned.
        stored = await account_of(deps, uid)
    assert new_token != grant["access_token"]
    assert stored is not None
    assert stored.accessToken == new_token
    assert stored.refreshToken not in (None, grant["refresh_token"])
    # The simulator's grants live 7200 s: the stored expiry is "now + expires_in".
    assert stored.accessTokenExpiresAt is not None
    assert before + timedelta(seconds=7100) < stored.accessTokenExpiresAt
    assert stored.accessTokenExpiresAt < utcnow() + timedelta(seconds=7300)
    assert oauth_calls(sim) == 1
    # The stored pair is GitLab's current one: the token works, the new refresh token is live.
    assert (await whoami(sim, new_token)).json()["username"] == "user1"
    rec = sim.world.token_record(stored.refreshToken)
    assert rec is not None and not rec.revoked and rec.kind == "oauth_refresh"


async def test_token_about_to_expire_is_refreshed_early(db_url, sessionmaker, sim):
    soon = tokens.EXPIRY_MARGIN / 2
    uid, grant = seed_oauth_user(db_url, sim, expires_in=soon)
    async with sync_deps(oauth_settings(db_url, sim), sessionmaker) as deps:
        new_token = await tokens.access_token(deps, uid, await account_of(deps, uid))
    assert new_token != grant["access_token"]
    assert oauth_calls(sim) == 1


async def test_token_rotated_by_another_run_is_used_without_calling_gitlab(
    db_url, sessionmaker, sim
):
    uid, grant = seed_oauth_user(db_url, sim, expires_in=EXPIRED)
    async with sync_deps(oauth_settings(db_url, sim), sessionmaker) as deps:
        stale = await account_of(deps, uid)  # what this run read before the other one
        # The other run refreshed at GitLab and stored the new pair.
        app_cfg = sim.world.oauth_app
        status, body = sim.world.refresh_oauth(
            grant["refresh_token"], app_cfg.client_id, app_cfg.client_secret, None
        )
        assert status == 200
        async with deps.sessionmaker() as s, s.begin():
            await s.execute(
                sa.update(Account)
                .where(Account.userId == uid)
                .values(
                    accessToken=body["access_token"],
                    refreshToken=body["refresh_token"],
                    accessTokenExpiresAt=utcnow() + timedelta(seconds=body["expires_in"]),
                )
            )
        got = await tokens.access_token(deps, uid, stale)
        stored = await account_of(deps, uid)
    assert got == body["access_token"]
    assert oauth_calls(sim) == 0  # the spent refresh token was not sent again
    assert stored is not None and stored.refreshToken == body["refresh_token"]


async def test_refused_refresh_is_skipped_and_leaves_the_account(db_url, sessionmaker, sim):
    uid = add_user(
        db_url,
        "refused@example.com",
        "stale-access-token-1234",
        refresh_token=f"unknown-refresh-{uuid.uuid4().hex}",
        expires_at=utcnow() + EXPIRED,
    )
    async with sync_deps(oauth_settings(db_url, sim), sessionmaker) as deps:
        with pytest.raises(UserSkipped) as skipped:
            await tokens.access_token(deps, uid, await account_of(deps, uid))
        stored = await account_of(deps, uid)
    assert skipped.value.reason == "token_refresh_failed"
    assert "invalid_grant" in str(skipped.value)
    assert oauth_calls(sim) == 1  # a 4xx refusal is final: not retried
    assert stored is not None and stored.accessToken == "stale-access-token-1234"


async def test_revoked_refresh_token_is_skipped_as_refresh_failed(db_url, sessionmaker, sim):
    uid, grant = seed_oauth_user(db_url, sim, expires_in=EXPIRED)
    sim.world.revoke_token(grant["refresh_token"])
    async with sync_deps(oauth_settings(db_url, sim), sessionmaker) as deps:
        with pytest.raises(UserSkipped) as skipped:
            await tokens.access_token(deps, uid, await account_of(deps, uid))
    assert skipped.value.reason == "token_refresh_failed"


# --- secrets -----------------------------------------------------------------------------


async def test_stored_tokens_are_registered_as_secrets(db_url, sessionmaker, sim):
    access, refresh = f"acc{uuid.uuid4().hex}", f"ref{uuid.uuid4().hex}"
    line = f"calling GitLab with {access} (refresh {refresh})"
    assert access in redact(line) and refresh in redact(line)  # not hidden before
    uid = add_user(db_url, "secret@example.com", access, refresh_token=refresh)
    async with sync_deps(oauth_settings(db_url, sim), sessionmaker) as deps:
        await tokens.access_token(deps, uid, await account_of(deps, uid))
    assert access not in redact(line) and refresh not in redact(line)


async def test_refreshed_tokens_are_registered_as_secrets(db_url, sessionmaker, sim):
    uid, grant = seed_oauth_user(db_url, sim, expires_in=EXPIRED)
    old = f"{grant['access_token']} / {grant['refresh_token']}"
    assert redact(old) == old  # this test's tokens were never seen before
    async with sync_deps(oauth_settings(db_url, sim), sessionmaker) as deps:
        new_token = await tokens.access_token(deps, uid, await account_of(deps, uid))
        stored = await account_of(deps, uid)
    assert stored is not None and stored.refreshToken
    for secret in (grant["access_token"], grant["refresh_token"], new_token, stored.refreshToken):
        assert secret not in redact(f"token was {secret}, done")


# --- serialization (PostgreSQL row lock) --------------------------------------------------------


async def test_concurrent_refreshes_of_one_account_call_gitlab_once(pg_url, sim):
    """Two runs find the same expired token: one refreshes, the other uses its result."""
    uid, grant = seed_oauth_user(pg_url, sim, expires_in=EXPIRED)
    engine = create_engine(make_settings(pg_url))
    try:
        async with sync_deps(oauth_settings(pg_url, sim), create_sessionmaker(engine)) as deps:
            account = await account_of(deps, uid)
            assert account is not None
            got = await asyncio.gather(
                tokens.access_token(deps, uid, account),
                tokens.access_token(deps, uid, account),
            )
            stored = await account_of(deps, uid)
    finally:
        await engine.dispose()
    assert got[0] == got[1] != grant["access_token"]
    assert stored is not None and stored.accessToken == got[0]
    assert oauth_calls(sim) == 1
