"""/docs and /redoc work without internet: a real headless Chromium (Debian's package)
loads them from the running service with every non-loopback fetch made to fail, and must
see the /api/poll operation rendered with its authentication and its responses.

Chromium is launched with `--proxy-server=127.0.0.1:9` (a closed port: any proxied fetch
fails; loopback is never proxied) and `--host-resolver-rules` that resolve every other host
to nothing, so a page that needs a CDN renders blank. The screenshot of /docs is kept as a
test artifact under `test-artifacts/` (gitignored). Skipped with a reason when chromium is
missing, except in CI (CI=true), where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import LiveServer, make_settings

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
OFFLINE = [
    "--proxy-server=127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    message = "chromium not installed (apt-get install -y chromium): the /docs browser test"
    if IN_CI:
        pytest.fail(f"{message} must run in CI")
    pytest.skip(f"{message} is skipped outside CI")


def _headless(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--user-data-dir={profile}",
            *OFFLINE,
            # Run the page's scripts (and their fetch of /openapi.json) before the dump.
            "--virtual-time-budget=20000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def server(tmp_path):
    from app.db.migrate import upgrade_to_head

    url = f"sqlite+aiosqlite:///{tmp_path}/docs.db"
    upgrade_to_head(url)
    with LiveServer(make_settings(url)) as live:
        yield live


def test_docs_render_offline_in_a_real_browser(server, tmp_path) -> None:
    chromium = _chromium()
    # Deep link: Swagger UI opens the POST /api/poll operation, responses and all.
    page = f"{server.url}/docs#/poll/poll_api_poll_post"

    dom = _headless(chromium, tmp_path / "profile", "--dump-dom", page).stdout
    assert 'data-path="/api/poll"' in dom, dom[-2000:]
    # The expanded operation: POST /api/poll with its responses, errors included.
    op = re.search(r'id="operations-poll-poll_api_poll_post".*?</tbody>', dom, re.S)
    assert op, "POST /api/poll was not expanded"
    codes = set(re.findall(r'data-code="(\d{3})"', op.group(0)))
    assert {"200", "401", "413", "415", "422", "503"} <= codes, codes
    assert "Missing or bad credentials" in op.group(0)
    assert "unauthorized" in op.group(0)  # the shared error body's example
    # Its authentication: the Authorize button, and the operation's lock.
    assert "authorize" in dom.lower() and "authorization__btn" in op.group(0)
    # Nothing came from elsewhere: the page names only this server.
    assert not re.search(r'(src|href)="https?://(?!127\.0\.0\.1)', dom)

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "docs.png"
    shot.unlink(missing_ok=True)
    _headless(
        chromium, tmp_path / "profile", "--window-size=1280,2400", f"--screenshot={shot}", page
    )
    assert shot.exists() and shot.stat().st_size > 10_000, "no screenshot"

    redoc = _headless(chromium, tmp_path / "profile", "--dump-dom", f"{server.url}/redoc").stdout
    assert "Run a poll now (scheduler or manual refresh)" in redoc, redoc[-2000:]
