"""The issuer's signing keys (a JWKS document), fetched asynchronously and cached.

- Fetched through the process's shared `httpx.AsyncClient` (never a blocking call on the
  event loop), at most `MAX_JWKS_BYTES`, within `FETCH_TIMEOUT_SECONDS`.
- Kept as the answer's `Cache-Control: max-age` says (minus its `Age`), bounded to
  `MIN_CACHE_SECONDS`..`MAX_CACHE_SECONDS`; `DEFAULT_CACHE_SECONDS` without a usable max-age.
- A token naming a `kid` the cached set lacks triggers one refetch, at most once per
  `MIN_REFETCH_INTERVAL_SECONDS` (counted from the last fetch of any kind): a flood of forged
  `kid`s costs at most one fetch a minute, however many arrive at once (one fetch in flight
  at a time; the others wait for it and use its result).
- Fail closed: when no fresh key set can be had (the endpoint is down, answers junk, or has no
  RS256 key), or the refetch for an unknown `kid` fails, `KeysUnavailable` is raised (the API
  answers 503 with Retry-After) and nothing is accepted. An expired set is never used. After a
  failed fetch, new attempts wait `FAILURE_COOLDOWN_SECONDS`.

The clock is injected (`clock`, unix seconds), so tests move time instead of sleeping. A clock
that goes backwards counts as "the cache is stale" rather than extending its life.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from loguru import logger

from app.security.oidc import KeysUnavailable, UnknownKeyId, parse_jwks

Clock = Callable[[], float]

MIN_REFETCH_INTERVAL_SECONDS = 60.0
FAILURE_COOLDOWN_SECONDS = 10.0
DEFAULT_CACHE_SECONDS = 300.0
MIN_CACHE_SECONDS = 60.0
MAX_CACHE_SECONDS = 24 * 3600.0
FETCH_TIMEOUT_SECONDS = 10.0
MAX_JWKS_BYTES = 256 * 1024
# Retry-After of the 503 answered while no keys can be had.
RETRY_AFTER_SECONDS = 30

_MAX_AGE_RE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d{1,10})\"?\s*(?:,|$)", re.IGNORECASE)
_NO_CACHE_RE = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\s*(?:[,=]|$)", re.IGNORECASE)


def cache_lifetime(cache_control: str | None, age: str | None = None) -> float:
    """Seconds to keep a JWKS answer, from its Cache-Control and Age headers. Pure.

    `max-age=N` minus `Age`, within MIN_CACHE_SECONDS..MAX_CACHE_SECONDS; `no-store` or
    `no-cache` -> MIN_CACHE_SECONDS (the floor keeps a misconfigured issuer from costing a
    fetch per request); no usable max-age -> DEFAULT_CACHE_SECONDS.
    """
    text = cache_control or ""
    if _NO_CACHE_RE.search(text):
        return MIN_CACHE_SECONDS
    m = _MAX_AGE_RE.search(text)
    if m is None:
        return DEFAULT_CACHE_SECONDS
    seconds = float(m.group(1))
    if age is not None and age.strip().isdigit():
        seconds -= float(age.strip())
    return min(max(seconds, MIN_CACHE_SECONDS), MAX_CACHE_SECONDS)


class _FetchFailed(Exception):
    """A fetch brought no usable key set; the message is for the log (no secrets in it)."""


@dataclass(frozen=True, slots=True)
class _KeySet:
    keys: dict[str, Any]
    fetched_at: float
    expires_at: float

    def fresh(self, now: float) -> bool:
        return self.fetched_at <= now < self.expires_at


class JWKSCache:
    """The key set of one JWKS URL; `key_for(kid)` is all callers need."""

    def __init__(
        self,
        url: str,
        http: httpx.AsyncClient,
        *,
        clock: Clock = time.time,
        min_refetch_interval: float = MIN_REFETCH_INTERVAL_SECONDS,
        failure_cooldown: float = FAILURE_COOLDOWN_SECONDS,
    ) -> None:
        self.url = url
        self._http = http
        self._clock = clock
        self._min_refetch_interval = min_refetch_interval
        self._failure_cooldown = failure_cooldown
        self._lock = asyncio.Lock()
        self._set: _KeySet | None = None
        self._last_attempt: float | None = None
        self._last_failure: float | None = None
        self.fetches = 0  # fetch attempts so far (logs, tests)

    async def key_for(self, kid: str) -> Any:
        """The public key of `kid`; UnknownKeyId if the issuer does not publish it,
        KeysUnavailable if no fresh key set can be had."""
        current = self._set
        if current is not None and current.fresh(self._clock()) and kid in current.keys:
            return current.keys[kid]  # the common case: no lock, no fetch
        async with self._lock:
            # Whoever waited here may find the set another request just fetched.
            now = self._clock()
            current = self._set
            if current is None or not current.fresh(now):
                current = await self._refresh(now)
            elif kid not in current.keys and self._may_refetch(now):
                logger.bind(jwks_url=self.url).info("unknown OIDC key id: refetching the keys")
                current = await self._refresh(now)
            key = current.keys.get(kid)
        if key is None:
            raise UnknownKeyId()
        return key

    def _may_refetch(self, now: float) -> bool:
        last = self._last_attempt
        return last is None or now < last or now - last >= self._min_refetch_interval

    async def _refresh(self, now: float) -> _KeySet:
        """Fetch a new set and keep it; fail closed (KeysUnavailable) if that is impossible."""
        failed = self._last_failure
        if failed is not None and failed <= now < failed + self._failure_cooldown:
            raise KeysUnavailable(RETRY_AFTER_SECONDS)
        self._last_attempt = now
        self.fetches += 1
        log = logger.bind(jwks_url=self.url)
        try:
            keys, lifetime = await self._fetch()
        except _FetchFailed as exc:
            self._last_failure = now
            log.warning("OIDC signing keys could not be fetched: {}", exc)
            # Also when a fresh set is cached but lacks the token's kid: that key cannot be
            # had now, so the caller is told to come back rather than that its token is bad.
            raise KeysUnavailable(RETRY_AFTER_SECONDS) from None
        self._last_failure = None
        self._set = _KeySet(keys=keys, fetched_at=now, expires_at=now + lifetime)
        log.bind(keys=len(keys), cache_seconds=lifetime).info("OIDC signing keys fetched")
        return self._set

    async def _fetch(self) -> tuple[dict[str, Any], float]:
        try:
            async with self._http.stream(
                "GET",
                self.url,
                headers={"Accept": "application/json"},
                timeout=FETCH_TIMEOUT_SECONDS,
            ) as response:
                if response.status_code != 200:
                    raise _FetchFailed(f"HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise _FetchFailed(f"answer larger than {MAX_JWKS_BYTES} bytes")
                lifetime = cache_lifetime(
                    response.headers.get("cache-control"), response.headers.get("age")
                )
        except httpx.HTTPError as exc:
            raise _FetchFailed(type(exc).__name__) from None
        try:
            keys = parse_jwks(json.loads(bytes(body).decode("utf-8")))
        except ValueError as exc:  # also UnicodeDecodeError and JSONDecodeError
            raise _FetchFailed(f"not a usable JWKS document ({type(exc).__name__})") from None
        return keys, lifetime
