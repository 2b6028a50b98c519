"""Settings: defaults, URL mapping, and one clear line per bad variable."""

import subprocess
import sys

import pytest

from app.settings import ConfigurationError, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in ("DATABASE_URL", "POLL_CONCURRENCY", "GITLAB_INSTANCE_URL", "INNGEST_SIGNING_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_defaults():
    s = load_settings()
    assert s.database_url == "sqlite+aiosqlite:///./gitlab-insights.db"
    assert s.gitlab_instance_url == "https://gitlab.com"
    assert s.inngest_polling_cron == "*/10 * * * *"
    assert s.poll_concurrency == 5
    assert s.log_format == "auto"
    assert s.signing_keys() == []


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@h:5432/db", "postgresql+asyncpg://u:p@h:5432/db"),
        ("postgresql://u:p@h/db", "postgresql+asyncpg://u:p@h/db"),
        ("postgresql+asyncpg://u:p@h/db", "postgresql+asyncpg://u:p@h/db"),
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
    ],
)
def test_database_url_mapping(monkeypatch, given, expected):
    monkeypatch.setenv("DATABASE_URL", given)
    assert load_settings().database_url == expected


def test_instance_url_with_subpath_and_slash():
    s = load_settings(gitlab_instance_url="https://host.example/gitlab/")
    assert s.gitlab_api_url == "https://host.example/gitlab/api/v4"


@pytest.mark.parametrize(
    ("env", "value", "fragment"),
    [
        ("POLL_CONCURRENCY", "0", "POLL_CONCURRENCY"),
        ("POLL_CONCURRENCY", "five", "POLL_CONCURRENCY"),
        ("DATABASE_URL", "mysql://x/y", "DATABASE_URL: unsupported scheme 'mysql'"),
        ("GITLAB_INSTANCE_URL", "gitlab.example.com", "GITLAB_INSTANCE_URL"),
        ("INNGEST_POLLING_CRON", "every ten minutes", "INNGEST_POLLING_CRON"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT"),
        ("SYNC_OVERLAP_SECONDS", "30", "SYNC_OVERLAP_SECONDS"),
    ],
)
def test_bad_setting_is_one_clear_line(monkeypatch, env, value, fragment):
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_secrets_never_print(monkeypatch):
    monkeypatch.setenv("INNGEST_SIGNING_KEY", "signkey-test-" + "ab" * 32)
    monkeypatch.setenv("GITLAB_OAUTH_CLIENT_SECRET", "oauth-secret-value-123")
    s = Settings()
    text = repr(s) + str(s) + s.model_dump_json()
    assert "ab" * 32 not in text
    assert "oauth-secret-value-123" not in text
    assert s.signing_keys() == ["signkey-test-" + "ab" * 32]


def test_cli_bad_setting_exits_with_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "POLL_CONCURRENCY": "-1", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "users", "list"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "POLL_CONCURRENCY" in lines[0]
    assert "Traceback" not in proc.stderr
