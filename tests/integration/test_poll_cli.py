"""`gitlab-insights poll`: one in-process run against the GitLab simulator and a real database."""

from __future__ import annotations

import io
import json

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.cli.poll import Progress, endpoint_json
from app.sync.results import PollSummary, UserResult
from gitlab_sim.server import SimulatorServer
from tests.support import add_user, project_tuple, query

# Test-speed settings, as tests.support.make_settings uses, through the environment.
FAST_ENV = {
    "GITLAB_BACKOFF_BASE": "0",
    "GITLAB_BACKOFF_MAX": "0",
    "GITLAB_RATE_LIMIT_MAX_WAIT": "0",
    "USER_RETRY_BACKOFF_BASE": "0",
    "MIN_REFRESH_INTERVAL_SECONDS": "0",
    "SYNC_BACKFILL_DAYS": "0",
    "GITLAB_READ_TIMEOUT": "5",
}


@pytest.fixture
def sim():
    with SimulatorServer(seed=11, users=3, projects=3, issues=8, merge_requests=4, notes=2) as s:
        yield s


@pytest.fixture
def run(db_url, sim, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("GITLAB_INSTANCE_URL", sim.url)
    monkeypatch.delenv("LOG_LEVEL", raising=False)
    for k, v in FAST_ENV.items():
        monkeypatch.setenv(k, v)
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(cli, ["poll", *args], catch_exceptions=False)

    return invoke


def seed(db_url, sim) -> dict[str, str]:
    return {
        "u1@example.com": add_user(
            db_url, "u1@example.com", sim.token("user1"), [project_tuple(sim, 1)]
        ),
        "u2@example.com": add_user(
            db_url, "u2@example.com", sim.token("user2"), [project_tuple(sim, 2)]
        ),
    }


def test_poll_prints_the_summary_table(run, db_url, sim):
    ids = seed(db_url, sim)
    r = run()
    assert r.exit_code == 0, r.output
    out = r.stdout
    header = out.splitlines()[0].split()
    assert header[:4] == ["user", "status", "reason", "stored"]
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines()[2:4]}
    assert set(rows) == set(ids)
    assert all(row[1] == "processed" and int(row[3]) > 0 for row in rows.values())
    total = sum(int(row[3]) for row in rows.values())
    assert "(success, HTTP 200): 2 processed, 0 failed, 0 skipped of 2 users" in out
    assert f"; {total} events stored" in out
    # Progress went to stderr: users done of total and events stored.
    assert "2/2 users done" in r.stderr and f"{total} events stored" in r.stderr
    # The run is recorded like any other, as the CLI's.
    assert query(db_url, "SELECT trigger, status_code, events_stored FROM poll_run") == [
        ("cli", 200, total)
    ]


def test_poll_json_is_exactly_what_the_endpoint_returns(run, db_url, sim):
    seed(db_url, sim)
    r = run("--json")
    assert r.exit_code == 0, r.output
    text = r.stdout.strip()
    data = json.loads(text)
    summary = PollSummary.model_validate(data)
    assert data == summary.model_dump(mode="json")
    assert text == endpoint_json(summary)
    assert set(data) == set(PollSummary.model_fields)
    assert data["trigger"] == "cli" and data["processed"] == 2 and data["events"]["stored"] > 0


def test_poll_one_user_and_unknown_users(run, db_url, sim):
    ids = seed(db_url, sim)
    r = run("--user", "u2@example.com", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert [u["user_id"] for u in data["users"]] == [ids["u2@example.com"]]

    r = run("--user", "u1@example.com", "--user", "ghost@example.com")
    assert r.exit_code == 1
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert lines == ["error: no user with e-mail ghost@example.com"]
    assert len(query(db_url, "SELECT id FROM poll_run")) == 1  # nothing ran for the bad call


def test_poll_exit_code_when_the_run_fails(run, db_url, sim):
    token = sim.token("user1")
    add_user(db_url, "u1@example.com", token, [project_tuple(sim, 1)])
    sim.world.revoke_token(token)
    r = run()
    assert r.exit_code == 1, r.output
    # A revoked token skips the user: nobody processed, so the run did not succeed.
    assert "token_revoked" in r.stdout
    assert "(FAILED, HTTP 200): 0 processed," in r.stdout
    r = run("--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["success"] is False


def test_poll_with_nobody_to_poll_succeeds(run):
    r = run()
    assert r.exit_code == 0, r.output
    assert "no users with monitored projects" in r.stdout
    assert "0 processed, 0 failed, 0 skipped of 0 users" in r.stdout


def test_poll_without_tables_is_one_line(empty_db_url, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", empty_db_url)
    r = CliRunner().invoke(cli, ["poll"], catch_exceptions=False)
    assert r.exit_code == 1
    lines = [ln for ln in r.output.splitlines() if ln.strip() and ln != "polling..."]
    assert lines == [
        "error: the database has no gitlab-insights tables: run `gitlab-insights migrate` first"
    ]


def test_progress_line_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    p = Progress(stream, {"a": "a@example.com"})
    p.start()
    p(UserResult(user_id="a", status="processed", stored=5), 1, 2)
    p(UserResult(user_id="b", status="skipped", reason="fresh"), 2, 2)
    p.finish()
    text = stream.getvalue()
    assert "\rpolling: 1/2 users done, 5 events stored" in text
    assert "\rpolling: 2/2 users done, 5 events stored" in text
    assert text.endswith("\r")  # the line is cleared before the summary is printed
