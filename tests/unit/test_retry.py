"""app.retry: the backoff schedule, honoured server waits, retry_on and rate_limit_wait.

No test sleeps: waits are switched off and inspected with `recorded_waits()`, or replaced by
the `wait=` hook of `retry_on`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from app import retry
from app.retry import RetryPolicy, rate_limit_wait, recorded_waits, retry_on

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
NOW_TS = NOW.timestamp()
SAMPLES = 300


def http_date(at: datetime) -> str:
    return format_datetime(at, usegmt=True)


def constant(seconds: float) -> RetryPolicy:
    """A policy whose schedule is a known constant, so honoured waits are told apart."""
    return RetryPolicy(attempts=3, schedule=lambda retry: seconds, max_requested_wait=60.0)


# --- RetryPolicy ---------------------------------------------------------------------------


@pytest.mark.parametrize("retry_number", [1, 2, 3, 4, 8, 20])
def test_exponential_delay_is_within_zero_and_the_capped_exponential(retry_number):
    policy = RetryPolicy.exponential(attempts=5, base=0.5, cap=3.0)
    bound = min(3.0, 0.5 * 2 ** (retry_number - 1))
    delays = [policy.delay(retry_number) for _ in range(SAMPLES)]
    assert all(0.0 <= d <= bound for d in delays), max(delays)
    # Full jitter spreads over the range: not a constant, not always zero.
    assert len(set(delays)) > 1
    assert max(delays) > bound / 2


def test_exponential_delay_never_exceeds_the_cap_for_late_retries():
    policy = RetryPolicy.exponential(attempts=50, base=1.0, cap=2.5)
    assert all(0.0 <= policy.delay(40) <= 2.5 for _ in range(SAMPLES))


def test_zero_base_means_no_wait_at_all():
    policy = RetryPolicy.exponential(attempts=4, base=0, cap=10.0)
    assert {policy.delay(r) for r in range(1, 6) for _ in range(20)} == {0.0}


def test_requested_wait_is_honoured_instead_of_the_schedule():
    policy = constant(9.0)
    assert policy.delay(1, requested=2.5) == 2.5
    assert policy.delay(2, requested=0.0) == 0.0
    assert policy.delay(1) == 9.0  # nothing requested: the schedule


def test_requested_wait_is_capped_at_max_requested_wait():
    policy = RetryPolicy.exponential(attempts=3, base=1.0, cap=2.0, max_requested_wait=7.0)
    assert policy.delay(1, requested=7.0) == 7.0
    assert policy.delay(1, requested=3600.0) == 7.0


def test_negative_requested_wait_is_zero():
    assert constant(9.0).delay(1, requested=-5.0) == 0.0


def test_requested_is_floor_keeps_the_schedule_as_a_minimum():
    policy = RetryPolicy(
        attempts=3, schedule=lambda retry: 10.0, max_requested_wait=60.0, requested_is_floor=True
    )
    assert policy.delay(1, requested=3.0) == 10.0  # never shorter than the schedule
    assert policy.delay(1, requested=25.0) == 25.0  # a longer request wins
    assert policy.delay(1, requested=600.0) == 60.0  # still capped
    assert policy.delay(1) == 10.0


def test_retries_left_counts_attempts_one_based():
    policy = RetryPolicy.exponential(attempts=3, base=0, cap=0)
    assert [policy.retries_left(a) for a in (1, 2, 3, 4)] == [True, True, False, False]


def test_exponential_never_allows_fewer_than_one_attempt():
    policy = RetryPolicy.exponential(attempts=0, base=0, cap=0)
    assert policy.attempts == 1
    assert not policy.retries_left(1)


# --- retry_on ------------------------------------------------------------------------------


class Flaky(Exception):
    def __init__(self, n: int, wait: float | None = None) -> None:
        self.wait = wait
        super().__init__(f"failure {n}")


async def test_retry_on_tries_exactly_attempts_times_and_reraises_the_last_error():
    calls: list[int] = []

    @retry_on(RetryPolicy.exponential(attempts=4, base=0, cap=0), Flaky)
    async def always_fails() -> None:
        calls.append(len(calls) + 1)
        raise Flaky(len(calls))

    with pytest.raises(Flaky, match="failure 4"):
        await always_fails()
    assert calls == [1, 2, 3, 4]


async def test_retry_on_returns_the_first_success_and_passes_arguments():
    seen: list[tuple[int, str]] = []

    @retry_on(RetryPolicy.exponential(attempts=5, base=0, cap=0), Flaky)
    async def flaky(a: int, *, b: str) -> str:
        seen.append((a, b))
        if len(seen) < 3:
            raise Flaky(len(seen))
        return f"{a}{b}"

    assert await flaky(7, b="x") == "7x"
    assert seen == [(7, "x")] * 3


async def test_retry_on_does_not_retry_other_exception_types():
    calls = 0

    @retry_on(RetryPolicy.exponential(attempts=5, base=0, cap=0), Flaky)
    async def wrong_kind() -> None:
        nonlocal calls
        calls += 1
        raise KeyError("not retryable")

    with pytest.raises(KeyError):
        await wrong_kind()
    assert calls == 1


async def test_retry_on_accepts_a_tuple_of_error_types():
    raised = [Flaky(1), ValueError("v"), Flaky(3)]

    @retry_on(RetryPolicy.exponential(attempts=5, base=0, cap=0), (Flaky, ValueError))
    async def mixed() -> str:
        if raised:
            raise raised.pop(0)
        return "ok"

    assert await mixed() == "ok"


async def test_retry_on_waits_the_requested_wait_and_reports_each_retry():
    first, second, third = Flaky(1, wait=4.0), Flaky(2, wait=500.0), Flaky(3, wait=None)
    pending = [first, second, third]
    retries: list[tuple[Exception, int, float]] = []
    policy = RetryPolicy(attempts=4, schedule=lambda retry: 1.5, max_requested_wait=30.0)

    @retry_on(
        policy,
        Flaky,
        requested_wait=lambda exc: exc.wait if isinstance(exc, Flaky) else None,
        on_retry=lambda exc, n, delay: retries.append((exc, n, delay)),
    )
    async def rate_limited() -> str:
        if pending:
            raise pending.pop(0)
        return "done"

    with recorded_waits() as waits:
        assert await rate_limited() == "done"
    # Requested 4 s honoured, 500 s capped at 30 s, nothing requested -> the schedule.
    assert waits == [4.0, 30.0, 1.5]
    assert [(n, delay) for _, n, delay in retries] == [(1, 4.0), (2, 30.0), (3, 1.5)]
    assert [exc for exc, _, _ in retries] == [first, second, third]  # the same objects


async def test_retry_on_wait_hook_replaces_the_sleep():
    hooked: list[float] = []

    async def hook(delay: float) -> None:
        hooked.append(delay)

    n = 0

    @retry_on(constant(2.0), Flaky, wait=hook)
    async def twice_failing() -> int:
        nonlocal n
        n += 1
        if n < 3:
            raise Flaky(n)
        return n

    with recorded_waits() as waits:
        assert await twice_failing() == 3
    assert hooked == [2.0, 2.0]
    assert waits == []  # the hook replaced the sleep: nothing slept


async def test_retry_on_with_one_attempt_never_waits():
    @retry_on(RetryPolicy.exponential(attempts=1, base=5.0, cap=5.0), Flaky)
    async def once() -> None:
        raise Flaky(1)

    with recorded_waits() as waits, pytest.raises(Flaky):
        await once()
    assert waits == []


# --- rate_limit_wait -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"Retry-After": "120"}, 120.0),
        ({"Retry-After": " 7 "}, 7.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"Retry-After": "0"}, 0.0),
        ({"Retry-After": http_date(NOW + timedelta(seconds=30))}, 30.0),
        ({"Retry-After": http_date(NOW - timedelta(seconds=30))}, 0.0),  # past date
        ({"RateLimit-Reset": str(int(NOW_TS) + 42)}, 42.0),  # GitLab: a Unix time
        ({"RateLimit-Reset": str(int(NOW_TS) - 42)}, 0.0),  # already reset
        ({"RateLimit-Reset": "15"}, 15.0),  # IETF draft: delta seconds
        ({"RateLimit-ResetTime": http_date(NOW + timedelta(seconds=90))}, 90.0),
        # An HTTP date without a zone is GMT, never the host's local time.
        ({"RateLimit-ResetTime": "Wed, 01 May 2024 12:00:45 -0000"}, 45.0),
        ({"Retry-After": "-5"}, 0.0),
        ({"RateLimit-Reset": "-3"}, 0.0),
    ],
)
def test_rate_limit_wait_reads_each_header_form(given, expected):
    assert rate_limit_wait(httpx.Headers(given), NOW_TS) == pytest.approx(expected)


@pytest.mark.parametrize(
    "given",
    [
        {},
        {"Retry-After": "soon"},
        {"Retry-After": ""},
        {"RateLimit-Reset": "tomorrow"},
        {"RateLimit-ResetTime": "not a date"},
        {"Retry-After": "later", "RateLimit-Reset": "x", "RateLimit-ResetTime": "y"},
        {"X-Something-Else": "10"},
    ],
)
def test_rate_limit_wait_is_none_when_nothing_usable(given):
    assert rate_limit_wait(httpx.Headers(given), NOW_TS) is None


def test_rate_limit_wait_precedence_retry_after_then_reset_then_reset_time():
    reset_time = http_date(NOW + timedelta(seconds=300))
    every = {"Retry-After": "5", "RateLimit-Reset": "60", "RateLimit-ResetTime": reset_time}
    assert rate_limit_wait(httpx.Headers(every), NOW_TS) == 5.0
    no_retry_after = {"RateLimit-Reset": "60", "RateLimit-ResetTime": reset_time}
    assert rate_limit_wait(httpx.Headers(no_retry_after), NOW_TS) == 60.0
    assert rate_limit_wait(httpx.Headers({"RateLimit-ResetTime": reset_time}), NOW_TS) == 300.0


def test_garbage_in_a_stronger_header_falls_through_to_the_next():
    given = {"Retry-After": "soon", "RateLimit-Reset": "garbage", "RateLimit-ResetTime": ""}
    assert rate_limit_wait(httpx.Headers(given), NOW_TS) is None
    given = {"Retry-After": "soon", "RateLimit-Reset": "20"}
    assert rate_limit_wait(httpx.Headers(given), NOW_TS) == 20.0
    given = {"RateLimit-Reset": "garbage", "RateLimit-ResetTime": http_date(NOW)}
    assert rate_limit_wait(httpx.Headers(given), NOW_TS) == 0.0


# --- sleep and recorded_waits -------------------------------------------------------------


async def test_recorded_waits_records_positive_waits_only():
    with recorded_waits() as waits:
        await retry.sleep(0)
        await retry.sleep(-1.0)
        await retry.sleep(2.5)
        await retry.sleep(3600)
    assert waits == [2.5, 3600]


async def test_recorded_waits_restores_the_previous_sleep_afterwards():
    with recorded_waits() as outer:
        with recorded_waits() as inner:
            await retry.sleep(1.0)
        await retry.sleep(2.0)  # the inner context is gone: back to the outer one
    assert inner == [1.0]
    assert outer == [2.0]
    # Outside every context the real sleep is back: nothing is recorded any more.
    await retry.sleep(0.001)
    assert inner == [1.0] and outer == [2.0]


async def test_recorded_waits_restores_the_sleep_when_the_body_raises():
    with pytest.raises(RuntimeError), recorded_waits() as first:
        raise RuntimeError("boom")
    with recorded_waits() as second:
        await retry.sleep(4.0)
    assert first == [] and second == [4.0]
    await retry.sleep(0.001)
    assert first == [] and second == [4.0]
