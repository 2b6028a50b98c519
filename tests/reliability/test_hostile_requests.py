"""Hostile callers of POST /api/poll: forged, replayed or malformed credentials are refused
with 401 and start nothing; hostile bodies get a clear 4xx, never a 500.

"Nothing started" is checked where it would show: no poll_run row, no request to GitLab.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from app.security.signing import sign_request
from gitlab_sim.server import SimulatorServer
from tests.support import (
    FALLBACK_KEY,
    SIGNING_KEY,
    LiveServer,
    add_user,
    make_settings,
    project_tuple,
    query,
)

OTHER_KEY = "signkey-test-" + "0b" * 32


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(seed=11, users=2, projects=2, issues=3, merge_requests=1, notes=1) as s:
        yield s


def _runs(db_url: str) -> int:
    return query(db_url, "SELECT count(*) FROM poll_run")[0][0]


def _raw_request(url: str, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes as they are (httpx refuses control characters in headers)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < 12:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        # Read the rest of a JSON body if a length was given.
        header, _, rest = data.partition(b"\r\n\r\n")
        for line in header.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                need = int(line.split(b":")[1])
                while len(rest) < need:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    rest += chunk
    status = int(data.split(b" ", 2)[1]) if data else 0
    return status, rest


def _post_raw(url: str, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, bytes]:
    lines = [b"POST /api/poll HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [k + b": " + v for k, v in headers]
    lines.append(b"Content-Length: " + str(len(body)).encode())
    return _raw_request(url, b"\r\n".join(lines) + b"\r\n\r\n", body)


def test_forged_replayed_and_malformed_credentials_are_refused(db_url, sim):
    add_user(db_url, "u1@example.com", sim.token("user1"), [project_tuple(sim, 2)])
    settings = make_settings(
        db_url, sim.url, signature_max_age_seconds=2, inngest_signing_key_fallback=FALLBACK_KEY
    )
    with LiveServer(settings) as server:
        url = f"{server.url}/api/poll"
        body = b'{"user_ids": ["nobody"]}'
        # A genuine signed request is accepted once (this proves the signer agrees)...
        sig = sign_request(body, SIGNING_KEY, int(time.time()))
        ok = httpx.post(url, content=body, headers={"X-Inngest-Signature": sig}, timeout=30)
        assert ok.status_code == 200, ok.text
        runs, calls = _runs(db_url), len(sim.world.requests())
        time.sleep(3.2)  # ...and replayed after the (2 s) window it is refused.

        now = int(time.time())
        cases: list[tuple[str, dict[str, str] | list[tuple[str, str]], bytes]] = [
            ("replay after the window", {"X-Inngest-Signature": sig}, body),
            (
                "signature over another body",
                {"X-Inngest-Signature": sign_request(b"{}", SIGNING_KEY, now)},
                body,
            ),
            (
                "signed with an unknown key",
                {"X-Inngest-Signature": sign_request(body, OTHER_KEY, now)},
                body,
            ),
            (
                "future timestamp",
                {"X-Inngest-Signature": sign_request(body, SIGNING_KEY, now + 600)},
                body,
            ),
            (
                "no t",
                {"X-Inngest-Signature": sign_request(body, SIGNING_KEY, now).split("&")[1]},
                body,
            ),
            (
                "two signatures in one header",
                {
                    "X-Inngest-Signature": sign_request(body, OTHER_KEY, now)
                    + "&s="
                    + sign_request(body, SIGNING_KEY, now).split("s=")[1]
                },
                body,
            ),
            (
                "signature header sent twice",
                [
                    ("X-Inngest-Signature", sign_request(body, OTHER_KEY, now)),
                    ("X-Inngest-Signature", sign_request(body, SIGNING_KEY, now)),
                ],
                body,
            ),
            (
                "authorization sent twice",
                [("Authorization", "Bearer wrong"), ("Authorization", f"Bearer {SIGNING_KEY}")],
                b"",
            ),
            ("huge authorization", {"Authorization": "Bearer " + "A" * 8000}, b""),
            ("huge signature", {"X-Inngest-Signature": f"t={now}&s=" + "a" * 8000}, b""),
            ("basic scheme", {"Authorization": f"Basic {SIGNING_KEY}"}, b""),
            ("token scheme", {"Authorization": f"Token {SIGNING_KEY}"}, b""),
            ("bare key", {"Authorization": SIGNING_KEY}, b""),
            ("key without prefix", {"Authorization": "Bearer " + "5e" * 32}, b""),
            ("key plus junk", {"Authorization": f"Bearer {SIGNING_KEY} x"}, b""),
            ("empty bearer", {"Authorization": "Bearer"}, b""),
            ("no credentials", {}, b""),
        ]
        for name, headers, payload in cases:
            r = httpx.post(url, content=payload, headers=headers, timeout=30)
            assert r.status_code == 401, (name, r.status_code, r.text)
            assert r.headers.get("x-inngest-no-retry") == "true", name
            assert r.json()["check"], name
            for secret in (SIGNING_KEY, FALLBACK_KEY, "5e" * 32):
                assert secret not in r.text, name

        # Header injection: bytes httpx will not send. Control characters inside the value
        # and a CR/LF-smuggled second header line.
        good = f"Bearer {SIGNING_KEY}".encode()
        raw_cases = [
            ("nul in value", [(b"Authorization", good + b"\x00")]),
            ("vertical tab", [(b"Authorization", good[:7] + b"\x0b" + good[7:])]),
            ("latin-1 junk", [(b"Authorization", good + b"\xff")]),
            ("signature with tab", [(b"X-Inngest-Signature", f"t={now}\t".encode())]),
            (
                "smuggled line",
                [(b"X-Inngest-Signature", b"t=1&s=" + b"a" * 64 + b"\r\nX-Other: " + good)],
            ),
        ]
        for name, headers in raw_cases:
            status, reply = _post_raw(server.url, headers, b"")
            # The HTTP parser may refuse some outright (400); none may get through.
            assert status in (400, 401), (name, status, reply[:200])
            assert SIGNING_KEY.encode() not in reply, name

        assert _runs(db_url) == runs, "a refused request started a poll run"
        assert len(sim.world.requests()) == calls, "a refused request reached GitLab"

        # The fallback key works, so refusals above were not a broken configuration.
        assert server.poll({"user_ids": ["nobody"]}, key=FALLBACK_KEY).status_code == 200


def test_no_signing_key_configured_refuses_everything(db_url, sim):
    add_user(db_url, "u1@example.com", sim.token("user1"), [project_tuple(sim, 2)])
    settings = make_settings(db_url, sim.url, inngest_signing_key="")
    assert settings.signing_keys() == []
    with LiveServer(settings) as server:
        url = f"{server.url}/api/poll"
        now = int(time.time())
        for headers in (
            {},
            {"Authorization": "Bearer"},
            {"Authorization": f"Bearer {SIGNING_KEY}"},
            {"Authorization": "Bearer None"},
            {"X-Inngest-Signature": sign_request(b"", "", now)},
            {"X-Inngest-Signature": sign_request(b"", "signkey-prod-", now)},
        ):
            r = httpx.post(url, headers=headers, timeout=30)
            assert r.status_code == 401, (headers, r.text)
            assert r.json()["check"] == "no_key_configured"
        r = httpx.get(f"{server.url}/api/sync-status", timeout=30)
        assert r.status_code == 401
    assert _runs(db_url) == 0
    assert sim.world.requests() == []


def test_hostile_bodies_get_a_clear_4xx_never_a_500(db_url, sim):
    add_user(db_url, "u1@example.com", sim.token("user1"), [project_tuple(sim, 2)])
    settings = make_settings(db_url, sim.url)
    auth = {"Authorization": f"Bearer {SIGNING_KEY}"}
    limit = settings.max_request_body_bytes
    depth = limit // 8
    cases: list[tuple[str, bytes, set[int]]] = [
        ("oversized", b'{"user_ids": ["' + b"a" * (limit + 10) + b'"]}', {413}),
        ("deeply nested array", b"[" * depth + b"]" * depth, {422}),
        ("deeply nested object", b'{"a":' * (depth // 2) + b"1" + b"}" * (depth // 2), {422}),
        ("nested inside user_ids", b'{"user_ids": ' + b"[" * depth + b"]" * depth + b"}", {422}),
        ("string user_ids", b'{"user_ids": "u1"}', {422}),
        ("numbers in user_ids", b'{"user_ids": [1, 2]}', {422}),
        ("null user_ids entry", b'{"user_ids": [null]}', {422}),
        ("empty user_ids", b'{"user_ids": []}', {422}),
        ("object user_ids", b'{"user_ids": {"a": 1}}', {422}),
        ("too many ids", json.dumps({"user_ids": ["x"] * 1001}).encode(), {422}),
        ("unknown field", b'{"users": ["u1"]}', {422}),
        ("unknown plus known", b'{"user_ids": ["u1"], "force": true}', {422}),
        ("array body", b"[]", {422}),
        ("string body", b'"poll"', {422}),
        ("null body", b"null", {422}),
        ("number body", b"1e999999", {422}),
        ("invalid utf-8", b'{"user_ids": ["\xff\xfe"]}', {422}),
        ("utf-16 body", '{"user_ids": ["u1"]}'.encode("utf-16"), {422}),
        ("lone surrogate escape", b'{"user_ids": ["\\ud800"]}', {422}),
        ("escaped nul", b'{"user_ids": ["a\\u0000"]}', {422}),
        ("empty id", b'{"user_ids": [""]}', {422}),
        ("huge id", json.dumps({"user_ids": ["x" * 5000]}).encode(), {422}),
        ("truncated json", b'{"user_ids": ["u1"', {422}),
        ("duplicate keys", b'{"user_ids": ["a"], "user_ids": ["b"]}', {200, 422}),
        ("nul byte", b'{"user_ids": ["a\x00"]}', {422}),
    ]
    with LiveServer(settings) as server:
        url = f"{server.url}/api/poll"
        for name, body, allowed in cases:
            r = httpx.post(
                url, content=body, headers={**auth, "Content-Type": "application/json"}, timeout=60
            )
            assert r.status_code in allowed, (name, r.status_code, r.text[:300])
            if r.status_code != 200:
                err = r.json()
                assert err.get("error") or err.get("detail"), (name, err)
        # A body streamed without Content-Length is bounded too.

        def chunks() -> Iterator[bytes]:
            for _ in range(limit // 1024 + 8):
                yield b" " * 1024

        r = httpx.post(url, content=chunks(), headers=auth, timeout=60)
        assert r.status_code == 413, r.text
        # A lying Content-Length.
        status, _ = _post_raw(
            server.url, [(b"Authorization", f"Bearer {SIGNING_KEY}".encode())], b""
        )
        assert status == 200
    # Only the two bodies that are valid requests for unknown users may have run.
    assert _runs(db_url) <= 3
    assert sim.world.requests() == [] or all(e["username"] for e in sim.world.requests())
