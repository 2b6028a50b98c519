"""The one retry policy: bounded attempts, a backoff schedule, a server's requested wait honoured.

Every caller that tries again uses this module: GitLab requests (`gitlab/client.py`), the OAuth
token refresh (`gitlab/oauth.py`), a user's sync attempts (`sync/user_sync.py`) and the
built-in scheduler's calls to `/api/poll` (`scheduler/runner.py`).

- `RetryPolicy` says how many attempts and how long to wait before each retry: its backoff
  schedule (full-jitter exponential by default, Cloud Scheduler's doubling schedule for the
  built-in scheduler), or the wait the server asked for (`Retry-After`, `RateLimit-Reset`)
  capped at `max_requested_wait`, so a 429's wait *is* the answer's.
- `retry_on()` wraps an async callable in a bounded retry loop, with waits from the policy.
- `rate_limit_wait()` reads the server's requested wait from response headers. Pure.
- `sleep()` is the one wait of every retry and pacing pause. Tests switch waits off in one
  place with `recorded_waits()` (as `stamina.set_testing()` does) instead of threading a fake
  sleep through every caller.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import ParamSpec, TypeVar

import backoff

P = ParamSpec("P")
T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]

__all__ = [
    "RetryPolicy",
    "Sleep",
    "full_jitter",
    "rate_limit_wait",
    "recorded_waits",
    "retry_on",
    "sleep",
]

_sleeper: Sleep = asyncio.sleep
# Unix times above this are absolute (GitLab's RateLimit-Reset); below it a delta in seconds.
_UNIX_TIME_THRESHOLD = 1e9


async def sleep(seconds: float) -> None:
    """Wait `seconds` (a zero or negative wait returns at once, without yielding)."""
    if seconds > 0:
        await _sleeper(seconds)


@contextmanager
def recorded_waits() -> Iterator[list[float]]:
    """Tests: every wait is recorded in the yielded list and returns at once."""
    global _sleeper
    waits: list[float] = []
    previous = _sleeper

    async def record(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(0)  # still a scheduling point, as a real wait is

    _sleeper = record
    try:
        yield waits
    finally:
        _sleeper = previous


def full_jitter(retry: int, *, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(retry-1))].

    `retry` is 1-based; a zero base means no wait at all (tests, tight loops).
    """
    if base <= 0:
        return 0.0
    waits = backoff.expo(factor=base, max_value=cap)
    next(waits)  # backoff's generators are primed with one empty step
    delay = 0.0
    for _ in range(max(retry, 1)):
        delay = next(waits)
    return backoff.full_jitter(delay)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often to try and how long to wait between tries.

    `schedule(retry)` is the wait before retry number `retry` (1-based) when the server did
    not say; a requested wait is honoured up to `max_requested_wait`, and never shortened
    below the schedule when `requested_is_floor` (the scheduler's own spacing still holds).
    """

    attempts: int
    schedule: Callable[[int], float]
    max_requested_wait: float = 60.0
    requested_is_floor: bool = False

    @classmethod
    def exponential(
        cls, *, attempts: int, base: float, cap: float, max_requested_wait: float = 60.0
    ) -> RetryPolicy:
        """Full-jitter exponential backoff (GitLab requests, OAuth refresh, user attempts)."""
        return cls(
            attempts=max(attempts, 1),
            schedule=lambda retry: full_jitter(retry, base=base, cap=cap),
            max_requested_wait=max_requested_wait,
        )

    def delay(self, retry: int, requested: float | None = None) -> float:
        """Seconds to wait before retry number `retry` (1-based)."""
        if requested is None:
            return self.schedule(retry)
        honoured = min(max(requested, 0.0), self.max_requested_wait)
        return max(honoured, self.schedule(retry)) if self.requested_is_floor else honoured

    def retries_left(self, attempt: int) -> bool:
        """True when attempt number `attempt` (1-based) may be followed by another."""
        return attempt < self.attempts


def retry_on(
    policy: RetryPolicy,
    errors: type[Exception] | tuple[type[Exception], ...],
    *,
    requested_wait: Callable[[Exception], float | None] = lambda exc: None,
    on_retry: Callable[[Exception, int, float], None] | None = None,
    wait: Callable[[float], Awaitable[None]] | None = None,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Decorator: call again on `errors`, at most `policy.attempts` times in all.

    `requested_wait(exc)` gives the server's requested wait carried by an error (a 429's
    Retry-After); `on_retry(exc, retry, delay)` logs; `wait(delay)` replaces the sleep for a
    caller that turns a wait into something else (the GitLab client pauses all its requests).

    The loop that `backoff.on_exception` ran, without its per-call set-up (two clock reads, a
    wait generator and a details dict for every call): every GitLab request goes through two
    of these, and almost every call succeeds at once.
    """

    def decorate(target: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(target)
        async def wrapped(*args: P.args, **kwargs: P.kwargs) -> T:
            retry = 0
            while True:
                try:
                    return await target(*args, **kwargs)
                except errors as exc:
                    retry += 1
                    if retry >= policy.attempts:
                        raise
                    delay = policy.delay(retry, requested_wait(exc))
                    if on_retry is not None:
                        on_retry(exc, retry, delay)
                    await (wait or sleep)(delay)
                    await asyncio.sleep(0)  # a scheduling point between tries, as backoff's

        return wrapped

    return decorate


def rate_limit_wait(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds a server asks us to wait, from its answer's headers; None if it does not say.

    `Retry-After` (seconds or an HTTP date), else `RateLimit-Reset` (GitLab: a Unix time; the
    IETF draft: seconds), else `RateLimit-ResetTime` (an HTTP date). `now` is Unix time.
    """
    retry_after = (headers.get("retry-after") or "").strip()
    if retry_after:
        try:
            return max(float(retry_after), 0.0)
        except ValueError:
            at = _http_date(retry_after)
            if at is not None:
                return max(at - now, 0.0)
    reset = (headers.get("ratelimit-reset") or "").strip()
    if reset:
        try:
            value = float(reset)
        except ValueError:
            value = None
        if value is not None:
            return max(value - now, 0.0) if value > _UNIX_TIME_THRESHOLD else max(value, 0.0)
    reset_time = (headers.get("ratelimit-resettime") or "").strip()
    if reset_time:
        at = _http_date(reset_time)
        if at is not None:
            return max(at - now, 0.0)
    return None


def _http_date(value: str) -> float | None:
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:  # RFC 9110 dates are GMT; never the host's local time
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
