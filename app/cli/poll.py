"""`poll`: one poll in this process (no server, no signing key), with progress and a summary.

It calls `run_poll` with the runtime's sync dependencies, exactly as `/api/poll` does: the
same run, the same summary and the same poll_run record (trigger "cli").
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

from app.cli.context import instance_url_problem, run_in_runtime, settings_or_exit
from app.cli.output import CLIError, fail, print_table, usage_error, warn

if TYPE_CHECKING:
    from app.runtime import Runtime
    from app.sync.poller import PollOutcome
    from app.sync.results import PollSummary, TriggerName, UserResult

CLI_TRIGGER: TriggerName = "cli"
# The summary's error when the run found GitLab unreachable (sync/poller.py).
GITLAB_UNREACHABLE = "gitlab_unreachable"


class Progress:
    """Users done of total and events stored, on stderr.

    On a terminal: a rich progress bar; log lines are printed above it through its console
    (app.logging.log_lines_through), so a warning never lands in the middle of the bar.
    Elsewhere (logs, CI): one plain line per user.
    """

    def __init__(self, stream: TextIO, emails: dict[str, str]) -> None:
        self.stream = stream
        self.emails = emails
        self.live = stream.isatty()
        self.stored = 0
        self.updated = 0
        self._bar: Any = None
        self._task: Any = None
        self._routing: contextlib.ExitStack | None = None

    def start(self) -> None:
        if not self.live:
            self.stream.write("polling...\n")
            self.stream.flush()
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as Bar

        from app.logging import log_lines_through

        console = Console(file=self.stream, force_terminal=True, highlight=False)
        self._bar = Bar(
            TextColumn("polling"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("users done, {task.fields[stored]} events stored"),
            TimeElapsedColumn(),
            console=console,
            transient=True,  # gone before the summary is printed
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._task = self._bar.add_task("poll", total=None, stored=0)
        self._routing = contextlib.ExitStack()

        def print_log_line(line: str) -> None:
            console.print(line.rstrip("\n"), markup=False, highlight=False, soft_wrap=True)

        self._routing.enter_context(log_lines_through(print_log_line))
        self._bar.start()

    def __call__(self, result: UserResult, done: int, total: int) -> None:
        self.stored += result.stored
        self.updated += result.updated
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total, stored=self.stored)
            return
        counts = f"{done}/{total} users done, {self.stored} events stored"
        who = self.emails.get(result.user_id, result.user_id)
        why = f" ({result.reason})" if result.reason else ""
        self.stream.write(f"  {who}: {result.status}{why}, +{result.stored}  [{counts}]\n")
        self.stream.flush()

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self._routing is not None:
            self._routing.close()
            self._routing = None


async def poll_once(
    rt: Runtime, emails: list[str], *, progress_stream: TextIO | None = None
) -> tuple[PollOutcome, dict[str, str]]:
    """One poll of everyone (or of the given users); returns the outcome and id -> e-mail.

    Unknown e-mails are refused before anything runs (no poll_run is recorded).
    """
    from app.db import repository as repo
    from app.sync.poller import run_poll

    async with rt.sessionmaker() as s:
        users = await repo.list_users(s)
    # E-mails match regardless of case (the original app's rows may keep mixed case).
    by_email: dict[str, str] = {}
    for u in users:
        if u.email:
            by_email.setdefault(repo.email_key(u.email), u.id)
    wanted = list(dict.fromkeys(emails))
    unknown = [e for e in wanted if repo.email_key(e) not in by_email]
    if unknown:
        raise CLIError(f"no user with e-mail {', '.join(unknown)}")
    ids = list(dict.fromkeys(by_email[repo.email_key(e)] for e in wanted)) or None
    names = {u.id: u.email or u.id for u in users}
    progress = Progress(progress_stream, names) if progress_stream is not None else None
    if progress is not None:
        progress.start()
    try:
        outcome = await run_poll(rt.sync, user_ids=ids, trigger=CLI_TRIGGER, on_user_done=progress)
    finally:
        if progress is not None:
            progress.finish()
    not_found = any(f.status == 404 for u in outcome.summary.users for f in u.failed_projects)
    if not_found and (problem := await instance_url_problem(rt)) is not None:
        warn(problem)  # every "project not found" may just be a wrong instance URL
    return outcome, names


def endpoint_json(summary: PollSummary) -> str:
    """Byte for byte what /api/poll answers (Starlette's JSONResponse rendering)."""
    return json.dumps(
        summary.model_dump(mode="json"),
        ensure_ascii=False,
        allow_nan=False,
        indent=None,
        separators=(",", ":"),
    )


def print_summary(outcome: PollOutcome, emails: dict[str, str]) -> None:
    from app.sync.results import skip_reasons_text

    s = outcome.summary
    if s.users:
        rows = [
            [
                emails.get(u.user_id, u.user_id),
                u.status,
                u.reason or "-",
                str(u.stored),
                str(u.updated),
                str(u.projects),
                str(u.attempts),
                str(u.duration_ms),
            ]
            for u in s.users
        ]
        print_table(
            ["user", "status", "reason", "stored", "updated", "projects", "attempts", "ms"], rows
        )
        for u in s.users:
            for f in u.failed_projects:
                who = emails.get(u.user_id, u.user_id)
                typer.echo(f"  {who}: {f.project_path} failed: {f.error}: {f.message}")
        typer.echo("")
    else:
        typer.echo("no users with monitored projects")
    verdict = "success" if s.success and outcome.status_code != 503 else "FAILED"
    why = skip_reasons_text(s.skipped_reasons)
    skipped = f"{s.skipped} skipped" + (f" ({why})" if why else "")
    typer.echo(
        f"run {s.run_id} ({verdict}, HTTP {outcome.status_code}): {s.processed} processed, "
        f"{s.failed} failed, {skipped} of {s.total} users; "
        f"{s.events.stored} events stored, {s.events.updated} updated in {s.duration_ms} ms"
    )
    if s.error:
        retry = f" (retry after {outcome.retry_after}s)" if outcome.retry_after else ""
        typer.echo(f"error: {s.error}{retry}")


def poll(
    user: Annotated[
        list[str] | None,
        typer.Option("--user", help="Only this user's e-mail (repeatable): a manual refresh"),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the JSON /api/poll answers, nothing else")
    ] = False,
) -> None:
    """Run one poll now, in this process (no server needed), and print the summary."""
    from app.logging import configure_logging

    emails = [e.strip() for e in user or []]
    if not all(emails):
        usage_error("--user: must not be empty")
    settings = settings_or_exit()
    if "log_level" not in settings.model_fields_set:
        # The progress line and the summary are the output; logs only when something is wrong.
        settings = settings.model_copy(update={"log_level": "WARNING"})
        configure_logging(settings, stream="stderr")

    async def work(rt: Runtime) -> tuple[PollOutcome, dict[str, str]]:
        return await poll_once(rt, emails, progress_stream=sys.stderr)

    outcome, names = run_in_runtime(settings, work)
    if as_json:
        typer.echo(endpoint_json(outcome.summary))
    elif outcome.summary.error != GITLAB_UNREACHABLE:
        print_summary(outcome, names)
    if outcome.summary.error == GITLAB_UNREACHABLE:
        # One line naming the host and why, not a table of users all failing the same way.
        fail(outcome.summary.detail or GITLAB_UNREACHABLE)
    if not outcome.summary.success or outcome.status_code == 503:
        raise typer.Exit(1)
