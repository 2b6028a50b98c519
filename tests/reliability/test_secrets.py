"""No secret ever leaves the service: every log line (DEBUG, the whole process output) and
every response of full runs with faults, token refreshes, rotations and revocations is
searched for every access token, refresh token, signing key and Authorization value."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from app.security.signing import strip_signing_key_prefix
from gitlab_sim.faults import FaultSpec
from gitlab_sim.server import SimulatorServer
from tests.reliability.helpers import ServiceProcess, add_chaos
from tests.support import SIGNING_KEY, add_user, oauth_overrides, project_tuple

FALLBACK = "signkey-prod-" + "c4" * 32


@pytest.mark.slow
def test_no_secret_in_any_log_line_or_response(pg_url, tmp_path):
    with SimulatorServer(seed=61, users=8, projects=3, issues=8, merge_requests=3, notes=2) as sim:
        w = sim.world
        app_cfg = w.describe()["oauth_app"]
        for i in range(1, 9):
            name = f"user{i}"
            pids = [p.id for p in w.projects.values() if w.can_see_project(p, w.user(name))][:2]
            projects = [project_tuple(sim, p) for p in pids]
            if i % 2:
                add_user(pg_url, f"{name}@x.org", sim.token(name), projects)
            else:  # OAuth users with expired tokens: refreshed (and rotated) during the run
                grant = w.create_oauth_tokens(name)
                w.expire_token(grant["access_token"])
                add_user(
                    pg_url,
                    f"{name}@x.org",
                    grant["access_token"],
                    projects,
                    refresh_token=grant["refresh_token"],
                    expires_at=datetime.now(UTC) - timedelta(minutes=1),
                )
        w.revoke_token(sim.token("user3"))  # a 401 "revoked" on the way
        add_chaos(w, rate=0.3, seed=61, slow_delay=1.5)
        w.add_fault(FaultSpec(kind="status", status=500, path=r"^/oauth/token$", count=1))
        w.add_fault(FaultSpec(kind="malformed", path=r"^/oauth/token$", count=1))

        service = ServiceProcess(
            pg_url,
            sim.url,
            tmp_path,
            log_level="DEBUG",
            inngest_signing_key_fallback=FALLBACK,
            **oauth_overrides(sim),
            gitlab_read_timeout=1,
            gitlab_per_page=3,
        )
        responses: list[httpx.Response] = []
        with service:
            responses.append(service.poll(timeout=300))
            w.clear_faults()
            responses.append(service.poll(timeout=300))
            auth = {"Authorization": f"Bearer {SIGNING_KEY}"}
            responses.append(httpx.get(f"{service.url}/api/sync-status", headers=auth, timeout=30))
            responses.append(httpx.get(f"{service.url}/metrics", timeout=30))
            responses.append(httpx.get(f"{service.url}/openapi.json", timeout=30))
            for bad in (
                f"Bearer {SIGNING_KEY}x",
                f"Basic {SIGNING_KEY}",
                f"Bearer {FALLBACK[:-1]}",
            ):
                responses.append(
                    httpx.post(
                        f"{service.url}/api/poll", headers={"Authorization": bad}, timeout=30
                    )
                )
        assert responses[0].status_code == 200 and responses[1].status_code == 200
        # The runs did what makes leaks likely: refreshes, retries, a revoked token.
        users = responses[0].json()["users"] + responses[1].json()["users"]
        assert any(u["reason"] == "token_revoked" for u in users)
        assert any(u["status"] == "processed" for u in responses[1].json()["users"])
        rotated = [t for t in w.tokens.values() if t.kind == "oauth_refresh" and t.revoked]
        assert rotated, "no token was refreshed: the test would prove less than it claims"

        secrets = {t.value for t in w.tokens.values()}  # every token GitLab ever issued
        secrets |= {
            SIGNING_KEY,
            strip_signing_key_prefix(SIGNING_KEY),
            FALLBACK,
            strip_signing_key_prefix(FALLBACK),
            app_cfg["client_secret"],
        }
        text = service.log_text()
        assert len(text.splitlines()) > 100, "too few log lines captured"
        haystacks = {"service log": text}
        for i, r in enumerate(responses):
            headers = "\n".join(f"{k}: {v}" for k, v in r.headers.items())
            haystacks[f"response {i} ({r.request.url.path})"] = headers + "\n" + r.text
        leaks = [
            f"{where}: ...{s[:12]}..."
            for where, hay in haystacks.items()
            for s in secrets
            if s in hay
        ]
        assert not leaks, leaks[:10]
        # No Authorization value of any shape (the OpenAPI page, static documentation of the
        # header with placeholders, was searched for the secrets above).
        value = re.compile(
            r"(?i)(authorization|private-token)[\"']?\s*[:=]\s*[\"']?(bearer\s+)?(?![<\[])\S"
        )
        for where, hay in haystacks.items():
            if "openapi" in where:
                continue
            found = [m.group(0) for m in value.finditer(hay)]
            assert not found, (where, found[:3])
