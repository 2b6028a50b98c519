"""`serve` (the API, optionally with the built-in scheduler) and `migrate`."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Annotated

import typer

from app.cli.context import settings_or_exit
from app.cli.output import USAGE_ERROR, database_error_message, fail
from app.settings import Settings


def upgrade_or_exit(settings: Settings) -> tuple[str, str]:
    """Upgrade the schema to head; returns what was done (one line) and which version of
    the original app's schema the database has (db/profile.py: story, newest, partial)."""
    from app.db.migrate import MigrationError, schema_profile, upgrade_to_head

    try:
        done = upgrade_to_head(settings.database_url)
        return done, schema_profile(settings.database_url).describe()
    except MigrationError as exc:
        if exc.connecting and exc.__cause__ is not None:
            fail(database_error_message(exc.__cause__, settings.database_url, fallback=str(exc)))
        fail(str(exc))


def check_port_free(host: str, port: int) -> None:
    """Fail in one line when host:port cannot be listened on (in use, not an address here).

    Checked before anything starts, as uvicorn would bind it (SO_REUSEADDR); a race with
    another process taking the port in between is left to uvicorn.
    """
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            fail(f"cannot listen on {host}:{port}: {reason.lower()}")


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM is handled as Ctrl-C (SIGINT) while the command runs.

    docker stop, systemd and Kubernetes stop a service with SIGTERM. uvicorn shuts down
    gracefully on it, then puts back the handler it found and raises the signal again: with
    Python's default handler that second SIGTERM killed the process (exit 143, as if the
    shutdown had not been clean). As Ctrl-C's handler it is the KeyboardInterrupt that
    follows a graceful shutdown, and the command exits 0. Before the server runs
    (migrations) it interrupts the command as Ctrl-C would; that also makes SIGTERM heard at
    all by a container's PID 1, for which the kernel drops default-handled signals.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve_with_scheduler(settings: Settings, *, host: str, port: int) -> None:
    """The API server and the built-in scheduler, until SIGINT/SIGTERM."""
    from app.scheduler.runner import SchedulerStartError, build_server

    try:
        server = build_server(settings, host=host, port=port)
    except SchedulerStartError as exc:  # scheduler.yaml changed since the first check
        fail(str(exc), code=USAGE_ERROR)
    # The KeyboardInterrupt uvicorn raises again after its graceful shutdown (uvicorn.run
    # swallows it; Server.run does not).
    with contextlib.suppress(KeyboardInterrupt):
        server.run()


def serve(
    host: Annotated[str, typer.Option(help="Interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on", min=1, max=65535)] = 8000,
    reload: Annotated[bool, typer.Option(help="Reload on code changes (development)")] = False,
    scheduler: Annotated[
        bool, typer.Option("--scheduler", help="Also run the built-in scheduler")
    ] = False,
    migrate: Annotated[
        bool, typer.Option("--migrate/--no-migrate", help="Upgrade the database first")
    ] = True,
) -> None:
    """Run the API server (uvicorn)."""
    settings = settings_or_exit()
    check_port_free(host, port)
    with sigterm_as_ctrl_c():
        if scheduler:
            from app.scheduler.runner import SchedulerStartError, build_scheduler

            try:  # refuse a scheduler that cannot run before touching the database
                build_scheduler(settings)
            except SchedulerStartError as exc:
                fail(str(exc), code=USAGE_ERROR)
        if migrate:
            from loguru import logger

            done, schema = upgrade_or_exit(settings)
            logger.bind(schema=schema).info("database: {} (schema: {})", done, schema)
        if scheduler:
            serve_with_scheduler(settings, host=host, port=port)
            return
        import uvicorn

        uvicorn.run(
            # An import string, not an app object: --reload re-imports it in a fresh process.
            "app.main:app",
            host=host,
            port=port,
            reload=reload,
            log_config=None,  # keep the redacting loguru setup
            proxy_headers=False,
        )


def migrate() -> None:
    """Create or upgrade the database schema (adopts an existing gitlab-insights database)."""
    done, schema = upgrade_or_exit(settings_or_exit())
    typer.echo(done)
    typer.echo(f"schema: {schema}")
