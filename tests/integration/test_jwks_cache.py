"""app/auth/jwks.py against a JWKS server on 127.0.0.1: caching by Cache-Control, refetch on
an unknown kid at most once a minute (also under a burst), fail closed. Time is a fake clock."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from app.auth import jwks as jwks_module
from app.auth.jwks import (
    DEFAULT_CACHE_SECONDS,
    MAX_CACHE_SECONDS,
    MIN_CACHE_SECONDS,
    JWKSCache,
    cache_lifetime,
)
from app.security.oidc import KeysUnavailable, UnknownKeyId
from tests.oidc_support import FakeClock, JWKSServer, RsaKey


@pytest.fixture(scope="module")
def key1() -> RsaKey:
    return RsaKey.generate("k1")


@pytest.fixture(scope="module")
def key2() -> RsaKey:
    return RsaKey.generate("k2")


@pytest.fixture
async def http():
    async with httpx.AsyncClient() as client:
        yield client


@pytest.mark.parametrize(
    ("cache_control", "age", "seconds"),
    [
        ("public, max-age=19800, must-revalidate, no-transform", None, 19800),
        ("public, max-age=19800", "800", 19000),
        ('max-age="600"', None, 600),
        ("max-age=5", None, MIN_CACHE_SECONDS),
        ("max-age=99999999", None, MAX_CACHE_SECONDS),
        ("no-store", None, MIN_CACHE_SECONDS),
        ("no-cache, max-age=600", None, MIN_CACHE_SECONDS),
        ("public", None, DEFAULT_CACHE_SECONDS),
        (None, None, DEFAULT_CACHE_SECONDS),
        ("max-age=abc", None, DEFAULT_CACHE_SECONDS),
        ("s-maxage=600", None, DEFAULT_CACHE_SECONDS),
    ],
)
def test_cache_lifetime(cache_control, age, seconds):
    assert cache_lifetime(cache_control, age) == seconds


async def test_keys_are_cached_as_cache_control_says(http, key1, key2):
    clock = FakeClock()
    with JWKSServer(keys=[key1], cache_control="public, max-age=600") as server:
        cache = JWKSCache(server.url, http, clock=clock)
        assert await cache.key_for("k1") is not None
        clock.advance(599)
        await cache.key_for("k1")
        assert server.requests == 1
        # Expired: the next call fetches again and sees the rotated set.
        server.keys = [key2]
        clock.advance(1)
        with pytest.raises(UnknownKeyId):
            await cache.key_for("k1")
        await cache.key_for("k2")
        assert server.requests == 2


async def test_unknown_kid_refetches_at_most_once_a_minute(http, key1, key2):
    clock = FakeClock()
    with JWKSServer(keys=[key1]) as server:
        cache = JWKSCache(server.url, http, clock=clock)
        await cache.key_for("k1")
        server.keys = [key1, key2]  # the issuer publishes a new key
        # Just fetched: an unknown kid does not refetch yet.
        with pytest.raises(UnknownKeyId):
            await cache.key_for("k2")
        assert server.requests == 1
        clock.advance(60)
        assert await cache.key_for("k2") is not None
        assert server.requests == 2
        for _ in range(5):
            with pytest.raises(UnknownKeyId):
                await cache.key_for("forged")
        assert server.requests == 2
        clock.advance(60)
        with pytest.raises(UnknownKeyId):
            await cache.key_for("forged")
        assert server.requests == 3


async def test_a_burst_of_unknown_kids_costs_one_fetch(http, key1):
    clock = FakeClock()
    with JWKSServer(keys=[key1]) as server:
        cache = JWKSCache(server.url, http, clock=clock)
        await cache.key_for("k1")
        clock.advance(3600 - 1)  # still fresh, and a refetch is allowed
        results = await asyncio.gather(
            *(cache.key_for(f"forged-{i}") for i in range(200)), return_exceptions=True
        )
        assert all(isinstance(r, UnknownKeyId) for r in results)
        assert server.requests == 2
        # Cold cache: 200 at once share the one first fetch.
        cold = JWKSCache(server.url, http, clock=clock)
        results = await asyncio.gather(
            *(cold.key_for(f"forged-{i}") for i in range(200)), return_exceptions=True
        )
        assert all(isinstance(r, UnknownKeyId) for r in results)
        assert server.requests == 3


async def test_fail_closed_when_keys_cannot_be_had(http, key1):
    clock = FakeClock()
    with JWKSServer(keys=[key1], cache_control="max-age=600", down=True) as server:
        cache = JWKSCache(server.url, http, clock=clock)
        with pytest.raises(KeysUnavailable) as info:
            await cache.key_for("k1")
        assert info.value.retry_after > 0
        # Within the failure cooldown no new attempt is made.
        with pytest.raises(KeysUnavailable):
            await cache.key_for("k1")
        assert server.requests == 1
        server.down = False
        clock.advance(jwks_module.FAILURE_COOLDOWN_SECONDS)
        await cache.key_for("k1")
        # Expired and the endpoint down again: the stale set is never used.
        server.down = True
        clock.advance(600)
        with pytest.raises(KeysUnavailable):
            await cache.key_for("k1")
        # A fresh set that lacks the kid, and the refetch fails: 503 too (not "bad token").
        server.down = False
        clock.advance(jwks_module.FAILURE_COOLDOWN_SECONDS)
        await cache.key_for("k1")
        server.down = True
        clock.advance(60)
        with pytest.raises(KeysUnavailable):
            await cache.key_for("rotated")


async def test_junk_answers_are_failures(http, key1, monkeypatch):
    clock = FakeClock()
    answers = {
        "not json": httpx.Response(200, content=b"<html>"),
        "no keys": httpx.Response(200, json={"keys": []}),
        "too large": httpx.Response(200, content=b" " * (jwks_module.MAX_JWKS_BYTES + 1)),
        "redirect": httpx.Response(302, headers={"Location": "https://evil.example/"}),
    }
    for name, answer in answers.items():
        transport = httpx.MockTransport(lambda request, a=answer: a)
        async with httpx.AsyncClient(transport=transport) as client:
            cache = JWKSCache("https://keys.example/certs", client, clock=clock)
            with pytest.raises(KeysUnavailable):
                await cache.key_for("k1")
            assert cache.fetches == 1, name
    # A timeout or a refused connection is a failure too, not an exception of its own.
    with JWKSServer(keys=[key1]) as server:
        url = server.url
    cache = JWKSCache(url, http, clock=clock)
    with pytest.raises(KeysUnavailable):
        await cache.key_for("k1")
