"""`projects add|list|remove`: the projects each user monitors.

A batch is applied project by project: every project that can be added (or removed) is,
each outcome gets its own line (successes on stdout, failures on stderr with the reason),
and the exit code is 1 when any project failed. Re-running the same command after fixing
the failing references therefore finishes the job. Problems that doom every project (no
such user, no token, a token GitLab rejects, a GITLAB_INSTANCE_URL that is not a GitLab
API) stop the command before anything is written, in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from app.cli.context import instance_url_problem, run_in_runtime, settings_or_exit
from app.cli.output import CLIError, print_table, usage_error

if TYPE_CHECKING:
    from app.db.models import MonitoredProject
    from app.runtime import Runtime

projects_cli = typer.Typer(help="Manage monitored projects.", no_args_is_help=True)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One project of a batch: `done` with its line, or failed with the reason."""

    ref: str
    done: bool
    message: str


def report(outcomes: list[Outcome]) -> None:
    """Each outcome on its own line; exit code 1 if any failed."""
    for o in outcomes:
        if o.done:
            typer.echo(o.message)
        else:
            typer.echo(f"error: {o.ref}: {o.message}", err=True)
    failed = sum(not o.done for o in outcomes)
    if failed:
        if len(outcomes) > 1:
            typer.echo(f"error: {failed} of {len(outcomes)} projects failed", err=True)
        raise typer.Exit(1)


async def check_api_root(rt: Runtime) -> None:
    """After a 404: raise when GITLAB_INSTANCE_URL is not a GitLab API at all."""
    problem = await instance_url_problem(rt)
    if problem is not None:
        raise CLIError(problem)


async def resolve_project(rt: Runtime, token: str, ref: str) -> tuple[str, str, str] | Outcome:
    """(id, name, path_with_namespace) of a reference looked up as the user, or why not.

    A rejected token or a wrong instance URL raises CLIError: no other project could work.
    """
    from app.gitlab.client import GitLabClient
    from app.gitlab.errors import GitLabAPIError, GitLabAuthError, GitLabNotFound

    client = GitLabClient(rt.gitlab, rt.settings, token)
    try:
        p = await client.project(int(ref) if ref.isdigit() else ref)
    except GitLabNotFound:
        await check_api_root(rt)
        return Outcome(ref, False, "not found (or the user's token cannot see it)")
    except GitLabAuthError as exc:
        raise CLIError(f"GitLab rejected the user's token ({exc.reason})") from None
    except GitLabAPIError as exc:
        return Outcome(ref, False, f"GitLab lookup failed: {exc}")
    return str(p.id), p.name, p.path_with_namespace


def clean_refs(refs: list[str]) -> list[str]:
    """Stripped, de-duplicated references; an empty one is a usage error."""
    cleaned = [r.strip().strip("/") for r in refs]
    if any(not r for r in cleaned):
        usage_error("empty project reference")
    return list(dict.fromkeys(cleaned))


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
    """Monitor projects: id, name and path are resolved through the GitLab API.

    Each project is added on its own: one line per project, exit code 1 if any failed.
    """
    from sqlalchemy.exc import IntegrityError

    from app.db import repository as repo

    settings = settings_or_exit()
    offline = name is not None or path is not None
    if offline and (len(projects) != 1 or not projects[0].isdigit() or not (name and path)):
        usage_error("--name and --path go together, with exactly one numeric project id")
    refs = clean_refs(projects)

    async def work(rt: Runtime) -> list[Outcome]:
        async with rt.sessionmaker() as s:
            owner = await repo.get_user_by_email(s, user)
            if owner is None:
                raise CLIError(f"no user with e-mail {user}")
            account = await repo.get_gitlab_account(s, owner.id)
        who = owner.email or user
        if not offline and (account is None or not account.accessToken):
            raise CLIError(f"user {who} has no GitLab token to look projects up with")
        outcomes = []
        for ref in refs:
            if offline:
                found: tuple[str, str, str] | Outcome = (ref, name or "", path or "")
            else:
                # No session is held during the GitLab lookup.
                assert account is not None and account.accessToken
                found = await resolve_project(rt, account.accessToken, ref)
            if isinstance(found, Outcome):
                outcomes.append(found)
                continue
            pid, pname, ppath = found
            already = Outcome(ref, False, f"{ppath} (id {pid}) is already monitored by {who}")
            try:
                async with rt.sessionmaker() as s, s.begin():
                    if await repo.find_project(s, owner.id, pid) is not None:
                        outcomes.append(already)
                        continue
                    await repo.add_project(
                        s, user_id=owner.id, gitlab_project_id=pid, name=pname, path=ppath
                    )
            except IntegrityError:  # added concurrently, between the check and the insert
                outcomes.append(already)
                continue
            outcomes.append(Outcome(ref, True, f"monitoring {ppath} (id {pid})"))
        return outcomes

    report(run_in_runtime(settings, work))


@projects_cli.command("list")
def list_(
    user: Annotated[str | None, typer.Option("--user", help="Only this user's projects")] = None,
) -> None:
    """List monitored projects."""
    from app.db import repository as repo

    settings = settings_or_exit()

    async def work(rt: Runtime) -> tuple[str | None, list[tuple[str | None, MonitoredProject]]]:
        async with rt.sessionmaker() as s:
            owner_id = None
            if user is not None:
                owner = await repo.get_user_by_email(s, user)  # case-insensitive
                if owner is None:
                    raise CLIError(f"no user with e-mail {user}")
                owner_id = owner.id
            return owner_id, await repo.list_all_projects(s)

    owner_id, listed = run_in_runtime(settings, work)
    rows = [
        [email or "", p.gitlabProjectId, p.projectPath, p.projectName]
        for email, p in listed
        if owner_id is None or p.userId == owner_id
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
    """Stop monitoring projects (stored events stay).

    Each project is removed on its own: one line per project, exit code 1 if any failed.
    """
    from app.db import repository as repo

    settings = settings_or_exit()
    refs = clean_refs(projects)

    async def work(rt: Runtime) -> list[Outcome]:
        async with rt.sessionmaker() as s:
            owner = await repo.get_user_by_email(s, user)
            if owner is None:
                raise CLIError(f"no user with e-mail {user}")
        who = owner.email or user
        outcomes = []
        for ref in refs:
            async with rt.sessionmaker() as s, s.begin():
                project = await repo.find_project(s, owner.id, ref)
                if project is None:
                    outcomes.append(Outcome(ref, False, f"{who} does not monitor it"))
                    continue
                label = f"{project.projectPath} (id {project.gitlabProjectId})"
                await repo.delete_project(s, project)
            outcomes.append(Outcome(ref, True, f"stopped monitoring {label}"))
        return outcomes

    report(run_in_runtime(settings, work))
