"""The README's examples that can run, run: its `migrate` lines, its curl commands (bearer,
signed with openssl, the crontab line) against the real service on 127.0.0.1, and its error
body. What they print must be what the README says; a README that drifts fails here."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from typer.testing import CliRunner

from app.cli import cli
from app.db.migrate import _config, upgrade_to_head
from tests.support import SIGNING_KEY, LiveServer, add_user, make_settings, query

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
PUBLIC_URL = "https://insights.example.com"


def readme_block(marker: str, lang: str = "bash") -> str:
    """The one fenced block of `lang` in the README that contains `marker`."""
    blocks = re.findall(rf"^```{lang}\n(.*?)^```", README, re.M | re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"{len(found)} README blocks contain {marker!r}"
    return found[0]


def answers(stdout: str) -> list[dict[str, Any]]:
    """The JSON bodies curl printed one after the other."""
    decoder, out, rest = json.JSONDecoder(), [], stdout.strip()
    while rest:
        value, end = decoder.raw_decode(rest)
        out.append(value)
        rest = rest[end:].lstrip()
    return out


# --- migrate -------------------------------------------------------------------------------


def test_migrate_prints_the_lines_the_readme_shows(tmp_path, monkeypatch):
    shown = re.search(r"`migrate` prints\s+one line per action \((.*?)\)\.", README, re.S)
    assert shown, "the README no longer shows migrate's output"
    created, upgraded, already = re.findall(r"`([^`]+)`", shown.group(1))
    schema = re.search(r"the original app's schema it found\s+\(`([^`]+)`", README)
    assert schema, "the README no longer shows migrate's schema line"
    url = f"sqlite+aiosqlite:///{tmp_path}/readme.db"
    monkeypatch.setenv("DATABASE_URL", url)

    def migrate() -> str:
        r = CliRunner().invoke(cli, ["migrate"], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        action, found = r.stdout.strip().splitlines()
        assert found == schema.group(1)  # a database this service creates: the story schema
        return action

    assert migrate() == created
    assert migrate() == already
    command.downgrade(_config(url), "0001")
    assert migrate() == upgraded


# --- the curl commands, against the service -----------------------------------------------


@pytest.fixture
def service(tmp_path) -> Iterator[LiveServer]:
    for tool in ("bash", "curl", "openssl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    url = f"sqlite+aiosqlite:///{tmp_path}/service.db"
    upgrade_to_head(url)
    with LiveServer(make_settings(url)) as server:
        yield server


def run_bash(script: str, server: LiveServer, **env: str) -> subprocess.CompletedProcess[str]:
    """A README snippet aimed at the test server, with the service's key in the environment."""
    script = script.replace(PUBLIC_URL, server.url)
    environment = {"PATH": "/usr/bin:/bin", "INNGEST_SIGNING_KEY": SIGNING_KEY, **env}
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=False,
    )


def test_the_bearer_curls_poll_everyone_then_refresh_one_user(service):
    uid = add_user(service.settings.database_url, "ada@example.com", None, [("7", "p", "g/p")])
    script = readme_block('-d \'{"user_ids": ["<user id>"]}\'')
    r = run_bash(script.replace("<user id>", uid), service)
    assert r.returncode == 0, r.stderr
    everyone, refresh = answers(r.stdout)
    assert (everyone["trigger"], everyone["auth"]["method"]) == ("api", "bearer")
    assert (refresh["trigger"], refresh["auth"]["method"]) == ("manual", "bearer")
    assert [u["user_id"] for u in refresh["users"]] == [uid]


def test_the_openssl_signed_curl_is_accepted_and_recorded_as_api(service):
    r = run_bash(readme_block("openssl dgst -sha256 -hmac"), service)
    assert r.returncode == 0, r.stderr
    [answer] = answers(r.stdout)
    assert answer["success"] is True
    # Who called (a script) apart from how (Inngest's signature): not "inngest".
    assert (answer["trigger"], answer["auth"]) == (
        "api",
        {"method": "inngest_signature", "email": None},
    )


def test_the_crontab_line_polls_with_the_header_file(service, tmp_path):
    line = readme_block("*/10 * * * * curl", lang="cron").strip()
    header = tmp_path / "poll.header"
    header.write_text(f"Authorization: Bearer {SIGNING_KEY}\n")
    header.chmod(0o600)
    # The command part of the crontab line, with the header file where the test keeps it.
    curl = line.split(None, 5)[5].replace("/etc/gitlab-insights/poll.header", str(header))
    r = run_bash(curl, service)
    assert r.returncode == 0, r.stderr
    assert query(service.settings.database_url, "SELECT trigger, auth_method FROM poll_run") == [
        ("api", "bearer")
    ]


def test_the_error_body_shown_is_what_an_unauthenticated_call_gets(service):
    shown = json.loads(readme_block('"error": "unauthorized"', lang="json"))
    r = run_bash(f"curl -sS -X POST {PUBLIC_URL}/api/poll", service)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == shown
