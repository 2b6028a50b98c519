"""`projects add|list|remove`: the projects each user monitors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from app.cli.context import run_in_runtime, settings_or_exit
from app.cli.output import CLIError, fail, print_table

if TYPE_CHECKING:
    from app.db.models import MonitoredProject
    from app.runtime import Runtime

projects_cli = typer.Typer(help="Manage monitored projects.", no_args_is_help=True)


async def resolve_projects(rt: Runtime, token: str, refs: list[str]) -> list[tuple[str, str, str]]:
    """(id, name, path_with_namespace) of each project reference, looked up as the user."""
    from app.gitlab.client import GitLabClient
    from app.gitlab.errors import GitLabAPIError, GitLabAuthError, GitLabNotFound

    client = GitLabClient(rt.http, rt.settings, token)
    out = []
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


@projects_cli.command("add")
def add(
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

    async def work(rt: Runtime) -> list[str]:
        async with rt.sessionmaker() as s:
            owner = await repo.get_user_by_email(s, user)
            if owner is None:
                raise CLIError(f"no user with e-mail {user}")
            account = await repo.get_gitlab_account(s, owner.id)
        if offline:
            resolved = [(projects[0], name or "", path or "")]
        else:
            if account is None or not account.accessToken:
                raise CLIError(f"user {user} has no GitLab token to look projects up with")
            # No session is held during the GitLab lookups.
            resolved = await resolve_projects(rt, account.accessToken, projects)
        added = []
        for pid, pname, ppath in resolved:
            try:
                async with rt.sessionmaker() as s, s.begin():
                    if await repo.find_project(s, owner.id, pid) is not None:
                        raise CLIError(f"{ppath} (id {pid}) is already monitored by {user}")
                    await repo.add_project(
                        s, user_id=owner.id, gitlab_project_id=pid, name=pname, path=ppath
                    )
            except IntegrityError:  # added concurrently, between the check and the insert
                raise CLIError(f"{ppath} (id {pid}) is already monitored by {user}") from None
            added.append(f"{ppath} (id {pid})")
        return added

    for line in run_in_runtime(settings, work):
        typer.echo(f"monitoring {line}")


@projects_cli.command("list")
def list_(
    user: Annotated[str | None, typer.Option("--user", help="Only this user's projects")] = None,
) -> None:
    """List monitored projects."""
    from app.db import repository as repo

    settings = settings_or_exit()

    async def work(rt: Runtime) -> list[tuple[str | None, MonitoredProject]]:
        async with rt.sessionmaker() as s:
            if user is not None and await repo.get_user_by_email(s, user) is None:
                raise CLIError(f"no user with e-mail {user}")
            return await repo.list_all_projects(s)

    rows = [
        [email or "", p.gitlabProjectId, p.projectPath, p.projectName]
        for email, p in run_in_runtime(settings, work)
        if user is None or email == user
    ]
    if not rows:
        typer.echo("no monitored projects")
        return
    print_table(["user", "id", "path", "name"], rows)


@projects_cli.command("remove")
def remove(
    user: Annotated[str, typer.Option("--user", help="E-mail of the user")],
    projects: Annotated[list[str], typer.Argument(help="Project ids or paths")],
) -> None:
    """Stop monitoring projects (stored events stay)."""
    from app.db import repository as repo

    settings = settings_or_exit()

    async def work(rt: Runtime) -> None:
        async with rt.sessionmaker() as s, s.begin():
            owner = await repo.get_user_by_email(s, user)
            if owner is None:
                raise CLIError(f"no user with e-mail {user}")
            for ref in projects:
                project = await repo.find_project(s, owner.id, ref.strip())
                if project is None:
                    raise CLIError(f"{user} does not monitor {ref}")
                await repo.delete_project(s, project)

    run_in_runtime(settings, work)
    for ref in projects:
        typer.echo(f"stopped monitoring {ref}")
