"""What a command needs around its work: settings, logging and the runtime, errors as one line.

Commands build nothing themselves: `run_in_runtime` opens the composition root
(`app.runtime.open_runtime`) and hands the command's coroutine its `Runtime`. Heavy modules
(SQLAlchemy, httpx) are imported when a command runs, not when `--help` is printed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import typer

from app.cli.output import USAGE_ERROR, CLIError, database_error_message, fail
from app.settings import ConfigurationError, Settings, load_settings

if TYPE_CHECKING:
    from app.runtime import Runtime

T = TypeVar("T")


def settings_or_exit(**overrides: object) -> Settings:
    """Settings for a command, with its logs on stderr (stdout is the command's output).

    A bad setting is one line and exit code 2, as at server start-up.
    """
    from app.logging import configure_logging

    try:
        settings = load_settings(**overrides)
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(USAGE_ERROR) from None
    configure_logging(settings, stream="stderr")
    return settings


def run_in_runtime(settings: Settings, work: Callable[[Runtime], Awaitable[T]]) -> T:
    """Run `await work(runtime)` to completion; a CLIError or a database failure is one line.

    OSError counts as a database failure: an unreachable server surfaces as one
    (ConnectionRefusedError) before SQLAlchemy wraps anything.
    """
    from sqlalchemy.exc import DBAPIError

    from app.runtime import open_runtime

    async def main() -> T:
        async with open_runtime(settings) as runtime:
            return await work(runtime)

    try:
        return asyncio.run(main())
    except CLIError as exc:
        fail(str(exc))
    except (DBAPIError, OSError) as exc:
        fail(database_error_message(exc, settings.database_url))


async def instance_url_problem(rt: Runtime) -> str | None:
    """One line when GITLAB_INSTANCE_URL is not a GitLab API at all, else None.

    Asked after a 404: GitLab answers /api/v4/version with 200 (or 401 without a token),
    while a wrong host or sub-path answers 404. No token is sent: a wrong URL must not get one.
    """
    import httpx

    try:
        response = await rt.http.get(rt.settings.gitlab_api_url + "/version")
    except httpx.HTTPError:
        return None
    if response.status_code != 404:
        return None
    return (
        f"GITLAB_INSTANCE_URL {rt.settings.gitlab_instance_url} looks wrong: its API root "
        f"{rt.settings.gitlab_api_url} answers 404 (check the host and sub-path)"
    )
