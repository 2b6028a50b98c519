"""A log of the GitLab-shaped requests the simulator answered (never a token)."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter, deque
from typing import Any

_SECRET_PARAMS = {"private_token", "access_token", "refresh_token", "client_secret", "code"}

_KINDS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^/api/v4/projects/.+/issues/\d+/notes(/\d+)?$"), "issue_notes"),
    (re.compile(r"^/api/v4/projects/.+/merge_requests/\d+/notes(/\d+)?$"), "merge_request_notes"),
    (re.compile(r"^/api/v4/projects/.+/issues/\d+/discussions$"), "issue_discussions"),
    (
        re.compile(r"^/api/v4/projects/.+/merge_requests/\d+/discussions$"),
        "merge_request_discussions",
    ),
    (re.compile(r"^/api/v4/projects/.+/issues(/\d+)?$"), "issues"),
    (re.compile(r"^/api/v4/projects/.+/merge_requests(/\d+)?$"), "merge_requests"),
    (re.compile(r"^/api/v4/projects(/[^/]+)?$"), "projects"),
    (re.compile(r"^/api/v4/user$"), "user"),
    (re.compile(r"^/oauth/token$"), "oauth_token"),
]


def endpoint_kind(path: str) -> str:
    """Coarse endpoint name for counting: issues, merge_requests, issue_notes, ..."""
    for rx, kind in _KINDS:
        if rx.match(path):
            return kind
    return "other"


class RequestLog:
    def __init__(self, maxlen: int = 200_000) -> None:
        self._lock = threading.Lock()
        self._entries: deque[dict[str, Any]] = deque(maxlen=maxlen)

    def record(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        status: int,
        *,
        username: str | None = None,
        fault: str | None = None,
    ) -> None:
        entry = {
            "time": time.time(),
            "method": method,
            "path": path,
            "kind": endpoint_kind(path),
            "query": {k: v for k, v in query.items() if k not in _SECRET_PARAMS},
            "status": status,
            "username": username,
            "fault": fault,
        }
        with self._lock:
            self._entries.append(entry)

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self._entries]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(Counter(e["kind"] for e in self._entries))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
