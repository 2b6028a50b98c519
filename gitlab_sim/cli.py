"""`gitlab-sim`: the GitLab simulator (`serve`) and the whole-system demo (`demo`)."""

from __future__ import annotations

from typing import Annotated

import typer

from gitlab_sim.generate import generate_world
from gitlab_sim.server import run_foreground
from gitlab_sim.world import OAuthApp, SimConfig

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="A local GitLab API simulator for tests, the benchmark and the demo.",
    # As gitlab-insights: -h works on every command, flags read as flags in plain help.
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)


@app.command("serve")
def serve(
    port: Annotated[int, typer.Option(help="TCP port to listen on.")] = 8929,
    host: Annotated[str, typer.Option(help="Interface; keep it local.")] = "127.0.0.1",
    seed: Annotated[int, typer.Option(help="Seed: same seed, same data.")] = 1,
    users: Annotated[int, typer.Option(help="Number of users.")] = 5,
    projects: Annotated[int, typer.Option(help="Number of projects.")] = 4,
    issues: Annotated[int, typer.Option(help="Issues per project.")] = 30,
    mrs: Annotated[int, typer.Option(help="Merge requests per project.")] = 15,
    notes: Annotated[int, typer.Option(help="Average notes per issue/MR.")] = 4,
    days: Annotated[int, typer.Option(help="Spread timestamps over this many days.")] = 30,
    big_project_issues: Annotated[
        int, typer.Option(help="Add big-group/monorepo with this many issues (0: none).")
    ] = 0,
    big_project_notes: Annotated[
        int, typer.Option(help="Average notes per issue of big-group/monorepo.")
    ] = 1,
    latency_ms: Annotated[float, typer.Option(help="Added to every GitLab request.")] = 0.0,
    rate_limit: Annotated[
        int, typer.Option(help="Requests per minute per token before 429.")
    ] = 1_000_000,
    offset_cap: Annotated[int, typer.Option(help="Max offset for issue pages.")] = 50_000,
    oauth_client_id: Annotated[str, typer.Option()] = "sim-oauth-client-id",
    oauth_client_secret: Annotated[str, typer.Option()] = "sim-oauth-client-secret",  # noqa: S107 (fake)
    oauth_redirect_uri: Annotated[str, typer.Option()] = "http://127.0.0.1/oauth/callback",
    base_url: Annotated[
        str | None, typer.Option(help="URL used in web_url links (default http://host:port).")
    ] = None,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Serve a seeded, deterministic GitLab API v4 (see GET /_sim/world for users/tokens)."""
    url = (base_url or f"http://{host}:{port}").rstrip("/")
    world = generate_world(
        seed=seed,
        users=users,
        projects=projects,
        issues=issues,
        merge_requests=mrs,
        notes=notes,
        days=days,
        big_project_issues=big_project_issues,
        big_project_notes=big_project_notes,
        base_url=url,
        config=SimConfig(
            latency_ms=latency_ms, rate_limit_per_minute=rate_limit, offset_cap=offset_cap
        ),
        oauth_app=OAuthApp(oauth_client_id, oauth_client_secret, oauth_redirect_uri),
    )
    typer.echo(
        f"GitLab simulator on {url} (seed {seed}): {len(world.users)} users, "
        f"{len(world.projects)} projects. Users and tokens: GET {url}/_sim/world"
    )
    run_foreground(world, host=host, port=port, log_level=log_level, base_url=url)


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Port of the service (0: any free port)", min=0)] = 8000,
    directory: Annotated[
        str, typer.Option("--dir", help="Folder for the demo's SQLite database (made fresh)")
    ] = "./demo",
    cron: Annotated[
        str, typer.Option(help="When the built-in scheduler polls (5-field cron)")
    ] = "* * * * *",
) -> None:
    """Run everything locally: GitLab simulator, SQLite, the service and its scheduler."""
    from gitlab_sim.demo import run_demo

    raise typer.Exit(run_demo(port=port, directory=directory, cron=cron))


def main() -> None:
    app()
