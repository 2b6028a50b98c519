"""The shared GitLab transport: the instance-wide in-flight cap and the cookieless client."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from app.gitlab.transport import InstanceLimit, create_http_client
from app.settings import Settings


class SlowTransport(httpx.AsyncBaseTransport):
    """Answers after a few loop turns and records how many requests it held at once."""

    def __init__(self, fail_paths: frozenset[str] = frozenset()) -> None:
        self.active = 0
        self.peak = 0
        self.fail_paths = fail_paths

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            for _ in range(3):
                await asyncio.sleep(0)
            if request.url.path in self.fail_paths:
                raise httpx.ConnectError("refused")
        finally:
            self.active -= 1
        return httpx.Response(200, stream=Body(self), headers={"Set-Cookie": "s=1"})


class Body(httpx.AsyncByteStream):
    """A body still 'on the wire' until read: it counts as in flight."""

    def __init__(self, transport: SlowTransport) -> None:
        self.transport = transport
        transport.active += 1
        transport.peak = max(transport.peak, transport.active)

    async def __aiter__(self):  # type: ignore[override]
        await asyncio.sleep(0)
        yield b"[]"

    async def aclose(self) -> None:
        self.transport.active -= 1


async def test_the_cap_holds_across_requests_and_bodies() -> None:
    inner = SlowTransport()
    async with httpx.AsyncClient(transport=InstanceLimit(inner, 3)) as http:
        responses = await asyncio.gather(*(http.get(f"http://gitlab/{i}") for i in range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    assert inner.peak == 3  # a request counts until its body is closed


async def test_a_failed_request_gives_its_slot_back() -> None:
    inner = SlowTransport(fail_paths=frozenset({"/bad"}))
    async with httpx.AsyncClient(transport=InstanceLimit(inner, 1)) as http:
        for _ in range(3):
            with pytest.raises(httpx.ConnectError):
                await http.get("http://gitlab/bad")
        assert (await http.get("http://gitlab/ok")).status_code == 200


async def test_the_shared_client_keeps_no_cookies() -> None:
    http = create_http_client(Settings(_env_file=None))  # type: ignore[call-arg]
    try:
        http._transport = InstanceLimit(SlowTransport(), 2)  # no network in unit tests
        await http.get("http://gitlab/one")
        assert not http.cookies
        request = http.build_request("GET", "http://gitlab/two")
        assert "cookie" not in request.headers
    finally:
        await http.aclose()
