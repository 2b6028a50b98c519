"""`gitlab-insights poll`: one in-process run against the GitLab simulator and a real database."""

from __future__ import annotations

import io
import json
import re
import sys

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
    assert "(FAILED, HTTP 200): 0 processed, 0 failed, 1 skipped (token_revoked) of 1" in r.stdout
    r = run("--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["success"] is False


def test_why_users_were_skipped_is_recorded_with_the_run(run, db_url, sim):
    from app.cli import cli as root

    token = sim.token("user1")
    add_user(db_url, "u1@example.com", token, [project_tuple(sim, 1)])
    add_user(db_url, "u2@example.com", None, [project_tuple(sim, 2)])
    add_user(db_url, "u3@example.com", sim.token("user3"), [project_tuple(sim, 3)])
    sim.world.revoke_token(token)
    assert "1 processed, 0 failed, 2 skipped (1 no_token, 1 token_revoked)" in run().stdout
    stored = query(db_url, "SELECT skipped_reasons FROM poll_run")
    assert [json.loads(r[0]) if isinstance(r[0], str) else r[0] for r in stored] == [
        {"no_token": 1, "token_revoked": 1}
    ]
    r = CliRunner().invoke(root, ["runs"], catch_exceptions=False)
    assert "1/0/2 of 3 (1 no_token, 1 token_revoked)" in r.stdout, r.stdout
    data = json.loads(CliRunner().invoke(root, ["runs", "--json"], catch_exceptions=False).stdout)
    assert data[0]["skipped_reasons"] == {"no_token": 1, "token_revoked": 1}


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


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def screen_lines(text: str) -> list[str]:
    """What a terminal shows line by line: escapes dropped, split at \\n and \\r."""
    return [ln for ln in re.split(r"[\r\n]", ANSI.sub("", text)) if ln.strip()]


def test_progress_bar_on_a_terminal():
    stream = Tty()
    p = Progress(stream, {"a": "a@example.com"})
    p.start()
    p(UserResult(user_id="a", status="processed", stored=5), 1, 2)
    p(UserResult(user_id="b", status="skipped", reason="fresh"), 2, 2)
    p.finish()
    shown = screen_lines(stream.getvalue())
    assert any("2/2 users done, 5 events stored" in ln for ln in shown), shown


def test_log_lines_never_land_inside_the_progress_bar(monkeypatch):
    from loguru import logger

    from app.logging import configure_logging
    from app.settings import Settings

    stream = Tty()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging(Settings(_env_file=None, log_format="pretty"), stream="stderr")
    p = Progress(stream, {})
    p.start()
    p(UserResult(user_id="a", status="processed", stored=3), 1, 3)
    logger.warning("GitLab answered 429 for project 7")
    p(UserResult(user_id="b", status="processed", stored=1), 2, 3)
    p.finish()
    logger.remove()
    shown = screen_lines(stream.getvalue())
    logs = [ln for ln in shown if "GitLab answered 429" in ln]
    assert logs, shown
    for ln in logs:  # a whole line of its own: the log line, nothing of the bar
        assert "polling" not in ln and "users done" not in ln, ln
        assert ln.split()[1] == "WARNING", ln


def test_poll_user_matches_regardless_of_case(run, db_url, sim):
    ids = seed(db_url, sim)
    r = run("--user", "U2@Example.COM", "--json")
    assert r.exit_code == 0, r.output
    assert [u["user_id"] for u in json.loads(r.stdout)["users"]] == [ids["u2@example.com"]]


def test_runs_and_status_show_every_run_user_and_failing_project(run, db_url, sim):
    from app.cli import cli as root

    ids = seed(db_url, sim)
    assert run().exit_code == 0
    # A project the token cannot see fails; the others go on.
    add_user(db_url, "u3@example.com", sim.token("user3"), [("999999", "gone", "group/gone")])
    run()
    runner = CliRunner()
    r = runner.invoke(root, ["runs"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["started", "(UTC)", "trigger"]
    rows = [ln for ln in lines[2:] if ln.strip()]
    assert len(rows) == 2 and all(" cli " in ln and "200" in ln for ln in rows), r.stdout
    data = json.loads(runner.invoke(root, ["runs", "--json"], catch_exceptions=False).stdout)
    assert [d["trigger"] for d in data] == ["cli", "cli"]
    assert data[1]["events_stored"] > 0 and data[1]["processed"] == 2

    r = runner.invoke(root, ["status"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert out.splitlines()[0] == "database schema: story"  # this service's own database
    assert "Last runs" in out and "Users" in out and "Failing projects" in out
    for email, user_id in ids.items():
        assert email in out and user_id in out
    failing = [ln for ln in out.splitlines() if "group/gone" in ln]
    assert len(failing) == 1 and "u3@example.com" in failing[0], out
    status = json.loads(runner.invoke(root, ["status", "--json"], catch_exceptions=False).stdout)
    assert [(f["email"], f["path"]) for f in status["failing_projects"]] == [
        ("u3@example.com", "group/gone")
    ]
    assert status["failing_projects"][0]["last_error"]
    assert {u["email"] for u in status["users"] if u["last_sync_at"]} >= set(ids)
    assert (status["schema"], status["schema_detail"]) == ("story", "story")


def test_runs_and_status_on_an_empty_database(run):
    from app.cli import cli as root

    r = CliRunner().invoke(root, ["runs"], catch_exceptions=False)
    assert r.exit_code == 0 and r.stdout.strip() == "no runs yet"
    r = CliRunner().invoke(root, ["status"], catch_exceptions=False)
    assert r.exit_code == 0
    assert "no runs yet" in r.stdout and "no users" in r.stdout


def test_poll_names_a_wrong_instance_url(run, db_url, sim, monkeypatch):
    seed(db_url, sim)
    monkeypatch.setenv("GITLAB_INSTANCE_URL", sim.url + "/gitlab")
    r = run()
    assert r.exit_code == 1
    hint = [ln for ln in r.stderr.splitlines() if "looks wrong" in ln]
    assert hint == [
        f"warning: GITLAB_INSTANCE_URL {sim.url}/gitlab looks wrong: its API root "
        f"{sim.url}/gitlab/api/v4 answers 404 (check the host and sub-path)"
    ], r.stderr
