"""A user's GitLab access token: taken from the account row, refreshed when it expired.

The refresh rotates the token pair at GitLab (the old refresh token stops working at once), so
it is serialized per account (row lock on PostgreSQL) and the new pair is stored before it is
used: a crash after the refresh must not leave the only valid pair in memory.
"""

from __future__ import annotations

from datetime import timedelta

from loguru import logger

from app.db import repository as repo
from app.db.models import Account, utcnow
from app.db.rows import AccountRow
from app.gitlab.errors import GitLabOAuthError, GitLabUnavailable
from app.gitlab.oauth import refresh_access_token
from app.logging import register_secret
from app.sync.deps import SyncDeps
from app.sync.results import UserSkipped

# Refresh a token this long before GitLab would reject it.
EXPIRY_MARGIN = timedelta(seconds=30)


def _still_valid(account: Account | AccountRow) -> bool:
    expires = account.accessTokenExpiresAt
    return expires is None or expires > utcnow() + EXPIRY_MARGIN


async def access_token(deps: SyncDeps, user_id: str, account: AccountRow | None) -> str:
    """The token to call GitLab with: the stored one, or a fresh one if it (nearly) expired."""
    if account is None or not account.accessToken:
        raise UserSkipped("no_token", "user has no GitLab access token")
    register_secret(account.accessToken)
    if account.refreshToken:
        register_secret(account.refreshToken)
    if _still_valid(account):
        return account.accessToken
    return await refresh(deps, user_id, account.accessToken)


async def refresh(deps: SyncDeps, user_id: str, stale_access_token: str) -> str:
    """Rotate the token pair, serialized per account; store it before using it.

    If another run rotated it meanwhile (the stored token differs from `stale_access_token`
    and is valid), that token is used and GitLab is not asked again.
    """
    log = logger.bind(user_id=user_id)
    if not deps.settings.oauth_refresh_configured:
        log.warning("token expired and OAuth refresh is not configured: user skipped")
        raise UserSkipped("token_expired", "access token expired; refresh not configured")
    async with deps.session() as s, s.begin():
        # Row lock on PostgreSQL: a concurrent refresh of this account waits here, then
        # sees the rotated pair instead of spending the (now revoked) refresh token.
        account = await repo.get_gitlab_account(s, user_id, for_update=True)
        if account is None or not account.accessToken:
            raise UserSkipped("no_token", "user has no GitLab access token")
        if account.accessToken != stale_access_token and _still_valid(account):
            return account.accessToken
        if not account.refreshToken:
            log.warning("token expired and no refresh token stored: user skipped")
            raise UserSkipped("token_expired", "access token expired; no refresh token")
        try:
            answer = await refresh_access_token(deps.http, deps.settings, account.refreshToken)
        except GitLabOAuthError as exc:
            log.warning("token refresh refused: {}", exc.error or exc.status)
            raise UserSkipped(
                "token_refresh_failed",
                f"GitLab refused the token refresh ({exc.error or exc.status})",
            ) from None
        register_secret(answer.access_token)
        if answer.refresh_token:
            register_secret(answer.refresh_token)
        expires_at = utcnow() + timedelta(seconds=answer.expires_in) if answer.expires_in else None
        stored = await repo.store_rotated_tokens(
            s,
            account_id=account.id,
            expected_refresh_token=account.refreshToken,
            access_token=answer.access_token,
            refresh_token=answer.refresh_token,
            expires_at=expires_at,
        )
        if not stored:  # pragma: no cover - the row lock makes this unreachable on PostgreSQL
            raise GitLabUnavailable("token rotated concurrently; retry", endpoint="")
    log.info("access token refreshed")
    return answer.access_token
