"""The `gitlab-insights` command: a root Typer app with every command added explicitly.

    service.py    serve, migrate
    users.py      users add|list|remove
    projects.py   projects add|list|remove
    poll.py       poll (one run in-process, with progress)
    scheduler.py  scheduler render|check (scheduler.yaml)
    context.py    settings, logging and the runtime around a command's work
    output.py     one-line errors, tables, JSON

Commands only translate arguments into calls and results into lines; what they need is
built by `app.runtime`. The simulator and the demo are the separate `gitlab-sim` command.
"""

from __future__ import annotations

import sys

import typer

from app.cli.poll import poll
from app.cli.projects import projects_cli
from app.cli.scheduler import scheduler_cli
from app.cli.service import migrate, serve
from app.cli.users import users_cli

cli = typer.Typer(
    name="gitlab-insights",
    help="Keep a database of GitLab issues, merge requests and comments fresh.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
cli.command()(serve)
cli.command()(migrate)
cli.add_typer(users_cli, name="users")
cli.add_typer(projects_cli, name="projects")
cli.command()(poll)
cli.add_typer(scheduler_cli, name="scheduler")


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)
