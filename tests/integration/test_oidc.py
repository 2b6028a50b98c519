"""Cloud Scheduler's OIDC ID tokens on /api/poll and /api/sync-status, over real HTTP: the
service under uvicorn, the GitLab simulator, and a JWKS server on 127.0.0.1 serving RSA keys
generated here. Time (token expiry, the key cache) is a fake clock handed to the app.

Every refusal is checked to run nothing: no poll_run row, no Event, no GitLab request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from typer.testing import CliRunner

from app.cli import cli
from gitlab_sim.server import SimulatorServer
from tests.oidc_support import (
    AUDIENCE,
    SERVICE_ACCOUNT,
    FakeClock,
    JWKSServer,
    RsaKey,
    claims,
    forge_hs256,
    forge_none,
    sign,
    tamper,
)
from tests.support import SIGNING_KEY, LiveServer, add_user, make_settings, project_tuple, query


@pytest.fixture(scope="module")
def key1() -> RsaKey:
    return RsaKey.generate("google-key-1")


@pytest.fixture(scope="module")
def key2() -> RsaKey:
    return RsaKey.generate("google-key-2")


@pytest.fixture(scope="module")
def unpublished() -> RsaKey:
    return RsaKey.generate("never-published")


@dataclass
class Env:
    db_url: str
    sim: SimulatorServer
    jwks: JWKSServer
    server: LiveServer
    clock: FakeClock

    def post(self, token: str | None = None, **headers: str) -> httpx.Response:
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.post(f"{self.server.url}/api/poll", headers=headers, timeout=60)

    def get(self, path: str, token: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.get(f"{self.server.url}{path}", headers=headers, timeout=60)

    def activity(self) -> tuple[int, int, int]:
        """(poll runs, stored events, GitLab requests): all unchanged when nothing ran."""
        runs = query(self.db_url, "SELECT count(*) FROM poll_run")[0][0]
        events = query(self.db_url, 'SELECT count(*) FROM "Event"')[0][0]
        return runs, events, len(self.sim.world.requests())


def _env(db_url: str, jwks: JWKSServer, **overrides) -> Iterator[Env]:
    clock = FakeClock()
    with SimulatorServer(seed=11, users=1, projects=1, issues=3, merge_requests=1, notes=1) as sim:
        pid = next(iter(sim.world.projects))
        add_user(db_url, "ada@example.com", sim.token("user1"), [project_tuple(sim, pid)])
        oidc = {
            "oidc_audiences": AUDIENCE,
            "oidc_service_accounts": f"{SERVICE_ACCOUNT},other@prod.iam.gserviceaccount.com",
            "oidc_jwks_url": jwks.url,
        }
        settings = make_settings(db_url, sim.url, **{**oidc, **overrides})
        with LiveServer(settings, clock=clock) as server:
            yield Env(db_url, sim, jwks, server, clock)


@pytest.fixture
def env(db_url, key1) -> Iterator[Env]:
    with JWKSServer(keys=[key1]) as jwks:
        yield from _env(db_url, jwks)


def test_a_valid_token_runs_a_poll_and_is_recorded(env: Env, key1):
    token = sign(key1, claims(now=env.clock.now))
    r = env.post(token, **{"X-CloudScheduler": "true", "User-Agent": "Google-Cloud-Scheduler"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["processed"] == 1 and body["events"]["stored"] > 0
    assert body["trigger"] == "cloud_scheduler"
    assert body["auth"] == {"method": "oidc", "email": SERVICE_ACCOUNT}
    rows = query(env.db_url, "SELECT trigger, auth_method, auth_email FROM poll_run")
    assert rows == [("cloud_scheduler", "oidc", SERVICE_ACCOUNT)]
    # GET /api/poll and /api/sync-status take the same token; one JWKS fetch for all.
    assert env.get("/api/poll", token).status_code == 200
    status = env.get("/api/sync-status", token)
    assert status.status_code == 200 and status.json()["users"][0]["email"] == "ada@example.com"
    assert env.jwks.requests == 1
    # The static key keeps working next to OIDC, and is recorded as such.
    r = env.post(SIGNING_KEY)
    assert r.status_code == 200 and r.json()["auth"] == {"method": "bearer", "email": None}
    methods = query(env.db_url, "SELECT auth_method FROM poll_run ORDER BY started_at")
    assert [m for (m,) in methods] == ["oidc", "oidc", "bearer"]
    # One shape everywhere: /api/runs and `runs --json` show the /api/poll answers' object.
    shown = [
        {"method": "bearer", "email": None},
        {"method": "oidc", "email": SERVICE_ACCOUNT},
        {"method": "oidc", "email": SERVICE_ACCOUNT},
    ]
    assert [run["auth"] for run in env.get("/api/runs", token).json()["runs"]] == shown
    cli_runs = CliRunner().invoke(
        cli, ["runs", "--json"], env={"DATABASE_URL": env.db_url}, catch_exceptions=False
    )
    assert [run["auth"] for run in json.loads(cli_runs.stdout)] == shown


def test_a_token_signed_by_a_rotated_key_after_the_jwks_changes(env: Env, key1, key2):
    assert env.post(sign(key1, claims(now=env.clock.now))).status_code == 200
    # Google publishes a new key and retires the old one.
    env.jwks.keys = [key2]
    env.clock.advance(61)  # past the one-refetch-a-minute limit
    r = env.post(sign(key2, claims(now=env.clock.now)))
    assert r.status_code == 200, r.text
    assert env.jwks.requests == 2
    # The retired key is gone from the set: its tokens are refused.
    r = env.post(sign(key1, claims(now=env.clock.now)))
    assert r.status_code == 401 and r.json()["check"] == "unknown_key"


def test_refused_tokens_run_nothing(env: Env, key1, unpublished):
    now = env.clock.now
    good = sign(key1, claims(now=now))
    cases = {
        "alg none": (forge_none(claims(now=now), key1.kid), "bad_algorithm"),
        "HS256 keyed with the public key": (forge_hs256(claims(now=now), key1), "bad_algorithm"),
        "wrong audience": (sign(key1, claims(now=now, aud="https://x.example")), "bad_audience"),
        "wrong issuer": (sign(key1, claims(now=now, iss="https://evil.example")), "bad_issuer"),
        "email not allowed": (
            sign(key1, claims(now=now, email="intruder@evil-project.iam.gserviceaccount.com")),
            "email_not_allowed",
        ),
        "email not verified": (
            sign(key1, claims(now=now, email_verified=False)),
            "email_not_verified",
        ),
        "expired": (sign(key1, claims(now=now - 3600 - 61)), "expired"),
        "issued in the future": (sign(key1, claims(now=now + 61)), "issued_in_future"),
        "unknown kid": (sign(unpublished, claims(now=now)), "unknown_key"),
        "tampered payload": (tamper(good, email_verified=True, sub="0"), "bad_signature"),
        # Same service account, same issuer, a token minted for another service.
        "another audience": (
            sign(key1, claims(now=now, aud="https://another-service.example/api/poll")),
            "bad_audience",
        ),
    }
    before = env.activity()
    for name, (token, check) in cases.items():
        for r in (env.post(token), env.get("/api/sync-status", token)):
            assert r.status_code == 401, (name, r.request.url, r.text)
            assert r.json()["check"] == check, name
            assert r.headers["www-authenticate"] == "Bearer"
            assert token not in r.text
    assert env.activity() == before
    # The valid token still works afterwards (nothing was poisoned).
    assert env.post(good).status_code == 200


def test_jwks_down_with_no_cached_key_answers_503(db_url, key1):
    with JWKSServer(keys=[key1], down=True) as jwks:
        for env in _env(db_url, jwks):
            before = env.activity()
            r = env.post(sign(key1, claims(now=env.clock.now)))
            assert r.status_code == 503, r.text
            assert r.json()["check"] == "keys_unavailable"
            assert int(r.headers["retry-after"]) > 0
            assert "x-inngest-no-retry" not in r.headers  # the scheduler should retry
            assert env.activity() == before
            # The endpoint recovers: after the failure cooldown the call goes through.
            jwks.down = False
            env.clock.advance(10)
            assert env.post(sign(key1, claims(now=env.clock.now))).status_code == 200


def test_a_burst_of_unknown_kids_costs_at_most_one_fetch(env: Env, key1):
    assert env.post(sign(key1, claims(now=env.clock.now))).status_code == 200
    env.clock.advance(120)  # a refetch for an unknown kid would be allowed now
    fetched = env.jwks.requests
    before = env.activity()

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=env.server.url, limits=limits, timeout=60) as c:

            async def one(i: int) -> int:
                forged = RsaKey(f"forged-{i}", key1.private)  # any kid the issuer never made
                token = sign(forged, claims(now=env.clock.now))
                r = await c.post("/api/poll", headers={"Authorization": f"Bearer {token}"})
                return r.status_code

            return await asyncio.gather(*(one(i) for i in range(200)))

    statuses = asyncio.run(burst())
    assert statuses == [401] * 200
    assert env.jwks.requests - fetched <= 1
    assert env.activity() == before


def test_oidc_off_a_jwt_is_just_a_wrong_static_key(db_url, key1):
    with JWKSServer(keys=[key1]) as jwks:
        for env in _env(db_url, jwks, oidc_audiences="", oidc_service_accounts=""):
            r = env.post(sign(key1, claims(now=env.clock.now)))
            assert r.status_code == 401 and r.json()["check"] == "bad_token"
            assert jwks.requests == 0


def test_no_token_in_any_log_line_or_response(db_url, key1, unpublished, capsys):
    with JWKSServer(keys=[key1]) as jwks:
        for env in _env(db_url, jwks, log_level="DEBUG"):
            now = env.clock.now
            good = sign(key1, claims(now=now))
            tokens = [
                good,
                forge_none(claims(now=now), key1.kid),
                forge_hs256(claims(now=now), key1),
                sign(key1, claims(now=now, aud="https://x.example")),
                sign(unpublished, claims(now=now)),
                tamper(good, email="intruder@evil.example"),
            ]
            texts = [env.post(t).text for t in tokens]
            texts += [env.get("/api/sync-status", t).text for t in tokens]
            jwks.down = True
            env.clock.advance(3600 * 24)
            texts.append(env.post(sign(key1, claims(now=env.clock.now))).text)
    out = capsys.readouterr()
    logs = out.out + out.err
    assert "OIDC signing keys fetched" in logs  # the capture did see the service's logs
    assert "OIDC token refused" in logs
    for token in tokens:
        # Neither the token, nor its signature, nor its encoded payload.
        for part in [token, *[p for p in token.split(".") if len(p) > 16]]:
            assert part not in logs
            assert all(part not in t for t in texts)
