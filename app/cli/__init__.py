"""The `gitlab-insights` command: a root Typer app with every command added explicitly.

    service.py    serve, migrate
    users.py      users add|list|remove
    projects.py   projects add|list|remove
    poll.py       poll (one run in-process, with progress)
    runs.py       runs (recent poll runs), status (runs, users' last syncs, failing projects)
    scheduler.py  scheduler render|check (scheduler.yaml)
    context.py    settings, logging and the runtime around a command's work
    output.py     one-line errors, tables, JSON

Commands only translate arguments into calls and results into lines; what they need is
built by `app.runtime`. The simulator and the demo are the separate `gitlab-sim` command.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from app import __version__
from app.cli.poll import poll
from app.cli.projects import projects_cli
from app.cli.runs import runs, status
from app.cli.scheduler import scheduler_cli
from app.cli.service import migrate, serve
from app.cli.users import users_cli

try:  # Typer 0.2x ships its own copy of Click; older releases use Click itself.
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc  # type: ignore[no-redef]


class OneLineErrors(TyperGroup):
    """The root group: a usage error (missing option, bad value, unknown command) is one
    line on stderr and exit code 2, instead of Typer's boxed panel."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except click_exc.NoArgsIsHelpError as exc:
            exc.show()  # a bare `gitlab-insights users`: its help, as Click does
            sys.exit(exc.exit_code)
        except click_exc.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "gitlab-insights"
            message = " ".join(exc.format_message().split())
            typer.echo(f"error: {message} (see '{where} --help')", err=True)
            sys.exit(exc.exit_code)
        except click_exc.ClickException as exc:
            typer.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def show_version(value: bool) -> None:
    if value:
        typer.echo(f"gitlab-insights {__version__}")
        raise typer.Exit()


cli = typer.Typer(
    name="gitlab-insights",
    cls=OneLineErrors,
    help="Keep a database of GitLab issues, merge requests and comments fresh.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # --install-completion / --show-completion (bash, zsh, fish, PowerShell).
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    # Click's plain help: flags read as flags (`-V, --version`), where Typer's rich panels
    # give every boolean flag a `<bool>` type as if it took a value; it also stays the same
    # on a terminal and in a pipe. Sub-apps and commands inherit it.
    rich_markup_mode=None,
)


@cli.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            callback=show_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Keep a database of GitLab issues, merge requests and comments fresh."""


cli.command()(serve)
cli.command()(migrate)
cli.add_typer(users_cli, name="users")
cli.add_typer(projects_cli, name="projects")
cli.command()(poll)
cli.command()(runs)
cli.command()(status)
cli.add_typer(scheduler_cli, name="scheduler")


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)
