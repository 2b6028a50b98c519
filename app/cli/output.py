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


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `error: message` on stderr and exit with `code` (no traceback, ever)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def fail_all(origin: str, problems: Sequence[str], code: int = 1) -> NoReturn:
    """Several problems of one input (a file), one line each."""
    for problem in problems:
        typer.echo(f"error: {origin}: {problem}", err=True)
    raise typer.Exit(code)


def database_error_message(exc: BaseException) -> str:
    """One line for a database failure, without the driver's text (it may carry the URL).

    A missing table means the schema was never created: say which command fixes that.
    """
    text = str(getattr(exc, "orig", None) or exc).splitlines()[0] if str(exc) else ""
    if "no such table" in text or ("does not exist" in text and "relation" in text):
        return "the database has no gitlab-insights tables: run `gitlab-insights migrate` first"
    return f"database unavailable or failing ({type(exc).__name__}); check DATABASE_URL"


def iso(value: datetime | None) -> str | None:
    """UTC ISO 8601 with a `Z`, as the API writes dates; None stays None."""
    return value.isoformat().replace("+00:00", "Z") if value else None


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Left-aligned columns under a dashed rule; `rows` must not be empty."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    typer.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    typer.echo("  ".join("-" * w for w in widths))
    for row in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def print_json(data: Any) -> None:
    """Indented JSON for people and jq alike."""
    typer.echo(json.dumps(data, indent=2))
