"""Is the GitLab instance reachable at all? One run-wide detector, shared by every GitLab client
of a poll run, that tells "no connection can be made" from GitLab answering badly.

The rules (README: "When GitLab cannot be reached"):

- A request counts when it *finally* failed (its retries spent) without ever getting a
  connection: connection refused, DNS lookup failure, TLS handshake failure, no route to the
  host (`classify_connect_failure`). Counting requests, not attempts, lets the client's
  retries ride out a short blip (a restarting GitLab refusing connections for a second)
  instead of stopping the run on the first burst of refused attempts.
- `threshold` such requests in a row, across users and projects, and the instance is
  unreachable for the rest of the run: the trip is final, every later attempt of the run
  fails at once with GitLabUnreachable (never sent, never retried).
- Any HTTP answer, whatever its status, resets the count: the host answered. A 5xx is GitLab
  being unavailable, not unreachable (the poller's user-count detector handles those).
- Other failures without an answer (timeouts, connections reset mid-answer) prove neither and
  leave the count as it is.

Pure: no I/O, no clock; the client feeds it and asks it.
"""

from __future__ import annotations

import errno
import socket
import ssl
from urllib.parse import urlsplit

from app.gitlab.errors import ConnectFailure, GitLabUnreachable

__all__ = [
    "DESCRIPTIONS",
    "ConnectFailure",
    "ReachabilityDetector",
    "classify_connect_failure",
    "instance_label",
]

# What each failure means, for the one line an operator reads.
DESCRIPTIONS: dict[ConnectFailure, str] = {
    "connection_refused": "connection refused",
    "dns_failure": "DNS lookup failed",
    "tls_failure": "TLS handshake failed",
    "no_route": "no route to the host",
}

_NO_ROUTE_ERRNOS = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH})


def classify_connect_failure(exc: BaseException) -> ConnectFailure | None:
    """Why no connection could be made, from an HTTP library's exception and its causes
    (aiohttp's `os_error`/`certificate_error`, httpx's `__cause__` chain); None when the
    failure says nothing about reachability (a timeout, a connection reset mid-answer)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        # Most specific first: aiohttp's TLS and DNS errors are also OSErrors.
        if isinstance(e, ssl.SSLError):  # certificate verification failures included
            return "tls_failure"
        if isinstance(e, socket.gaierror):
            return "dns_failure"
        if isinstance(e, ConnectionRefusedError):
            return "connection_refused"
        if isinstance(e, OSError) and e.errno in _NO_ROUTE_ERRNOS:
            return "no_route"
        todo += [
            e.__cause__,
            e.__context__,
            getattr(e, "os_error", None),
            getattr(e, "certificate_error", None),
        ]
    return None


def instance_label(instance_url: str) -> str:
    """scheme://host[:port] of the instance: never user info, a path or a query."""
    parts = urlsplit(instance_url)
    host = parts.hostname or "?"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{host}{port}"


class ReachabilityDetector:
    """One per poll run (see the module docstring for the rules)."""

    def __init__(self, threshold: int, instance_url: str) -> None:
        self.threshold = max(threshold, 1)
        self.instance = instance_label(instance_url)
        self.streak = 0
        self.last_failure: ConnectFailure | None = None
        self.tripped = False

    def answered(self) -> None:
        """GitLab answered a request (any status): the host is reachable."""
        self.streak = 0

    def connect_failed(self, failure: ConnectFailure) -> bool:
        """A request finally failed without a connection; True when this one trips the run."""
        self.last_failure = failure
        self.streak += 1
        if self.tripped or self.streak < self.threshold:
            return False
        self.tripped = True
        return True

    def check(self, endpoint: str) -> None:
        """Before every attempt: GitLabUnreachable once the run has found GitLab unreachable."""
        if self.tripped:
            raise GitLabUnreachable(
                f"{self.describe()}; {endpoint} not requested", endpoint=endpoint
            )

    def describe(self) -> str:
        """The one line saying which host could not be reached and why."""
        why = DESCRIPTIONS[self.last_failure] if self.last_failure else "no connection"
        n = self.threshold
        count = "1 request" if n == 1 else f"{n} requests in a row"
        return f"GitLab at {self.instance} cannot be reached: {why} ({count})"
