"""OIDC test helpers: RSA keys generated in the test, Google-like ID tokens, forged tokens, and
a JWKS server on 127.0.0.1 whose keys, Cache-Control and availability the test controls."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from jwt.algorithms import RSAAlgorithm

AUDIENCE = "https://insights.example.com"
SERVICE_ACCOUNT = "poller@insights-prod.iam.gserviceaccount.com"
ISSUER = "https://accounts.google.com"
NOW = 1_900_000_000  # a fixed "now" for tests that inject the clock


@dataclass
class RsaKey:
    kid: str
    private: rsa.RSAPrivateKey

    @classmethod
    def generate(cls, kid: str | None = None, bits: int = 2048) -> RsaKey:
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        return cls(kid or uuid.uuid4().hex, private)

    @property
    def public(self) -> rsa.RSAPublicKey:
        return self.private.public_key()

    def jwk(self) -> dict[str, Any]:
        data = json.loads(RSAAlgorithm.to_jwk(self.public))
        return {**data, "kid": self.kid, "alg": "RS256", "use": "sig"}

    def public_pem(self) -> bytes:
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def claims(now: float = NOW, **overrides: Any) -> dict[str, Any]:
    """What Cloud Scheduler's Google ID token carries."""
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "azp": "112233445566778899000",
        "sub": "112233445566778899000",
        "email": SERVICE_ACCOUNT,
        "email_verified": True,
        "iat": int(now),
        "exp": int(now) + 3600,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: RsaKey, payload: dict[str, Any], **header: Any) -> str:
    """An RS256 token signed with `key`; header fields given as None are left out."""
    fields = {k: v for k, v in {"kid": key.kid, **header}.items() if v is not None}
    return jwt.encode(payload, key.private, algorithm="RS256", headers=fields)


def sign_header(key: RsaKey, header: dict[str, Any], payload: dict[str, Any]) -> str:
    """An RS256 token whose header is exactly `header`: PyJWT's encode rewrites some fields
    (it drops `b64: true`), and an issuer or an attacker need not."""
    signing_input = f"{_segment(header)}.{_segment(payload)}"
    signature = key.private.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64(signature)}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _segment(obj: dict[str, Any]) -> str:
    return _b64(json.dumps(obj, separators=(",", ":")).encode())


def forge_none(payload: dict[str, Any], kid: str) -> str:
    """An unsigned token (`alg: none`), as an attacker writes it."""
    return f"{_segment({'alg': 'none', 'typ': 'JWT', 'kid': kid})}.{_segment(payload)}."


def forge_hs256(payload: dict[str, Any], key: RsaKey) -> str:
    """Algorithm confusion: HS256 keyed with the *public* key's PEM (which anyone can fetch)."""
    signing_input = (
        f"{_segment({'alg': 'HS256', 'typ': 'JWT', 'kid': key.kid})}.{_segment(payload)}"
    )
    mac = hmac.new(key.public_pem(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def tamper(token: str, **changes: Any) -> str:
    """The token with its payload changed and the original signature kept."""
    header, payload, signature = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data.update(changes)
    return f"{header}.{_segment(data)}.{signature}"


@dataclass
class JWKSServer:
    """Serves `keys` as a JWKS at `url`; `down` answers 503; `requests` counts the fetches."""

    keys: list[RsaKey] = field(default_factory=list)
    cache_control: str | None = "public, max-age=3600, must-revalidate, no-transform"
    down: bool = False
    requests: int = 0

    def __post_init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                with server._lock:
                    server.requests += 1
                    down, keys, cache = server.down, list(server.keys), server.cache_control
                if down:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps({"keys": [k.jwk() for k in keys]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                if cache is not None:
                    self.send_header("Cache-Control", cache)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/oauth2/v3/certs"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> JWKSServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


class FakeClock:
    """Unix seconds that move only when the test says so."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
