"""`scheduler render|check`: the polling job file (scheduler.yaml) for Google Cloud Scheduler."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

import typer

from app.cli.context import settings_or_exit
from app.cli.output import USAGE_ERROR, fail_all, usage_error
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
    job_shard,
    load,
    locate,
    service_base_url,
    shard_files,
    shard_set_problems,
)
from app.settings import ConfigurationError, load_settings
from app.sync.shard import MAX_SHARDS

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
        Literal["oidc", "bearer"] | None,  # anything else is a usage error (exit code 2)
        typer.Option(
            "--auth",
            help="oidc: Google-signed ID tokens, no secret in the job (recommended); bearer: "
            "the static signing key header. Default: as the file says (oidc)",
        ),
    ] = None,
    shards: Annotated[
        int,
        typer.Option(
            min=1,
            max=MAX_SHARDS,
            help="Split the users over N jobs (gitlab-insights-poll-shard-0..N-1), one flags "
            "file each in --out-dir; 1: the one job, printed",
        ),
    ] = 1,
    out_dir: Annotated[
        Path | None, typer.Option("--out-dir", help="Where --shards writes its files")
    ] = None,
) -> None:
    """Print the job file with its placeholders filled in, for gcloud (or write N shards)."""
    # Usage errors first (exit code 2): the options alone are wrong, whatever the file says.
    if url:
        try:
            service_base_url(url)
        except SchedulerConfigError as exc:
            usage_error("; ".join(exc.problems))
    if shards != 1 and out_dir is None:
        usage_error("--out-dir: required with --shards (one flags file per job)")
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
    if "OIDC_SERVICE_ACCOUNT" in source.placeholders:  # apply_auth found no setting for it
        missing.append(
            "${OIDC_SERVICE_ACCOUNT}: set OIDC_SERVICE_ACCOUNTS and OIDC_AUDIENCES as the "
            "service has them (or render --auth bearer)"
        )
    if "SIGNING_KEY" in source.placeholders:
        key = settings.inngest_signing_key
        if key is None:
            missing.append("${SIGNING_KEY}: set INNGEST_SIGNING_KEY")
        else:
            secret = key.get_secret_value()
            values["SIGNING_KEY"] = secret if show_secret else mask_key(secret)
    if missing:  # an option or a setting not given: a usage error
        fail_all(source.origin, [f"no value for {m}" for m in missing], code=USAGE_ERROR)
    try:
        filled = fill_placeholders(source.text, values)
    except SchedulerConfigError as exc:
        fail_all(source.origin, exc.problems)
    problems = check(SchedulerFile(filled, source.origin))
    if problems:
        fail_all(source.origin, problems)
    if shards != 1 or out_dir is not None:
        write_shards(SchedulerFile(filled, source.origin), shards, out_dir)
    else:
        typer.echo(filled, nl=False)
    if "SIGNING_KEY" in values and not show_secret:
        typer.echo(
            "note: the signing key is masked; add --show-secret to write a file gcloud can use",
            err=True,
        )


def write_shards(source: SchedulerFile, shards: int, out_dir: Path | None) -> None:
    """The N shard jobs as files in `out_dir`; their gcloud commands on stdout."""
    if out_dir is None:
        usage_error("--out-dir: required with --shards (one flags file per job)")
    try:
        jobs = shard_files(source, shards)
    except SchedulerConfigError as exc:
        fail_all(source.origin, exc.problems)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, job in jobs:
        problems = check(job)
        if problems:
            fail_all(job.origin, problems)
        path = out_dir / job.origin
        path.write_text(job.text, encoding="utf-8")
        path.chmod(0o600)  # may hold the signing key (--auth bearer --show-secret)
        typer.echo(
            f"gcloud scheduler jobs create http {name} --location=LOCATION --flags-file={path}"
        )
    typer.echo(
        f"wrote {shards} jobs to {out_dir}; check them together with: gitlab-insights "
        f"scheduler check {' '.join(f'-f {out_dir / j.origin}' for _, j in jobs[:2])} ...",
        err=True,
    )


FilesOption = Annotated[
    list[str] | None,
    typer.Option(
        "--file",
        "-f",
        help="Job file (default: ./scheduler.yaml, else the copy shipped with gitlab-insights); "
        "repeat it to check the N files of a sharded schedule together",
    ),
]


@scheduler_cli.command("check")
def check_command(file: FilesOption = None) -> None:
    """Validate the job file: cron every 5-15 minutes, URL, retry settings within GCP limits.

    Several files (`-f a -f b`): each, and that sharded jobs cover shards 0..N-1 once each."""
    files: list[str | None] = list(file) if file else [None]
    jobs = [check_one(f) for f in files]
    problems = shard_set_problems(jobs)
    if problems:
        fail_all(", ".join(f or "scheduler.yaml" for f in files), problems)
    if len(jobs) > 1:
        typer.echo(f"ok: {len(jobs)} jobs together")


def check_one(file: str | None) -> SchedulerJob:
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
    sharded = job_shard(job)
    if sharded:
        typer.echo(
            f"  shard: {sharded[0]} of {sharded[1]} (check all {sharded[1]} files together; "
            "give `serve --scheduler` an unsharded file: it polls this shard only)"
        )
    built_in = built_in_schedule(job)
    if built_in:
        typer.echo(f"  built-in scheduler: {built_in}")
    return job


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
