"""The HTTP transport of all GitLab traffic: one shared `httpx.AsyncClient` per process."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from app import __version__
from app.settings import Settings

# Request extension naming the in-flight slot ("lane", 0..GITLAB_USER_CONCURRENCY-1) a request
# holds: the transport gives each lane its own small connection pool.
LANE_EXTENSION = "gitlab_insights.lane"


class ShardedTransport(httpx.AsyncBaseTransport):
    """Connection pools sharded by the request's credentials (in practice: by user) and lane.

    httpcore's pool does work proportional to its connection count on every request and
    response (a readability check, i.e. a poll() and a getpeername(), of each idle socket,
    plus a scan quadratic in the number of connections), so one pool sized for
    POLL_CONCURRENCY x GITLAB_USER_CONCURRENCY connections spent most of a busy poll's CPU
    managing itself. A request goes to the pool of (its credentials' group, its lane): the
    GitLab client gives each of a user's in-flight requests its own lane, so a pool
    normally holds one connection. Pools live as long as the client, so keep-alive
    connections carry over from one user to the next as before. Every pool has the old
    pool's limits, so a hash collision never blocks.
    """

    def __init__(self, groups: int, factory: Callable[[], httpx.AsyncHTTPTransport]) -> None:
        self._groups = groups
        self._factory = factory
        self._shards: dict[tuple[int, int], httpx.AsyncHTTPTransport] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        group = hash(request.headers.get("authorization", "")) % self._groups
        key = (group, request.extensions.get(LANE_EXTENSION, -1))
        shard = self._shards.get(key)
        if shard is None:
            shard = self._shards[key] = self._factory()
        return await shard.handle_async_request(request)

    async def aclose(self) -> None:
        for shard in list(self._shards.values()):
            await shard.aclose()


def create_http_client(settings: Settings) -> httpx.AsyncClient:
    """One client for all GitLab traffic (keep-alive across users and pages)."""
    in_flight = settings.poll_concurrency * settings.gitlab_user_concurrency
    limits = httpx.Limits(
        max_connections=max(100, in_flight), max_keepalive_connections=max(20, in_flight)
    )
    ssl_context = httpx.create_ssl_context()  # shared: building one costs ~10 ms
    transport = ShardedTransport(
        4 * settings.poll_concurrency,
        lambda: httpx.AsyncHTTPTransport(verify=ssl_context, limits=limits),
    )
    return httpx.AsyncClient(
        timeout=httpx.Timeout(
            connect=settings.gitlab_connect_timeout,
            read=settings.gitlab_read_timeout,
            write=settings.gitlab_read_timeout,
            pool=settings.gitlab_read_timeout,
        ),
        transport=transport,
        headers={"User-Agent": f"gitlab-insights/{__version__}"},
        follow_redirects=False,
    )
