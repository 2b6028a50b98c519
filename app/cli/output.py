"""What every command prints: one-line errors, tables, JSON, dates.

stdout carries a command's result (a table, JSON, a confirmation); errors and progress go to
stderr, so `gitlab-insights users list --json | jq` never sees anything but the result.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NoReturn

import typer


class CLIError(Exception):
    """A user-facing error: printed as one line by the command runner, exit code 1."""


# Exit codes: 1 the command ran and failed; 2 a usage error, as Click's own (a missing or
# malformed option or argument, options that exclude each other, an unknown command) or a
# bad setting: the command line or the configuration must change before anything can work.
FAILED = 1
USAGE_ERROR = 2


def fail(message: str, code: int = FAILED) -> NoReturn:
    """Print `error: message` on stderr and exit with `code` (no traceback, ever)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def usage_error(message: str) -> NoReturn:
    """A bad option or argument found by the command itself: `error: message`, exit code 2."""
    fail(message, code=USAGE_ERROR)


def warn(message: str) -> None:
    """`warning: message` on stderr; the command goes on."""
    typer.echo(f"warning: {message}", err=True)


def fail_all(origin: str, problems: Sequence[str], code: int = FAILED) -> NoReturn:
    """Several problems of one input (a file), one line each."""
    for problem in problems:
        typer.echo(f"error: {origin}: {problem}", err=True)
    raise typer.Exit(code)


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception, what SQLAlchemy wraps (`.orig`) and their causes, outermost first."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [getattr(e, "orig", None), e.__cause__, e.__context__]
    return seen


def database_error_message(
    exc: BaseException, url: str | None = None, *, fallback: str | None = None
) -> str:
    """One line for a database failure naming its real cause, never the password.

    A missing table means the schema was never created: say which command fixes that.
    """
    import errno
    import socket
    from pathlib import Path

    from sqlalchemy.engine import make_url

    try:
        u = make_url(url) if url else None
    except Exception:  # noqa: BLE001 - an unparsable URL is reported without its parts
        u = None
    sqlite = u is not None and u.get_backend_name() == "sqlite"
    where = f"{u.host or 'localhost'}:{u.port or 5432}" if u is not None and not sqlite else ""
    causes = _causes(exc)
    names = {type(e).__name__ for e in causes}
    texts = [str(e).splitlines()[0] if str(e) else "" for e in causes]
    text = " ".join(texts)

    if "no such table" in text or ("does not exist" in text and "relation" in text):
        return "the database has no gitlab-insights tables: run `gitlab-insights migrate` first"
    if names & {"InvalidPasswordError", "InvalidAuthorizationSpecificationError"}:
        user = u.username if u is not None else "?"
        return f"database authentication failed for user {user} at {where}; check DATABASE_URL"
    if "InvalidCatalogNameError" in names:
        name = u.database if u is not None else "?"
        return f"database {name} does not exist at {where}; check DATABASE_URL"
    if sqlite and "unable to open database file" in text and u is not None:
        path = Path(u.database or "")
        folder = path.parent.resolve() if path.parent != Path("") else Path.cwd()
        if not folder.is_dir():
            return f"SQLite database folder {folder} does not exist; create it or fix DATABASE_URL"
        return f"cannot open SQLite database {path.resolve()}; check its permissions"
    for e in causes:
        if isinstance(e, socket.gaierror):
            host = u.host if u is not None else "?"
            return f"cannot resolve database host {host}; check DATABASE_URL"
        if isinstance(e, ConnectionRefusedError) or (
            isinstance(e, OSError) and e.errno == errno.ECONNREFUSED
        ):
            return f"cannot connect to the database at {where}: connection refused"
        if isinstance(e, TimeoutError):
            return f"timed out connecting to the database at {where}"
    return fallback or f"database unavailable or failing ({type(exc).__name__}); check DATABASE_URL"


def iso(value: datetime | None) -> str | None:
    """UTC ISO 8601 with a `Z`, as the API writes dates; None stays None."""
    return value.isoformat().replace("+00:00", "Z") if value else None


def stdout_console() -> Any:
    """A rich console on the current stdout: colours only on a terminal, and never narrower
    than what it prints (a table too wide for the terminal wraps like `ps` output does,
    instead of losing cells or columns)."""
    import sys

    from rich.console import Console

    terminal = Console(file=sys.stdout).is_terminal
    return Console(file=sys.stdout, highlight=False, width=10_000, no_color=not terminal)


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, title: str | None = None
) -> None:
    """A table on stdout (rich): a header, a rule, one line per row; `rows` may be empty."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(
        *headers,
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        header_style="bold",
    )
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # cells are data, never markup
    stdout_console().print(table, markup=False)


def print_json(data: Any) -> None:
    """Indented JSON for people and jq alike."""
    typer.echo(json.dumps(data, indent=2))
