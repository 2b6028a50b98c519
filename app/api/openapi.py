"""OpenAPI extras: the two ways to authenticate, shown on the routes that need them."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer <INNGEST_SIGNING_KEY>` (Cloud Scheduler, "
        "Vercel Cron, curl)",
    },
    "inngestSignature": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Inngest-Signature",
        "description": "`t=<unix>&s=<hex>`: HMAC-SHA256 over the RFC 8785 canonical body "
        "followed by t, keyed with the signing key minus its `signkey-<env>-` prefix",
    },
}

# Either scheme is enough (a list of alternatives).
SIGNED: dict[str, Any] = {"security": [{"bearer": []}, {"inngestSignature": []}]}


def install_security_schemes(app: FastAPI) -> None:
    """Add the schemes to the generated schema (routes name them with `openapi_extra=SIGNED`)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
