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


def test_oidc_settings_from_the_environment(monkeypatch):
    for name in ("OIDC_AUDIENCES", "OIDC_SERVICE_ACCOUNTS", "OIDC_ISSUERS", "OIDC_JWKS_URL"):
        monkeypatch.delenv(name, raising=False)
    s = load_settings()
    assert not s.oidc_enabled and s.oidc_audiences == []
    assert s.oidc_jwks_url == "https://www.googleapis.com/oauth2/v3/certs"
    assert s.oidc_issuers == ["https://accounts.google.com", "accounts.google.com"]
    monkeypatch.setenv(
        "OIDC_AUDIENCES", " https://a.example , https://b.example,,https://a.example"
    )
    monkeypatch.setenv("OIDC_SERVICE_ACCOUNTS", "Poller@P.iam.gserviceaccount.com")
    monkeypatch.setenv("OIDC_ISSUERS", "https://issuer.example")
    monkeypatch.setenv("OIDC_JWKS_URL", "http://127.0.0.1:8080/certs")
    s = load_settings()
    assert s.oidc_enabled
    assert s.oidc_audiences == ["https://a.example", "https://b.example"]
    assert s.oidc_service_accounts == ["poller@p.iam.gserviceaccount.com"]
    assert s.oidc_issuers == ["https://issuer.example"]
    assert s.oidc_jwks_url == "http://127.0.0.1:8080/certs"


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"OIDC_AUDIENCES": "https://a.example"}, "OIDC_SERVICE_ACCOUNTS is required"),
        ({"OIDC_SERVICE_ACCOUNTS": "a@p.iam.gserviceaccount.com"}, "OIDC_AUDIENCES is empty"),
        (
            {"OIDC_AUDIENCES": "https://a.example", "OIDC_SERVICE_ACCOUNTS": "not-an-email"},
            "OIDC_SERVICE_ACCOUNTS: 'not-an-email' is not a service account e-mail",
        ),
        ({"OIDC_JWKS_URL": "http://keys.example/certs"}, "OIDC_JWKS_URL: must be an https URL"),
        (
            {
                "OIDC_AUDIENCES": "https://a.example",
                "OIDC_SERVICE_ACCOUNTS": "a@p.iam.gserviceaccount.com",
                "OIDC_ISSUERS": " , ",
            },
            "OIDC_ISSUERS must not be empty",
        ),
    ],
)
def test_bad_oidc_settings_are_one_line(monkeypatch, env, fragment):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_serve_refuses_audiences_without_service_accounts(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OIDC_AUDIENCES": "https://a.example"}
    proc = subprocess.run(
        [sys.executable, "-c", "from app.main import create_app; create_app()"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "OIDC_SERVICE_ACCOUNTS is required" in lines[0], proc.stderr


def test_the_env_example_placeholder_key_is_refused_at_start_up(tmp_path):
    """.env.example's signing key is public: `serve` with it stops with one line, exit 2."""
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    example = (root / ".env.example").read_text()
    assert "INNGEST_SIGNING_KEY=signkey-test-replace-with-your-own-key" in example
    shutil.copy(root / ".env.example", tmp_path / ".env")
    with pytest.raises(ConfigurationError) as err:
        load_settings()  # reads ./.env (the fixture chdir'ed to tmp_path)
    assert str(err.value).startswith("invalid configuration: INNGEST_SIGNING_KEY: ")
    assert "placeholder" in str(err.value)
    assert "replace-with-your-own-key" not in str(err.value)
    with pytest.raises(ConfigurationError):
        load_settings(
            inngest_signing_key="signkey-prod-" + "ab" * 32,
            inngest_signing_key_fallback="signkey-test-replace-with-your-own-key",
        )
    # The real start-up path: one line on stderr, non-zero exit, no traceback.
    proc = subprocess.run(
        [sys.executable, "-c", "from app.main import create_app; create_app()"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "INNGEST_SIGNING_KEY" in lines[0], proc.stderr
    # Any other key starts.
    (tmp_path / ".env").write_text(
        example.replace("signkey-test-replace-with-your-own-key", "signkey-test-" + "1f" * 32)
    )
    assert load_settings().signing_keys() == ["signkey-test-" + "1f" * 32]
