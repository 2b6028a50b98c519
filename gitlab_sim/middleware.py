"""Raw ASGI layer in front of the GitLab-shaped routes: latency, rate limits, faults, and the
request log. Raw ASGI (not Starlette middleware) because a dropped connection must be
produced by starting a response and abandoning it, which only the bare protocol allows.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qsl

from gitlab_sim.api import fast_listing, token_from_headers
from gitlab_sim.faults import FaultSpec
from gitlab_sim.world import World

Scope = dict[str, Any]


class RateLimiter:
    """Per-token requests per minute in fixed one-minute windows, like GitLab's throttles."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[int, int]] = {}

    def hit(self, key: str, limit: int) -> tuple[bool, dict[str, str], int]:
        now = time.time()
        window = int(now // 60)
        with self._lock:
            w, count = self._windows.get(key, (window, 0))
            count = count + 1 if w == window else 1
            self._windows[key] = (window, count)
        reset = (window + 1) * 60
        headers = {
            "RateLimit-Name": "throttle_authenticated_api",
            "RateLimit-Limit": str(limit),
            "RateLimit-Observed": str(count),
            "RateLimit-Remaining": str(max(limit - count, 0)),
            "RateLimit-Reset": str(reset),
        }
        return count > limit, headers, max(math.ceil(reset - now), 1)


class _DropFilter(logging.Filter):
    # A "drop" fault makes uvicorn log an error by design; keep test output clean.
    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing response" not in record.getMessage()


logging.getLogger("uvicorn.error").addFilter(_DropFilter())


class GitLabLayer:
    def __init__(self, app: Any, world: World) -> None:
        self.app = app
        self.world = world
        self.limiter = RateLimiter()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (
            path.startswith("/api/v4") or path.startswith("/oauth/")
        ):
            await self.app(scope, receive, send)  # /_sim and anything else: untouched
            return
        world = self.world
        method = scope["method"]
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        token = token_from_headers(headers, query)
        rec = world.token_record(token) if token else None
        username = world.users[rec.user_id].username if rec is not None else None
        status: list[int] = [0]
        fault: FaultSpec | None = None

        cfg = world.config
        limited, rl_headers, retry_after = self.limiter.hit(
            f"token:{token}" if token else f"ip:{(scope.get('client') or ('?',))[0]}",
            cfg.rate_limit_per_minute,
        )
        extra = [(k.encode(), v.encode()) for k, v in rl_headers.items()]

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = dict(message, headers=list(message.get("headers", [])) + extra)
            await send(message)

        try:
            if cfg.latency_ms > 0:
                await asyncio.sleep(cfg.latency_ms / 1000)
            if limited:
                await _send(
                    send_with_headers,
                    429,
                    b'{"message":"Retry later"}',
                    "application/json",
                    {
                        "Retry-After": str(retry_after),
                        "RateLimit-ResetTime": _http_date(retry_after),
                    },
                )
                return
            fault = world.faults.pick(method, path, query)
            fast = fast_listing(scope, self.app) if fault is None else None
            if fast is not None:
                await fast(scope, receive, send_with_headers)
            elif fault is None:
                await self.app(scope, receive, send_with_headers)
            else:
                await self._apply(fault, scope, receive, send_with_headers)
        finally:
            world.request_log.record(
                method,
                path,
                query,
                status[0],
                username=username,
                fault=fault.kind if fault else None,
            )

    async def _apply(self, f: FaultSpec, scope: Scope, receive: Any, send: Any) -> None:
        if f.kind == "empty":
            # A listing that looks complete: one page, nothing on it, no next link.
            pages = {"x-page": "1", "x-next-page": "", "x-prev-page": "", "x-total": "0"}
            await _send(send, 200, b"[]", "application/json", pages)
        elif f.kind == "status":
            if f.status == 403 and f.forbidden_reason == "forbidden":
                body, ctype = b'{"message":"403 Forbidden"}', "application/json"
            elif f.status == 403:
                # A token without the read_api/api scope (GitLab's own body).
                body = (
                    b'{"error":"insufficient_scope","error_description":"The request requires'
                    b' higher privileges than provided by the access token.",'
                    b'"scope":"api read_api"}'
                )
                ctype = "application/json"
            elif f.status == 500:
                body, ctype = b'{"message":"500 Internal Server Error"}', "application/json"
            else:
                # 502/503 come from the proxy in front of GitLab: HTML, not JSON.
                reason = {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
                text = f"<html><body><h1>{f.status} {reason[f.status]}</h1></body></html>"
                body, ctype = text.encode(), "text/html"
            await _send(send, f.status, body, ctype)
        elif f.kind == "rate_limit":
            retry = (
                _http_date(f.retry_after) if f.retry_after_format == "date" else str(f.retry_after)
            )
            if f.body_format == "text":
                body, ctype = b"Retry later\n", "text/plain"
            else:
                body, ctype = b'{"message":"Retry later"}', "application/json"
            extra = {"Retry-After": retry, "RateLimit-ResetTime": _http_date(f.retry_after)}
            await _send(send, 429, body, ctype, extra)
        elif f.kind == "slow":
            await asyncio.sleep(f.delay)
            await self.app(scope, receive, send)
        elif f.kind == "drop":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", b"4096"),
                    ],
                }
            )
            await send(
                {"type": "http.response.body", "body": b'[{"id": 1, "iid"', "more_body": True}
            )
            # Returning now, short of the announced length, makes the server close the socket.
        else:
            start, body = await _capture(self.app, scope, receive)
            if f.kind == "malformed":
                body = b'[{"id": 1, "title": \'not json\',, }'
            else:
                body = body[: max(len(body) // 2, 1)] if len(body) > 1 else b"["
            hdrs = [
                (k, v)
                for k, v in start.get("headers", [])
                if k.lower() not in (b"content-length", b"content-type")
            ]
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": hdrs
                    + [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})


async def _capture(app: Any, scope: Scope, receive: Any) -> tuple[dict[str, Any], bytes]:
    start: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def capture(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, capture)
    return start, b"".join(chunks)


async def _send(
    send: Any, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None
) -> None:
    hdrs = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]
    hdrs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


def _http_date(seconds_from_now: float) -> str:
    return formatdate(time.time() + seconds_from_now, usegmt=True)
