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

TOKEN = "cli-test-token-0123456789"


@pytest.fixture
def run(db_url, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", db_url)
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


def test_users_add_list_remove(run):
    r = run("users", "add", "--email", "ada@example.com", "--name", "Ada", "--token", TOKEN)
    assert r.exit_code == 0, r.output
    r = run(
        "users",
        "add",
        "--email",
        "bob@example.com",
        "--token",
        TOKEN + "b",
        "--refresh-token",
        "refresh-abcdef-123",
        "--expires-at",
        "2030-01-01T00:00:00Z",
    )
    assert r.exit_code == 0, r.output
    listing = run("users", "list")
    assert listing.exit_code == 0
    assert "ada@example.com" in listing.output and "bob@example.com" in listing.output
    assert TOKEN not in listing.output and "refresh-abcdef" not in listing.output
    data = json.loads(run("users", "list", "--json").output)
    bob = next(u for u in data if u["email"] == "bob@example.com")
    assert bob["has_token"] is True
    assert bob["token_expires_at"].startswith("2030-01-01T00:00:00")
    assert run("users", "remove", "ada@example.com").exit_code == 0
    assert "ada@example.com" not in run("users", "list").output


def test_users_bad_input(run):
    assert run("users", "add", "--email", "x@example.com", "--token", TOKEN).exit_code == 0
    assert "already exists" in one_line_error(
        run("users", "add", "--email", "x@example.com", "--token", TOKEN)
    )
    assert "--expires-at" in one_line_error(
        run("users", "add", "--email", "y@example.com", "--token", TOKEN, "--expires-at", "soon")
    )
    assert "e-mail" in one_line_error(run("users", "add", "--email", "nope", "--token", TOKEN))
    assert "no user" in one_line_error(run("users", "remove", "ghost@example.com"))


def test_projects_add_list_remove_and_bad_input(run):
    assert run("users", "add", "--email", "p@example.com", "--token", TOKEN).exit_code == 0
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
    r = CliRunner().invoke(cli, ["migrate"], catch_exceptions=False)
    assert r.exit_code == 0 and "already at" in r.output


def test_every_command_is_registered():
    # Added explicitly in app/cli/__init__.py: a command module failing to import fails here
    # (and at start-up) instead of silently vanishing from the command.
    root = typer.main.get_command(cli)
    assert isinstance(root, TyperGroup)
    assert set(root.commands) == {"serve", "migrate", "users", "projects", "poll", "scheduler"}
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
