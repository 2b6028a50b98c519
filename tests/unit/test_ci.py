"""CI's own files: .ci/run runs exactly the README's test command; .ci/postgres sets up
the PostgreSQL the tests need, or says in one line what is missing."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text()
    after = readme.split("Run the tests", 1)[1]
    return re.search(r"```bash\n(.+?)\n```", after, re.DOTALL)[1]


def test_ci_runs_the_readmes_test_command_verbatim() -> None:
    command = readme_test_command()
    assert "pip install -q -c constraints.txt -e '.[dev]'" in command  # the locked versions
    run = (ROOT / ".ci" / "run").read_text()
    assert command + " \\\n" in run


# --- .ci/postgres, on a machine faked with stub commands -------------------------------------

# What the script may use from the real machine; every PostgreSQL and apt command is a stub.
TOOLS = ("awk", "sort", "tail", "basename", "dirname", "grep", "seq", "sleep", "touch")


def run_postgres_script(
    tmp_path: Path, stubs: dict[str, str], versions: tuple[str, ...] = ()
) -> tuple[int, str, list[str], list[str]]:
    """Run .ci/postgres with only `stubs` and TOOLS on PATH and servers of `versions`
    installed; returns (exit code, stdout, stderr lines, the stubs' log)."""
    bin_dir, lib = tmp_path / "bin", tmp_path / "lib"
    bin_dir.mkdir()
    for tool in TOOLS:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    for version in versions:
        (lib / version / "bin").mkdir(parents=True)
        (lib / version / "bin" / "postgres").write_text("")
        (lib / version / "bin" / "postgres").chmod(0o755)
    log = tmp_path / "log"
    log.touch()
    env = {"PATH": str(bin_dir), "PG_LIB": str(lib), "LOG": str(log), "STATE": str(tmp_path / "s")}
    r = subprocess.run(
        ["/bin/bash", str(ROOT / ".ci" / "postgres")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return r.returncode, r.stdout, r.stderr.splitlines(), log.read_text().splitlines()


ROOT_ID = {"id": "echo 0"}
LOGGED = 'echo "$(basename "$0") $*" >> "$LOG"'


def test_postgres_missing_without_apt_is_one_line(tmp_path) -> None:
    code, out, err, _ = run_postgres_script(tmp_path, ROOT_ID)
    assert (code, out) == (1, "")
    assert err == [
        "error: PostgreSQL for the tests: not installed and no apt-get to install it: install "
        "the PostgreSQL server (Debian: postgresql), or set TEST_DATABASE_URL"
    ]


def test_postgres_missing_is_installed_with_apt_non_interactively(tmp_path) -> None:
    apt = 'echo "apt-get DEBIAN_FRONTEND=$DEBIAN_FRONTEND $*" >> "$LOG"'
    code, out, err, log = run_postgres_script(tmp_path, {**ROOT_ID, "apt-get": apt})
    assert log == [
        "apt-get DEBIAN_FRONTEND=noninteractive update -qq",
        "apt-get DEBIAN_FRONTEND=noninteractive install -y -q postgresql",
    ]
    # This fake apt-get installed nothing: said in one line, not after a 30 s wait.
    assert (code, out) == (1, "")
    assert err[-1] == (
        "error: PostgreSQL for the tests: pg_lsclusters still missing after installing postgresql"
    )


def test_postgres_needs_root_to_set_itself_up(tmp_path) -> None:
    code, _, err, _ = run_postgres_script(tmp_path, {"id": "echo 1000"})
    assert code == 1 and len(err) == 1 and "run as root" in err[0]


def cluster_stubs(start: str = "exit 0") -> dict[str, str]:
    """Server 15 has its cluster `main` on 5432; 16's is created on 5433 by pg_createcluster."""
    return {
        **ROOT_ID,
        "pg_lsclusters": 'echo "15 main 5432 online postgres /d15 /l15"\n'
        '[ -f "$STATE" ] && echo "16 main 5433 online postgres /d16 /l16"; exit 0',
        "pg_createcluster": f'{LOGGED}; touch "$STATE"',
        "pg_ctlcluster": f'{LOGGED}; [ "$3" = status ] && exit 3; {start}',
        "pg_isready": "exit 0",
        "runuser": LOGGED,  # answers no rows: the role and database get created
    }


def test_postgres_uses_the_newest_version_and_creates_what_is_missing(tmp_path) -> None:
    code, out, err, log = run_postgres_script(tmp_path, cluster_stubs(), ("15", "16"))
    assert (code, err) == (0, [])
    assert out == "postgresql://gi_ci:gi_ci@127.0.0.1:5433/gi_ci\n"
    assert log[:3] == [
        "pg_createcluster 16 main",
        "pg_ctlcluster 16 main status",
        "pg_ctlcluster 16 main start",
    ]
    sql = [line for line in log if line.startswith("runuser")]
    assert all(" psql -p 5433 " in line for line in sql)
    assert any("CREATE ROLE gi_ci LOGIN" in line for line in sql)
    assert any("CREATE DATABASE gi_ci OWNER gi_ci" in line for line in sql)


def test_postgres_that_will_not_start_is_one_line(tmp_path) -> None:
    code, out, err, _ = run_postgres_script(tmp_path, cluster_stubs(start="exit 1"), ("16",))
    assert (code, out) == (1, "")
    assert err == [
        "error: PostgreSQL for the tests: cannot start the cluster 16/main "
        "(log: /var/log/postgresql/postgresql-16-main.log)"
    ]
