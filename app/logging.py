"""Loguru, configured once: JSON lines or a concise pretty format, with secrets redacted.

LOG_FORMAT=auto (the default) picks pretty lines when the log stream is a terminal and JSON
lines otherwise (files, pipes, containers, log collectors); `json` and `pretty` force one.
While a command shows a live progress display, `log_lines_through(write)` hands every log
line to that display's console, so the two never interleave on one line.

Redaction runs in loguru's core patcher, i.e. on every record before any sink sees it:
the message, every ``extra`` value (recursively; values under keys such as ``token`` or
``authorization`` are dropped whole) and the exception traceback. The raw exception is
replaced by its redacted text in ``extra["exception"]`` so no sink can print the original.

Caveats: ``logger.patch(...)`` patchers run after ours and are not redacted; another
``logger.configure(patcher=...)`` call would replace ours.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import re
import sys
import threading
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC
from typing import TYPE_CHECKING, Any

from loguru import logger

if TYPE_CHECKING:
    from app.settings import Settings

REDACTED = "[REDACTED]"
MIN_SECRET_LEN = 8
MAX_SECRETS = 10_000
_MAX_DEPTH = 8

# --- registered secret values --------------------------------------------------------------

# Characters of token-like secrets; runs of them are where such secrets can hide.
_RUN_RE = re.compile(rf"[A-Za-z0-9._~+/=-]{{{MIN_SECRET_LEN},}}")
_SIGNKEY_PREFIX_RE = re.compile(r"^signkey-\w+-")


class _SecretRegistry:
    """Most recent secrets, found by length-indexed set lookups over token-like runs.

    A regex alternation or ``str.replace`` per secret would cost O(secrets) per log line;
    this costs O(run length x distinct secret lengths).
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._order: OrderedDict[str, None] = OrderedDict()
        self._by_len: dict[int, set[str]] = {}
        self._lengths: tuple[int, ...] = ()
        self._other: frozenset[str] = frozenset()  # secrets with non-token chars

    def add(self, value: str) -> None:
        with self._lock:
            if value in self._order:
                self._order.move_to_end(value)
                return
            self._order[value] = None
            self._index(value, add=True)
            while len(self._order) > self._limit:
                oldest, _ = self._order.popitem(last=False)
                self._index(oldest, add=False)
            self._lengths = tuple(sorted(self._by_len, reverse=True))

    def _index(self, value: str, *, add: bool) -> None:
        if not _RUN_RE.fullmatch(value):
            self._other = self._other | {value} if add else self._other - {value}
            return
        bucket = self._by_len.setdefault(len(value), set())
        if add:
            bucket.add(value)
        else:
            bucket.discard(value)
            if not bucket:
                del self._by_len[len(value)]

    def clear(self) -> None:
        with self._lock:
            self._order.clear()
            self._by_len.clear()
            self._lengths = ()
            self._other = frozenset()

    def redact(self, text: str) -> str:
        for value in self._other:
            text = text.replace(value, REDACTED)
        if self._lengths:
            text = _RUN_RE.sub(self._redact_run, text)
        return text

    def _redact_run(self, match: re.Match[str]) -> str:
        run = match.group(0)
        lengths, by_len = self._lengths, self._by_len
        out: list[str] = []
        i = start = 0
        while i < len(run):
            for n in lengths:  # longest first, so a secret containing another wins
                if run[i : i + n] in by_len.get(n, ()):
                    out += (run[start:i], REDACTED)
                    i = start = i + n
                    break
            else:
                i += 1
        return "".join(out) + run[start:] if out else run


_secrets = _SecretRegistry(MAX_SECRETS)


def register_secret(value: str | None) -> None:
    """Never log ``value`` (a token, key or client secret); short values are ignored."""
    if isinstance(value, str) and len(value) >= MIN_SECRET_LEN:
        _secrets.add(value)
        # The HMAC secret is the key without its prefix; it may show up alone.
        bare = _SIGNKEY_PREFIX_RE.sub("", value, count=1)
        if bare != value and len(bare) >= MIN_SECRET_LEN:
            _secrets.add(bare)


# --- patterns ------------------------------------------------------------------------------

# Bounded repetitions keep every pattern linear on hostile input (no O(n^2) rescans).
_QUOTED_OR_BARE = r"""(?P<v>"(?:[^"\\\r\n]|\\.)*"|'[^'\r\n]*'|{bare})"""


def _keep_quotes(match: re.Match[str]) -> str:
    value = match.group("v")
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match.group('k')}{quote}{REDACTED}{quote}"


_PATTERNS: list[tuple[re.Pattern[str], Any]] = [
    # Authorization headers ("Authorization: Basic x", JSON, repr): the whole value to EOL.
    (
        re.compile(
            r"(?i)(?P<k>\b(?:proxy-)?authorization[\"']?\s*[:=]\s*)"
            + _QUOTED_OR_BARE.format(bare=r"[^\r\n]+")
        ),
        _keep_quotes,
    ),
    # Token-ish keys in headers, query/form strings, JSON and reprs: PRIVATE-TOKEN: v,
    # access_token=v, "refreshToken": "v", client_secret=v, password=v, X-Gitlab-Token: v ...
    (
        re.compile(
            r"(?i)(?P<k>\b[\w-]{0,40}(?:token|secret|password)[\"']?\s*[:=]\s*)"
            + _QUOTED_OR_BARE.format(bare=r"[^\s&,;\"'<>(){}\[\]]+")
        ),
        _keep_quotes,
    ),
    (re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/-]+=*"), rf"\1{REDACTED}"),
    (re.compile(r"\bsignkey-[\w-]+"), REDACTED),
    # A JWT anywhere (an OIDC ID token without its "Bearer"): header.payload.signature.
    (
        re.compile(r"\beyJ[A-Za-z0-9_-]{4,4096}\.[A-Za-z0-9_-]{4,16384}\.[A-Za-z0-9_-]{0,4096}"),
        REDACTED,
    ),
    (re.compile(r"\bgl(?:pat|oas|dt|rt|ptt|ft|imt|cbt|soat|agent|ffct|wt)-[\w.-]{8,}"), REDACTED),
    # Passwords in URLs: scheme://user:password@host
    (
        re.compile(r"(?i)\b([a-z][a-z0-9+.-]{0,30}://[^\s:/?#@]{0,256}:)[^\s@/?#]{1,256}@"),
        rf"\1{REDACTED}@",
    ),
]

_SENSITIVE_KEY_RE = re.compile(r"(?i)(token|secret|password|authorization|cookie|api[_-]?key)$")


def redact(text: str) -> str:
    """``text`` with registered secrets and credential-looking values replaced."""
    if not text:
        return text
    text = _secrets.redact(text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: Any, depth: int = 0) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact(value)
    if depth >= _MAX_DEPTH:
        return "[...]"
    if isinstance(value, Mapping):
        return {
            str(k): REDACTED if _SENSITIVE_KEY_RE.search(str(k)) else _redact_value(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v, depth + 1) for v in value]
    if isinstance(value, bytes):
        return redact(value.decode("utf-8", "replace"))
    # Any other object would be stringified by the sinks anyway; do it here, redacted.
    return redact(str(value))


def _redact_record(record: Any) -> None:
    """Loguru core patcher: runs on every record before any sink."""
    record["message"] = redact(record["message"])
    # record["extra"] is a fresh dict per record; nested values are rebuilt, not mutated.
    extra = record["extra"]
    for key in list(extra):
        extra[key] = REDACTED if _SENSITIVE_KEY_RE.search(key) else _redact_value(extra[key])
    exc = record["exception"]
    if exc is not None:
        if exc.type is not None:
            text = "".join(traceback.format_exception(exc.type, exc.value, exc.traceback))
            extra["exception"] = redact(text.rstrip("\n"))
        record["exception"] = None


# --- sinks ---------------------------------------------------------------------------------

_CORE_FIELDS = ("time", "level", "message", "logger", "module", "function", "line")


def _json_line(record: Any) -> str:
    payload: dict[str, Any] = {
        "time": record["time"].astimezone(UTC).isoformat(timespec="milliseconds"),
        "level": record["level"].name,
        "message": record["message"],
        "logger": record["name"],
        "module": record["module"],
        "function": record["function"],
        "line": record["line"],
    }
    for key, value in record["extra"].items():
        payload[f"extra_{key}" if key in _CORE_FIELDS else key] = value
    return json.dumps(payload, default=str, ensure_ascii=False) + "\n"


def _pretty_line(record: Any) -> str:
    """`19:42:51 WARNING  message  key=value`: local time, for a person at a terminal."""
    extra = dict(record["extra"])
    exception = extra.pop("exception", None)
    time = record["time"].strftime("%H:%M:%S")
    # Our own modules go unnamed; a library's line says whose it is (uvicorn.error: ...).
    name = record["name"] or ""
    source = "" if name == "app" or name.startswith(("app.", "__main__")) else f"{name}: "
    line = f"{time} {record['level'].name:<8} {source}{record['message']}"
    if extra:
        line += "  " + " ".join(
            f"{k}={v}" if isinstance(v, str) and v and " " not in v else f"{k}={v!r}"
            for k, v in extra.items()
        )
    if exception:
        line += "\n" + exception
    return line + "\n"


# Where log lines go instead of the stream while a live display owns the terminal.
_line_writer: Callable[[str], None] | None = None


@contextlib.contextmanager
def log_lines_through(write: Callable[[str], None]) -> Iterator[None]:
    """Send every log line (newline included) to `write` until the block ends.

    A command drawing a live progress display passes its console's printer here: the
    display then prints each line above itself instead of being written over.
    """
    global _line_writer
    previous, _line_writer = _line_writer, write
    try:
        yield
    finally:
        _line_writer = previous


def resolve_format(log_format: str, stream: Any) -> str:
    """`json` or `pretty`: `auto` is pretty on a terminal, JSON anywhere else."""
    if log_format in ("json", "pretty"):
        return log_format
    isatty = getattr(stream, "isatty", None)
    try:
        return "pretty" if callable(isatty) and isatty() else "json"
    except ValueError:  # a closed stream
        return "json"


def _stream_sink(render: Any, stream: str) -> Any:
    def sink(message: Any) -> None:
        # The stream is looked up per write so a replaced one (tests, reloaders) works.
        line = render(message.record)
        writer = _line_writer
        if writer is not None:
            writer(line)
            return
        out = sys.stderr if stream == "stderr" else sys.stdout
        out.write(line)
        out.flush()

    return sink


# --- stdlib interception -------------------------------------------------------------------


class InterceptHandler(logging.Handler):
    """Send stdlib records to loguru (the standard loguru recipe)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        # Find the caller outside the logging module so function/line are meaningful.
        frame, depth = inspect.currentframe(), 0
        while frame is not None and (depth == 0 or frame.f_code.co_filename == logging.__file__):
            frame = frame.f_back
            depth += 1
        name = record.name
        logger.patch(lambda r: r.update({"name": name})).opt(
            depth=depth, exception=record.exc_info
        ).log(level, record.getMessage())


# Logger -> level floor. httpx/httpcore log request URLs (query strings may carry tokens);
# sqlalchemy.engine at INFO logs SQL parameters (tokens) — keep them at WARNING.
_STDLIB_LEVELS = {
    "uvicorn": None,
    "uvicorn.error": None,
    "uvicorn.access": None,
    "alembic": "INFO",
    # "setup plugin alembic.autogenerate.*" seven times on import: set-up noise.
    "alembic.runtime.plugins": "WARNING",
    "inngest": None,
    "sqlalchemy": "WARNING",
    "sqlalchemy.engine": "WARNING",
    "sqlalchemy.pool": "WARNING",
    # Pool subclasses log under their own module path ("Pool disposed" at INFO).
    "app.db.engine": "WARNING",
    "httpx": "WARNING",
    "httpcore": "WARNING",
    "asyncio": "WARNING",
}

_handler_ids: list[int] = []
_configure_lock = threading.Lock()


def configure_logging(settings: Settings, *, stream: str = "stdout") -> None:
    """Install the redacting patcher, one sink and stdlib interception. Idempotent.

    The server logs to stdout; command-line tools pass stream="stderr" so their own output
    (tables, --json) stays clean.

    Run uvicorn with ``log_config=None`` (or call this after it starts): its default
    dictConfig would otherwise put its own, unredacted handlers back.
    """
    with _configure_lock:
        for secret in settings.secret_values():
            register_secret(secret)
        # Remove loguru's default stderr handler (id 0) and our previous sinks only, so
        # sinks others added (e.g. test captures) survive a reconfiguration.
        for handler_id in [0, *_handler_ids]:
            with contextlib.suppress(ValueError):
                logger.remove(handler_id)
        _handler_ids.clear()
        logger.configure(patcher=_redact_record)
        fmt = resolve_format(settings.log_format, sys.stderr if stream == "stderr" else sys.stdout)
        render = _json_line if fmt == "json" else _pretty_line
        _handler_ids.append(
            logger.add(
                _stream_sink(render, stream),
                level=settings.log_level,
                format="{message}",
                colorize=False,
                backtrace=False,
                diagnose=False,  # diagnose prints local variables: tokens
            )
        )

        levelno = logger.level(settings.log_level).no
        intercept = InterceptHandler()
        root = logging.getLogger()
        # Keep foreign root handlers (e.g. pytest's capture); replace only ours.
        root.handlers = [h for h in root.handlers if not isinstance(h, InterceptHandler)]
        root.addHandler(intercept)
        root.setLevel(levelno)
        for name, floor in _STDLIB_LEVELS.items():
            std = logging.getLogger(name)
            std.setLevel(max(levelno, logging.getLevelName(floor)) if floor else levelno)
            if name.startswith("uvicorn"):
                # uvicorn installs its own handlers; ours alone, without propagating twice.
                std.handlers = [intercept]
                std.propagate = False
            else:
                std.handlers = []
                std.propagate = True
