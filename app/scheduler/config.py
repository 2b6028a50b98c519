"""scheduler.yaml: the polling job as a gcloud flags file, parsed, filled and validated.

The file is a YAML map of `--flag: value` pairs that `gcloud scheduler jobs create http NAME
--location=L --flags-file=FILE` consumes as is (once its placeholders are filled). The built-in
scheduler reads the same values: schedule, time zone, attempt deadline and retry policy.

Lookup order: an explicit path, else ./scheduler.yaml, else the copy embedded below (so an
installed wheel works without the repository). A test keeps the embedded copy identical to the
repository's scheduler.yaml.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from croniter import croniter
from pydantic import BaseModel, ConfigDict

from app.retry import RetryPolicy
from app.settings import Settings
from app.sync.shard import shard_problem

DEFAULT_FILE_NAME = "scheduler.yaml"
SHARD_JOB_NAME = "gitlab-insights-poll"  # sharded jobs: gitlab-insights-poll-shard-0..N-1
POLL_BODY_FIELDS = ("user_ids", "shard", "shards")
POLL_PATH = "/api/poll"
# The Settings default of INNGEST_POLLING_CRON; only another value overrides --schedule.
DEFAULT_POLLING_CRON = "*/10 * * * *"

# FR4: the job fires every 5 to 15 minutes.
MIN_INTERVAL = timedelta(minutes=5)
MAX_INTERVAL = timedelta(minutes=15)

# Cloud Scheduler's documented limits for HTTP targets (RetryConfig, Job.attemptDeadline).
MIN_ATTEMPT_DEADLINE = timedelta(seconds=15)
MAX_ATTEMPT_DEADLINE = timedelta(minutes=30)
MAX_RETRY_COUNT = 5

# Placeholders the file may carry, `${NAME}` as envsubst writes them.
PLACEHOLDERS = {
    "SERVICE_URL": "the service's public base URL, e.g. https://insights.example.com",
    "SIGNING_KEY": "INNGEST_SIGNING_KEY, exactly as configured",
    "OIDC_SERVICE_ACCOUNT": "the job's service account, one of OIDC_SERVICE_ACCOUNTS",
}
_PLACEHOLDER_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Stands in for ${SERVICE_URL} when an unfilled template is validated.
SAMPLE_SERVICE_URL = "https://service.example"
SAMPLE_SERVICE_ACCOUNT = "scheduler@sample-project.iam.gserviceaccount.com"

# How Cloud Scheduler authenticates to /api/poll (`scheduler render --auth`):
# - oidc: a Google-signed ID token per call (--oidc-service-account-email, --oidc-token-audience);
#   no secret in the job. Recommended.
# - bearer: a static `Authorization: Bearer ${SIGNING_KEY}` header (the service's signing key).
AUTH_METHODS = ("oidc", "bearer")
OIDC_EMAIL_FLAG = "--oidc-service-account-email"
OIDC_AUDIENCE_FLAG = "--oidc-token-audience"
_OAUTH_FLAGS = ("--oauth-service-account-email", "--oauth-token-scope")
BEARER_HEADER_VALUE = "Bearer ${SIGNING_KEY}"
_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")

# Flags `gcloud scheduler jobs create http` documents (plus gcloud-wide ones a flags file may
# carry). Anything else in the file is a typo gcloud would reject.
GCLOUD_HTTP_CREATE_FLAGS = frozenset(
    {
        "--schedule",
        "--uri",
        "--location",
        "--attempt-deadline",
        "--description",
        "--headers",
        "--http-method",
        "--max-backoff",
        "--max-doublings",
        "--max-retry-attempts",
        "--max-retry-duration",
        "--min-backoff",
        "--time-zone",
        "--message-body",
        "--message-body-from-file",
        "--oauth-service-account-email",
        "--oauth-token-scope",
        "--oidc-service-account-email",
        "--oidc-token-audience",
    }
)
GCLOUD_WIDE_FLAGS = frozenset({"--project", "--account", "--billing-project", "--quiet"})
# gcloud accepts these methods for --http-method; /api/poll answers POST only.
GCLOUD_HTTP_METHODS = frozenset({"DELETE", "GET", "HEAD", "POST", "PUT", "PATCH", "OPTIONS"})
# Headers Cloud Scheduler sets itself or refuses (HttpTarget.headers documentation).
_RESERVED_HEADERS = ("content-length", "host", "x-google-", "x-appengine-", "x-cloudscheduler")


class SchedulerConfigError(Exception):
    """The file cannot be used; `problems` are one line each, fit for an operator."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


# --- durations -------------------------------------------------------------------------------

_NUM = r"(\d+(?:\.\d+)?)"
# gcloud's short form (`540s`, `1h30m`) and ISO 8601 (`PT9M`, `P1DT2H`), case-insensitive.
_SHORT_RE = re.compile(rf"(?:{_NUM}d)?(?:{_NUM}h)?(?:{_NUM}m)?(?:{_NUM}s)?", re.IGNORECASE)
_ISO_RE = re.compile(rf"p(?:{_NUM}d)?(?:t(?:{_NUM}h)?(?:{_NUM}m)?(?:{_NUM}s)?)?", re.IGNORECASE)
_UNIT_SECONDS = (86400, 3600, 60, 1)


def parse_duration(value: object) -> timedelta:
    """A gcloud duration (`540s`, `9m`, `1h30m`, `PT9M`, or a number of seconds)."""
    if isinstance(value, bool):
        raise ValueError(f"'{value}' is not a duration")
    if isinstance(value, int | float):
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"'{value}' is not a duration")
        return timedelta(seconds=value)
    text = str(value).strip()
    if re.fullmatch(_NUM, text):
        return timedelta(seconds=float(text))
    for pattern in (_SHORT_RE, _ISO_RE):
        m = pattern.fullmatch(text)
        if m and any(m.groups()):
            seconds = sum(float(g) * u for g, u in zip(m.groups(), _UNIT_SECONDS, strict=True) if g)
            return timedelta(seconds=seconds)
    raise ValueError(f"'{text}' is not a duration such as 30s, 5m or 1h")


def format_duration(td: timedelta) -> str:
    seconds = td.total_seconds()
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{seconds:g}s"


# --- the typed job ---------------------------------------------------------------------------


class JobRetryConfig(BaseModel):
    """Cloud Scheduler's RetryConfig as scheduler.yaml spells it; defaults are gcloud's.

    The built-in scheduler retries with `policy()`, an `app.retry.RetryPolicy` on this
    schedule: the one retry mechanism, with Cloud Scheduler's spacing.
    """

    model_config = ConfigDict(frozen=True)

    retry_count: int = 0
    min_backoff: timedelta = timedelta(seconds=5)
    max_backoff: timedelta = timedelta(hours=1)
    max_doublings: int = 5
    # Zero means no time limit.
    max_retry_duration: timedelta = timedelta(0)

    def delay(self, retry: int) -> float:
        """Seconds before retry number `retry` (1-based), as Cloud Scheduler spaces them.

        The interval starts at min_backoff, doubles max_doublings times, then grows linearly
        by that last doubled amount, capped at max_backoff.
        """
        if retry < 1:
            raise ValueError("retry numbers start at 1")
        base = self.min_backoff.total_seconds()
        if retry - 1 <= self.max_doublings:
            d = base * 2 ** (retry - 1)
        else:
            d = base * 2**self.max_doublings * (retry - self.max_doublings)
        return min(d, self.max_backoff.total_seconds())

    def policy(self) -> RetryPolicy:
        """Attempts and waits for the built-in scheduler: `retry_count` retries spaced by
        `delay`; a Retry-After is honoured up to max_backoff but never shortens the schedule."""
        return RetryPolicy(
            attempts=self.retry_count + 1,
            schedule=self.delay,
            max_requested_wait=self.max_backoff.total_seconds(),
            requested_is_floor=True,
        )


class SchedulerJob(BaseModel):
    """The values of scheduler.yaml (after any placeholders were filled or sampled)."""

    model_config = ConfigDict(frozen=True)

    schedule: str
    time_zone: str = "Etc/UTC"
    uri: str
    http_method: str = "POST"
    headers: dict[str, str] = {}
    message_body: str | None = None
    attempt_deadline: timedelta = timedelta(minutes=3)
    description: str | None = None
    retry: JobRetryConfig = JobRetryConfig()
    oidc_service_account_email: str | None = None
    oidc_token_audience: str | None = None
    oauth_service_account_email: str | None = None

    @property
    def body(self) -> bytes:
        return (self.message_body or "").encode("utf-8")


@dataclass(frozen=True)
class SchedulerFile:
    """The file's text and where it came from."""

    text: str
    origin: str

    @property
    def placeholders(self) -> list[str]:
        """Placeholder names still in the file's values (comments mention them too)."""
        names = [n for line in _value_lines(self.text) for n in _PLACEHOLDER_RE.findall(line)]
        return list(dict.fromkeys(names))


def _value_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.lstrip().startswith("#")]


def locate(path: str | Path | None = None, *, cwd: Path | None = None) -> SchedulerFile:
    """An explicit path, else ./scheduler.yaml, else the embedded default."""
    if path is not None:
        p = Path(path)
        try:
            return SchedulerFile(p.read_text(encoding="utf-8"), str(p))
        except FileNotFoundError:
            raise SchedulerConfigError(["no such file"]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SchedulerConfigError([f"cannot read ({type(exc).__name__})"]) from None
    local = (cwd or Path.cwd()) / DEFAULT_FILE_NAME
    if local.is_file():
        return locate(local)
    return SchedulerFile(DEFAULT_SCHEDULER_YAML, "built-in default scheduler.yaml")


def _load_mapping(text: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SchedulerConfigError([f"not valid YAML{where}"]) from None
    if not isinstance(data, dict):
        raise SchedulerConfigError(["must be a YAML map of `--flag: value` pairs"])
    return data


def _flag_name_problems(data: dict[str, Any]) -> list[str]:
    """Keys that are not flags gcloud accepts in a flags file."""
    problems: list[str] = []
    for key in data:
        if not isinstance(key, str) or not key.startswith("--"):
            problems.append(f"{key!r}: keys are gcloud flags written with their dashes (--uri)")
        elif key not in GCLOUD_HTTP_CREATE_FLAGS | GCLOUD_WIDE_FLAGS:
            problems.append(f"{key}: not a flag of `gcloud scheduler jobs create http`")
    if "--message-body-from-file" in data:
        problems.append("--message-body-from-file: use --message-body (the file must stand alone)")
    return problems


class _FlagReader:
    """Typed values out of the flag map. A value of the wrong type becomes a line in
    `problems` and its default is used, so that every problem is reported at once."""

    def __init__(self, data: dict[str, Any], problems: list[str]) -> None:
        self.data = data
        self.problems = problems

    def text(self, flag: str, default: str | None = None) -> str | None:
        v = self.data.get(flag, default)
        if v is None:
            return None
        if isinstance(v, dict | list | bool):
            self.problems.append(f"{flag}: must be a string")
            return None
        return str(v)

    def integer(self, flag: str, default: int) -> int:
        v = self.data.get(flag, default)
        if isinstance(v, bool) or not isinstance(v, int):
            self.problems.append(f"{flag}: must be a whole number, got {v!r}")
            return default
        return v

    def duration(self, flag: str, default: timedelta) -> timedelta:
        if flag not in self.data:
            return default
        try:
            return parse_duration(self.data[flag])
        except ValueError as exc:
            self.problems.append(f"{flag}: {exc}")
            return default

    def headers(self) -> dict[str, str]:
        """--headers as a YAML map, or gcloud's inline form KEY=VALUE,KEY=VALUE."""
        raw = self.data.get("--headers", {})
        if isinstance(raw, dict):
            return {str(k): "" if v is None else str(v) for k, v in raw.items()}
        if not isinstance(raw, str):
            self.problems.append("--headers: must be a map of header names to values")
            return {}
        headers: dict[str, str] = {}
        for pair in filter(None, raw.split(",")):
            k, sep, v = pair.partition("=")
            if not sep:
                self.problems.append(f"--headers: '{pair}' is not KEY=VALUE")
            headers[k.strip()] = v.strip()
        return headers

    def retry(self) -> JobRetryConfig:
        """The retry flags; absent ones take gcloud's defaults."""
        return JobRetryConfig(
            retry_count=self.integer("--max-retry-attempts", 0),
            min_backoff=self.duration("--min-backoff", timedelta(seconds=5)),
            max_backoff=self.duration("--max-backoff", timedelta(hours=1)),
            max_doublings=self.integer("--max-doublings", 5),
            max_retry_duration=self.duration("--max-retry-duration", timedelta(0)),
        )


def parse_flags(data: dict[str, Any]) -> SchedulerJob:
    """The typed job from a `--flag: value` map; structural problems raise all at once."""
    flags = _FlagReader(data, _flag_name_problems(data))
    headers = flags.headers()
    schedule = flags.text("--schedule")
    uri = flags.text("--uri")
    # Present with the wrong type is already a problem; only an absent flag is "required".
    for flag, value in (("--schedule", schedule), ("--uri", uri)):
        if value is None and flag not in data:
            flags.problems.append(f"{flag}: required")
    retry = flags.retry()
    job_values = dict(
        schedule=" ".join((schedule or "").split()),
        time_zone=flags.text("--time-zone", "Etc/UTC") or "Etc/UTC",
        uri=(uri or "").strip(),
        http_method=(flags.text("--http-method", "POST") or "POST").upper(),
        headers=headers,
        message_body=flags.text("--message-body"),
        attempt_deadline=flags.duration("--attempt-deadline", timedelta(minutes=3)),
        description=flags.text("--description"),
        retry=retry,
        oidc_service_account_email=flags.text(OIDC_EMAIL_FLAG),
        oidc_token_audience=flags.text(OIDC_AUDIENCE_FLAG),
        oauth_service_account_email=flags.text("--oauth-service-account-email"),
    )
    if flags.problems:
        raise SchedulerConfigError(flags.problems)
    return SchedulerJob(**job_values)


# --- placeholders ----------------------------------------------------------------------------


def _substitute(value: Any, values: dict[str, str]) -> Any:
    if isinstance(value, str):
        return _PLACEHOLDER_RE.sub(lambda m: values.get(m.group(1), m.group(0)), value)
    if isinstance(value, dict):
        return {k: _substitute(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, values) for v in value]
    return value


def _yaml_escape(value: str) -> str:
    # Placeholders sit inside double-quoted scalars: escape what would end or bend them.
    return value.replace("\\", "\\\\").replace('"', '\\"')


def fill_placeholders(text: str, values: dict[str, str]) -> str:
    """The file's text with `${NAME}` replaced in values (comments kept), verified by re-parsing."""

    def fill_line(line: str) -> str:
        if line.lstrip().startswith("#"):
            return line  # the comments explaining the placeholders stay readable
        return _PLACEHOLDER_RE.sub(
            lambda m: _yaml_escape(values[m.group(1)]) if m.group(1) in values else m.group(0),
            line,
        )

    filled = "".join(fill_line(line) for line in text.splitlines(keepends=True))
    # Only values in quoted scalars survive the text substitution unchanged: prove it.
    expected = _substitute(_load_mapping(text), values)
    try:
        same = _load_mapping(filled) == expected
    except SchedulerConfigError:
        same = False
    if not same:
        raise SchedulerConfigError(
            ["a filled placeholder changed the YAML structure: keep ${...} inside double quotes"]
        )
    return filled


def service_base_url(url: str) -> str:
    """The service's base URL from what an operator passes (`/api/poll` tolerated)."""
    url = url.strip().rstrip("/")
    url = url.removesuffix(POLL_PATH)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SchedulerConfigError([f"--url: '{url}' is not an http(s) URL"])
    if parts.query or parts.fragment:
        raise SchedulerConfigError(["--url: must not carry a query string or fragment"])
    return url


# --- validation ------------------------------------------------------------------------------


def load(source: SchedulerFile, values: dict[str, str] | None = None) -> SchedulerJob:
    """Parse the file; unfilled placeholders are sampled so the shape can still be checked."""
    data = _load_mapping(source.text)
    unknown = [n for n in source.placeholders if n not in PLACEHOLDERS]
    if unknown:
        names = ", ".join(f"${{{n}}}" for n in unknown)
        known = ", ".join(f"${{{n}}}" for n in PLACEHOLDERS)
        raise SchedulerConfigError([f"unknown placeholder {names} (known: {known})"])
    samples = {
        "SERVICE_URL": SAMPLE_SERVICE_URL,
        "SIGNING_KEY": "signkey-sample-0000",
        "OIDC_SERVICE_ACCOUNT": SAMPLE_SERVICE_ACCOUNT,
    }
    return parse_flags(_substitute(data, {**samples, **(values or {})}))


def cron_problems(
    expr: str, time_zone: str = "Etc/UTC", *, start: datetime | None = None
) -> list[str]:
    """A valid 5-field cron firing every MIN_INTERVAL..MAX_INTERVAL, all week long."""
    if len(expr.split()) != 5 or not croniter.is_valid(expr):
        return [f"--schedule: '{expr}' is not a 5-field cron expression such as '*/10 * * * *'"]
    try:
        tz = ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        tz = ZoneInfo("UTC")
    # A week covers day-of-week gaps; the first gap past the bounds is enough to report.
    t0 = (start or datetime(2026, 1, 5, tzinfo=UTC)).astimezone(tz)
    it = croniter(expr, t0)
    prev = it.get_next(datetime)
    end = prev + timedelta(days=7)
    while prev < end:
        nxt = it.get_next(datetime)
        gap = nxt - prev
        if gap < MIN_INTERVAL or gap > MAX_INTERVAL:
            minutes = gap.total_seconds() / 60
            return [
                f"--schedule: '{expr}' has a {minutes:g}-minute gap (after "
                f"{prev:%a %H:%M}); it must fire every 5 to 15 minutes"
            ]
        prev = nxt
    return []


def job_problems(job: SchedulerJob) -> list[str]:
    """Everything `scheduler check` enforces beyond parsing."""
    problems = cron_problems(job.schedule, job.time_zone)
    try:
        ZoneInfo(job.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(f"--time-zone: '{job.time_zone}' is not a tz database name (Etc/UTC)")

    parts = urlsplit(job.uri)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        problems.append(f"--uri: '{job.uri}' is not an http(s) URL")
    elif not parts.path.endswith(POLL_PATH):
        problems.append(f"--uri: '{job.uri}' must end with {POLL_PATH}")
    elif parts.query or parts.fragment:
        problems.append("--uri: must not carry a query string or fragment")

    if job.http_method not in GCLOUD_HTTP_METHODS:
        problems.append(f"--http-method: '{job.http_method}' is not an HTTP method")
    elif job.http_method != "POST":
        problems.append(f"--http-method: /api/poll answers POST, not {job.http_method}")

    problems += auth_problems(job)
    problems += body_problems(job)
    for name in job.headers:
        if name.lower().startswith(_RESERVED_HEADERS):
            problems.append(f"--headers: Cloud Scheduler sets or refuses '{name}'")

    if not MIN_ATTEMPT_DEADLINE <= job.attempt_deadline <= MAX_ATTEMPT_DEADLINE:
        problems.append(
            f"--attempt-deadline: {format_duration(job.attempt_deadline)} is outside the "
            "15s..30m Cloud Scheduler allows for HTTP targets"
        )
    r = job.retry
    if not 0 <= r.retry_count <= MAX_RETRY_COUNT:
        problems.append(f"--max-retry-attempts: {r.retry_count} is outside 0..{MAX_RETRY_COUNT}")
    if r.min_backoff > r.max_backoff:
        problems.append(
            f"--min-backoff ({format_duration(r.min_backoff)}) exceeds --max-backoff "
            f"({format_duration(r.max_backoff)})"
        )
    if r.max_doublings < 0:
        problems.append(f"--max-doublings: {r.max_doublings} must not be negative")
    return problems


def job_shard(job: SchedulerJob) -> tuple[int, int] | None:
    """(shard, shards) of a sharded job's body, None for an unsharded (or unreadable) one."""
    try:
        data = json.loads(job.body or b"{}")
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    shard, shards = data.get("shard"), data.get("shards")
    if type(shard) is int and type(shards) is int:
        return shard, shards
    return None


def body_problems(job: SchedulerJob) -> list[str]:
    """The body /api/poll would accept: empty, {}, or a shard (`{"shard": 0, "shards": 4}`)."""
    if not job.body.strip():
        return []
    try:
        data = json.loads(job.body)
    except ValueError:
        return ["--message-body: not JSON (/api/poll would answer 422)"]
    if not isinstance(data, dict):
        return ['--message-body: must be a JSON object such as {} or {"shard": 0, "shards": 4}']
    problems = [
        f"--message-body: unknown field '{k}' (known: {', '.join(POLL_BODY_FIELDS)})"
        for k in data
        if k not in POLL_BODY_FIELDS
    ]
    if "shard" in data or "shards" in data:
        sharded = job_shard(job)
        if sharded is None:
            problems.append("--message-body: shard and shards go together, as integers")
        elif problem := shard_problem(*sharded):
            problems.append(f"--message-body: {problem}")
        if "user_ids" in data:
            problems.append("--message-body: user_ids and shard exclude each other")
    return problems


def shard_set_problems(jobs: Sequence[SchedulerJob]) -> list[str]:
    """Sharded jobs checked together must cover shards 0..N-1 once each, all with one N."""
    shards = [job_shard(j) for j in jobs]
    if len(jobs) < 2 or all(s is None for s in shards):
        return []
    if any(s is None for s in shards):
        return ["an unsharded job polls every user: do not run it next to sharded jobs"]
    counts = {s[1] for s in shards if s}
    if len(counts) > 1:
        return [f"the jobs disagree on shards ({', '.join(map(str, sorted(counts)))})"]
    n = counts.pop()
    seen = Counter(s[0] for s in shards if s)
    problems = [f"shard {k} of {n} is in {c} jobs" for k, c in sorted(seen.items()) if c > 1]
    missing = [str(k) for k in range(n) if k not in seen]
    if missing:
        problems.append(f"no job for shard {', '.join(missing)} of {n}: its users are never synced")
    return problems


def shard_files(source: SchedulerFile, shards: int) -> list[tuple[str, SchedulerFile]]:
    """`render --shards N`: N jobs (name, flags file), each polling one shard of the users.

    The files are rewritten from the values (comments are not kept); every job gets the same
    schedule and retry policy and the body `{"shard": k, "shards": N}`.
    """
    if problem := shard_problem(0, shards):
        raise SchedulerConfigError([f"--shards: {problem}"])
    data = _load_mapping(source.text)
    body = str(data.get("--message-body") or "{}").strip()
    if body != "{}":
        raise SchedulerConfigError(
            [f"--message-body: is {body}; only a job polling everyone ({{}}) can be sharded"]
        )
    out = []
    for k in range(shards):
        name = f"{SHARD_JOB_NAME}-shard-{k}"
        flags = dict(data, **{"--message-body": json.dumps({"shard": k, "shards": shards})})
        if flags.get("--description"):
            flags["--description"] = f"{flags['--description']} (shard {k} of {shards})"
        header = (
            f"{name}: shard {k} of {shards} of the users, rendered from {source.origin}.\n"
            f"  gcloud scheduler jobs create http {name} --location=LOCATION "
            f"--flags-file={name}.yaml"
        )
        out.append((name, SchedulerFile(dump_flags(flags, header), f"{name}.yaml")))
    return out


def auth_problems(job: SchedulerJob) -> list[str]:
    """The job authenticates one way: OIDC flags (recommended) or a static bearer header."""
    problems: list[str] = []
    auth = {k.lower(): v for k, v in job.headers.items()}.get("authorization")
    oidc = job.oidc_service_account_email is not None or job.oidc_token_audience is not None
    if job.oauth_service_account_email is not None:
        problems.append(
            "--oauth-service-account-email: sends a Google OAuth access token, which /api/poll "
            f"does not accept; use {OIDC_EMAIL_FLAG} and {OIDC_AUDIENCE_FLAG}"
        )
    if auth is not None and oidc:
        problems.append(
            f"--headers: an Authorization header and {OIDC_EMAIL_FLAG} exclude each other "
            "(Cloud Scheduler sends the ID token in Authorization): keep one"
        )
    elif auth is None and not oidc:
        problems.append(
            f"needs {OIDC_EMAIL_FLAG} and {OIDC_AUDIENCE_FLAG} (recommended), or --headers "
            'Authorization: "Bearer ${SIGNING_KEY}" (/api/poll refuses unauthenticated calls)'
        )
    if oidc:
        email = (job.oidc_service_account_email or "").strip()
        if not email:
            problems.append(
                f"{OIDC_EMAIL_FLAG}: required with {OIDC_AUDIENCE_FLAG} (needs "
                f"{OIDC_EMAIL_FLAG} and {OIDC_AUDIENCE_FLAG} together)"
            )
        elif not _EMAIL_RE.fullmatch(email):
            problems.append(
                f"{OIDC_EMAIL_FLAG}: '{email}' is not a service account e-mail such as "
                "scheduler@PROJECT.iam.gserviceaccount.com"
            )
        audience = (job.oidc_token_audience or "").strip()
        if not audience:
            problems.append(
                f"{OIDC_AUDIENCE_FLAG}: required with {OIDC_EMAIL_FLAG}: the service URL, "
                "exactly as listed in the service's OIDC_AUDIENCES"
            )
        elif any(c.isspace() for c in audience):
            problems.append(f"{OIDC_AUDIENCE_FLAG}: must not contain spaces")
    elif auth is not None:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            problems.append(
                '--headers: needs Authorization: "Bearer ${SIGNING_KEY}" (/api/poll refuses '
                "other schemes)"
            )
    return problems


def file_auth(data: dict[str, Any]) -> str | None:
    """The method a `--flag: value` map authenticates with: "oidc", "bearer" or None."""
    if OIDC_EMAIL_FLAG in data or OIDC_AUDIENCE_FLAG in data:
        return "oidc"
    headers = data.get("--headers")
    if isinstance(headers, dict) and any(str(k).lower() == "authorization" for k in headers):
        return "bearer"
    return None


def with_auth_flags(data: dict[str, Any], auth: str) -> dict[str, Any]:
    """The map with its authentication replaced by `auth`'s flags (placeholders unfilled)."""
    if auth not in AUTH_METHODS:
        raise SchedulerConfigError([f"--auth: '{auth}' is not one of {', '.join(AUTH_METHODS)}"])
    headers = data.get("--headers", {})
    if not isinstance(headers, dict):
        raise SchedulerConfigError(["--headers: write the headers as a map to switch --auth"])
    headers = {k: v for k, v in headers.items() if str(k).lower() != "authorization"}
    if auth == "bearer":
        headers = {"Authorization": BEARER_HEADER_VALUE, **headers}
    dropped = (OIDC_EMAIL_FLAG, OIDC_AUDIENCE_FLAG, *_OAUTH_FLAGS)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "--headers":
            if headers:
                out[key] = headers
        elif key not in dropped:
            out[key] = value
    if "--headers" not in out and headers:
        out["--headers"] = headers
    if auth == "oidc":
        out[OIDC_EMAIL_FLAG] = "${OIDC_SERVICE_ACCOUNT}"
        out[OIDC_AUDIENCE_FLAG] = "${SERVICE_URL}"
    return out


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    # A JSON string is a YAML double-quoted scalar; placeholders stay inside the quotes.
    return json.dumps(str(value), ensure_ascii=False)


def dump_flags(data: dict[str, Any], header: str = "") -> str:
    """A `--flag: value` map as a flags file: strings double-quoted, header maps indented."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines += [f"  {k}: {_yaml_scalar(v)}" for k, v in value.items()]
        else:
            lines.append(f"{key}: {_yaml_scalar(value)}")
    return "\n".join(lines) + "\n"


def apply_auth(
    source: SchedulerFile, auth: str | None, settings: Settings, url: str | None = None
) -> SchedulerFile:
    """The file `scheduler render --auth AUTH` fills: `auth`'s flags (None: as the file says).

    Switching method rewrites the file from its values (its comments are not kept). For OIDC
    the service account is filled from OIDC_SERVICE_ACCOUNTS (the first one), and the audience
    (`${SERVICE_URL}` from `url`, or a literal) must be one of OIDC_AUDIENCES: a job whose
    tokens the service would refuse is an error here, not a 401 in production.
    """
    data = _load_mapping(source.text)
    current = file_auth(data)
    if auth is not None and auth != current:
        data = with_auth_flags(data, auth)
        note = f"{DEFAULT_FILE_NAME} for `gcloud scheduler jobs create http --flags-file`, "
        note += f"rendered with --auth {auth} from {source.origin}."
        source = SchedulerFile(dump_flags(data, note), source.origin)
    if file_auth(data) != "oidc":
        return source
    problems: list[str] = []
    values: dict[str, str] = {}
    # Without OIDC_SERVICE_ACCOUNTS the placeholder stays, for the caller to report with the
    # other values it lacks (a setting not given, not a problem of the file).
    if "OIDC_SERVICE_ACCOUNT" in source.placeholders and settings.oidc_service_accounts:
        values["OIDC_SERVICE_ACCOUNT"] = settings.oidc_service_accounts[0]
    audience = str(data.get(OIDC_AUDIENCE_FLAG) or "")
    if url and "${SERVICE_URL}" in audience:
        audience = audience.replace("${SERVICE_URL}", service_base_url(url))
    known = settings.oidc_audiences
    if known and "${" not in audience and audience not in known:
        problems.append(
            f"{OIDC_AUDIENCE_FLAG}: '{audience}' is not in OIDC_AUDIENCES "
            f"({', '.join(known)}): the service would refuse the job's tokens"
        )
    if problems:
        raise SchedulerConfigError(problems)
    return SchedulerFile(fill_placeholders(source.text, values), source.origin)


def check(source: SchedulerFile) -> list[str]:
    """All problems of a file, parsing included; empty means `scheduler check` passes."""
    try:
        job = load(source)
    except SchedulerConfigError as exc:
        return exc.problems
    return job_problems(job)


def load_valid(source: SchedulerFile) -> SchedulerJob:
    problems = check(source)
    if problems:
        raise SchedulerConfigError(problems)
    return load(source)


def effective_cron(job: SchedulerJob, settings: Settings) -> tuple[str, str]:
    """The cron the built-in scheduler fires on, and where it came from.

    INNGEST_POLLING_CRON overrides scheduler.yaml's --schedule when its value differs from
    the default `*/10 * * * *`. Settings cannot tell "unset" from "set to the default" (a copied
    .env.example sets it), and the default is what scheduler.yaml ships anyway.
    """
    env_cron = " ".join(settings.inngest_polling_cron.split())
    if env_cron != DEFAULT_POLLING_CRON:
        return env_cron, "INNGEST_POLLING_CRON"
    return job.schedule, "scheduler.yaml"


# The repository's scheduler.yaml, byte for byte (tests/unit/test_scheduler_config.py checks).
DEFAULT_SCHEDULER_YAML = """\
# The gitlab-insights polling job: a gcloud --flags-file (a YAML map of `--flag: value`).
#
#   gitlab-insights scheduler render --url https://insights.example.com > job.yaml
#   gcloud scheduler jobs create http gitlab-insights-poll --location=LOCATION --flags-file=job.yaml
#
# Placeholders (gcloud does not expand them: fill them first, with `gitlab-insights scheduler
# render` as above, or with `envsubst < scheduler.yaml > job.yaml`):
#   ${SERVICE_URL}           the service's public base URL, scheme included, no trailing slash,
#                            e.g. https://insights.example.com or https://example.com/insights;
#                            also the audience of the job's ID tokens (OIDC_AUDIENCES)
#   ${OIDC_SERVICE_ACCOUNT}  the service account the job's ID tokens are minted for, one of the
#                            service's OIDC_SERVICE_ACCOUNTS
#   ${SIGNING_KEY}           only with `render --auth bearer`: INNGEST_SIGNING_KEY exactly as
#                            configured; keep such a job.yaml out of version control
#
# The built-in scheduler (`gitlab-insights serve --scheduler`) reads the same file: it fires on
# --schedule (unless INNGEST_POLLING_CRON is set to something other than */10 * * * *), uses
# --attempt-deadline as its request timeout and retries 5xx answers and timeouts with the
# policy below (it signs its own calls; the authentication flags are for Cloud Scheduler).
# `gitlab-insights scheduler check` validates this file.

# Every 10 minutes (FR4 asks for 5 to 15), in UTC so DST never shifts or skips a run.
--schedule: "*/10 * * * *"
--time-zone: Etc/UTC
--description: "gitlab-insights: sync GitLab issues, merge requests and comments"

--uri: "${SERVICE_URL}/api/poll"
--http-method: POST
--headers:
  Content-Type: application/json
# `{}` polls every user with a monitored project.
--message-body: "{}"

# Authentication: Cloud Scheduler sends a Google-signed OIDC ID token (RS256, an hour long)
# for this service account with every call, so the job holds no secret. The service accepts
# it when OIDC_AUDIENCES lists the audience and OIDC_SERVICE_ACCOUNTS the account.
# `scheduler render --auth bearer` replaces these two flags with the static header
# Authorization: "Bearer ${SIGNING_KEY}" (for schedulers without OIDC).
--oidc-service-account-email: "${OIDC_SERVICE_ACCOUNT}"
--oidc-token-audience: "${SERVICE_URL}"

# A run answers when all users are synced; kept under the 10-minute interval so one attempt
# never outlives the next scheduled run.
--attempt-deadline: 540s

# 3 retries of a 5xx answer (e.g. 503 "GitLab down") or a timeout: after 30s, 60s, 120s.
--max-retry-attempts: 3
--min-backoff: 30s
--max-backoff: 120s
--max-doublings: 2
# --max-retry-duration is left at its default (0 = no time limit): the 3 retries bound it.
"""
