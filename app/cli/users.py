"""`users add|list|remove`: users and their GitLab tokens (tokens are never printed).

`users add` asks GitLab whose token it is (one GET /user) before storing anything, so a
wrong token or instance URL shows here rather than at `projects add` or the first poll; the
account's GitLab user id becomes its accountId. `--no-verify` stores the token unchecked.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from app.cli.context import instance_url_problem, run_in_runtime, settings_or_exit
from app.cli.output import CLIError, iso, print_json, print_table, usage_error, warn

if TYPE_CHECKING:
    from app.db.repository import UserListing
    from app.gitlab.schemas import GitLabCurrentUser
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


_REJECTED = {
    "expired": "it has expired",
    "revoked": "it was revoked",
    "invalid": "unknown or invalid token",
}


async def token_owner(rt: Runtime, token: str, *, can_refresh: bool) -> GitLabCurrentUser | None:
    """The GitLab account the token belongs to, from one GET /user.

    CLIError (one line) when GitLab refuses the token or gives no usable answer; None for an
    expired token that the next sync can refresh (it cannot be checked before then).
    """
    from app.gitlab.client import GitLabClient
    from app.gitlab.errors import (
        GitLabAPIError,
        GitLabAuthError,
        GitLabInsufficientScope,
        GitLabNotFound,
    )

    # One attempt: the operator is waiting and can run it again; retry lines would bury the
    # one-line answer.
    settings = rt.settings.model_copy(update={"gitlab_max_attempts": 1})
    instance = rt.settings.gitlab_instance_url
    try:
        return await GitLabClient(rt.gitlab, settings, token).current_user()
    except GitLabInsufficientScope:
        raise CLIError(
            f"GitLab at {instance} accepted the token but it lacks the scope to read the API "
            "(needs read_api or api); nothing stored"
        ) from None
    except GitLabAuthError as exc:
        if exc.reason == "expired" and can_refresh:
            warn("GitLab says the token has expired: stored unchecked, the next sync refreshes it")
            return None
        why = _REJECTED.get(exc.reason, exc.reason)
        raise CLIError(
            f"GitLab at {instance} rejected the token (401: {why}); nothing stored"
        ) from None
    except GitLabNotFound:
        problem = await instance_url_problem(rt)
        raise CLIError(
            problem or f"GitLab at {instance} answers 404 to GET /user; check GITLAB_INSTANCE_URL"
        ) from None
    except GitLabAPIError as exc:
        raise CLIError(
            f"cannot check the token with GitLab at {instance}: {exc}; check "
            "GITLAB_INSTANCE_URL, or pass --no-verify to store the token unchecked"
        ) from None


def check_expiry(when: datetime | None, refresh_token: str | None, can_refresh: bool) -> None:
    """Refuse a token already expired that nothing can refresh (it could never sync)."""
    if when is None or when > datetime.now(UTC) or can_refresh:
        return
    why = (
        "GITLAB_OAUTH_CLIENT_ID/_SECRET/_REDIRECT_URI are not all set"
        if refresh_token is not None
        else "no --refresh-token was given"
    )
    usage_error(
        f"--expires-at {iso(when)} is in the past and the token cannot be refreshed "
        f"({why}): pass a current token"
    )


@dataclass(frozen=True, slots=True)
class NewUser:
    """What `users add` stores: the user and its GitLab account."""

    email: str
    name: str | None
    token: str
    refresh_token: str | None
    expires_at: datetime | None


async def store_user(
    rt: Runtime, new: NewUser, *, verify: bool, can_refresh: bool
) -> tuple[str, GitLabCurrentUser | None]:
    """Store the user and its GitLab account once GitLab names the token's owner (unless not
    `verify`): (user id, the GitLab account or None when unchecked). CLIError: nothing stored."""
    from sqlalchemy.exc import IntegrityError

    from app.db import repository as repo

    async with rt.sessionmaker() as s:
        existing = await repo.get_user_by_email(s, new.email)  # case-insensitive
    if existing is not None:  # before asking GitLab: nothing to check then
        raise CLIError(f"a user with e-mail {existing.email} already exists")
    # No session is held while GitLab answers.
    owner = await token_owner(rt, new.token, can_refresh=can_refresh) if verify else None
    async with rt.sessionmaker() as s, s.begin():
        if owner is not None:
            linked = await repo.user_of_gitlab_account(s, str(owner.id))
            if linked is not None:
                raise CLIError(
                    f"GitLab account @{owner.username} (id {owner.id}) is already linked "
                    f"to user {linked.email}; nothing stored"
                )
        try:
            user = await repo.create_user_with_account(
                s,
                email=new.email,
                name=new.name if new.name is not None or owner is None else owner.name,
                access_token=new.token,
                refresh_token=new.refresh_token,
                expires_at=new.expires_at,
                gitlab_user_id=str(owner.id) if owner is not None else None,
            )
        except IntegrityError:  # added concurrently, between the check and the insert
            raise CLIError(
                f"a user with e-mail {new.email} or the same GitLab account already exists"
            ) from None
        return user.id, owner


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
    name: Annotated[
        str | None, typer.Option(help="Display name (default: the GitLab account's name)")
    ] = None,
    refresh_token: Annotated[
        str | None, typer.Option(envvar="GITLAB_REFRESH_TOKEN", help="OAuth refresh token")
    ] = None,
    expires_at: Annotated[
        str | None, typer.Option(help="Access token expiry, ISO 8601 (e.g. 2026-12-01T10:00Z)")
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify",
            help="Check the token with GitLab (GET /user) before storing it; --no-verify "
            "stores it unchecked (GitLab not reachable from here)",
        ),
    ] = True,
) -> None:
    """Create a user and its GitLab account (providerId 'gitlab'), once GitLab accepts the token."""
    email = normalized_email(email)
    token = token.strip()
    if not token:
        usage_error("--token: must not be empty")
    when = parse_expiry(expires_at)
    settings = settings_or_exit()
    if refresh_token is not None:
        refresh_token = refresh_token.strip() or None
    can_refresh = refresh_token is not None and settings.oauth_refresh_configured
    check_expiry(when, refresh_token, can_refresh)
    if refresh_token is not None and not settings.oauth_refresh_configured:
        warn(
            "--refresh-token is stored but cannot be used until GITLAB_OAUTH_CLIENT_ID, "
            "GITLAB_OAUTH_CLIENT_SECRET and GITLAB_OAUTH_REDIRECT_URI are set"
        )

    async def work(rt: Runtime) -> tuple[str, GitLabCurrentUser | None]:
        return await store_user(
            rt,
            NewUser(email, name, token, refresh_token, when),
            verify=verify,
            can_refresh=can_refresh,
        )

    user_id, owner = run_in_runtime(settings, work)
    if owner is not None:
        whose = f"token of GitLab user @{owner.username} (id {owner.id})"
    elif verify:
        whose = "token not checked (expired: the next sync refreshes it)"
    else:
        whose = "token not checked (--no-verify)"
    typer.echo(f"user {email} added (id {user_id}), {whose}")


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
