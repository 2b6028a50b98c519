"""The built-in scheduler: uvicorn plus an in-process caller of our own /api/poll.

It behaves like a hosted scheduler so the whole path runs (HTTP, signature check, body
parsing, run recording): on the cron of scheduler.yaml it POSTs the job's body to
http://127.0.0.1:<port>/api/poll with an Inngest-style `X-Inngest-Signature` made with the
signing key, and `x-gitlab-insights-trigger: scheduler` so the run is recorded as such.

- Never overlaps its own runs: a tick that arrives while a run (with its retries) is still in
  flight is skipped and logged, like Cloud Scheduler never has two outstanding executions.
- Retries 5xx answers, timeouts and connection errors with scheduler.yaml's retry policy
  (honouring a Retry-After up to --max-backoff); 4xx answers are final. The retries are
  `app.retry`'s: its RetryPolicy on Cloud Scheduler's schedule, its reading of the answer's
  requested wait and its `sleep` (tests switch the waits off with `retry.recorded_waits()`).
- Starts after the server listens and stops before it shuts down (a uvicorn Server subclass).

`PollScheduler` is the testable core: the clock and the wait between fires are injectable
(tests drive the cron with fake time), `fire_once()` runs one poll with its retries, `tick()`
starts one unless another is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import httpx
import uvicorn
from croniter import croniter
from loguru import logger

from app import __version__, retry
from app.api.callers import TRIGGER_HEADER
from app.runtime import create_loopback_client
from app.scheduler.config import (
    POLL_PATH,
    SchedulerConfigError,
    SchedulerJob,
    effective_cron,
    load_valid,
    locate,
)
from app.security.signing import sign_request
from app.settings import Settings

Clock = Callable[[], float]


class SchedulerStartError(Exception):
    """The built-in scheduler cannot start; the message is one line for the operator."""


# --- schedules ---------------------------------------------------------------------------------


class Schedule(Protocol):
    description: str

    def next_after(self, t: float) -> float:
        """The first fire time strictly after unix time `t`."""
        ...


class CronSchedule:
    def __init__(self, expr: str, time_zone: str = "Etc/UTC") -> None:
        if not croniter.is_valid(expr):
            raise ValueError(f"'{expr}' is not a cron expression")
        self.expr = expr
        self.tz = ZoneInfo(time_zone)
        self.description = f"cron '{expr}' ({time_zone})"

    def next_after(self, t: float) -> float:
        start = datetime.fromtimestamp(t, self.tz)
        return float(croniter(self.expr, start).get_next(float))


class IntervalSchedule:
    """Every `seconds`, aligned on multiples of it: a test hook finer than cron's minute."""

    def __init__(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError("interval must be positive")
        self.seconds = seconds
        self.description = f"every {seconds:g}s"

    def next_after(self, t: float) -> float:
        return (t // self.seconds + 1) * self.seconds


# --- one poll, with retries --------------------------------------------------------------------


@dataclass
class FireResult:
    """What one scheduled poll (all its attempts) achieved."""

    number: int
    ok: bool
    attempts: int
    status_code: int | None
    duration_s: float
    summary: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class _Attempt:
    status_code: int | None
    summary: dict[str, Any] | None = None
    error: str | None = None
    retry_after: float | None = None
    no_retry: bool = False


@dataclass
class RunnerOptions:
    """Knobs for tests and the demo; production uses the defaults."""

    # Test hooks finer than cron's minute: a cron with a 6th field for seconds
    # ('* * * * * */2', croniter's syntax) or a plain interval; either replaces the schedule.
    cron: str | None = None
    interval_seconds: float | None = None
    # Seconds; overrides scheduler.yaml's --attempt-deadline.
    attempt_deadline: float | None = None
    # One poll as soon as the server listens (the demo shows results at once).
    fire_at_start: bool = False
    # Called with every finished poll (the demo prints them).
    on_result: Callable[[FireResult], None] | None = None
    # Called with the service's base URL once it listens.
    on_listening: Callable[[str], None] | None = None
    # How long shutdown waits for in-flight requests before cancelling them (uvicorn: whole s).
    graceful_shutdown_seconds: int = 30
    extra_headers: dict[str, str] = field(default_factory=dict)


class PollScheduler:
    def __init__(
        self,
        *,
        job: SchedulerJob,
        schedule: Schedule,
        signing_key: str | None,
        url: str | None = None,
        client: httpx.AsyncClient | None = None,
        clock: Clock = time.time,
        sleep: retry.Sleep = asyncio.sleep,
        attempt_deadline: float | None = None,
        on_result: Callable[[FireResult], None] | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        self.job = job
        self.schedule = schedule
        self.url = url
        self._key = signing_key
        self._client = client
        self._own_client = client is None
        self._clock = clock
        # The wait until the next fire only; retry waits are app.retry.sleep.
        self._sleep = sleep
        self.attempt_deadline = (
            attempt_deadline
            if attempt_deadline is not None
            else job.attempt_deadline.total_seconds()
        )
        self._on_result = on_result
        self._extra_headers = extra_headers or {}
        self._busy = False
        self._inflight: asyncio.Task[FireResult | None] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self.fired = 0
        self.skipped = 0
        self.results: list[FireResult] = []

    # -- one run --------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        # A run started by tick() counts from creation, before its task first runs.
        return self._busy or (self._inflight is not None and not self._inflight.done())

    @property
    def running(self) -> bool:
        """True between start() and stop(): the loop fires on the schedule."""
        return self._loop_task is not None and not self._loop_task.done()

    async def fire_once(self) -> FireResult | None:
        """One scheduled poll with its retries; None when a previous one is still running."""
        inflight = self._inflight
        pending = inflight is not None and not inflight.done()
        if self._busy or (pending and inflight is not asyncio.current_task()):
            self.skipped += 1
            logger.warning("scheduled poll skipped: the previous run is still in flight")
            return None
        self._busy = True  # set before the first await: no second caller gets past the check
        try:
            self.fired += 1
            result = await self._run(self.fired)
        finally:
            self._busy = False
        self.results.append(result)
        self._log(result)
        if self._on_result is not None:
            try:
                self._on_result(result)
            except Exception as exc:  # noqa: BLE001 - a reporting bug must not stop polling
                logger.warning("scheduler result callback failed: {}", type(exc).__name__)
        return result

    async def _run(self, number: int) -> FireResult:
        policy = self.job.retry.policy()
        limit = self.job.retry.max_retry_duration.total_seconds()
        started = self._clock()
        t0 = time.perf_counter()
        attempt = 0
        while True:
            attempt += 1
            a = await self._attempt()
            ok = a.status_code is not None and 200 <= a.status_code < 300
            # 5xx, timeouts and connection errors may heal; a 4xx answer will not.
            transient = a.status_code is None or a.status_code >= 500
            retryable = not ok and not a.no_retry and transient
            out_of_time = limit > 0 and self._clock() - started >= limit
            if ok or not retryable or not policy.retries_left(attempt) or out_of_time:
                return FireResult(
                    number=number,
                    ok=ok,
                    attempts=attempt,
                    status_code=a.status_code,
                    duration_s=time.perf_counter() - t0,
                    summary=a.summary,
                    error=a.error,
                )
            # The server knows best when to come back, within --max-backoff.
            wait = policy.delay(attempt, a.retry_after)
            logger.warning(
                "scheduled poll attempt {} failed ({}); retry {}/{} in {:g}s",
                attempt,
                a.error or f"HTTP {a.status_code}",
                attempt,
                policy.attempts - 1,
                wait,
            )
            await retry.sleep(wait)

    async def _attempt(self) -> _Attempt:
        if self.url is None:
            raise RuntimeError("PollScheduler.url is not set (the server is not listening yet)")
        body = self.job.body
        headers = {
            "content-type": "application/json",
            "user-agent": f"gitlab-insights-scheduler/{__version__}",
            TRIGGER_HEADER: "scheduler",
            **self._extra_headers,
        }
        if self._key:
            # Signed per attempt: a retry must carry a fresh timestamp.
            headers["x-inngest-signature"] = sign_request(body, self._key, int(self._clock()))
        client = self._ensure_client()
        try:
            resp = await client.post(
                self.url, content=body, headers=headers, timeout=self.attempt_deadline
            )
        except httpx.TimeoutException:
            return _Attempt(None, error=f"no answer within {self.attempt_deadline:g}s")
        except httpx.TransportError as exc:
            return _Attempt(None, error=f"cannot reach {self.url} ({type(exc).__name__})")
        summary: dict[str, Any] | None = None
        try:
            data = resp.json()
            summary = data if isinstance(data, dict) else None
        except ValueError:
            pass
        error = None
        if not 200 <= resp.status_code < 300:
            error = f"HTTP {resp.status_code}"
            detail = (summary or {}).get("error") or (summary or {}).get("detail")
            if detail:
                error += f": {detail}"
        return _Attempt(
            resp.status_code,
            summary=summary,
            error=error,
            retry_after=retry.rate_limit_wait(resp.headers, self._clock()),
            no_retry=resp.headers.get("x-inngest-no-retry", "").lower() == "true",
        )

    def _log(self, r: FireResult) -> None:
        s = r.summary or {}
        events = s.get("events") or {}
        log = logger.bind(
            scheduled_run=r.number,
            attempts=r.attempts,
            status_code=r.status_code,
            run_id=s.get("run_id"),
            processed=s.get("processed"),
            failed=s.get("failed"),
            skipped=s.get("skipped"),
            stored=events.get("stored"),
        )
        if r.ok:
            log.info(
                "scheduled poll #{} done: HTTP {}, {} processed, {} failed, {} skipped, "
                "{} events stored ({} attempt(s))",
                r.number,
                r.status_code,
                s.get("processed", "?"),
                s.get("failed", "?"),
                s.get("skipped", "?"),
                events.get("stored", "?"),
                r.attempts,
            )
        else:
            log.error(
                "scheduled poll #{} failed after {} attempt(s): {}",
                r.number,
                r.attempts,
                r.error or f"HTTP {r.status_code}",
            )

    def _ensure_client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = create_loopback_client()
        return self._client

    # -- the loop -------------------------------------------------------------------------

    def tick(self) -> asyncio.Task[FireResult | None] | None:
        """Start a poll in the background unless one is in flight (then log and skip)."""
        if self.busy:
            self.skipped += 1
            logger.warning(
                "scheduled poll skipped: the previous run (#{}) is still in flight", self.fired
            )
            return None
        self._inflight = asyncio.create_task(self.fire_once(), name="scheduled-poll")
        return self._inflight

    async def run(self, *, fire_at_start: bool = False) -> None:
        """Fire on the schedule until cancelled."""
        logger.info("built-in scheduler: {} -> POST {}", self.schedule.description, self.url)
        if fire_at_start:
            self.tick()
        last = self._clock()
        while True:
            now = self._clock()
            # max(): a sleep that wakes a hair early must not fire the same slot twice.
            due = self.schedule.next_after(max(now, last))
            await self._sleep(max(0.0, due - now))
            last = due
            self.tick()

    def start(self, *, fire_at_start: bool = False) -> asyncio.Task[None]:
        self._loop_task = asyncio.create_task(
            self.run(fire_at_start=fire_at_start), name="poll-scheduler"
        )
        return self._loop_task

    async def stop(self) -> None:
        """Stop firing and cancel an in-flight poll; idempotent."""
        for task in (self._loop_task, self._inflight):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._loop_task = None
        self._inflight = None
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None


# --- wiring into the server --------------------------------------------------------------------


def build_scheduler(
    settings: Settings,
    *,
    scheduler_file: str | Path | None = None,
    options: RunnerOptions | None = None,
) -> PollScheduler:
    """A PollScheduler from settings and scheduler.yaml; SchedulerStartError if it cannot run."""
    options = options or RunnerOptions()
    keys = settings.signing_keys()
    if not keys and not settings.allow_unsigned_polls:
        raise SchedulerStartError(
            "the built-in scheduler signs its calls to /api/poll: set INNGEST_SIGNING_KEY "
            "(or ALLOW_UNSIGNED_POLLS=true for local development)"
        )
    try:
        source = locate(scheduler_file)
        job = load_valid(source)
    except SchedulerConfigError as exc:
        origin = scheduler_file or "scheduler.yaml"
        raise SchedulerStartError(f"{origin}: " + "; ".join(exc.problems)) from None
    if options.interval_seconds is not None:
        schedule: Schedule = IntervalSchedule(options.interval_seconds)
    elif options.cron is not None:
        schedule = CronSchedule(options.cron, job.time_zone)
    else:
        cron, origin = effective_cron(job, settings)
        schedule = CronSchedule(cron, job.time_zone)
        schedule.description += f" from {origin}"
    return PollScheduler(
        job=job,
        schedule=schedule,
        signing_key=keys[0] if keys else None,
        attempt_deadline=options.attempt_deadline,
        on_result=options.on_result,
        extra_headers=options.extra_headers,
    )


class SchedulingServer(uvicorn.Server):
    """uvicorn that starts the scheduler once it listens and stops it before shutting down."""

    def __init__(
        self,
        config: uvicorn.Config,
        scheduler: PollScheduler,
        *,
        fire_at_start: bool = False,
        on_listening: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.scheduler = scheduler
        self._fire_at_start = fire_at_start
        self._on_listening = on_listening
        self.base_url: str | None = None

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.should_exit or not self.servers:
            return  # startup failed (port taken, lifespan error): nothing to schedule
        self.scheduler.url = self._own_url()
        self.base_url = self.scheduler.url.removesuffix(POLL_PATH)
        if self._on_listening is not None:
            self._on_listening(self.base_url)
        self.scheduler.start(fire_at_start=self._fire_at_start)

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        await self.scheduler.stop()
        await super().shutdown(sockets=sockets)

    def _own_url(self) -> str:
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        ip = ipaddress.ip_address(host)
        if ip.is_unspecified:
            # Bound to every interface: loopback reaches us without leaving the machine.
            ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
        netloc = f"[{ip}]" if ip.version == 6 else str(ip)
        return f"http://{netloc}:{port}{POLL_PATH}"


def build_server(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    scheduler_file: str | Path | None = None,
    options: RunnerOptions | None = None,
    app: Any = None,
) -> SchedulingServer:
    """The API server with the built-in scheduler (`app` lets tests wrap the application)."""
    options = options or RunnerOptions()
    scheduler = build_scheduler(settings, scheduler_file=scheduler_file, options=options)
    if app is None:
        from app.main import create_app

        app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # keep our redacting loguru setup
        proxy_headers=False,
        lifespan="on",
        timeout_graceful_shutdown=options.graceful_shutdown_seconds,
    )
    return SchedulingServer(
        config,
        scheduler,
        fire_at_start=options.fire_at_start,
        on_listening=options.on_listening,
    )
