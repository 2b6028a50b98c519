"""OpenAPI extras: the ways to authenticate, shown on the routes that need them, and the
documented examples kept as written."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel

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


def install_openapi_extras(app: FastAPI, routers: Sequence[APIRouter]) -> None:
    """The generated schema plus the authentication schemes (routes name them with
    `openapi_extra=SIGNED`) and the examples of `routers` as written, nulls included."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
            for router in routers:
                restore_examples(router, schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def restore_examples(router: APIRouter, schema: dict[str, Any]) -> None:
    """FastAPI drops every null from the schema it generates, examples included, so an
    example would lack the fields a real answer carries as null (`reason`, `error`,
    `shard`...). Put back the router's response examples and its response models' own."""
    paths = schema.get("paths", {})
    components = schema.get("components", {}).get("schemas", {})
    for route in router.routes:
        if not isinstance(route, APIRoute):
            continue
        models = [route.response_model]
        for method in route.methods or ():
            operation = paths.get(router.prefix + route.path_format, {}).get(method.lower(), {})
            documented = operation.get("responses", {})
            for code, spec in route.responses.items():
                models.append(spec.get("model"))
                for media, content in spec.get("content", {}).items():
                    if "example" in content and str(code) in documented:
                        documented[str(code)]["content"][media]["example"] = content["example"]
        for model in models:
            if isinstance(model, type) and issubclass(model, BaseModel):
                examples = model.model_json_schema().get("examples")
                if examples is not None and model.__name__ in components:
                    components[model.__name__]["examples"] = examples
