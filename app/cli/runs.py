"""`runs` (the last poll runs) and `status` (runs, each user's last sync, failing projects).

Both read what every run records (the poll_run table, LastSync and the per-project cursors)
whoever triggered it: the built-in or a hosted scheduler, curl, Inngest or `poll`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from app.cli.context import run_in_runtime, settings_or_exit
from app.cli.output import CLIError, iso, print_json, print_table
from app.sync.results import run_auth

if TYPE_CHECKING:
    from app.db.models import PollRun
    from app.db.profile import SchemaProfile
    from app.db.repository import ProjectStatus, UserStatus
    from app.runtime import Runtime
    from app.settings import Settings

    FailingProject = tuple[UserStatus, ProjectStatus]


def when(value: datetime | None) -> str:
    """`2026-12-02 19:42:51Z`: readable, still UTC."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def duration(run: PollRun) -> str:
    if run.finished_at is None:
        return "running"
    seconds = (run.finished_at - run.started_at).total_seconds()
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def outcome(run: PollRun) -> str:
    if run.finished_at is None:
        return "running"
    return f"{run.status_code or '-'} {'ok' if run.success else 'FAILED'}"


def run_rows(runs: list[PollRun]) -> list[list[str]]:
    return [
        [
            when(r.started_at),
            r.trigger,
            r.auth_method or "-",
            outcome(r),
            users(r),
            f"+{r.events_stored} ~{r.events_updated}",
            duration(r),
            " ".join((r.error or "").split()) or "-",
        ]
        for r in runs
    ]


def users(run: PollRun) -> str:
    """`2/0/1 of 3 (fresh)`: the counts, and why users were skipped when it is known."""
    from app.sync.results import skip_reasons_text

    counts = f"{run.processed}/{run.failed}/{run.skipped} of {run.total}"
    why = skip_reasons_text(run.skipped_reasons)
    return f"{counts} ({why})" if why else counts


RUN_HEADERS = [
    "started (UTC)",
    "trigger",
    "auth",
    "status",
    "users ok/failed/skipped",
    "events",
    "took",
]


def run_json(r: PollRun) -> dict[str, object]:
    # The object of /api/poll and /api/runs: {"method", "email"}, null for CLI runs.
    auth = run_auth(r.auth_method, r.auth_email)
    return {
        "id": r.id,
        "trigger": r.trigger,
        "auth": auth.model_dump(mode="json") if auth else None,
        "started_at": iso(r.started_at),
        "finished_at": iso(r.finished_at),
        "success": r.success,
        "status_code": r.status_code,
        "total": r.total,
        "processed": r.processed,
        "failed": r.failed,
        "skipped": r.skipped,
        "skipped_reasons": r.skipped_reasons,
        "events_stored": r.events_stored,
        "events_updated": r.events_updated,
        "error": r.error,
    }


def runs(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000, help="How many")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Show the last poll runs, newest first, whoever triggered them."""
    from app.db import repository as repo

    settings = settings_or_exit()

    async def work(rt: Runtime) -> list[PollRun]:
        async with rt.sessionmaker() as s:
            return await repo.recent_runs(s, limit=limit)

    found = run_in_runtime(settings, work)
    if as_json:
        print_json([run_json(r) for r in found])
        return
    if not found:
        typer.echo("no runs yet")
        return
    print_table([*RUN_HEADERS, "error"], run_rows(found))


def read_status(
    settings: Settings, user: str | None
) -> tuple[list[PollRun], list[UserStatus], SchemaProfile]:
    """The last 5 runs, each user's sync status (only `user`'s, when given), and which
    version of the original app's schema the database has."""
    from app.db import repository as repo

    async def work(rt: Runtime) -> tuple[list[PollRun], list[UserStatus], SchemaProfile]:
        async with rt.sessionmaker() as s:
            user_id = None
            if user is not None:
                owner = await repo.get_user_by_email(s, user)  # case-insensitive
                if owner is None:
                    raise CLIError(f"no user with e-mail {user}")
                user_id = owner.id
            runs = await repo.recent_runs(s, limit=5)
            return runs, await repo.sync_status(s, user_id), await repo.read_schema_profile(s)

    return run_in_runtime(settings, work)


def failing_projects(users: list[UserStatus]) -> list[FailingProject]:
    # A project's error is cleared by its next successful sync: an error is a failing project.
    return [(u, p) for u in users for p in u.projects if p.last_error is not None]


def status_json(
    last_runs: list[PollRun],
    users: list[UserStatus],
    failing: list[FailingProject],
    schema: SchemaProfile,
) -> dict[str, object]:
    return {
        "schema": schema.flavour,
        "schema_detail": schema.describe(),
        "runs": [run_json(r) for r in last_runs],
        "users": [
            {
                "id": u.user_id,
                "email": u.email,
                "last_sync_at": iso(u.last_sync_at),
                "projects": len(u.projects),
            }
            for u in users
        ],
        "failing_projects": [
            {
                "user_id": u.user_id,
                "email": u.email,
                "project_id": p.gitlab_project_id,
                "path": p.path,
                "last_error": p.last_error,
                "last_error_at": iso(p.last_error_at),
                "last_success_at": iso(p.last_success_at),
            }
            for u, p in failing
        ],
    }


def print_status(
    last_runs: list[PollRun],
    users: list[UserStatus],
    failing: list[FailingProject],
    schema: SchemaProfile,
) -> None:
    """The database's schema, then three tables (runs, users, failing projects), each
    replaced by one line when empty."""
    typer.echo(f"database schema: {schema.describe()}")
    typer.echo("")
    if last_runs:
        print_table(RUN_HEADERS + ["error"], run_rows(last_runs), title="Last runs")
    else:
        typer.echo("no runs yet")
    typer.echo("")
    if users:
        print_table(
            ["user", "id", "projects", "last sync (UTC)"],
            [[u.email or "", u.user_id, str(len(u.projects)), when(u.last_sync_at)] for u in users],
            title="Users",
        )
    else:
        typer.echo("no users")
    typer.echo("")
    if failing:
        print_table(
            ["user", "project", "last failed", "last success", "last error"],
            [
                [
                    u.email or u.user_id,
                    f"{p.path} (id {p.gitlab_project_id})",
                    when(p.last_error_at),
                    when(p.last_success_at),
                    " ".join((p.last_error or "").split()),
                ]
                for u, p in failing
            ],
            title="Failing projects",
        )
    else:
        typer.echo("no failing projects")


def status(
    user: Annotated[str | None, typer.Option("--user", help="Only this user (e-mail)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Show the last runs, each user's last sync and the projects whose last sync failed."""
    last_runs, users, schema = read_status(settings_or_exit(), user)
    failing = failing_projects(users)
    if as_json:
        print_json(status_json(last_runs, users, failing, schema))
    else:
        print_status(last_runs, users, failing, schema)
