"""`scheduler render|check`: the polling job file (scheduler.yaml) for Google Cloud Scheduler."""

from __future__ import annotations

import os
import re
from typing import Annotated

import typer

from app.cli.context import settings_or_exit
from app.cli.output import fail_all
from app.scheduler.config import (
    SAMPLE_SERVICE_URL,
    SchedulerConfigError,
    SchedulerFile,
    SchedulerJob,
    apply_auth,
    check,
    effective_cron,
    fill_placeholders,
    format_duration,
    load,
    locate,
    service_base_url,
)
from app.settings import ConfigurationError, load_settings

scheduler_cli = typer.Typer(
    help="The polling job (scheduler.yaml) for Google Cloud Scheduler.", no_args_is_help=True
)

FileOption = Annotated[
    str | None,
    typer.Option(
        "--file",
        "-f",
        help="Job file (default: ./scheduler.yaml, else the copy shipped with gitlab-insights)",
    ),
]

_KEY_PREFIX_RE = re.compile(r"^signkey-\w+-")


def mask_key(key: str) -> str:
    """Keep the harmless `signkey-<env>-` prefix so the operator sees which key it is."""
    m = _KEY_PREFIX_RE.match(key)
    return (m.group(0) if m else "") + "********"


def locate_or_exit(file: str | None) -> SchedulerFile:
    try:
        return locate(file)
    except SchedulerConfigError as exc:
        fail_all(file or "scheduler.yaml", exc.problems)


@scheduler_cli.command("render")
def render(
    file: FileOption = None,
    url: Annotated[
        str | None,
        typer.Option(
            envvar="SERVICE_URL",
            help="The service's public base URL (https://insights.example.com); or set SERVICE_URL",
        ),
    ] = None,
    show_secret: Annotated[
        bool,
        typer.Option("--show-secret", help="Print the signing key instead of a mask"),
    ] = False,
    # --- OIDC (issue 11): the option; the logic is config.apply_auth ---
    auth: Annotated[
        str | None,
        typer.Option(
            "--auth",
            help="oidc: Google-signed ID tokens, no secret in the job (recommended); bearer: "
            "the static signing key header. Default: as the file says (oidc)",
        ),
    ] = None,
) -> None:
    """Print the job file with its placeholders filled in, for gcloud."""
    source = locate_or_exit(file)
    settings = settings_or_exit()
    try:  # OIDC (issue 11): the --auth flags, ${OIDC_SERVICE_ACCOUNT}, audience vs settings
        source = apply_auth(source, auth, settings, url)
    except SchedulerConfigError as exc:
        fail_all(source.origin, exc.problems)
    values: dict[str, str] = {}
    missing: list[str] = []
    if "SERVICE_URL" in source.placeholders:
        if url:
            try:
                values["SERVICE_URL"] = service_base_url(url)
            except SchedulerConfigError as exc:
                fail_all(source.origin, exc.problems)
        else:
            missing.append("${SERVICE_URL}: pass --url or set SERVICE_URL")
    if "SIGNING_KEY" in source.placeholders:
        key = settings.inngest_signing_key
        if key is None:
            missing.append("${SIGNING_KEY}: set INNGEST_SIGNING_KEY")
        else:
            secret = key.get_secret_value()
            values["SIGNING_KEY"] = secret if show_secret else mask_key(secret)
    if missing:
        fail_all(source.origin, [f"no value for {m}" for m in missing])
    try:
        filled = fill_placeholders(source.text, values)
    except SchedulerConfigError as exc:
        fail_all(source.origin, exc.problems)
    problems = check(SchedulerFile(filled, source.origin))
    if problems:
        fail_all(source.origin, problems)
    typer.echo(filled, nl=False)
    if "SIGNING_KEY" in values and not show_secret:
        typer.echo(
            "note: the signing key is masked; add --show-secret to write a file gcloud can use",
            err=True,
        )


@scheduler_cli.command("check")
def check_command(file: FileOption = None) -> None:
    """Validate the job file: cron every 5-15 minutes, URL, retry settings within GCP limits."""
    source = locate_or_exit(file)
    problems = check(source)
    if problems:
        fail_all(source.origin, problems)
    job = load(source)
    r = job.retry
    waits = ", ".join(f"{r.delay(i):g}s" for i in range(1, r.retry_count + 1)) or "none"
    typer.echo(f"ok: {source.origin}")
    typer.echo(f"  schedule: '{job.schedule}' ({job.time_zone})")
    # An unfilled ${SERVICE_URL} was validated with a sample: show the template, not the sample.
    uri = job.uri
    if "SERVICE_URL" in source.placeholders:
        uri = uri.replace(SAMPLE_SERVICE_URL, "${SERVICE_URL}", 1)
    deadline = format_duration(job.attempt_deadline)
    typer.echo(f"  request: {job.http_method} {uri} (deadline {deadline})")
    typer.echo(f"  retries: {r.retry_count} (waits {waits})")
    if source.placeholders:
        names = ", ".join(f"${{{n}}}" for n in source.placeholders)
        typer.echo(f"  placeholders: {names} (fill them with `gitlab-insights scheduler render`)")
    built_in = built_in_schedule(job)
    if built_in:
        typer.echo(f"  built-in scheduler: {built_in}")


def built_in_schedule(job: SchedulerJob) -> str | None:
    """Which cron `serve --scheduler` would fire on, and why; None if settings are broken."""
    try:
        settings = load_settings()
    except ConfigurationError:
        return None  # `check` is about the file; the settings have their own errors
    cron, origin = effective_cron(job, settings)
    if origin == "scheduler.yaml":
        return f"'{cron}' from this file"
    override = "the environment" if os.environ.get("INNGEST_POLLING_CRON") else ".env"
    return f"'{cron}' from INNGEST_POLLING_CRON ({override}), overriding the file"
