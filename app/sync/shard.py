"""Which users one shard of a sharded poll syncs: a stable hash of the user id, mod shards.

N schedulers (Cloud Scheduler jobs, cron lines) each send `{"shard": k, "shards": N}` to one
of N replicas on one PostgreSQL; together they cover every user exactly once. The hash must be
the same in every process and release, so it is SHA-256 (Python's hash() of a str is
randomized per process): the first 8 bytes of sha256(user id, UTF-8), big-endian, mod shards.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

MAX_SHARDS = 1000  # far past any useful replica count; bounds a typo such as 40000


def shard_of(user_id: str, shards: int) -> int:
    """The shard (0..shards-1) that syncs `user_id`."""
    digest = hashlib.sha256(user_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards


def shard_problem(shard: int, shards: int) -> str | None:
    """Why (shard, shards) is not a valid shard, or None."""
    if not 1 <= shards <= MAX_SHARDS:
        return f"shards must be between 1 and {MAX_SHARDS}"
    if not 0 <= shard < shards:
        return f"shard must be between 0 and shards - 1 ({shards - 1})"
    return None


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard `index` of `count`; build it only from values `shard_problem` accepted."""

    index: int
    count: int

    def __post_init__(self) -> None:
        problem = shard_problem(self.index, self.count)
        if problem:
            raise ValueError(problem)

    def holds(self, user_id: str) -> bool:
        return shard_of(user_id, self.count) == self.index
