"""The Docker image's logic, checked without a Docker engine: what the Dockerfile copies and
installs (the wheel it builds, its scripts, the lock), and its command run as a process here,
which must stop cleanly on SIGTERM (`docker stop`)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # where this venv's scripts are, as /usr/local/bin in the image


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined."""
    joined = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [ln.strip() for ln in joined.splitlines()]
    return [
        (ln.split(None, 1)[0].upper(), ln.split(None, 1)[1])
        for ln in lines
        if ln and not ln.startswith("#")
    ]


def arguments(name: str) -> list[str]:
    return [args for instruction, args in instructions() if instruction == name]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in arguments("ENV"):
        env.update(word.split("=", 1) for word in shlex.split(args))
    return env


def image_cmd() -> list[str]:
    (cmd,) = arguments("CMD")
    return json.loads(cmd)


def copied_sources() -> set[str]:
    return {src for args in arguments("COPY") for src in args.split()[:-1]}


def removed_scripts() -> set[str]:
    return {m for args in arguments("RUN") for m in re.findall(r"rm /usr/local/bin/(\S+)", args)}


def test_the_command_is_exec_form_so_the_service_gets_sigterm() -> None:
    # Shell form (`CMD gitlab-insights serve`) makes /bin/sh PID 1, which does not pass
    # `docker stop`'s SIGTERM on: the service would be killed 10 s later instead.
    (cmd,) = arguments("CMD")
    assert isinstance(json.loads(cmd), list)
    assert not arguments("ENTRYPOINT")


def test_the_image_installs_the_locked_versions() -> None:
    assert "constraints.txt" in copied_sources()
    installs = [args for args in arguments("RUN") if "pip install" in args]
    assert installs and all("pip install -c constraints.txt " in args for args in installs)


def test_the_lock_pins_every_dependency_of_the_project() -> None:
    """Adding a dependency to pyproject.toml without `bash .ci/lock` fails here."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [
        d for ds in project["optional-dependencies"].values() for d in ds
    ]

    def name(requirement: str) -> str:
        return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement)[0]).lower()

    lock = (ROOT / "constraints.txt").read_text().splitlines()
    pinned = {name(ln) for ln in lock if ln and not ln.startswith((" ", "#"))}
    assert all("==" in ln for ln in lock if ln and not ln.startswith((" ", "#")))
    assert {name(r) for r in wanted} - pinned == set()
    assert "bash .ci/lock" in lock[1]  # the refresh command, as uv records it


@pytest.mark.slow
def test_every_script_the_image_keeps_has_its_package(tmp_path) -> None:
    """Build the wheel the image installs, from only what the Dockerfile copies: a script
    whose package is not in it would crash in the image, so the Dockerfile must remove it."""
    stage = tmp_path / "srv"
    stage.mkdir()
    for src in copied_sources():
        subprocess.run(["cp", "-r", str(ROOT / src), str(stage / src)], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(stage)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        packages = {name.split("/")[0] for name in z.namelist()}
        (entry_points,) = [n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")]
        lines = z.read(entry_points).decode().splitlines()
    scripts = {
        ln.split("=")[0].strip(): ln.split("=")[1].strip().split(".")[0].split(":")[0]
        for ln in lines[lines.index("[console_scripts]") + 1 :]
        if "=" in ln
    }
    assert "gitlab-insights" in scripts
    unusable = {script for script, package in scripts.items() if package not in packages}
    assert unusable == {"gitlab-sim"}  # the simulator is not copied into the image
    assert removed_scripts() == unusable


def serve_like_the_image(tmp_path: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    """The image's CMD and ENV, on loopback and a free port, SQLite in a temporary folder."""
    cmd = image_cmd() + list(extra)
    cmd[0] = str(BIN / cmd[0])
    cmd[cmd.index("--host") + 1] = "127.0.0.1"
    cmd[cmd.index("--port") + 1] = str(port)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "GITLAB_", "INNGEST_", "LOG_", "ALLOW_UNSIGNED"))
    }
    env.update(image_env())
    assert env["DATABASE_URL"].startswith("sqlite+aiosqlite:////srv/data/")
    env["DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path}/gitlab-insights.db"
    env["INNGEST_SIGNING_KEY"] = "signkey-test-" + "0" * 32
    return subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.parametrize("extra", [(), ("--scheduler",)], ids=["CMD", "CMD --scheduler"])
def test_the_image_command_stops_cleanly_on_sigterm(tmp_path, extra) -> None:
    port = free_port()
    proc = serve_like_the_image(tmp_path, port, *extra)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the service never answered /healthz"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # 0, not 143 (-15 here: killed by the SIGTERM uvicorn raises again after shutting down).
    assert proc.returncode == 0, output
    messages = [json.loads(ln)["message"] for ln in output.splitlines() if ln.startswith("{")]
    # The graceful path ran: the app's lifespan closed its resources, then uvicorn finished.
    assert "gitlab-insights stopped" in messages, output
    assert messages[-1].startswith("Finished server process"), output
    assert "Traceback" not in output


def test_the_readme_keeps_tokens_off_docker_command_lines() -> None:
    readme = (ROOT / "README.md").read_text()
    docker = readme[readme.index("## Docker") :].split("\n## ", 1)[0]
    execs = [ln for ln in docker.splitlines() if ln.startswith("docker exec")]
    assert any("users add" in ln for ln in execs)
    for line in execs:
        assert "--token" not in line, line
        if "users add" in line:
            assert "-e GITLAB_TOKEN " in line, line  # passed on from the environment
