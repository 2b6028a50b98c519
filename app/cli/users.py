"""`users add|list|remove`: users and their GitLab tokens (tokens are never printed)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from app.cli.context import run_in_runtime, settings_or_exit
from app.cli.output import CLIError, iso, print_json, print_table, usage_error, warn

if TYPE_CHECKING:
    from app.db.repository import UserListing
    from app.runtime import Runtime

users_cli = typer.Typer(help="Manage users and their GitLab tokens.", no_args_is_help=True)


def normalized_email(value: str) -> str:
    """A syntactically valid e-mail, lower-cased as it is stored (no DNS lookup)."""
    from email_validator import EmailNotValidError, validate_email

    try:
        checked = validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        usage_error(f"--email: '{value.strip()}' is not a valid e-mail address: {exc}")
    return checked.normalized.lower()


def parse_expiry(value: str | None) -> datetime | None:
    """--expires-at as an aware UTC datetime; a naive value is taken as UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        usage_error(
            f"--expires-at: '{value}' is not an ISO 8601 date-time (e.g. 2026-12-01T10:00:00Z)"
        )
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


@users_cli.command("add")
def add(
    email: Annotated[
        str, typer.Option(help="The user's e-mail (unique regardless of case; stored lower-case)")
    ],
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

    email = normalized_email(email)
    if not token.strip():
        usage_error("--token: must not be empty")
    when = parse_expiry(expires_at)
    settings = settings_or_exit()
    if refresh_token is not None:
        refresh_token = refresh_token.strip() or None
    can_refresh = refresh_token is not None and settings.oauth_refresh_configured
    if when is not None and when <= datetime.now(UTC) and not can_refresh:
        why = (
            "GITLAB_OAUTH_CLIENT_ID/_SECRET/_REDIRECT_URI are not all set"
            if refresh_token is not None
            else "no --refresh-token was given"
        )
        usage_error(
            f"--expires-at {iso(when)} is in the past and the token cannot be refreshed "
            f"({why}): pass a current token"
        )
    if refresh_token is not None and not settings.oauth_refresh_configured:
        warn(
            "--refresh-token is stored but cannot be used until GITLAB_OAUTH_CLIENT_ID, "
            "GITLAB_OAUTH_CLIENT_SECRET and GITLAB_OAUTH_REDIRECT_URI are set"
        )

    async def work(rt: Runtime) -> str:
        async with rt.sessionmaker() as s, s.begin():
            existing = await repo.get_user_by_email(s, email)  # case-insensitive
            if existing is not None:
                raise CLIError(f"a user with e-mail {existing.email} already exists")
            try:
                user = await repo.create_user_with_account(
                    s,
                    email=email,
                    name=name,
                    access_token=token.strip(),
                    refresh_token=refresh_token,
                    expires_at=when,
                )
            except IntegrityError:  # added concurrently, between the check and the insert
                raise CLIError(f"a user with e-mail {email} already exists") from None
            return user.id

    user_id = run_in_runtime(settings, work)
    typer.echo(f"user {email} added (id {user_id})")


@users_cli.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """List users (tokens are never shown)."""
    from app.db import repository as repo

    settings = settings_or_exit()

    async def work(rt: Runtime) -> list[UserListing]:
        async with rt.sessionmaker() as s:
            return await repo.list_users(s)

    users = run_in_runtime(settings, work)
    if as_json:
        print_json(
            [
                {
                    "id": u.id,
                    "email": u.email,
                    "name": u.name,
                    "has_token": u.has_token,
                    "token_expires_at": iso(u.token_expires_at),
                    "projects": u.project_count,
                    "last_sync_at": iso(u.last_sync_at),
                }
                for u in users
            ]
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
            iso(u.token_expires_at) or "-",
            str(u.project_count),
            iso(u.last_sync_at) or "never",
        ]
        for u in users
    ]
    print_table(["email", "id", "token", "expires", "projects", "last sync"], rows)


@users_cli.command("remove")
def remove(
    email: Annotated[str, typer.Argument(help="E-mail of the user to remove")],
) -> None:
    """Remove a user with its account, projects and events."""
    from app.db import repository as repo

    settings = settings_or_exit()

    async def work(rt: Runtime) -> str:
        async with rt.sessionmaker() as s, s.begin():
            user = await repo.get_user_by_email(s, email)  # case-insensitive
            if user is None:
                raise CLIError(f"no user with e-mail {email}")
            await repo.delete_user(s, user.id)
            return user.email or email

    removed = run_in_runtime(settings, work)
    typer.echo(f"user {removed} removed")
