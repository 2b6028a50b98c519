"""Service configuration from the environment and `.env`.

Every variable is documented in `.env.example`. Secrets are `SecretStr` so they never
print; `format_settings_error` turns a validation failure into one readable line.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from croniter import croniter
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./gitlab-insights.db"
# Google's ID-token issuers and published signing keys (Cloud Scheduler's OIDC tokens).
GOOGLE_OIDC_ISSUERS = ("https://accounts.google.com", "accounts.google.com")
GOOGLE_OIDC_JWKS_URL = "https://www.googleapis.com/oauth2/v3/certs"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

PositiveFloat = Annotated[float, Field(ge=0)]
# A comma-separated list in the environment (`a,b`), a list in code; not JSON-decoded.
CommaList = Annotated[list[str], NoDecode]

# The example signing key of .env.example: public, so never accepted as a real key.
PLACEHOLDER_SIGNING_KEY = "signkey-test-replace-with-your-own-key"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
    )

    # --- database -------------------------------------------------------------------
    database_url: str = DEFAULT_DATABASE_URL
    db_pool_size: int = Field(10, ge=1, le=200)
    db_pool_timeout: float = Field(30.0, gt=0)

    # --- GitLab -----------------------------------------------------------------------
    gitlab_instance_url: str = "https://gitlab.com"
    gitlab_connect_timeout: float = Field(5.0, gt=0)
    gitlab_read_timeout: float = Field(30.0, gt=0)
    gitlab_max_attempts: int = Field(4, ge=1, le=20)
    gitlab_backoff_base: PositiveFloat = 0.5
    gitlab_backoff_max: PositiveFloat = 30.0
    gitlab_rate_limit_max_wait: PositiveFloat = 60.0
    gitlab_rate_limit_low_remaining: int = Field(20, ge=0)
    # Per user: a request count limit (GitLab.com: 2,000 a minute per user; self-managed:
    # off by default) does not limit concurrency; pacing on RateLimit-Remaining does that.
    # 40 = the instance cap: one user alone may use it all, several share it.
    gitlab_user_concurrency: int = Field(40, ge=1, le=100)
    # Per process, all users together: what the GitLab instance sees at most (40 = the old
    # peak of 5 users x 8), so a small self-managed GitLab is never flooded.
    gitlab_max_in_flight: int = Field(40, ge=1, le=1000)
    gitlab_per_page: int = Field(100, ge=1, le=100)
    include_system_notes: bool = False
    gitlab_oauth_client_id: str | None = None
    gitlab_oauth_client_secret: SecretStr | None = None
    gitlab_oauth_redirect_uri: str | None = None

    # --- who may call /api/poll ------------------------------------------------------
    inngest_signing_key: SecretStr | None = None
    inngest_signing_key_fallback: SecretStr | None = None
    inngest_event_key: SecretStr | None = None
    inngest_dev: str | None = None
    signature_max_age_seconds: int = Field(300, ge=1, le=3600)
    max_request_body_bytes: int = Field(65536, ge=1024, le=10 * 1024 * 1024)
    allow_unsigned_polls: bool = False
    # OIDC ID tokens (Cloud Scheduler's --oidc-*): empty audiences = OIDC off.
    oidc_audiences: CommaList = []
    oidc_service_accounts: CommaList = []
    oidc_jwks_url: str = GOOGLE_OIDC_JWKS_URL
    oidc_issuers: CommaList = list(GOOGLE_OIDC_ISSUERS)

    # --- the run ----------------------------------------------------------------------
    inngest_polling_cron: str = "*/10 * * * *"
    poll_concurrency: int = Field(5, ge=1, le=100)
    min_refresh_interval_seconds: PositiveFloat = 30.0
    sync_overlap_seconds: int = Field(120, ge=60)
    sync_backfill_days: int = Field(90, ge=0)
    user_sync_attempts: int = Field(4, ge=1, le=10)
    user_retry_backoff_base: PositiveFloat = 1.0
    user_sync_deadline_seconds: float = Field(600.0, gt=0)
    lease_ttl_seconds: float = Field(60.0, ge=1)
    # PostgreSQL: session advisory locks (freed when a dead process's connection drops).
    # "table" forces lease rows, for transaction-mode poolers (PgBouncer) where a session
    # lock would outlive its client; SQLite always uses the table.
    lease_backend: Literal["advisory", "table"] = "advisory"
    gitlab_down_threshold: int = Field(3, ge=1)
    gitlab_down_retry_after_seconds: int = Field(120, ge=1)
    # GitLab requests in a row that could not connect at all (refused, DNS, TLS), each after
    # its retries, across users and projects: the instance is unreachable, the run stops.
    gitlab_unreachable_threshold: int = Field(5, ge=1)

    # --- access loss and deletions (README: "Access and deletions") --------------------
    # A refused project is confirmed lost on two runs at least this far apart (0: next run).
    access_loss_confirm_minutes: int = Field(30, ge=0)
    # Each (user, project) is reconciled this often, spread over the interval (0: never).
    reconcile_interval_hours: float = Field(24.0, ge=0)
    # A reconciliation removing more than this (or more than half of a project's events)
    # waits for the next reconciliation to find exactly the same.
    reconcile_max_removals: int = Field(1000, ge=1)
    # How often `serve` looks for the original app's Refresh button (a LastSync it moved)
    # and syncs that user at once, on the app's newest schema (0: never).
    app_refresh_follow_seconds: float = Field(15.0, ge=0)

    # --- logging ----------------------------------------------------------------------
    log_level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # auto: pretty lines on a terminal, JSON lines otherwise (pipes, files, containers).
    log_format: Literal["auto", "json", "pretty"] = "auto"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_format(cls, v: object) -> object:
        return v.lower() if isinstance(v, str) else v

    @field_validator("database_url")
    @classmethod
    def _normalize_database_url(cls, v: str) -> str:
        return normalize_database_url(v)

    @field_validator("gitlab_instance_url")
    @classmethod
    def _check_instance_url(cls, v: str) -> str:
        parts = urlsplit(v.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) URL such as https://gitlab.example.com")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query string or fragment")
        return v.strip().rstrip("/")

    @field_validator("inngest_polling_cron")
    @classmethod
    def _check_cron(cls, v: str) -> str:
        v = " ".join(v.split())
        if len(v.split()) != 5 or not croniter.is_valid(v):
            raise ValueError("must be a 5-field cron expression such as '*/10 * * * *'")
        return v

    @field_validator(
        "inngest_signing_key",
        "inngest_signing_key_fallback",
        "inngest_event_key",
        "gitlab_oauth_client_secret",
        mode="before",
    )
    @classmethod
    def _empty_secret_is_none(cls, v: object) -> object:
        if isinstance(v, str) and not v.strip():
            return None
        return v

    @field_validator("inngest_signing_key", "inngest_signing_key_fallback")
    @classmethod
    def _refuse_placeholder_key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and v.get_secret_value().strip() == PLACEHOLDER_SIGNING_KEY:
            raise ValueError(
                "is the placeholder from .env.example, which anyone can read: set your own key "
                "(e.g. signkey-prod-$(openssl rand -hex 32))"
            )
        return v

    @field_validator("gitlab_oauth_client_id", "gitlab_oauth_redirect_uri", "inngest_dev")
    @classmethod
    def _empty_is_none(cls, v: str | None) -> str | None:
        return v if v and v.strip() else None

    @field_validator("oidc_audiences", "oidc_service_accounts", "oidc_issuers", mode="before")
    @classmethod
    def _split_commas(cls, v: object) -> object:
        if isinstance(v, str):
            v = v.split(",")
        if isinstance(v, list | tuple):
            # Order kept, blanks and repeats dropped: "a, b,,a" -> ["a", "b"].
            return list(dict.fromkeys(str(x).strip() for x in v if str(x).strip()))
        return v

    @field_validator("oidc_service_accounts")
    @classmethod
    def _check_service_accounts(cls, v: list[str]) -> list[str]:
        for email in v:
            local, at, domain = email.partition("@")
            if not (local and at and "." in domain) or any(c.isspace() for c in email):
                raise ValueError(
                    f"'{email}' is not a service account e-mail such as "
                    "scheduler@PROJECT.iam.gserviceaccount.com"
                )
        return list(dict.fromkeys(e.lower() for e in v))

    @field_validator("oidc_jwks_url")
    @classmethod
    def _check_jwks_url(cls, v: str) -> str:
        parts = urlsplit(v.strip())
        if parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS:
            return v.strip()  # a local key server (tests, a sidecar)
        if parts.scheme != "https" or not parts.netloc:
            raise ValueError("must be an https URL (http only for 127.0.0.1 or localhost)")
        return v.strip()

    @model_validator(mode="after")
    def _check_backoff(self) -> Settings:
        if self.gitlab_backoff_max < self.gitlab_backoff_base:
            raise ValueError("GITLAB_BACKOFF_MAX must be at least GITLAB_BACKOFF_BASE")
        return self

    @model_validator(mode="after")
    def _check_oidc(self) -> Settings:
        if self.oidc_audiences and not self.oidc_service_accounts:
            raise ValueError(
                "OIDC_SERVICE_ACCOUNTS is required when OIDC_AUDIENCES is set (the service "
                "account e-mails whose ID tokens may call /api/poll)"
            )
        if self.oidc_service_accounts and not self.oidc_audiences:
            raise ValueError(
                "OIDC_SERVICE_ACCOUNTS is set but OIDC_AUDIENCES is empty, so OIDC is off: "
                "set OIDC_AUDIENCES to the job's --oidc-token-audience"
            )
        if self.oidc_audiences and not self.oidc_issuers:
            raise ValueError("OIDC_ISSUERS must not be empty when OIDC_AUDIENCES is set")
        return self

    # --- derived ----------------------------------------------------------------------
    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def gitlab_api_url(self) -> str:
        return f"{self.gitlab_instance_url}/api/v4"

    @property
    def oauth_refresh_configured(self) -> bool:
        return bool(
            self.gitlab_oauth_client_id
            and self.gitlab_oauth_client_secret
            and self.gitlab_oauth_redirect_uri
        )

    @property
    def oidc_enabled(self) -> bool:
        """OIDC ID tokens are accepted on /api/poll (OIDC_AUDIENCES is set)."""
        return bool(self.oidc_audiences)

    def signing_keys(self) -> list[str]:
        """Configured signing keys, primary first. Empty when polls are unsigned."""
        keys = [self.inngest_signing_key, self.inngest_signing_key_fallback]
        return [k.get_secret_value() for k in keys if k is not None]

    def secret_values(self) -> list[str]:
        """Every configured secret, for the log redactor."""
        secrets = [
            self.inngest_signing_key,
            self.inngest_signing_key_fallback,
            self.inngest_event_key,
            self.gitlab_oauth_client_secret,
        ]
        return [s.get_secret_value() for s in secrets if s is not None]


def normalize_database_url(url: str) -> str:
    """Map the URL forms people paste to the async drivers we ship."""
    url = url.strip()
    if not url:
        raise ValueError("must not be empty")
    for prefix in ("postgres://", "postgresql://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    if url.startswith("postgresql+asyncpg://"):
        return url
    if url.startswith("sqlite+aiosqlite://"):
        return url
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    scheme = url.split(":", 1)[0] if ":" in url else "(none)"
    raise ValueError(
        f"unsupported scheme '{scheme}': use postgresql://user:pass@host/db or sqlite:///path.db"
    )


class ConfigurationError(Exception):
    """A setting is invalid; the message is one line fit for an operator."""


def format_settings_error(err: ValidationError) -> str:
    """One line naming each bad variable and what is wrong; never the secret's value."""
    parts = []
    for e in err.errors():
        loc = e.get("loc") or ()
        name = str(loc[0]).upper() if loc else "settings"
        msg = str(e.get("msg", "invalid value"))
        msg = msg.removeprefix("Value error, ")
        parts.append(f"{name}: {msg}")
    return "invalid configuration: " + "; ".join(parts)


def load_settings(**overrides: Any) -> Settings:
    """Build Settings, converting validation errors into a ConfigurationError line."""
    try:
        return Settings(**overrides)
    except ValidationError as err:
        raise ConfigurationError(format_settings_error(err)) from None


@lru_cache
def get_settings() -> Settings:
    return load_settings()
