"""Every usage error of `gitlab-insights` is one line on stderr and exit code 2 (README,
"Command line"), found before anything runs: no database is even created."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from app.cli import cli

EMAIL = "ada@example.com"

# (arguments, extra environment, a fragment of the one error line)
CASES: list[tuple[list[str], dict[str, str], str]] = [
    (["nosuch"], {}, "No such command"),
    (["users", "list", "extra"], {}, "unexpected extra argument"),
    (["users", "add", "--token", "t"], {}, "Missing option '--email'"),
    (["users", "add", "--email", EMAIL], {}, "'--token'"),
    (["users", "add", "--email", "not-an-email", "--token", "t"], {}, "--email: 'not-an-email'"),
    (["users", "add", "--email", EMAIL, "--token", "  "], {}, "--token: must not be empty"),
    (["users", "add", "--email", EMAIL, "--token", "t", "--expires-at", "soon"], {}, "ISO 8601"),
    (
        ["users", "add", "--email", EMAIL, "--token", "t", "--expires-at", "2001-01-01T00:00Z"],
        {},
        "is in the past and the token cannot be refreshed",
    ),
    (["projects", "add", "--user", EMAIL, "--name", "n", "1", "2"], {}, "--name and --path"),
    (["projects", "add", "--user", EMAIL, " / "], {}, "empty project reference"),
    (["projects", "remove", "--user", EMAIL, ""], {}, "empty project reference"),
    (["poll", "--user"], {}, "'--user' requires an argument"),
    (["poll", "--user", " "], {}, "--user: must not be empty"),
    (["runs", "-n", "0"], {}, "'--limit' / '-n'"),
    (["status", "--json", "x"], {}, "unexpected extra argument"),
    (["serve", "--port", "0"], {}, "'--port'"),
    (["scheduler", "render", "--auth", "basic"], {}, "'basic' is not one of 'oidc', 'bearer'"),
    (["scheduler", "render", "--url", "ftp://h"], {}, "--url: 'ftp://h' is not an http(s) URL"),
    (["scheduler", "render", "--shards", "2"], {}, "--out-dir: required with --shards"),
    (["scheduler", "render", "--shards", "1001", "--out-dir", "d"], {}, "'--shards'"),
    (
        ["scheduler", "render", "--auth", "bearer", "--url", "https://h.example"],
        {},
        "no value for ${SIGNING_KEY}: set INNGEST_SIGNING_KEY",
    ),
    # A bad setting, as at server start-up.
    (["users", "list"], {"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
    (["migrate"], {"DB_POOL_SIZE": "many"}, "DB_POOL_SIZE"),
]


@pytest.mark.parametrize(
    ("args", "env", "fragment"), CASES, ids=[" ".join(a) or "-" for a, _, _ in CASES]
)
def test_usage_error_is_one_line_and_exit_code_2(args, env, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("GITLAB_TOKEN", "SERVICE_URL", "INNGEST_SIGNING_KEY", "OIDC_SERVICE_ACCOUNTS"):
        monkeypatch.delenv(name, raising=False)
    db = tmp_path / "never.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{db}")
    r = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code == 2, r.output
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert fragment in lines[0], lines[0]
    assert r.stdout == ""
    assert not db.exists()  # refused before anything ran
