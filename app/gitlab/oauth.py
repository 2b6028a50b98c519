"""OAuth access-token refresh against GitLab's /oauth/token.

GitLab revokes the old refresh token once a refresh succeeds, so callers must serialize
refreshes per account and store the returned pair atomically. Only 5xx, 429 and transport
failures are retried (a 4xx answer is final: retrying an invalid_grant cannot help). Neither
the tokens nor the client secret ever reach an error message or a log line.
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx
from loguru import logger
from pydantic import TypeAdapter

from app.gitlab.client import Clock, RetryPolicy, SleepFn, parse_json, rate_limit_wait
from app.gitlab.errors import GitLabOAuthError, GitLabRateLimited, GitLabUnavailable
from app.gitlab.schemas import OAuthTokenResponse
from app.settings import Settings

__all__ = ["refresh_access_token"]

_ENDPOINT = "/oauth/token"
_TOKEN_RESPONSE = TypeAdapter(OAuthTokenResponse)
# OAuth error codes are short snake_case words (RFC 6749 5.2); anything else is not echoed.
_ERROR_CODE = re.compile(r"^[a-z0-9_.-]{1,64}$")


def _oauth_error_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str) and _ERROR_CODE.match(error):
        return error
    return None


async def refresh_access_token(
    http: httpx.AsyncClient,
    settings: Settings,
    refresh_token: str,
    *,
    sleep: SleepFn | None = None,
    clock: Clock | None = None,
) -> OAuthTokenResponse:
    """Exchange `refresh_token` for a new access/refresh pair.

    Raises GitLabOAuthError for a refusal (error="invalid_grant", "invalid_client", ... or
    "not_configured" when the OAuth app settings are missing), GitLabUnavailable when GitLab
    stays unreachable, GitLabRateLimited when it keeps answering 429.
    """
    secret = settings.gitlab_oauth_client_secret
    if not settings.oauth_refresh_configured or secret is None:
        raise GitLabOAuthError(
            "OAuth refresh is not configured (GITLAB_OAUTH_CLIENT_ID, "
            "GITLAB_OAUTH_CLIENT_SECRET, GITLAB_OAUTH_REDIRECT_URI)",
            error="not_configured",
            status=None,
        )
    # The instance URL may carry a sub-path (https://host/gitlab); settings strip the slash.
    url = settings.gitlab_instance_url.rstrip("/") + _ENDPOINT
    form = {
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "client_id": settings.gitlab_oauth_client_id or "",
        "client_secret": secret.get_secret_value(),
        "redirect_uri": settings.gitlab_oauth_redirect_uri or "",
    }
    timeout = httpx.Timeout(settings.gitlab_read_timeout, connect=settings.gitlab_connect_timeout)
    policy = RetryPolicy(settings, sleep or asyncio.sleep, clock or time.time)
    attempt = 0

    async def post_once() -> OAuthTokenResponse:
        nonlocal attempt
        attempt += 1
        started = time.perf_counter()
        try:
            response = await http.post(
                url, data=form, headers={"Accept": "application/json"}, timeout=timeout
            )
        except (httpx.TransportError, httpx.DecodingError) as exc:
            logger.debug("GitLab POST {} -> transport error (attempt {})", _ENDPOINT, attempt)
            raise GitLabUnavailable(
                f"GitLab unreachable on {_ENDPOINT} ({type(exc).__name__})",
                status=None,
                endpoint=_ENDPOINT,
            ) from None
        status = response.status_code
        logger.debug(
            "GitLab POST {} -> {} in {:.0f} ms (attempt {})",
            _ENDPOINT,
            status,
            (time.perf_counter() - started) * 1000,
            attempt,
        )
        if status >= 500:
            raise GitLabUnavailable(
                f"GitLab {status} on {_ENDPOINT}", status=status, endpoint=_ENDPOINT
            )
        if status == 429:
            wait = rate_limit_wait(response.headers, policy.clock())
            wait = policy.backoff_delay(attempt) if wait is None else wait
            wait = min(wait, settings.gitlab_rate_limit_max_wait)
            raise GitLabRateLimited(
                f"GitLab 429 rate limited on {_ENDPOINT} (retry after {wait:.1f} s)",
                retry_after=wait,
                endpoint=_ENDPOINT,
            )
        if status >= 300:  # a redirect here means a wrong instance URL: also final
            error = _oauth_error_code(response)
            raise GitLabOAuthError(
                f"GitLab refused the token refresh: {status} {error or 'unknown error'}",
                error=error,
                status=status,
            )
        return parse_json(_TOKEN_RESPONSE, response, _ENDPOINT)

    return await policy.wrap(post_once)()
