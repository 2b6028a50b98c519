"""The README's "Next steps: from the demo to a real GitLab", run as written.

Its two bash blocks run in a fresh folder holding only `.venv` (a link to the venv running
the tests), as a reader of the README would after the Quick start. Only what names the
reader's own GitLab is replaced: the instance URL and project path by the simulator's, the
port by a free one; the token comes on stdin, where the block's `read` takes it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.settings import Settings
from gitlab_sim.server import SimulatorServer
from tests.support import free_port

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Next steps: from the demo to a real GitLab"


def section_blocks() -> list[str]:
    text = README.read_text()
    assert SECTION in text, "the README lost its next-steps section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def bash(
    script: str, cwd: Path, env: dict[str, str], stdin: str = ""
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_readme_next_steps_work_as_written(tmp_path):
    venv = Path(sys.prefix)
    if not (venv / "bin" / "gitlab-insights").is_file():
        pytest.fail(f"run the tests from the Quick start's venv: no {venv}/bin/gitlab-insights")
    (tmp_path / ".venv").symlink_to(venv)
    # The reader's .env is the configuration: no setting of the test run may override it.
    settings = {name.upper() for name in Settings.model_fields}
    settings |= {"GITLAB_TOKEN", "GITLAB_REFRESH_TOKEN", "SERVICE_URL", "PYTHONPATH"}
    env = {k: v for k, v in os.environ.items() if k not in settings}
    setup, scheduler_call = section_blocks()
    port = free_port()

    with SimulatorServer(seed=3, users=2, projects=2, issues=4, merge_requests=2, notes=1) as sim:
        account = sim.world.user("user1")
        project = next(p for p in sim.world.projects.values() if account.id in p.members)
        token = sim.token("user1")
        setup = (
            setup.replace("https://gitlab.example.com", sim.url)
            .replace("group/project", project.path_with_namespace)
            .replace("serve --scheduler", f"serve --scheduler --port {port}")
        )
        *steps, serve = setup.rstrip("\n").split("\n")
        assert "serve --scheduler" in serve, "the block ends with the serving command"

        done = bash("\n".join(steps), tmp_path, env, stdin=token + "\n")
        out = done.stdout + done.stderr
        assert done.returncode == 0, out
        assert token not in out
        assert "created schema at" in done.stdout
        assert f"token of GitLab user @user1 (id {account.id})" in done.stdout
        assert f"monitoring {project.path_with_namespace} (id {project.id})" in done.stdout
        assert "1 processed, 0 failed, 0 skipped of 1 users" in done.stdout
        assert stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o600

        log = tmp_path / "serve.log"  # a file, not a pipe: a full pipe would stall the server
        with log.open("w") as sink:  # the child keeps its own copy of the descriptor
            server = subprocess.Popen(
                ["bash", "-c", "exec " + serve],
                cwd=tmp_path,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                assert server.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "serve --scheduler did not get ready"
                try:
                    if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            call = bash(
                scheduler_call.replace("127.0.0.1:8000", f"127.0.0.1:{port}"), tmp_path, env
            )
            assert call.returncode == 0, call.stdout + call.stderr
            answer = json.loads(call.stdout)
            # A scheduled tick at the same moment may hold the user (in_progress): still done.
            assert answer["success"] is True and answer["total"] == 1, answer
            assert answer["trigger"] == "api" and answer["auth"]["method"] == "bearer"
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        assert "Traceback" not in log.read_text(), log.read_text()
