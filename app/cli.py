"""`gitlab-insights` command line: serve, migrate, poll, users, projects, scheduler, demo."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer

from app.settings import ConfigurationError, Settings, load_settings

T = TypeVar("T")

cli = typer.Typer(
    name="gitlab-insights",
    help="Keep a database of GitLab issues, merge requests and comments fresh.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
users_cli = typer.Typer(help="Manage users and their GitLab tokens.", no_args_is_help=True)
projects_cli = typer.Typer(help="Manage monitored projects.", no_args_is_help=True)
cli.add_typer(users_cli, name="users")
cli.add_typer(projects_cli, name="projects")


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 1."""


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def settings_or_exit(**overrides: Any) -> Settings:
    """Settings for a command, with its logs on stderr (stdout is the command's output)."""
    from app.logging import configure_logging

    try:
        settings = load_settings(**overrides)
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    configure_logging(settings, stream="stderr")
    return settings


def run_db(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(sessionmaker)` in a transaction-friendly context; errors become one line."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    from app.runtime import open_runtime

    async def main() -> T:
        async with open_runtime(settings) as runtime:
            return await work(runtime.sessionmaker)

    try:
        return asyncio.run(main())
    except CLIError as exc:
        fail(str(exc))
    except (OperationalError, DBAPIError, OSError) as exc:
        fail(_db_error(exc))
    raise AssertionError("unreachable")


def _db_error(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).splitlines()[0] if str(exc) else ""
    if "no such table" in text or "does not exist" in text and "relation" in text:
        return "the database has no gitlab-insights tables: run `gitlab-insights migrate` first"
    return f"database unavailable or failing ({type(exc).__name__}); check DATABASE_URL"


def parse_when(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        fail(f"--expires-at: '{value}' is not an ISO 8601 date-time (e.g. 2026-12-01T10:00:00Z)")
        raise
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


# --- serve / migrate ---------------------------------------------------------------------------


@cli.command()
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
    import uvicorn

    settings = settings_or_exit()
    if scheduler:
        from app.scheduler.runner import SchedulerStartError, build_scheduler

        try:  # refuse a scheduler that cannot run before touching the database
            build_scheduler(settings)
        except SchedulerStartError as exc:
            fail(str(exc), code=2)
    if migrate:
        _migrate(settings)
    if scheduler:
        from app.scheduler.runner import serve_with_scheduler

        serve_with_scheduler(settings, host=host, port=port)
        return
    uvicorn.run(
        "app.main:app",
        host=host,
        port=port,
        reload=reload,
        log_config=None,
        proxy_headers=False,
    )


def _migrate(settings: Settings) -> str:
    from app.db.migrate import MigrationError, upgrade_to_head

    try:
        return upgrade_to_head(settings.database_url)
    except MigrationError as exc:
        fail(str(exc))
        raise


@cli.command()
def migrate() -> None:
    """Create or upgrade the database schema (adopts an existing gitlab-insights database)."""
    settings = settings_or_exit()
    typer.echo(_migrate(settings))


# --- users ---------------------------------------------------------------------------------------


@users_cli.command("add")
def users_add(
    email: Annotated[str, typer.Option(help="The user's e-mail (unique)")],
    token: Annotated[
        str,
        typer.Option(
            envvar="GITLAB_TOKEN",
            help="GitLab access token (or set GITLAB_TOKEN to keep it out of the process list)",
        ),
    ],
    name: Annotated[str | None, typer.Option(help="Display name")] = None,
    refresh_token: Annotated[
        str | None, typer.Option(envvar="GITLAB_REFRESH_TOKEN", help="OAuth refresh token")
    ] = None,
    expires_at: Annotated[
        str | None, typer.Option(help="Access token expiry, ISO 8601 (e.g. 2026-12-01T10:00Z)")
    ] = None,
) -> None:
    """Create a user and its GitLab account (providerId 'gitlab')."""
    from sqlalchemy.exc import IntegrityError

    from app.db import repository as repo

    email = email.strip()
    if "@" not in email or len(email) > 320 or any(c.isspace() for c in email):
        fail(f"--email: '{email}' is not an e-mail address")
    if not token.strip():
        fail("--token: must not be empty")
    when = parse_when(expires_at)
    settings = settings_or_exit()

    async def work(sm: Any) -> str:
        async with sm() as s, s.begin():
            if await repo.get_user_by_email(s, email) is not None:
                raise CLIError(f"a user with e-mail {email} already exists")
            try:
                user = await repo.create_user_with_account(
                    s,
                    email=email,
                    name=name,
                    access_token=token.strip(),
                    refresh_token=refresh_token,
                    expires_at=when,
                )
            except IntegrityError:
                raise CLIError(f"a user with e-mail {email} already exists") from None
            return user.id

    user_id = run_db(settings, work)
    typer.echo(f"user {email} added (id {user_id})")


@users_cli.command("list")
def users_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """List users (tokens are never shown)."""
    from app.db import repository as repo

    settings = settings_or_exit()

    async def work(sm: Any) -> list[repo.UserListing]:
        async with sm() as s:
            return await repo.list_users(s)

    users = run_db(settings, work)
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "id": u.id,
                        "email": u.email,
                        "name": u.name,
                        "has_token": u.has_token,
                        "token_expires_at": _iso(u.token_expires_at),
                        "projects": u.project_count,
                        "last_sync_at": _iso(u.last_sync_at),
                    }
                    for u in users
                ],
                indent=2,
            )
        )
        return
    if not users:
        typer.echo("no users")
        return
    rows = [
        [
            u.email or "",
            u.id,
            "yes" if u.has_token else "no",
            _iso(u.token_expires_at) or "-",
            str(u.project_count),
            _iso(u.last_sync_at) or "never",
        ]
        for u in users
    ]
    _table(["email", "id", "token", "expires", "projects", "last sync"], rows)


@users_cli.command("remove")
def users_remove(
    email: Annotated[str, typer.Argument(help="E-mail of the user to remove")],
) -> None:
    """Remove a user with its account, projects and events."""
    from app.db import repository as repo

    settings = settings_or_exit()

    async def work(sm: Any) -> None:
        async with sm() as s, s.begin():
            user = await repo.get_user_by_email(s, email)
            if user is None:
                raise CLIError(f"no user with e-mail {email}")
            await repo.delete_user(s, user.id)

    run_db(settings, work)
    typer.echo(f"user {email} removed")


# --- projects ------------------------------------------------------------------------------------


@projects_cli.command("add")
def projects_add(
    user: Annotated[str, typer.Option("--user", help="E-mail of the user who monitors them")],
    projects: Annotated[
        list[str], typer.Argument(help="Numeric project ids or paths like group/sub/project")
    ],
    name: Annotated[
        str | None, typer.Option(help="Project name (skips the GitLab lookup; one project)")
    ] = None,
    path: Annotated[
        str | None, typer.Option(help="path_with_namespace (skips the GitLab lookup)")
    ] = None,
) -> None:
    """Monitor projects: id, name and path are resolved through the GitLab API."""
    from sqlalchemy.exc import IntegrityError

    from app.db import repository as repo

    settings = settings_or_exit()
    offline = name is not None or path is not None
    if offline and (len(projects) != 1 or not projects[0].isdigit() or not (name and path)):
        fail("--name and --path go together, with exactly one numeric project id")

    async def work(sm: Any) -> list[str]:
        async with sm() as s:
            owner = await repo.get_user_by_email(s, user)
            if owner is None:
                raise CLIError(f"no user with e-mail {user}")
            account = await repo.get_gitlab_account(s, owner.id)
        resolved: list[tuple[str, str, str]] = []
        if offline:
            resolved.append((projects[0], name or "", path or ""))
        else:
            if account is None or not account.accessToken:
                raise CLIError(f"user {user} has no GitLab token to look projects up with")
            resolved = await _resolve_projects(settings, account.accessToken, projects)
        added = []
        for pid, pname, ppath in resolved:
            try:
                async with sm() as s, s.begin():
                    if await repo.find_project(s, owner.id, pid) is not None:
                        raise CLIError(f"{ppath} (id {pid}) is already monitored by {user}")
                    await repo.add_project(
                        s, user_id=owner.id, gitlab_project_id=pid, name=pname, path=ppath
                    )
            except IntegrityError:
                raise CLIError(f"{ppath} (id {pid}) is already monitored by {user}") from None
            added.append(f"{ppath} (id {pid})")
        return added

    for line in run_db(settings, work):
        typer.echo(f"monitoring {line}")


async def _resolve_projects(
    settings: Settings, token: str, refs: list[str]
) -> list[tuple[str, str, str]]:
    from app.gitlab.client import GitLabClient
    from app.gitlab.errors import GitLabAPIError, GitLabAuthError, GitLabNotFound
    from app.gitlab.transport import create_http_client

    out = []
    async with create_http_client(settings) as http:
        client = GitLabClient(http, settings, token)
        for ref in refs:
            ref = ref.strip().strip("/")
            if not ref:
                raise CLIError("empty project reference")
            try:
                p = await client.project(int(ref) if ref.isdigit() else ref)
            except GitLabNotFound:
                raise CLIError(f"project {ref} not found (or the token cannot see it)") from None
            except GitLabAuthError as exc:
                raise CLIError(f"GitLab rejected the user's token ({exc.reason})") from None
            except GitLabAPIError as exc:
                raise CLIError(f"GitLab lookup of {ref} failed: {exc}") from None
            out.append((str(p.id), p.name, p.path_with_namespace))
    return out


@projects_cli.command("list")
def projects_list(
    user: Annotated[str | None, typer.Option("--user", help="Only this user's projects")] = None,
) -> None:
    """List monitored projects."""
    from app.db import repository as repo

    settings = settings_or_exit()

    async def work(sm: Any) -> list[Any]:
        async with sm() as s:
            if user is not None and await repo.get_user_by_email(s, user) is None:
                raise CLIError(f"no user with e-mail {user}")
            return await repo.list_all_projects(s)

    rows = [
        [email or "", p.gitlabProjectId, p.projectPath, p.projectName]
        for email, p in run_db(settings, work)
        if user is None or email == user
    ]
    if not rows:
        typer.echo("no monitored projects")
        return
    _table(["user", "id", "path", "name"], rows)


@projects_cli.command("remove")
def projects_remove(
    user: Annotated[str, typer.Option("--user", help="E-mail of the user")],
    projects: Annotated[list[str], typer.Argument(help="Project ids or paths")],
) -> None:
    """Stop monitoring projects (stored events stay)."""
    from app.db import repository as repo

    settings = settings_or_exit()

    async def work(sm: Any) -> None:
        async with sm() as s, s.begin():
            owner = await repo.get_user_by_email(s, user)
            if owner is None:
                raise CLIError(f"no user with e-mail {user}")
            for ref in projects:
                project = await repo.find_project(s, owner.id, ref.strip())
                if project is None:
                    raise CLIError(f"{user} does not monitor {ref}")
                await repo.delete_project(s, project)

    run_db(settings, work)
    for ref in projects:
        typer.echo(f"stopped monitoring {ref}")


# --- helpers ---------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    typer.echo(line)
    typer.echo("  ".join("-" * w for w in widths))
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def _register_optional_commands() -> None:
    """Commands that live in their own modules (scheduler, poll) register themselves."""
    import importlib

    for module in ("app.scheduler.cli", "app.poll_cli"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.register(cli)


_register_optional_commands()


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
