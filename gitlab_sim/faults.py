"""Injectable faults: which GitLab-shaped requests misbehave, and how.

A fault matches by method and a path regex (searched in the request path, e.g.
`/merge_requests$`), optionally only from a given page on (to land mid-pagination). It then
fires for the next `count` matching requests, or for a fraction `probability` of them drawn
from its own seeded RNG (so a run is reproducible), or, with neither, for every match until
cleared. The /_sim control routes are never subject to faults.
"""

from __future__ import annotations

import random
import re
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

FaultKind = Literal["status", "rate_limit", "slow", "drop", "malformed", "truncated", "empty"]
FAULT_KINDS: tuple[str, ...] = (
    "status",
    "rate_limit",
    "slow",
    "drop",
    "malformed",
    "truncated",
    "empty",
)


@dataclass
class FaultSpec:
    """One fault rule.

    kind: status (answer `status`: 403 missing scope, or with forbidden_reason="forbidden" a
    plain 403 Forbidden; or 500/502/503), rate_limit (429 with
    Retry-After as
    `retry_after` seconds, or as an HTTP date when retry_after_format="date"; body JSON
    `{"message":"Retry later"}` or plain text when body_format="text"), slow (sleep `delay`
    seconds, then answer normally), drop (announce a Content-Length, send part, close the
    connection), malformed (200 with invalid JSON), truncated (200 with the real body cut),
    empty (an "incident": 200 with `[]` and no next page, as a misconfigured proxy or cache
    might answer a listing).
    """

    kind: FaultKind
    status: int = 503
    path: str | None = None
    method: str | None = None
    count: int | None = None
    probability: float | None = None
    seed: int = 0
    min_page: int | None = None
    retry_after: int = 1
    retry_after_format: Literal["seconds", "date"] = "seconds"
    body_format: Literal["json", "text"] = "json"
    forbidden_reason: Literal["insufficient_scope", "forbidden"] = "insufficient_scope"
    delay: float = 5.0
    id: int = 0
    hits: int = 0
    _rng: random.Random = field(default=None, repr=False, compare=False)  # type: ignore[assignment]
    _regex: re.Pattern[str] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {FAULT_KINDS}")
        if self.kind == "status" and self.status not in (403, 500, 502, 503, 504):
            raise ValueError("status faults answer 403, 500, 502, 503 or 504")
        if self.probability is not None and not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        if self.count is not None and self.count < 0:
            raise ValueError("count must be >= 0")
        self._rng = random.Random(self.seed)
        self._regex = re.compile(self.path) if self.path else None

    @property
    def remaining(self) -> int | None:
        return None if self.count is None else max(self.count - self.hits, 0)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        d["remaining"] = self.remaining
        return d

    def _matches(self, method: str, path: str, page: int) -> bool:
        if self.method and self.method.upper() != method.upper():
            return False
        if self._regex is not None and not self._regex.search(path):
            return False
        return self.min_page is None or page >= self.min_page


class FaultInjector:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[FaultSpec] = []
        self._next_id = 1

    def add(self, spec: FaultSpec) -> FaultSpec:
        with self._lock:
            spec.id = self._next_id
            self._next_id += 1
            self._faults.append(spec)
            return spec

    def remove(self, fault_id: int) -> bool:
        with self._lock:
            before = len(self._faults)
            self._faults = [f for f in self._faults if f.id != fault_id]
            return len(self._faults) != before

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def list(self) -> list[FaultSpec]:
        with self._lock:
            return list(self._faults)

    def pick(self, method: str, path: str, query: dict[str, str]) -> FaultSpec | None:
        """The fault to apply to this request, if any (first matching rule wins)."""
        page = _page_of(query)
        with self._lock:
            for f in self._faults:
                if f.remaining == 0 or not f._matches(method, path, page):
                    continue
                # Drawn only for matching requests: the same request sequence gives the
                # same decisions.
                if f.probability is not None and f._rng.random() >= f.probability:
                    continue
                f.hits += 1
                return f
        return None


def _page_of(query: dict[str, str]) -> int:
    if "cursor" in query:
        return 2  # a keyset cursor is always past the first page
    try:
        return max(int(query.get("page", "1")), 1)
    except ValueError:
        return 1
