"""Typed GitLab errors: the sync decides what to do from the class, never from strings.

What the caller does, by type:

- GitLabAuthError (401): refresh the token if `reason` is "expired", else skip the user.
  GitLabInsufficientScope (403 `insufficient_scope`) is one too: the token lacks the scope,
  so the user must re-authorize; it is never read as a lost access to a project.
- GitLabRateLimited (429) and GitLabUnavailable (5xx, timeouts): transient, try again later
  (the client already retried within its budget).
- GitLabUnreachable: several requests in a row could not connect at all, so the run stops
  sending requests (reachability.py); not retried within the run.
- GitLabMalformedResponse: invalid or truncated JSON; the client retries it like a 5xx and
  raises it once that budget is spent. A GitLabBadResponse, so callers need not tell them apart.
- GitLabBadResponse: a payload of the wrong shape; the client does not retry it (the same
  request would get the same answer).
- GitLabForbidden (403), GitLabNotFound (404): this resource is out of reach; others continue.
- GitLabOAuthError: the token endpoint refused a refresh (final: re-authorization needed).
- GitLabAPIError itself: any other answer (a 3xx, 400, 405...): final for this request.

Messages carry the HTTP status and the endpoint path only: never a token, never a full URL
(a URL's query could hold a secret).
"""

from __future__ import annotations

from typing import Literal

# Why no connection could be made at all (reachability.classify_connect_failure).
ConnectFailure = Literal["connection_refused", "dns_failure", "tls_failure", "no_route"]


class GitLabAPIError(Exception):
    def __init__(self, message: str, *, status: int | None = None, endpoint: str = "") -> None:
        self.status = status
        self.endpoint = endpoint
        super().__init__(message)


AuthReason = Literal["expired", "revoked", "invalid", "insufficient_scope"]


class GitLabAuthError(GitLabAPIError):
    """401. `reason` tells an expired token (refreshable) from a revoked or unknown one."""

    def __init__(
        self, message: str, *, reason: AuthReason, endpoint: str = "", status: int = 401
    ) -> None:
        self.reason: AuthReason = reason
        super().__init__(message, status=status, endpoint=endpoint)


class GitLabForbidden(GitLabAPIError):
    """403: no access to the resource (a 403 `insufficient_scope` is GitLabInsufficientScope)."""


class GitLabInsufficientScope(GitLabAuthError, GitLabForbidden):
    """403 `insufficient_scope`: the token lacks read_api/api. A token problem (the user must
    re-authorize), never a lost access to a project: it is an auth error and a 403 at once."""

    def __init__(self, message: str, *, endpoint: str = "") -> None:
        super().__init__(message, reason="insufficient_scope", endpoint=endpoint, status=403)


class GitLabNotFound(GitLabAPIError):
    """404: the project (or item) does not exist or the token cannot see it."""


class GitLabRateLimited(GitLabAPIError):
    """429 after retries; `retry_after` is GitLab's wait in seconds."""

    def __init__(self, message: str, *, retry_after: float, endpoint: str = "") -> None:
        self.retry_after = retry_after
        super().__init__(message, status=429, endpoint=endpoint)


class GitLabUnavailable(GitLabAPIError):
    """5xx, timeout or connection failure after retries: transient, retry later.

    `connect_failure` says why no connection could be made; None when GitLab answered, or
    when the failure says nothing about reachability (a timeout)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        endpoint: str = "",
        connect_failure: ConnectFailure | None = None,
    ) -> None:
        self.connect_failure = connect_failure
        super().__init__(message, status=status, endpoint=endpoint)


class GitLabUnreachable(GitLabAPIError):
    """The run found the instance unreachable (reachability.py): this request was not sent.
    Final for the run: neither the client nor the user's sync retries it; the next run does."""


class GitLabBadResponse(GitLabAPIError):
    """A payload that is not what the endpoint documents (malformed JSON, wrong shape)."""


class GitLabMalformedResponse(GitLabBadResponse):
    """Invalid or truncated JSON: usually a proxy cutting the body, so worth another try."""


class GitLabOAuthError(GitLabAPIError):
    """The OAuth token endpoint refused a refresh (invalid_grant, bad client...)."""

    def __init__(self, message: str, *, error: str | None, status: int | None) -> None:
        self.error = error
        super().__init__(message, status=status, endpoint="/oauth/token")
