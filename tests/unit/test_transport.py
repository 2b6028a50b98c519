"""The GitLab wire (app/gitlab/transport.py) over real HTTP on 127.0.0.1: the instance-wide
in-flight cap (bodies included), slots given back after failures, no cookies shared between
users' requests, no redirect followed, timeouts and refused connections as WireError, and
the proxy chosen once from the environment."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
import respx
from aiohttp import web

from app.gitlab.transport import AiohttpWire, HttpxWire, WireError, _proxy_for
from app.settings import Settings


def _settings(**kw: object) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg]


class Server:
    """Counts requests in flight (until the body is fully sent) and records headers."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.cookies_seen: list[str | None] = []
        self.url = ""

    async def slow(self, request: web.Request) -> web.StreamResponse:
        self.active += 1
        self.peak = max(self.peak, self.active)
        self.cookies_seen.append(request.headers.get("Cookie"))
        try:
            response = web.StreamResponse(headers={"Set-Cookie": "session=for-this-token"})
            await response.prepare(request)
            await asyncio.sleep(0.01)
            await response.write(b"[")  # the body is still on the wire here
            await asyncio.sleep(0.01)
            await response.write(b"]")
            await response.write_eof()
            return response
        finally:
            self.active -= 1

    async def redirect(self, request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "http://elsewhere.invalid/"})

    async def hang(self, request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="late")


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    app = web.Application()
    app.router.add_get("/slow/{i}", srv.slow)
    app.router.add_get("/redirect", srv.redirect)
    app.router.add_get("/hang", srv.hang)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    srv.url = f"http://127.0.0.1:{port}"
    try:
        yield srv
    finally:
        await runner.cleanup()


async def test_the_cap_holds_across_requests_and_bodies(server: Server) -> None:
    wire = AiohttpWire(_settings(gitlab_max_in_flight=3))
    try:
        answers = await asyncio.gather(*(wire.get(f"{server.url}/slow/{i}", {}) for i in range(12)))
    finally:
        await wire.aclose()
    assert [(a.status, a.body) for a in answers] == [(200, b"[]")] * 12
    assert server.peak == 3  # never more, and the cap was used


async def test_no_cookie_travels_to_the_next_request(server: Server) -> None:
    wire = AiohttpWire(_settings())
    try:
        for i in range(3):
            await wire.get(f"{server.url}/slow/{i}", {"Authorization": f"Bearer user-{i}"})
    finally:
        await wire.aclose()
    assert server.cookies_seen == [None, None, None]


async def test_a_redirect_is_an_answer_not_followed(server: Server) -> None:
    wire = AiohttpWire(_settings())
    try:
        answer = await wire.get(f"{server.url}/redirect", {"Authorization": "Bearer t"})
    finally:
        await wire.aclose()
    assert answer.status == 302
    assert answer.headers["location"] == "http://elsewhere.invalid/"  # case-insensitive


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_refused_and_timed_out_requests_raise_wire_error_and_free_their_slot(
    server: Server,
) -> None:
    wire = AiohttpWire(_settings(gitlab_max_in_flight=1, gitlab_read_timeout=0.2))
    dead = f"http://127.0.0.1:{_free_port()}/x?private_token=SECRET"
    try:
        for _ in range(3):
            with pytest.raises(WireError) as refused:
                await wire.get(dead, {})
            assert "SECRET" not in str(refused.value) and "127.0.0.1" not in str(refused.value)
        with pytest.raises(WireError):
            await wire.get(f"{server.url}/hang", {})
        # With one slot, this answers only if every failure gave its slot back.
        answer = await asyncio.wait_for(wire.get(f"{server.url}/slow/1", {}), 10)
    finally:
        await wire.aclose()
    assert answer.status == 200


def test_the_proxy_comes_from_the_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert _proxy_for("https://gitlab.example.com/api/v4") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert _proxy_for("https://gitlab.example.com/api/v4") == "http://proxy.internal:3128"
    assert _proxy_for("http://gitlab.example.com/api/v4") is None  # only HTTPS_PROXY set
    monkeypatch.setenv("NO_PROXY", "example.com")
    assert _proxy_for("https://gitlab.example.com/api/v4") is None


@respx.mock
async def test_httpx_wire_maps_transport_errors_without_the_url() -> None:
    respx.get("https://gitlab.example.com/api/v4/user").mock(
        side_effect=httpx.ConnectError("refused: https://gitlab.example.com/?private_token=S")
    )
    async with httpx.AsyncClient() as http:
        wire = HttpxWire(http, _settings())
        with pytest.raises(WireError) as err:
            await wire.get("https://gitlab.example.com/api/v4/user", {})
    assert str(err.value) == "ConnectError"
