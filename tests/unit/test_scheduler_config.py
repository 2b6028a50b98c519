"""scheduler.yaml: parsing, validation, placeholders, and the `scheduler render|check` commands."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from croniter import croniter
from typer.testing import CliRunner

from app.cli import cli
from app.scheduler import config as sc
from app.settings import load_settings

REPO_FILE = Path(__file__).resolve().parents[2] / "scheduler.yaml"
KEY = "signkey-prod-" + "0123456789abcdef" * 2  # an obviously fake key
SA = "poller@insights-prod.iam.gserviceaccount.com"
URL = "https://insights.example.com"
OIDC_ENV = {"OIDC_AUDIENCES": "https://insights.example.com", "OIDC_SERVICE_ACCOUNTS": SA}

# What `gcloud scheduler jobs create http --help` documents, with the value format of each
# flag, written out here independently of app/scheduler/config.py.
_GCLOUD_DURATION = re.compile(r"^(\d+(\.\d+)?[smhd])+$|^P(\d+D)?(T(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?$")


def _duration(v: object) -> bool:
    return isinstance(v, str) and bool(_GCLOUD_DURATION.match(v))


def _cron(v: object) -> bool:
    return isinstance(v, str) and len(v.split()) == 5 and croniter.is_valid(v)


def _tz(v: object) -> bool:
    try:
        ZoneInfo(str(v))
    except Exception:
        return False
    return True


def _headers(v: object) -> bool:
    return isinstance(v, dict) and all(
        isinstance(k, str) and re.fullmatch(r"[A-Za-z0-9-]+", k) and isinstance(x, str)
        for k, x in v.items()
    )


GCLOUD_CREATE_HTTP_FLAGS = {
    "--schedule": _cron,
    "--uri": lambda v: isinstance(v, str) and re.match(r"^https?://[^/\s]+/\S*$", v) is not None,
    "--attempt-deadline": _duration,
    "--description": lambda v: isinstance(v, str),
    "--headers": _headers,
    "--http-method": lambda v: (
        str(v).lower() in {"delete", "get", "head", "post", "put", "patch", "options"}
    ),
    "--max-backoff": _duration,
    "--max-doublings": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "--max-retry-attempts": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "--max-retry-duration": _duration,
    "--min-backoff": _duration,
    "--time-zone": _tz,
    "--message-body": lambda v: isinstance(v, str),
    "--oidc-service-account-email": lambda v: isinstance(v, str),
    "--oidc-token-audience": lambda v: isinstance(v, str),
}


@pytest.fixture
def runner(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no ./scheduler.yaml: the packaged copy is used
    for name in (
        "INNGEST_SIGNING_KEY",
        "SERVICE_URL",
        "INNGEST_POLLING_CRON",
        "DATABASE_URL",
        "OIDC_AUDIENCES",
        "OIDC_SERVICE_ACCOUNTS",
    ):
        monkeypatch.delenv(name, raising=False)
    r = CliRunner()

    def invoke(*args: str, **env: str):
        return r.invoke(cli, list(args), env=env or None, catch_exceptions=False)

    return invoke


def _source(text: str) -> sc.SchedulerFile:
    return sc.SchedulerFile(text, "test.yaml")


GOOD = REPO_FILE.read_text(encoding="utf-8")
# The shipped file switched to the static bearer header, as `render --auth bearer` does.
BEARER = sc.dump_flags(sc.with_auth_flags(yaml.safe_load(GOOD), "bearer"))


# --- the shipped file ----------------------------------------------------------------------


def test_embedded_copy_is_the_repository_file():
    # `pip install .` has no scheduler.yaml next to it: the embedded copy must not drift.
    assert sc.DEFAULT_SCHEDULER_YAML == GOOD


def test_shipped_file_parses_and_passes_check():
    source = sc.locate(REPO_FILE)
    assert sc.check(source) == []
    assert source.placeholders == ["SERVICE_URL", "OIDC_SERVICE_ACCOUNT"]
    job = sc.load(
        source, {"SERVICE_URL": "https://insights.example.com", "OIDC_SERVICE_ACCOUNT": SA}
    )
    assert job.schedule == "*/10 * * * *"
    assert job.time_zone == "Etc/UTC"
    assert job.uri == "https://insights.example.com/api/poll"
    assert job.http_method == "POST"
    # OIDC (recommended): Google-signed tokens, no secret in the job.
    assert "Authorization" not in job.headers
    assert job.oidc_service_account_email == SA
    assert job.oidc_token_audience == "https://insights.example.com"
    assert job.body == b"{}"
    assert sc.MIN_ATTEMPT_DEADLINE <= job.attempt_deadline < timedelta(minutes=10)
    assert job.retry.retry_count == 3
    # Exponential: each wait doubles.
    waits = [job.retry.delay(i) for i in (1, 2, 3)]
    assert waits[1] == 2 * waits[0] and waits[2] == 2 * waits[1]


def test_every_flag_is_documented_by_gcloud():
    data = yaml.safe_load(GOOD)
    assert set(data) <= set(GCLOUD_CREATE_HTTP_FLAGS)
    assert {"--schedule", "--uri", "--time-zone", "--http-method", "--headers"} <= set(data)
    assert {"--attempt-deadline", "--max-retry-attempts", "--min-backoff", "--max-backoff"} <= set(
        data
    )


def test_locate_order(tmp_path):
    assert sc.locate(cwd=tmp_path).text == sc.DEFAULT_SCHEDULER_YAML
    local = tmp_path / "scheduler.yaml"
    local.write_text(GOOD.replace("*/10 * * * *", "*/15 * * * *"))
    assert "*/15" in sc.locate(cwd=tmp_path).text
    other = tmp_path / "other.yaml"
    other.write_text(GOOD.replace("*/10 * * * *", "*/5 * * * *"))
    assert "*/5 *" in sc.locate(other, cwd=tmp_path).text
    with pytest.raises(sc.SchedulerConfigError, match="no such file"):
        sc.locate(tmp_path / "missing.yaml")


# --- validation ------------------------------------------------------------------------------


def _with(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (_with('"*/10 * * * *"', '"0 * * * *"'), "60-minute gap"),
        (_with('"*/10 * * * *"', '"* * * * *"'), "1-minute gap"),
        (_with('"*/10 * * * *"', '"*/10 * * * 1-5"'), "every 5 to 15 minutes"),
        (_with('"*/10 * * * *"', '"*/10 * * *"'), "not a 5-field cron"),
        (_with('"*/10 * * * *"', '"*/10 * * * * *"'), "not a 5-field cron"),
        (_with('"*/10 * * * *"', '"every 10 minutes"'), "not a 5-field cron"),
        (_with("Etc/UTC", "Mars/Olympus"), "--time-zone"),
        (_with('"${SERVICE_URL}/api/poll"', '"${SERVICE_URL}/poll"'), "must end with /api/poll"),
        (_with('"${SERVICE_URL}/api/poll"', '"ftp://host/api/poll"'), "not an http(s) URL"),
        (_with('"${SERVICE_URL}/api/poll"', '"${SERVICE_URL}/api/poll?x=1"'), "query"),
        (_with("--http-method: POST", "--http-method: GET"), "answers POST"),
        (_with('--oidc-service-account-email: "${OIDC_SERVICE_ACCOUNT}"', ""), "required with"),
        (
            _with('--oidc-service-account-email: "${OIDC_SERVICE_ACCOUNT}"', "").replace(
                '--oidc-token-audience: "${SERVICE_URL}"', ""
            ),
            "needs --oidc-service-account-email and --oidc-token-audience",
        ),
        (_with('"${OIDC_SERVICE_ACCOUNT}"', '"poller"'), "not a service account e-mail"),
        (_with('--oidc-token-audience: "${SERVICE_URL}"', ""), "--oidc-token-audience: required"),
        (
            _with('--oidc-token-audience: "${SERVICE_URL}"', '--oidc-token-audience: "a b"'),
            "spaces",
        ),
        (
            _with("Content-Type: application/json", 'Authorization: "Bearer ${SIGNING_KEY}"'),
            "exclude each other",
        ),
        (
            GOOD.replace("--oidc-service-account-email", "--oauth-service-account-email"),
            "OAuth access token",
        ),
        (BEARER.replace('Authorization: "Bearer ', 'Authorization: "Basic '), "other schemes"),
        (_with("Content-Type: application/json", "X-CloudScheduler-Foo: a"), "sets or refuses"),
        (_with("--attempt-deadline: 540s", "--attempt-deadline: 10s"), "15s..30m"),
        (_with("--attempt-deadline: 540s", "--attempt-deadline: 31m"), "15s..30m"),
        (_with("--attempt-deadline: 540s", "--attempt-deadline: soon"), "not a duration"),
        (_with("--max-retry-attempts: 3", "--max-retry-attempts: 6"), "outside 0..5"),
        (_with("--max-retry-attempts: 3", "--max-retry-attempts: -1"), "outside 0..5"),
        (_with("--max-retry-attempts: 3", "--max-retry-attempts: three"), "whole number"),
        (_with("--min-backoff: 30s", "--min-backoff: 1h"), "exceeds --max-backoff"),
        (_with("--max-doublings: 2", "--max-doublings: -1"), "must not be negative"),
        (GOOD + "--schedul: x\n", "not a flag of `gcloud scheduler jobs create http`"),
        (GOOD + "schedule: x\n", "written with their dashes"),
        (GOOD.replace("${OIDC_SERVICE_ACCOUNT}", "${OIDC_SA}"), "unknown placeholder"),
        ("--schedule: [unclosed\n", "not valid YAML"),
        ("- a\n- b\n", "YAML map"),
        (GOOD.replace("--uri:", "--url:"), "--uri: required"),
    ],
)
def test_check_reports_each_problem(text, expected):
    problems = sc.check(_source(text))
    assert problems, text
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("540s", 540), ("9m", 540), ("1h30m", 5400), ("PT9M", 540), ("P1DT1S", 86401), (15, 15)],
)
def test_parse_duration(value, seconds):
    assert sc.parse_duration(value).total_seconds() == seconds


@pytest.mark.parametrize("value", ["", "s", "-5s", "5 minutes", "1x", True, -1])
def test_parse_duration_rejects(value):
    with pytest.raises(ValueError):
        sc.parse_duration(value)


def test_retry_delays_follow_cloud_scheduler():
    # Cloud Scheduler's documented example: min 10s, max 300s, max doublings 3.
    policy = sc.JobRetryConfig(
        retry_count=5,
        min_backoff=timedelta(seconds=10),
        max_backoff=timedelta(seconds=300),
        max_doublings=3,
    )
    assert [policy.delay(i) for i in range(1, 9)] == [10, 20, 40, 80, 160, 240, 300, 300]


def test_retry_config_as_the_one_retry_policy():
    config = sc.JobRetryConfig(
        retry_count=3,
        min_backoff=timedelta(seconds=30),
        max_backoff=timedelta(seconds=120),
        max_doublings=2,
    )
    policy = config.policy()
    assert policy.attempts == 4  # the first attempt and 3 retries
    assert [policy.delay(i) for i in (1, 2, 3)] == [30, 60, 120]
    # A server's Retry-After lengthens a wait up to --max-backoff, never shortens it.
    assert policy.delay(1, requested=100) == 100
    assert policy.delay(2, requested=9999) == 120
    assert policy.delay(3, requested=1) == 120


def test_fill_placeholders_keeps_comments_and_quotes_safely():
    tricky = 'signkey-x-a"b\\c'
    filled = sc.fill_placeholders(
        BEARER, {"SERVICE_URL": "https://h.example", "SIGNING_KEY": tricky}
    )
    data = yaml.safe_load(filled)
    assert data["--headers"]["Authorization"] == f"Bearer {tricky}"
    assert data["--uri"] == "https://h.example/api/poll"
    assert sc.SchedulerFile(filled, "x").placeholders == []
    filled = sc.fill_placeholders(
        GOOD, {"SERVICE_URL": "https://h.example", "OIDC_SERVICE_ACCOUNT": SA}
    )
    # The comments still explain the placeholders.
    assert "#   ${OIDC_SERVICE_ACCOUNT}" in filled and "#   ${SIGNING_KEY}" in filled
    assert sc.SchedulerFile(filled, "x").placeholders == []


def test_unquoted_placeholder_that_would_break_yaml_is_refused():
    text = "--uri: ${SERVICE_URL}/api/poll\n"
    with pytest.raises(sc.SchedulerConfigError, match="double quotes"):
        sc.fill_placeholders(text, {"SERVICE_URL": "https://h.example/#: x"})


def test_effective_cron():
    job = sc.load(sc.locate(REPO_FILE))
    assert sc.effective_cron(job, load_settings()) == ("*/10 * * * *", "scheduler.yaml")
    # The default, even set explicitly (a copied .env.example), leaves the file in charge.
    dflt = load_settings(inngest_polling_cron="*/10 * * * *")
    assert sc.effective_cron(job, dflt)[1] == "scheduler.yaml"
    fast = load_settings(inngest_polling_cron="* * * * *")
    assert sc.effective_cron(job, fast) == ("* * * * *", "INNGEST_POLLING_CRON")


def test_service_base_url():
    assert sc.service_base_url("https://h.example/") == "https://h.example"
    assert sc.service_base_url("https://h.example/sub/api/poll") == "https://h.example/sub"
    with pytest.raises(sc.SchedulerConfigError):
        sc.service_base_url("h.example")


# --- the commands ----------------------------------------------------------------------------


def test_check_command_ok(runner):
    r = runner("scheduler", "check")
    assert r.exit_code == 0, r.output
    assert "ok: built-in default scheduler.yaml" in r.output
    assert "retries: 3" in r.output
    r = runner("scheduler", "check", "--file", str(REPO_FILE))
    assert r.exit_code == 0, r.output


def test_check_command_problems(runner, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(_with("--max-retry-attempts: 3", "--max-retry-attempts: 9"))
    r = runner("scheduler", "check", "--file", str(bad))
    assert r.exit_code == 1
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert lines == [f"error: {bad}: --max-retry-attempts: 9 is outside 0..5"]
    r = runner("scheduler", "check", "--file", str(tmp_path / "nope.yaml"))
    assert r.exit_code == 1 and "no such file" in r.output and "Traceback" not in r.output


def test_render_fills_and_masks(runner):
    r = runner(
        "scheduler",
        "render",
        "--auth",
        "bearer",
        "--url",
        "https://insights.example.com",
        INNGEST_SIGNING_KEY=KEY,
    )
    assert r.exit_code == 0, r.output
    assert KEY not in r.output
    assert "Bearer signkey-prod-********" in r.stdout
    assert "--show-secret" in r.stderr


@pytest.mark.parametrize("auth", [None, "oidc", "bearer"])
def test_render_output_is_a_gcloud_flags_file(runner, tmp_path, auth):
    args = ["scheduler", "render", "--show-secret", *(["--auth", auth] if auth else [])]
    r = runner(
        *args,
        INNGEST_SIGNING_KEY=KEY,
        SERVICE_URL="https://insights.example.com/",
        **OIDC_ENV,
    )
    assert r.exit_code == 0, r.output
    data = yaml.safe_load(r.stdout)
    assert isinstance(data, dict)
    for flag, value in data.items():
        assert flag in GCLOUD_CREATE_HTTP_FLAGS, f"{flag} is not a documented flag"
        assert GCLOUD_CREATE_HTTP_FLAGS[flag](value), f"{flag}: bad value {value!r}"
    assert data["--uri"] == "https://insights.example.com/api/poll"
    if auth == "bearer":
        assert data["--headers"]["Authorization"] == f"Bearer {KEY}"
        assert "--oidc-service-account-email" not in data
    else:
        assert "Authorization" not in data["--headers"] and KEY not in r.stdout
        assert data["--oidc-service-account-email"] == SA
        assert data["--oidc-token-audience"] == "https://insights.example.com"
    assert data["--schedule"] == "*/10 * * * *"
    assert 0 <= data["--max-retry-attempts"] <= 5
    values = [ln for ln in r.stdout.splitlines() if not ln.lstrip().startswith("#")]
    assert "${" not in "\n".join(values)  # no placeholder left in values
    # What render prints passes check as is.
    out = tmp_path / "job.yaml"
    out.write_text(r.stdout)
    assert runner("scheduler", "check", "--file", str(out)).exit_code == 0


def test_render_without_values_says_what_is_missing(runner):
    # An option or a setting not given is a usage error (exit code 2), each on its line.
    r = runner("scheduler", "render")
    assert r.exit_code == 2
    assert r.stdout == ""
    assert "pass --url or set SERVICE_URL" in r.stderr
    assert "no value for ${OIDC_SERVICE_ACCOUNT}: set OIDC_SERVICE_ACCOUNTS" in r.stderr
    r = runner("scheduler", "render", **OIDC_ENV)
    assert r.exit_code == 2 and "pass --url or set SERVICE_URL" in r.stderr
    r = runner("scheduler", "render", "--auth", "bearer")
    assert r.exit_code == 2
    assert "pass --url or set SERVICE_URL" in r.stderr
    assert "set INNGEST_SIGNING_KEY" in r.stderr
    r = runner("scheduler", "render", "--url", "not-a-url", INNGEST_SIGNING_KEY=KEY)
    assert r.exit_code == 2 and "not an http(s) URL" in r.stderr


def test_render_refuses_an_audience_the_service_would_refuse(runner):
    env = {**OIDC_ENV, "OIDC_AUDIENCES": "https://other.example"}
    r = runner("scheduler", "render", "--url", "https://insights.example.com", **env)
    assert r.exit_code == 1 and r.stdout == ""
    assert "'https://insights.example.com' is not in OIDC_AUDIENCES" in r.stderr
    r = runner("scheduler", "render", "--auth", "basic", **OIDC_ENV)
    assert r.exit_code == 2 and "'basic' is not one of 'oidc', 'bearer'" in r.stderr


def test_switching_auth_back_and_forth_keeps_everything_else():
    data = yaml.safe_load(GOOD)
    bearer = sc.with_auth_flags(data, "bearer")
    assert sc.file_auth(bearer) == "bearer" and sc.file_auth(data) == "oidc"
    assert bearer["--headers"] == {
        "Authorization": "Bearer ${SIGNING_KEY}",
        "Content-Type": "application/json",
    }
    assert sc.with_auth_flags(bearer, "oidc") == data
    assert yaml.safe_load(sc.dump_flags(bearer, "a\n\nb")) == bearer
    assert sc.check(_source(BEARER)) == []
    # An unchanged method keeps the file's text (and its comments).
    settings = load_settings(
        oidc_audiences="https://insights.example.com", oidc_service_accounts=SA
    )
    rendered = sc.apply_auth(sc.locate(REPO_FILE), "oidc", settings, "https://insights.example.com")
    assert rendered.text == GOOD.replace('"${OIDC_SERVICE_ACCOUNT}"', f'"{SA}"')


# --- sharded schedules (issue 13): render --shards N, check -f ... -f ... ----------------


def test_render_shards_writes_one_job_per_shard_that_check_accepts_together(runner, tmp_path):
    out = tmp_path / "jobs"
    r = runner(
        "scheduler", "render", "--shards", "3", "--out-dir", str(out), SERVICE_URL=URL, **OIDC_ENV
    )
    assert r.exit_code == 0, r.output
    files = sorted(out.iterdir())
    assert [f.name for f in files] == [f"gitlab-insights-poll-shard-{k}.yaml" for k in range(3)]
    assert r.stdout.count("gcloud scheduler jobs create http gitlab-insights-poll-shard-") == 3
    for k, f in enumerate(files):
        data = yaml.safe_load(f.read_text())
        assert json.loads(data["--message-body"]) == {"shard": k, "shards": 3}
        assert data["--oidc-token-audience"] == URL and data["--schedule"] == "*/10 * * * *"
        assert f"shard {k} of 3" in data["--description"]
        for flag, value in data.items():
            assert GCLOUD_CREATE_HTTP_FLAGS[flag](value), flag
    every = [a for f in files for a in ("-f", str(f))]
    r = runner("scheduler", "check", *every)
    assert r.exit_code == 0, r.output
    assert "ok: 3 jobs together" in r.stdout
    r = runner("scheduler", "check", *every[:4])  # shard 2 missing
    assert r.exit_code == 1 and "no job for shard 2 of 3" in r.stderr
    r = runner("scheduler", "check", *every, "-f", str(files[0]))  # shard 0 twice
    assert r.exit_code == 1 and "shard 0 of 3 is in 2 jobs" in r.stderr


def test_render_shards_needs_an_out_dir_and_a_sane_count(runner, tmp_path):
    r = runner("scheduler", "render", "--shards", "2", SERVICE_URL=URL, **OIDC_ENV)
    assert r.exit_code == 2 and "--out-dir" in r.stderr
    for n in ("0", "1001"):
        args = ("--shards", n, "--out-dir", str(tmp_path))
        r = runner("scheduler", "render", *args, SERVICE_URL=URL, **OIDC_ENV)
        assert r.exit_code == 2 and "Invalid value for '--shards'" in r.stderr
        assert ("greater than or equal to 1" if n == "0" else "less than or equal to 1000") in (
            r.stderr
        )


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('{"shard": 0, "shards": 2}', None),
        ("{}", None),
        ('{"shard": 2, "shards": 2}', "shard must be between 0 and shards - 1"),
        ('{"shard": 0}', "go together"),
        ('{"shard": 0, "shards": 2, "user_ids": ["u"]}', "exclude each other"),
        ('{"shrd": 0}', "unknown field 'shrd'"),
        ("not json", "not JSON"),
    ],
)
def test_check_validates_the_body(body, problem):
    data = yaml.safe_load(GOOD)
    data["--message-body"] = body
    problems = sc.check(_source(sc.dump_flags(data)))
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


def test_shard_sets_must_agree_and_not_mix_with_an_unsharded_job():
    def job(body: str) -> sc.SchedulerJob:
        data = yaml.safe_load(GOOD)
        data["--message-body"] = body
        return sc.load(_source(sc.dump_flags(data)))

    a, b = job('{"shard": 0, "shards": 2}'), job('{"shard": 1, "shards": 2}')
    assert sc.shard_set_problems([a, b]) == []
    assert sc.shard_set_problems([a]) == []  # one file alone: only itself is checked
    assert "unsharded" in sc.shard_set_problems([a, b, job("{}")])[0]
    assert "disagree" in sc.shard_set_problems([a, job('{"shard": 1, "shards": 3}')])[0]
    named = {**yaml.safe_load(GOOD), "--message-body": '{"user_ids": ["u"]}'}
    with pytest.raises(sc.SchedulerConfigError, match="only a job polling everyone"):
        sc.shard_files(_source(sc.dump_flags(named)), 2)
