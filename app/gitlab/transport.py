"""The wire under the GitLab client: send one GET, return (status, headers, body) or raise
WireError. Nothing here decides anything about an answer (sansio.py does).

`AiohttpWire` carries every GitLab API request of the service, straight on aiohttp's
connection pool: a poll is thousands of small GETs, and httpx's request/URL/stream objects
on top of a pool cost about as much CPU again as the pool itself. It holds one cap on the
requests in flight to the instance across all users (GITLAB_MAX_IN_FLIGHT, body reading
included), so a small self-managed GitLab is never flooded however many users a poll syncs
at once. It keeps no cookies (the pool is shared by every user's token), never follows
redirects (the token must not travel), and honours HTTP(S)_PROXY / NO_PROXY as httpx did.

`HttpxWire` sends through any `httpx.AsyncClient`: the unit tests drive the client's edge
cases through it with respx. `create_http_client` builds the process's httpx client for the
rare calls that are not API listings (OAuth refresh, the OIDC key set).
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import httpx
from yarl import URL

from app import __version__
from app.gitlab.reachability import ConnectFailure, classify_connect_failure
from app.settings import Settings

USER_AGENT = f"gitlab-insights/{__version__}"


@dataclass(frozen=True, slots=True)
class WireResponse:
    status: int
    headers: Mapping[str, str]  # case-insensitive lookup
    body: bytes


class WireError(Exception):
    """No answer: connection refused or reset, timeout, a body cut short. The message is the
    exception's class name only (a library's own message may carry the URL and its query);
    `connect_failure` says why no connection could be made, if that was it (reachability.py)."""

    def __init__(self, message: str, *, connect_failure: ConnectFailure | None = None) -> None:
        self.connect_failure = connect_failure
        super().__init__(message)

    @classmethod
    def from_exception(cls, exc: BaseException) -> WireError:
        return cls(type(exc).__name__, connect_failure=classify_connect_failure(exc))


class GitLabWire(Protocol):
    async def get(self, url: str, headers: Mapping[str, str]) -> WireResponse:
        """GET `url` (already percent-encoded); WireError when no complete answer came."""
        ...


class HttpxWire:
    """A GitLabWire over an httpx client (tests with respx; callers holding only httpx)."""

    def __init__(self, http: httpx.AsyncClient, settings: Settings) -> None:
        self._http = http
        timeout = httpx.Timeout(
            settings.gitlab_read_timeout, connect=settings.gitlab_connect_timeout
        )
        self._extensions = {"timeout": timeout.as_dict()}
        self._ua = http.headers.get("user-agent") or USER_AGENT

    async def get(self, url: str, headers: Mapping[str, str]) -> WireResponse:
        request = httpx.Request(
            "GET", url, headers={"User-Agent": self._ua, **headers}, extensions=self._extensions
        )
        try:
            response = await self._http.send(request)
            body = response.content
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise WireError.from_exception(exc) from None
        return WireResponse(response.status_code, response.headers, body)


def _proxy_for(url: str) -> str | None:
    """The HTTP(S)_PROXY that applies to the instance, read once (NO_PROXY honoured)."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):  # NO_PROXY
        return None
    return proxy


class AiohttpWire:
    """The service's GitLabWire (see the module docstring). Its session is created on first
    use, inside the running loop (aiohttp binds its pool to it); `aclose` ends it."""

    def __init__(self, settings: Settings) -> None:
        self._max_in_flight = settings.gitlab_max_in_flight
        self._slots = asyncio.Semaphore(self._max_in_flight)
        # Connect and per-read timeouts like httpx's; no total (a long page may take a while
        # as long as bytes keep coming).
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=settings.gitlab_connect_timeout,
            sock_connect=settings.gitlab_connect_timeout,
            sock_read=settings.gitlab_read_timeout,
        )
        self._proxy = _proxy_for(settings.gitlab_api_url)
        # Built here, at start-up (~10-30 ms), not by the first request of the first poll.
        https = settings.gitlab_api_url.startswith("https:")
        self._ssl = httpx.create_ssl_context() if https else True
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # One connection per request in flight; idle ones kept for the next user's pages.
        connector = aiohttp.TCPConnector(limit=self._max_in_flight, ssl=self._ssl)
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": USER_AGENT},
            timeout=self._timeout,
            trust_env=False,  # the proxy is chosen once in __init__, not per request
        )
        return self._session

    async def get(self, url: str, headers: Mapping[str, str]) -> WireResponse:
        session = self._session or self._open()
        # encoded=True: the client built a percent-encoded URL; yarl need not parse it again.
        target = URL(url, encoded=True)
        async with self._slots:  # held until the body is read: a body on the wire counts
            try:
                async with session.get(
                    target, headers=headers, allow_redirects=False, proxy=self._proxy
                ) as response:
                    body = await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise WireError.from_exception(exc) from None
        return WireResponse(response.status, response.headers, body)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class _CookielessClient(httpx.AsyncClient):
    """An httpx client that never stores cookies: it is shared by every user, so a cookie
    GitLab (or a proxy in front of it) sets for one token must not ride along with another
    user's requests."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._no_cookies = _NoCookies()

    @property  # type: ignore[misc]  # read-only: there is nothing to set
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies


def create_http_client(settings: Settings) -> httpx.AsyncClient:
    """The process's httpx client for OAuth refreshes and the OIDC key set."""
    return _CookielessClient(
        timeout=httpx.Timeout(
            connect=settings.gitlab_connect_timeout,
            read=settings.gitlab_read_timeout,
            write=settings.gitlab_read_timeout,
            pool=settings.gitlab_read_timeout,
        ),
        headers={"User-Agent": USER_AGENT},
        follow_redirects=False,
    )
