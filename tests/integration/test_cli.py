"""CLI user and project management against real databases, including bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from app.cli import cli
from gitlab_sim.server import SimulatorServer
from tests.support import add_user, free_port, project_tuple, query

TOKEN = "cli-test-token-0123456789"


@pytest.fixture
def run(db_url, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", db_url)
    # Nothing listens there: a test that means to reach GitLab starts the simulator, and no
    # test ever asks gitlab.com (the default).
    monkeypatch.setenv("GITLAB_INSTANCE_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("GITLAB_TOKEN", raising=False)
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(cli, list(args), catch_exceptions=False)

    return invoke


def one_line_error(result) -> str:
    assert result.exit_code != 0, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_users_add_list_remove(run, sim, monkeypatch):
    monkeypatch.setenv("GITLAB_INSTANCE_URL", sim.url)
    sim.world.create_user("bob", "Bob")
    ada_token, bob_token = sim.token("user1"), sim.token("bob")
    r = run("users", "add", "--email", "ada@example.com", "--name", "Ada", "--token", ada_token)
    assert r.exit_code == 0, r.output
    r = run(
        "users",
        "add",
        "--email",
        "bob@example.com",
        "--token",
        bob_token,
        "--refresh-token",
        "refresh-abcdef-123",
        "--expires-at",
        "2030-01-01T00:00:00Z",
    )
    assert r.exit_code == 0, r.output
    listing = run("users", "list")
    assert listing.exit_code == 0
    assert "ada@example.com" in listing.output and "bob@example.com" in listing.output
    assert ada_token not in listing.output and bob_token not in listing.output
    assert "refresh-abcdef" not in listing.output
    data = json.loads(run("users", "list", "--json").output)
    bob = next(u for u in data if u["email"] == "bob@example.com")
    assert bob["has_token"] is True
    assert bob["token_expires_at"].startswith("2030-01-01T00:00:00")
    assert run("users", "remove", "ada@example.com").exit_code == 0
    assert "ada@example.com" not in run("users", "list").output


def test_users_bad_input(run):
    r = run("users", "add", "--email", "x@example.com", "--token", TOKEN, "--no-verify")
    assert r.exit_code == 0, r.output
    assert "already exists" in one_line_error(
        run("users", "add", "--email", "x@example.com", "--token", TOKEN)
    )
    assert "--expires-at" in one_line_error(
        run("users", "add", "--email", "y@example.com", "--token", TOKEN, "--expires-at", "soon")
    )
    assert "e-mail" in one_line_error(run("users", "add", "--email", "nope", "--token", TOKEN))
    assert "no user" in one_line_error(run("users", "remove", "ghost@example.com"))


def test_projects_add_list_remove_and_bad_input(run):
    # Offline throughout: an unchecked token, projects given with --name and --path.
    r = run("users", "add", "--email", "p@example.com", "--token", TOKEN, "--no-verify")
    assert r.exit_code == 0, r.output
    r = run(
        "projects",
        "add",
        "--user",
        "p@example.com",
        "42",
        "--name",
        "Project",
        "--path",
        "group/sub/project",
    )
    assert r.exit_code == 0, r.output
    listing = run("projects", "list")
    assert "group/sub/project" in listing.output and "42" in listing.output
    assert "already monitored" in one_line_error(
        run("projects", "add", "--user", "p@example.com", "42", "--name", "P", "--path", "g/p")
    )
    assert "no user" in one_line_error(
        run("projects", "add", "--user", "ghost@example.com", "7", "--name", "P", "--path", "g/p")
    )
    assert "go together" in one_line_error(
        run("projects", "add", "--user", "p@example.com", "7", "--name", "P")
    )
    assert run("projects", "remove", "--user", "p@example.com", "group/sub/project").exit_code == 0
    assert "no monitored projects" in run("projects", "list").output
    assert "does not monitor" in one_line_error(
        run("projects", "remove", "--user", "p@example.com", "42")
    )


def test_unreachable_database_is_one_line(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody:secretpw@127.0.0.1:1/none")
    r = CliRunner().invoke(cli, ["users", "list"], catch_exceptions=False)
    line = one_line_error(r)
    assert "database" in line
    assert "secretpw" not in r.output


def test_unmigrated_database_says_migrate(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/empty.db")
    r = CliRunner().invoke(cli, ["users", "list"], catch_exceptions=False)
    assert "migrate" in one_line_error(r)


def test_migrate_command(empty_db_url, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", empty_db_url)
    r = CliRunner().invoke(cli, ["migrate"], catch_exceptions=False)
    assert r.exit_code == 0 and "created schema" in r.output
    # One line per action, then the schema flavour: alembic's set-up and per-revision lines
    # stay out of sight. A database this service creates has the story schema.
    assert len(r.output.splitlines()) == 2 and r.output.splitlines()[1] == "schema: story"
    r = CliRunner().invoke(cli, ["migrate"], catch_exceptions=False)
    assert r.exit_code == 0 and "already at" in r.output and "(head)" in r.output
    assert len(r.output.splitlines()) == 2, r.output


def test_every_command_is_registered():
    # Added explicitly in app/cli/__init__.py: a command module failing to import fails here
    # (and at start-up) instead of silently vanishing from the command.
    root = typer.main.get_command(cli)
    assert isinstance(root, TyperGroup)
    assert set(root.commands) == {
        "serve",
        "migrate",
        "users",
        "projects",
        "poll",
        "runs",
        "status",
        "scheduler",
    }
    groups = {}
    for name in ("users", "projects", "scheduler"):
        group = root.commands[name]
        assert isinstance(group, TyperGroup)
        groups[name] = group
    assert {name: set(g.commands) for name, g in groups.items()} == {
        "users": {"add", "list", "remove"},
        "projects": {"add", "list", "remove"},
        "scheduler": {"render", "check"},
    }


def test_python_dash_m_runs_the_command(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "app.cli", "--help"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "poll" in r.stdout and "scheduler" in r.stdout


# --- issue 12: operator experience --------------------------------------------------------


@pytest.mark.parametrize("bad", ["bad@", "@x.com", "x@y", "a b@example.com", "nope"])
def test_users_add_refuses_invalid_emails(run, bad):
    line = one_line_error(run("users", "add", "--email", bad, "--token", TOKEN))
    assert line.startswith("error: --email:") and "not a valid e-mail" in line


def test_emails_are_stored_lower_case_and_unique_regardless_of_case(run, db_url):
    r = run("users", "add", "--email", " ADA@Example.com ", "--token", TOKEN, "--no-verify")
    assert r.exit_code == 0, r.output
    assert "ada@example.com" in r.output
    assert query(db_url, 'SELECT email FROM "user"') == [("ada@example.com",)]
    assert "already exists" in one_line_error(
        run("users", "add", "--email", "ada@example.com", "--token", TOKEN)
    )
    assert "already exists" in one_line_error(
        run("users", "add", "--email", "Ada@EXAMPLE.com", "--token", TOKEN)
    )
    assert len(query(db_url, 'SELECT id FROM "user"')) == 1


def test_lookups_ignore_case_even_for_mixed_case_rows_of_the_original_app(run, db_url):
    # The original app stored e-mails as typed; its rows must still be found.
    add_user(db_url, "Grace@Example.COM", TOKEN)
    assert "already exists" in one_line_error(
        run("users", "add", "--email", "grace@example.com", "--token", TOKEN)
    )
    r = run("projects", "add", "--user", "GRACE@example.com", "42", "--name", "P", "--path", "g/p")
    assert r.exit_code == 0, r.output
    listing = run("projects", "list", "--user", "grace@EXAMPLE.com")
    assert listing.exit_code == 0 and "g/p" in listing.output, listing.output
    r = run("projects", "remove", "--user", "grace@example.com", "g/p")
    assert r.exit_code == 0, r.output
    r = run("users", "remove", "grace@example.com")
    assert r.exit_code == 0 and "Grace@Example.COM removed" in r.output, r.output
    assert query(db_url, 'SELECT id FROM "user"') == []


def test_refresh_token_without_oauth_app_warns(run, monkeypatch):
    for name in ("CLIENT_ID", "CLIENT_SECRET", "REDIRECT_URI"):
        monkeypatch.delenv(f"GITLAB_OAUTH_{name}", raising=False)
    r = run(
        "users", "add", "--email", "w@example.com", "--token", TOKEN, "--no-verify",
        "--refresh-token", "refresh-abcdef-123",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "warning: --refresh-token is stored but cannot be used" in r.stderr
    assert "GITLAB_OAUTH_CLIENT_ID" in r.stderr
    assert "refresh-abcdef" not in r.output


def test_expired_token_that_cannot_be_refreshed_is_refused(run, monkeypatch, db_url):
    for name in ("CLIENT_ID", "CLIENT_SECRET", "REDIRECT_URI"):
        monkeypatch.delenv(f"GITLAB_OAUTH_{name}", raising=False)
    past = "2020-01-01T00:00:00Z"
    line = one_line_error(
        run("users", "add", "--email", "e@example.com", "--token", TOKEN, "--expires-at", past)
    )
    assert "in the past" in line and "--refresh-token" in line
    line = one_line_error(
        run(
            "users",
            "add",
            "--email",
            "e@example.com",
            "--token",
            TOKEN,
            "--expires-at",
            past,
            "--refresh-token",
            "refresh-abcdef-123",
        )  # fmt: skip
    )
    assert "in the past" in line and "GITLAB_OAUTH_" in line
    assert query(db_url, 'SELECT id FROM "user"') == []
    # With an OAuth app the expired token is refreshed at the next sync: accepted (checked
    # with GitLab in test_users_add_stores_an_expired_token_that_can_be_refreshed).
    monkeypatch.setenv("GITLAB_OAUTH_CLIENT_ID", "app-id")
    monkeypatch.setenv("GITLAB_OAUTH_CLIENT_SECRET", "app-secret-0123456789")
    monkeypatch.setenv("GITLAB_OAUTH_REDIRECT_URI", "https://insights.example.com/cb")
    r = run(
        "users", "add", "--email", "e@example.com", "--token", TOKEN, "--no-verify",
        "--expires-at", past, "--refresh-token", "refresh-abcdef-123",
    )  # fmt: skip
    assert r.exit_code == 0 and "warning" not in r.output, r.output


def test_missing_token_is_one_line(run):
    line = one_line_error(run("users", "add", "--email", "t@example.com"))
    assert "--token" in line and "GITLAB_TOKEN" in line


def test_usage_errors_are_one_line(run):
    assert "No such command" in one_line_error(run("nosuch"))
    assert "--user" in one_line_error(run("poll", "--user"))


def test_version_short_help_and_completion(run):
    from app import __version__

    r = run("--version")
    assert r.exit_code == 0 and r.output.strip() == f"gitlab-insights {__version__}"
    for args in (["-h"], ["users", "-h"], ["users", "add", "-h"]):
        r = run(*args)
        assert r.exit_code == 0 and "Usage:" in r.output, (args, r.output)
    r = run("--help")
    assert "--install-completion" in r.output and "--show-completion" in r.output


def test_wrong_postgres_password_names_user_and_host(monkeypatch, tmp_path):
    import os as _os
    from urllib.parse import urlsplit, urlunsplit

    pg = _os.environ.get("TEST_DATABASE_URL")
    if not pg:
        pytest.skip("TEST_DATABASE_URL not set")
    parts = urlsplit(pg)
    host = f"{parts.hostname}:{parts.port or 5432}"
    bad = urlunsplit(parts._replace(netloc=f"{parts.username}:wrong-secret-pw@{host}"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", bad)
    for args in (["users", "list"], ["migrate"]):
        r = CliRunner().invoke(cli, args, catch_exceptions=False)
        line = one_line_error(r)
        assert f"authentication failed for user {parts.username} at {host}" in line, line
        assert "wrong-secret-pw" not in r.output


def test_sqlite_in_a_missing_folder_names_the_folder(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/no/such/dir/x.db")
    for args in (["users", "list"], ["migrate"]):
        line = one_line_error(CliRunner().invoke(cli, args, catch_exceptions=False))
        assert f"folder {tmp_path}/no/such/dir does not exist" in line, line


def test_serve_on_a_busy_port_is_one_line(run):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", free_port()))
        busy.listen()
        port = busy.getsockname()[1]
        line = one_line_error(run("serve", "--port", str(port), "--no-migrate"))
    assert line == f"error: cannot listen on 127.0.0.1:{port}: address already in use"


@pytest.fixture
def sim(monkeypatch):
    # The simulator runs in this process: keep its access log out of the CLI's output.
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    with SimulatorServer(seed=5, users=1, projects=3, issues=1, merge_requests=0, notes=0) as s:
        yield s


def test_projects_batch_applies_what_it_can_and_reports_each(run, db_url, sim, monkeypatch):
    monkeypatch.setenv("GITLAB_INSTANCE_URL", sim.url)
    add_user(db_url, "b@example.com", sim.token("user1"))
    ok = [project_tuple(sim, pid)[2] for pid in sorted(sim.world.projects)[:2]]
    r = run("projects", "add", "--user", "b@example.com", ok[0], "nope/nope", ok[1])
    assert r.exit_code == 1
    for path in ok:
        assert f"monitoring {path}" in r.stdout
    assert "error: nope/nope: not found" in r.stderr
    assert "1 of 3 projects failed" in r.stderr
    stored = {row[0] for row in query(db_url, 'SELECT "projectPath" FROM "MonitoredProject"')}
    assert stored == set(ok)

    r = run("projects", "remove", "--user", "b@example.com", ok[0], "ghost/project")
    assert r.exit_code == 1
    assert f"stopped monitoring {ok[0]}" in r.stdout
    assert "error: ghost/project: b@example.com does not monitor it" in r.stderr
    stored = {row[0] for row in query(db_url, 'SELECT "projectPath" FROM "MonitoredProject"')}
    assert stored == {ok[1]}


def test_wrong_instance_url_sub_path_is_named(run, db_url, sim, monkeypatch):
    monkeypatch.setenv("GITLAB_INSTANCE_URL", sim.url + "/gitlab")
    add_user(db_url, "c@example.com", sim.token("user1"))
    path = project_tuple(sim, sorted(sim.world.projects)[0])[2]
    line = one_line_error(run("projects", "add", "--user", "c@example.com", path))
    assert f"GITLAB_INSTANCE_URL {sim.url}/gitlab looks wrong" in line
    assert f"{sim.url}/gitlab/api/v4 answers 404" in line
    assert query(db_url, 'SELECT id FROM "MonitoredProject"') == []


# --- issue 21: `users add` asks GitLab whose token it is ---------------------------------------


def stored_accounts(db_url: str) -> list[tuple]:
    return query(
        db_url,
        'SELECT u.email, u.name, a."accountId" FROM "user" u JOIN account a ON a."userId" = u.id',
    )


def test_users_add_checks_the_token_with_one_request_and_names_the_account(
    run, db_url, sim, monkeypatch
):
    monkeypatch.setenv("GITLAB_INSTANCE_URL", sim.url)
    account = sim.world.user("user1")
    token = sim.token("user1")
    sim.world.clear_requests()
    monkeypatch.setenv("GITLAB_TOKEN", token)
    r = run("users", "add", "--email", "ada@example.com")
    assert r.exit_code == 0, r.output
    assert f"token of GitLab user @{account.username} (id {account.id})" in r.stdout
    assert token not in r.output
    assert [(q["method"], q["path"]) for q in sim.world.requests()] == [("GET", "/api/v4/user")]
    # The GitLab user id is the account's accountId; the name defaults to GitLab's.
    assert stored_accounts(db_url) == [("ada@example.com", account.name, str(account.id))]


def test_users_add_refuses_a_token_gitlab_rejects(run, db_url, sim, monkeypatch):
    monkeypatch.setenv("GITLAB_INSTANCE_URL", sim.url)
    revoked = sim.world.create_personal_token("user1")
    sim.world.revoke_token(revoked)
    for token, why in (
        ("fake-unknown-token-0123", "unknown or invalid"),
        (revoked, "it was revoked"),
    ):
        r = run("users", "add", "--email", "ada@example.com", "--token", token)
        line = one_line_error(r)
        assert line.startswith(f"error: GitLab at {sim.url} rejected the token (401: {why}"), line
        assert line.endswith("; nothing stored"), line
        assert token not in r.output
    assert stored_accounts(db_url) == []


def test_users_add_refuses_a_token_without_the_api_scope(run, db_url, sim, monkeypatch):
    monkeypatch.setenv("GITLAB_INSTANCE_URL", sim.url)
    sim.world.add_fault(kind="status", status=403, path="^/api/v4/user$")
    line = one_line_error(run("users", "add", "--email", "a@example.com", "--token", TOKEN))
    assert "lacks the scope" in line and "read_api" in line and "nothing stored" in line, line
    assert stored_accounts(db_url) == []


def test_users_add_names_a_wrong_instance_sub_path(run, db_url, sim, monkeypatch):
    monkeypatch.setenv("GITLAB_INSTANCE_URL", sim.url + "/gitlab")
    line = one_line_error(
        run("users", "add", "--email", "a@example.com", "--token", sim.token("user1"))
    )
    assert f"GITLAB_INSTANCE_URL {sim.url}/gitlab looks wrong" in line, line
    assert stored_accounts(db_url) == []


def test_users_add_with_gitlab_unreachable_suggests_no_verify(run, db_url, sim, monkeypatch):
    # Connection refused (nothing listens) and an instance answering 503: no answer on the
    # token either way. The check makes one attempt: no retry lines before the error.
    sim.world.add_fault(kind="status", status=503, path="^/api/v4/user$")
    for url, cause in (("http://127.0.0.1:9", "unreachable"), (sim.url, "503")):
        monkeypatch.setenv("GITLAB_INSTANCE_URL", url)
        r = run("users", "add", "--email", "a@example.com", "--token", TOKEN)
        line = one_line_error(r)
        assert line.startswith(f"error: cannot check the token with GitLab at {url}:"), line
        assert cause in line and "--no-verify" in line, line
        assert TOKEN not in r.output
    assert stored_accounts(db_url) == []
    # Offline set-ups store the token unchecked, with a local accountId.
    monkeypatch.setenv("GITLAB_INSTANCE_URL", "http://127.0.0.1:9")
    r = run("users", "add", "--email", "a@example.com", "--token", TOKEN, "--no-verify")
    assert r.exit_code == 0, r.output
    assert "token not checked (--no-verify)" in r.stdout and TOKEN not in r.output
    [(email, name, account_id)] = stored_accounts(db_url)
    assert (email, name) == ("a@example.com", None) and account_id.startswith("local-")


def test_users_add_refuses_a_second_user_on_the_same_gitlab_account(run, db_url, sim, monkeypatch):
    monkeypatch.setenv("GITLAB_INSTANCE_URL", sim.url)
    monkeypatch.setenv("GITLAB_TOKEN", sim.token("user1"))
    assert run("users", "add", "--email", "a@example.com").exit_code == 0
    # Another token of the same GitLab user: (providerId, accountId) is unique.
    monkeypatch.setenv("GITLAB_TOKEN", sim.world.create_personal_token("user1"))
    line = one_line_error(run("users", "add", "--email", "b@example.com"))
    gitlab_id = sim.world.user("user1").id
    assert line == (
        f"error: GitLab account @user1 (id {gitlab_id}) is already linked to user "
        "a@example.com; nothing stored"
    )
    assert [row[0] for row in stored_accounts(db_url)] == ["a@example.com"]


def test_users_add_stores_an_expired_token_that_can_be_refreshed(run, db_url, sim, monkeypatch):
    monkeypatch.setenv("GITLAB_INSTANCE_URL", sim.url)
    token = sim.world.create_personal_token("user1")
    sim.world.expire_token(token)
    for name in ("CLIENT_ID", "CLIENT_SECRET", "REDIRECT_URI"):
        monkeypatch.delenv(f"GITLAB_OAUTH_{name}", raising=False)
    args = ["users", "add", "--email", "e@example.com", "--token", token]
    args += ["--refresh-token", "refresh-abcdef-123"]
    # Without an OAuth app GitLab's "expired" is final ...
    r = run(*args)
    assert r.exit_code == 1 and "rejected the token (401: it has expired)" in r.stderr, r.output
    assert stored_accounts(db_url) == []
    # ... with one, the next sync refreshes it: stored, unchecked, and said so.
    monkeypatch.setenv("GITLAB_OAUTH_CLIENT_ID", "app-id")
    monkeypatch.setenv("GITLAB_OAUTH_CLIENT_SECRET", "app-secret-0123456789")
    monkeypatch.setenv("GITLAB_OAUTH_REDIRECT_URI", "https://insights.example.com/cb")
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert "warning: GitLab says the token has expired" in r.stderr
    assert "token not checked (expired: the next sync refreshes it)" in r.stdout
    assert token not in r.output and "refresh-abcdef" not in r.output
    assert len(stored_accounts(db_url)) == 1
