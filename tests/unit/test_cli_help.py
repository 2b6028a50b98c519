"""Help of both commands: `-h` and `--help` on every command, flags shown as flags."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from app.cli import cli
from gitlab_sim.cli import app as sim_cli


def command_paths(app: typer.Typer) -> list[list[str]]:
    """Every command and group of the app, as argument lists ([] is the root)."""
    paths: list[list[str]] = []

    def walk(command: Any, path: list[str]) -> None:
        paths.append(path)
        # Typer 0.2x ships its own copy of Click: a group is what has sub-commands.
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return paths


CASES = [("gitlab-insights", cli, p) for p in command_paths(cli)] + [
    ("gitlab-sim", sim_cli, p) for p in command_paths(sim_cli)
]


@pytest.mark.parametrize(
    ("name", "app", "path"), CASES, ids=[" ".join([n, *p]) for n, _, p in CASES]
)
def test_short_and_long_help_on_every_command(name: str, app: typer.Typer, path: list[str]):
    runner = CliRunner()
    short = runner.invoke(app, [*path, "-h"], prog_name=name)
    long = runner.invoke(app, [*path, "--help"], prog_name=name)
    assert short.exit_code == 0, short.output
    assert short.output == long.output
    assert short.output.startswith(f"Usage: {' '.join([name, *path])} ")
    assert re.search(r"^\s+-h, --help\s+Show this message and exit\.$", short.output, re.M)
    # A flag takes no value: no `<bool>` (or any type) next to one.
    assert "<bool>" not in short.output, short.output


def test_version_is_shown_as_a_flag_and_prints_the_version():
    from app import __version__

    runner = CliRunner()
    text = runner.invoke(cli, ["-h"], prog_name="gitlab-insights").output
    assert re.search(r"^\s+-V, --version\s+Print the version and exit\.$", text, re.M), text
    for flag in ("-V", "--version"):
        r = runner.invoke(cli, [flag])
        assert r.exit_code == 0 and r.output == f"gitlab-insights {__version__}\n"
