"""OAuth access-token refresh against GitLab's /oauth/token.

GitLab revokes the old refresh token once a refresh succeeds, so callers must serialize
refreshes per account and store the returned pair atomically. Only 5xx, 429, transport
failures and malformed JSON are retried, with the API client's `app.retry` policy; any other
answer is final (retrying an invalid_grant cannot help), as `sansio.oauth_error_for_status`
decides. Neither the tokens nor the client secret ever reach an error message or a log line.
"""

from __future__ import annotations

import time

import httpx
from loguru import logger
from pydantic import TypeAdapter

from app import retry
from app.gitlab import sansio
from app.gitlab.client import Clock, requested_wait, retry_policy
from app.gitlab.errors import (
    GitLabMalformedResponse,
    GitLabOAuthError,
    GitLabRateLimited,
    GitLabUnavailable,
)
from app.gitlab.schemas import OAuthTokenResponse
from app.settings import Settings

__all__ = ["refresh_access_token"]

_ENDPOINT = "/oauth/token"
_TOKEN_RESPONSE = TypeAdapter(OAuthTokenResponse)


def _refresh_form(settings: Settings, refresh_token: str) -> dict[str, str]:
    """The token request's form; GitLabOAuthError(not_configured) without an OAuth app."""
    secret = settings.gitlab_oauth_client_secret
    if not settings.oauth_refresh_configured or secret is None:
        raise GitLabOAuthError(
            "OAuth refresh is not configured (GITLAB_OAUTH_CLIENT_ID, "
            "GITLAB_OAUTH_CLIENT_SECRET, GITLAB_OAUTH_REDIRECT_URI)",
            error="not_configured",
            status=None,
        )
    return {
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "client_id": settings.gitlab_oauth_client_id or "",
        "client_secret": secret.get_secret_value(),
        "redirect_uri": settings.gitlab_oauth_redirect_uri or "",
    }


async def refresh_access_token(
    http: httpx.AsyncClient,
    settings: Settings,
    refresh_token: str,
    *,
    clock: Clock | None = None,
) -> OAuthTokenResponse:
    """Exchange `refresh_token` for a new access/refresh pair.

    Raises GitLabOAuthError for a refusal (error="invalid_grant", "invalid_client", ... or
    "not_configured" when the OAuth app settings are missing), GitLabUnavailable when GitLab
    stays unreachable, GitLabRateLimited when it keeps answering 429, GitLabBadResponse when
    the answer is not a token.
    """
    form = _refresh_form(settings, refresh_token)
    # The instance URL may carry a sub-path (https://host/gitlab); settings strip the slash.
    url = settings.gitlab_instance_url.rstrip("/") + _ENDPOINT
    timeout = httpx.Timeout(settings.gitlab_read_timeout, connect=settings.gitlab_connect_timeout)
    now = clock or time.time
    policy = retry_policy(settings)
    attempts = 0

    def log_retry(exc: BaseException, retry_number: int, delay: float) -> None:
        logger.warning("{}: retry {}/{} in {:.2f} s", exc, retry_number, policy.attempts - 1, delay)

    # Same budgets as the API client: transient failures inside, 429s outside.
    @retry.retry_on(policy, GitLabRateLimited, requested_wait=requested_wait, on_retry=log_retry)
    @retry.retry_on(policy, (GitLabUnavailable, GitLabMalformedResponse), on_retry=log_retry)
    async def post_once() -> OAuthTokenResponse:
        nonlocal attempts
        attempts += 1
        response = await _post(http, url, form, timeout, attempts)
        error = sansio.oauth_error_for_status(
            response.status_code,
            response.headers,
            response.content,
            now=now(),
            max_wait=settings.gitlab_rate_limit_max_wait,
            fallback_wait=policy.delay(attempts) if response.status_code == 429 else 0.0,
        )
        if error is not None:
            raise error
        return sansio.decode_json(
            _TOKEN_RESPONSE, response.content, status=response.status_code, endpoint=_ENDPOINT
        )

    return await post_once()


async def _post(
    http: httpx.AsyncClient, url: str, form: dict[str, str], limits: httpx.Timeout, attempt: int
) -> httpx.Response:
    """One POST to the token endpoint; transport failures become GitLabUnavailable."""
    started = time.perf_counter()
    try:
        response = await http.post(
            url, data=form, headers={"Accept": "application/json"}, timeout=limits
        )
    except (httpx.TransportError, httpx.DecodingError) as exc:
        logger.debug("GitLab POST {} -> transport error (attempt {})", _ENDPOINT, attempt)
        raise GitLabUnavailable(
            f"GitLab unreachable on {_ENDPOINT} ({type(exc).__name__})",
            status=None,
            endpoint=_ENDPOINT,
        ) from None
    logger.debug(
        "GitLab POST {} -> {} in {:.0f} ms (attempt {})",
        _ENDPOINT,
        response.status_code,
        (time.perf_counter() - started) * 1000,
        attempt,
    )
    return response
