"""Loguru configuration: JSON/pretty output on stdout, stdlib interception, redaction."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime

import pytest
from loguru import logger

import app.logging as app_logging
from app.logging import REDACTED, configure_logging, redact, register_secret
from app.settings import Settings

# Obviously fake secrets.
SIGNING_KEY = "signkey-test-" + "ab" * 32
OAUTH_SECRET = "fake-oauth-client-secret-0000"
DB_TOKEN = "fake-db-loaded-token-1111"

_STDLIB_NAMES = ["", *app_logging._STDLIB_LEVELS]
_readded: list[int] = []


@pytest.fixture(autouse=True)
def restore_logging():
    """Put loguru, stdlib logging and the secret registry back as they were."""
    saved_std = {
        name: (lg.level, list(lg.handlers), lg.propagate)
        for name in _STDLIB_NAMES
        for lg in [logging.getLogger(name)]
    }
    saved_patcher = logger._core.patcher
    # Loguru's default stderr sink (id 0), or our stand-in for it from a previous test.
    had_default = bool({0, *_readded} & set(logger._core.handlers))
    for handler_id in _readded:
        if handler_id in logger._core.handlers:
            logger.remove(handler_id)
    _readded.clear()
    saved_secrets = list(app_logging._secrets._order)
    yield
    for handler_id in list(app_logging._handler_ids):
        logger.remove(handler_id)
    app_logging._handler_ids.clear()
    logger._core.patcher = saved_patcher
    if had_default and 0 not in logger._core.handlers:
        _readded.append(logger.add(sys.stderr))
    for name, (level, handlers, propagate) in saved_std.items():
        lg = logging.getLogger(name)
        lg.setLevel(level)
        lg.handlers = handlers
        lg.propagate = propagate
    app_logging._secrets.clear()
    for value in saved_secrets:
        app_logging._secrets.add(value)


def make_settings(fmt: str = "json", level: str = "DEBUG") -> Settings:
    return Settings(
        _env_file=None,
        log_format=fmt,
        log_level=level,
        inngest_signing_key=SIGNING_KEY,
        gitlab_oauth_client_secret=OAUTH_SECRET,
        inngest_event_key="fake-event-key-2222",
    )


def lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().out.splitlines() if line]


# (text containing a secret, the secret part that must disappear)
FORMS = {
    "registered": (f"token loaded {DB_TOKEN} ok", DB_TOKEN),
    "signing_key_setting": (f"key is {SIGNING_KEY}", "ab" * 32),
    "bare_signing_key": (f"hmac key {'ab' * 32}", "ab" * 32),
    "oauth_secret_setting": (f"secret {OAUTH_SECRET}!", OAUTH_SECRET),
    "authorization_header": ("Authorization: Basic ZmFrZTpmYWtlZmFrZQ==", "ZmFrZTpmYWtlZmFrZQ"),
    "authorization_repr": ("{'authorization': 'Token fakevalue99'}", "fakevalue99"),
    "bearer": ("sent Bearer fakebearer.abc-123== upstream", "fakebearer"),
    "private_token": ("PRIVATE-TOKEN: fakeprivate777", "fakeprivate777"),
    "access_token_query": ("GET /x?a=1&access_token=fakeaccess88&b=2", "fakeaccess88"),
    "refresh_token_form": ("grant_type=refresh_token&refresh_token=fakerefresh88", "fakerefresh88"),
    "client_secret_form": ("client_id=1&client_secret=fakeclient88&code=x", "fakeclient88"),
    "json_access_token": ('{"access_token": "fakejson1", "x": 1}', "fakejson1"),
    "json_refresh_token": ('{"refresh_token":"fakejson2"}', "fakejson2"),
    "json_camel_access": ('{"accessToken" : "fakejson3"}', "fakejson3"),
    "json_camel_refresh": ('{"refreshToken": "fakejson4"}', "fakejson4"),
    "json_client_secret": ('{"client_secret": "fake\\"json5"}', "json5"),
    "signkey_prod": ("signkey-prod-" + "0f" * 32, "0f" * 32),
    "signkey_branch": ("k=signkey-branch-" + "1e" * 32 + ";", "1e" * 32),
    "glpat": ("token glpat-" + "Fake" * 5 + " used", "Fake" * 5),
    "url_password": ("postgresql://app:fakepassw0rd@db/x", "fakepassw0rd"),
    # An OIDC ID token (JWT) without a Bearer in front: its payload and signature go.
    "jwt": (
        "id=eyJhbGciOiJSUzI1NiJ9.eyJlbWFpbCI6ImZha2VAeC5vcmcifQ.fakeSig_-123",
        "eyJlbWFpbCI6ImZha2VAeC5vcmcifQ",
    ),
    "jwt_bare": (
        "saw eyJhbGciOiJSUzI1NiJ9.eyJlbWFpbCI6ImZha2VAeC5vcmcifQ.fakeSig_-456 in a header",
        "fakeSig_-456",
    ),
}


def emit(where: str, text: str) -> None:
    if where == "message":
        logger.info("event: " + text)
    elif where == "extra":
        # Nested, and under an innocent key, so the value itself must be redacted.
        logger.bind(ctx={"detail": [text]}, plain=text).info("event")
    else:
        try:
            raise RuntimeError(text)
        except RuntimeError:
            logger.exception("failed")


@pytest.mark.parametrize("fmt", ["json", "pretty"])
@pytest.mark.parametrize("where", ["message", "extra", "exception"])
@pytest.mark.parametrize("form", list(FORMS))
def test_every_form_is_redacted_everywhere(capsys, fmt: str, where: str, form: str) -> None:
    configure_logging(make_settings(fmt))
    register_secret(DB_TOKEN)
    text, secret = FORMS[form]
    emit(where, text)
    out = capsys.readouterr().out
    assert secret not in out
    assert REDACTED in out
    if fmt == "json":
        for line in out.splitlines():
            json.loads(line)
    if where == "exception":
        assert "Traceback (most recent call last)" in out


def test_json_line_shape(capsys) -> None:
    configure_logging(make_settings("json"))
    logger.bind(run_id="r1", count=3, nested={"a": [1, None]}).warning("hello {}", "world")
    (line,) = lines(capsys)
    record = json.loads(line)
    assert record["message"] == "hello world"
    assert record["level"] == "WARNING"
    assert record["logger"] == __name__
    assert record["module"] == "test_logging"
    assert record["run_id"] == "r1"
    assert record["count"] == 3
    assert record["nested"] == {"a": [1, None]}
    stamp = datetime.fromisoformat(record["time"])
    assert stamp.utcoffset().total_seconds() == 0


def test_json_exception_is_a_string_field(capsys) -> None:
    configure_logging(make_settings("json"))
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        logger.exception("math")
    (line,) = lines(capsys)
    record = json.loads(line)
    assert isinstance(record["exception"], str)
    assert "ZeroDivisionError" in record["exception"]


def test_pretty_is_plain_text(capsys) -> None:
    configure_logging(make_settings("pretty"))
    logger.bind(user_id=7).info("pretty <red>not markup</red> {braces}")
    (line,) = lines(capsys)
    assert "\x1b[" not in line
    assert line.split()[1] == "INFO"
    assert "pretty <red>not markup</red> {braces}" in line
    assert "user_id=7" in line


def test_local_variables_are_not_printed_in_tracebacks(capsys) -> None:
    configure_logging(make_settings("pretty"))

    def fail(credential: str) -> None:
        raise ValueError("nope")

    value = "unregistered-" + "plain-value"  # not spelled out on the raising line
    try:
        fail(value)
    except ValueError:
        logger.exception("failed")
    out = capsys.readouterr().out
    assert "ValueError: nope" in out
    assert "unregistered-plain-value" not in out


def test_sensitive_extra_keys_are_dropped_whole(capsys) -> None:
    configure_logging(make_settings("json"))
    headers = {"Authorization": "x", "Cookie": "session=1", "Accept": "json"}
    logger.bind(token="short", headers=headers).info("call")
    record = json.loads(lines(capsys)[0])
    assert record["token"] == REDACTED
    assert record["headers"] == {"Authorization": REDACTED, "Cookie": REDACTED, "Accept": "json"}
    # The caller's objects are not modified.
    assert headers["Authorization"] == "x"


@pytest.mark.parametrize("fmt", ["json", "pretty"])
def test_stdlib_loggers_are_routed_and_redacted(capsys, fmt: str) -> None:
    configure_logging(make_settings(fmt))
    register_secret(DB_TOKEN)
    logging.getLogger("uvicorn.error").error("bad header Authorization: Bearer %s", DB_TOKEN)
    logging.getLogger("some.library").warning("token %s", DB_TOKEN)
    try:
        raise OSError(f"while using {DB_TOKEN}")
    except OSError:
        logging.getLogger("uvicorn.error").exception("crash")
    out = capsys.readouterr().out
    assert DB_TOKEN not in out
    assert out.count(REDACTED) >= 3
    assert "uvicorn.error" in out
    assert "some.library" in out
    assert "OSError" in out
    if fmt == "json":
        parsed = [json.loads(line) for line in out.splitlines()]
        assert [p["logger"] for p in parsed] == ["uvicorn.error", "some.library", "uvicorn.error"]


def test_noisy_libraries_are_quieted(capsys) -> None:
    configure_logging(make_settings("json", level="DEBUG"))
    logging.getLogger("httpx").info("HTTP Request: GET https://x/?private_token=abc")
    logging.getLogger("sqlalchemy.engine").info("SELECT ... params")
    logging.getLogger("httpx").warning("kept")
    out = lines(capsys)
    assert len(out) == 1
    assert json.loads(out[0])["message"] == "kept"


def test_level_from_settings(capsys) -> None:
    configure_logging(make_settings("json", level="WARNING"))
    logger.info("hidden")
    logging.getLogger("uvicorn.access").info("hidden too")
    logger.warning("shown")
    assert [json.loads(line)["message"] for line in lines(capsys)] == ["shown"]


def test_configure_twice_does_not_duplicate(capsys) -> None:
    configure_logging(make_settings("json"))
    configure_logging(make_settings("json"))
    logger.info("once")
    logging.getLogger("uvicorn.error").info("once too")
    logging.getLogger("other").info("and once")
    assert len(lines(capsys)) == 3
    assert (
        sum(isinstance(h, app_logging.InterceptHandler) for h in logging.getLogger().handlers) == 1
    )


def test_reconfigure_switches_format(capsys) -> None:
    configure_logging(make_settings("json"))
    configure_logging(make_settings("pretty"))
    logger.info("now pretty")
    (line,) = lines(capsys)
    assert line.endswith("now pretty")
    assert not line.startswith("{")


def test_configure_registers_settings_secrets() -> None:
    configure_logging(make_settings())
    text = f"{SIGNING_KEY} {'ab' * 32} {OAUTH_SECRET} fake-event-key-2222"
    assert redact(text) == " ".join([REDACTED] * 4)


def test_redact_public_helper() -> None:
    register_secret(DB_TOKEN)
    register_secret("short")  # under 8 chars: ignored, it would shred ordinary words
    register_secret(None)
    assert redact(f"x{DB_TOKEN}y") == f"x{REDACTED}y"
    assert redact("a short message") == "a short message"
    assert redact("") == ""
    # Idempotent: redacting twice changes nothing more.
    once = redact("Authorization: Bearer abc123456 and access_token=zzz")
    assert redact(once) == once
    # Ordinary text survives.
    for text in ("token_count=5", "expected a Bearer", "refresh failed: 401", "tokens used"):
        assert redact(text) == text


def test_registry_is_bounded_and_keeps_the_most_recent() -> None:
    registry = app_logging._SecretRegistry(limit=3)
    for value in ("fake-aaaaaaaa", "fake-bbbbbbbb", "fake-cccccccc"):
        registry.add(value)
    registry.add("fake-aaaaaaaa")  # refreshed: now the most recent
    registry.add("fake-dddddddd-longer")  # evicts fake-bbbbbbbb
    text = "fake-aaaaaaaa fake-bbbbbbbb fake-cccccccc fake-dddddddd-longer"
    assert registry.redact(text) == f"{REDACTED} fake-bbbbbbbb {REDACTED} {REDACTED}"


def test_registry_longest_secret_wins_and_odd_characters() -> None:
    registry = app_logging._SecretRegistry(limit=10)
    registry.add("abcdefgh")
    registry.add("abcdefgh-ijkl")
    registry.add("has spaces: and colons")
    assert registry.redact("x=abcdefgh-ijkl/abcdefgh.") == f"x={REDACTED}/{REDACTED}."
    assert registry.redact("[has spaces: and colons]") == f"[{REDACTED}]"


def test_hostile_input_does_not_backtrack() -> None:
    import threading

    register_secret(DB_TOKEN)
    texts = ("a-" * 20_000, "a." * 20_000, "x" * 40_000, "token:" * 5_000)
    done: list[str] = []
    worker = threading.Thread(target=lambda: done.extend(redact(t) for t in texts), daemon=True)
    worker.start()
    # A hang guard, not a speed assertion: catastrophic backtracking on 40,000 characters
    # takes hours; linear redaction takes milliseconds even on a loaded machine.
    worker.join(timeout=120)
    assert len(done) == len(texts), "redact() did not finish: catastrophic backtracking"


class _Tty:
    """A stand-in terminal for sys.stderr/stdout."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.text = ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize(("tty", "pretty"), [(True, True), (False, False)])
def test_auto_format_is_pretty_on_a_terminal_and_json_elsewhere(monkeypatch, tty, pretty) -> None:
    stream = _Tty(tty)
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging(make_settings("auto"), stream="stderr")
    logger.bind(user_id="u1").warning("something odd")
    (line,) = stream.text.splitlines()
    if pretty:
        # Concise: time, level, message, context; no date, module path or JSON.
        assert not line.startswith("{")
        assert line.split()[1] == "WARNING"
        assert line.endswith("something odd  user_id=u1")
        assert "test_auto_format" not in line  # no function or line number
    else:
        assert json.loads(line)["message"] == "something odd"


@pytest.mark.parametrize("fmt", ["json", "pretty"])
def test_explicit_format_wins_over_the_terminal(monkeypatch, fmt) -> None:
    for tty in (True, False):
        stream = _Tty(tty)
        monkeypatch.setattr(sys, "stderr", stream)
        configure_logging(make_settings(fmt), stream="stderr")
        logger.info("hello")
        assert stream.text.startswith("{") == (fmt == "json"), (tty, stream.text)


def test_default_log_format_is_auto(monkeypatch) -> None:
    monkeypatch.delenv("LOG_FORMAT", raising=False)
    assert Settings(_env_file=None).log_format == "auto"


def test_log_lines_through_a_live_display(monkeypatch, capsys) -> None:
    configure_logging(make_settings("pretty"), stream="stderr")
    taken: list[str] = []
    with app_logging.log_lines_through(taken.append):
        logger.warning("during progress")
    logger.warning("after progress")
    assert len(taken) == 1 and "during progress" in taken[0] and taken[0].endswith("\n")
    err = capsys.readouterr().err
    assert "during progress" not in err and "after progress" in err
