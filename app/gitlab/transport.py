"""The HTTP transport of all GitLab traffic: one shared `httpx.AsyncClient` per process.

The client keeps httpx's API (requests, responses, errors, respx in tests) but sends through
aiohttp's connection pool (`httpx-aiohttp`): httpcore's pool did work proportional to its
connection count on every request (a readability check of each idle socket, a quadratic
scan), which needed a hand-made sharded transport and still cost about half of a poll's CPU.
In front of it, one cap on the requests in flight to the GitLab instance across all users
(GITLAB_MAX_IN_FLIGHT), so a small self-managed GitLab is never flooded however many users
a poll syncs at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from app import __version__
from app.settings import Settings


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that gives its in-flight slot back once it is closed."""

    def __init__(self, inner: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


class InstanceLimit(httpx.AsyncBaseTransport):
    """At most `max_in_flight` requests to the instance at once, body reading included.

    A request waits for a slot before it is sent (no timeout runs while it waits: every
    request holding a slot has its own), and gives it back when its response is closed,
    which httpx does right after reading the body.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, max_in_flight: int) -> None:
        self._inner = inner
        self._slots = asyncio.Semaphore(max_in_flight)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._slots.acquire()
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            self._slots.release()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _ReleasingStream(response.stream, self._slots.release)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class _NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class _CookielessClient(httpx.AsyncClient):
    """An httpx client that never stores cookies: the client is shared by every user, so a
    cookie GitLab (or a proxy in front of it) sets for one token must not ride along with
    another user's requests. It also skips httpx's per-response cookie parsing through the
    standard library's CookieJar (about 8 % of a poll's CPU)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._no_cookies = _NoCookies()

    @property  # type: ignore[misc]  # read-only: there is nothing to set
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies


def create_http_client(settings: Settings) -> httpx.AsyncClient:
    """One client for all GitLab traffic (keep-alive across users and pages)."""
    max_in_flight = settings.gitlab_max_in_flight
    ssl_context = httpx.create_ssl_context()  # shared: building one costs ~10 ms

    def session() -> aiohttp.ClientSession:
        # Created on first use, inside the running loop (aiohttp binds its pool to it).
        # One connection per request in flight; idle ones kept for the next user's pages.
        connector = aiohttp.TCPConnector(limit=max_in_flight, ssl=ssl_context)
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    return _CookielessClient(
        timeout=httpx.Timeout(
            connect=settings.gitlab_connect_timeout,
            read=settings.gitlab_read_timeout,
            write=settings.gitlab_read_timeout,
            pool=settings.gitlab_read_timeout,
        ),
        transport=InstanceLimit(AiohttpTransport(client=session), max_in_flight),
        headers={"User-Agent": f"gitlab-insights/{__version__}"},
        follow_redirects=False,
    )
