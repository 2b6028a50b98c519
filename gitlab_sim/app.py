"""Assemble the simulator: FastAPI routes behind the GitLab layer (latency, limits, faults)."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gitlab_sim import api, control
from gitlab_sim.middleware import GitLabLayer
from gitlab_sim.world import SimError, World


def _is_gitlab_path(request: Request) -> bool:
    return not request.url.path.startswith("/_sim")


def create_fastapi(world: World) -> FastAPI:
    app = FastAPI(title="GitLab simulator", docs_url="/_sim/docs", openapi_url="/_sim/openapi.json")
    app.state.world = world
    app.include_router(control.router)
    app.include_router(api.router)

    @app.exception_handler(api.ApiError)
    async def _api_error(request: Request, exc: api.ApiError) -> JSONResponse:
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(SimError)
    async def _sim_error(request: Request, exc: SimError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(ValueError)
    async def _value_error(request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if _is_gitlab_path(request):
            # GitLab's unknown-route answer is {"error": "404 Not Found"}.
            phrase = HTTPStatus(exc.status_code).phrase
            return JSONResponse(
                {"error": f"{exc.status_code} {phrase}"}, status_code=exc.status_code
            )
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "invalid body", "detail": exc.errors()}, status_code=422)

    return app


def create_app(world: World) -> Any:
    """The ASGI app to serve: GitLab API v4 under /api/v4, OAuth under /oauth, control /_sim."""
    return GitLabLayer(create_fastapi(world), world)
