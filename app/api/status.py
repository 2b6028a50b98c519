"""Health, readiness, sync status and Prometheus metrics."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import async_sessionmaker

from app import metrics
from app.api.deps import get_sessionmaker, require_caller
from app.api.errors import DATABASE_RETRY_AFTER_SECONDS, ErrorBody, error_responses
from app.api.openapi import SIGNED
from app.db import repository as repo
from app.db.profile import Flavour
from app.sync.results import RunAuth

router = APIRouter()

SessionmakerDep = Annotated[async_sessionmaker, Depends(get_sessionmaker)]


@router.get("/healthz", tags=["health"], summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


class Ready(BaseModel):
    status: str = "ok"
    database: str = "ok"
    schema_: Flavour = Field(
        alias="schema",
        description=(
            "Which version of the original app's schema the database has: story (story "
            "3.5's, also a database this service created), newest (work-item columns, comment "
            "threads, Person), partial (some of those); see README, Adopting"
        ),
    )
    schema_detail: str = Field(description="The flavour, and what a partial schema lacks")


class NotReady(ErrorBody):
    status: str = "unavailable"
    database: str = Field(description="The class of the error the database raised")


@router.get(
    "/readyz",
    tags=["health"],
    summary="The database is reachable",
    responses={
        200: {"model": Ready, "description": "Ready, with the schema flavour found"},
        503: {
            "model": NotReady,
            "description": "Database unreachable (with Retry-After)",
            "content": {
                "application/json": {
                    "example": {
                        "error": "database_unavailable",
                        "detail": "the database is unreachable (OperationalError)",
                        "status": "unavailable",
                        "database": "OperationalError",
                    }
                }
            },
        },
    },
)
async def readyz(sessionmaker: SessionmakerDep) -> JSONResponse:
    try:
        async with sessionmaker() as s:
            await repo.ping(s)
            profile = await repo.read_schema_profile(s)
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        name = type(exc).__name__
        body = NotReady(
            error="database_unavailable",
            detail=f"the database is unreachable ({name})",
            status="unavailable",
            database=name,
        )
        return JSONResponse(
            body.model_dump(exclude_none=True),
            status_code=503,
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        )
    ready = Ready(schema=profile.flavour, schema_detail=profile.describe())
    return JSONResponse(ready.model_dump(by_alias=True))


class ProjectSyncStatus(BaseModel):
    gitlab_project_id: str
    name: str
    path: str
    cursor_at: datetime | None = Field(description="Everything updated before this is stored")
    last_success_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    # --- access loss and reconciliation (README: "Access and deletions") ---------------
    access_lost_at: datetime | None = Field(
        None,
        description="The user can no longer read the project: its events were removed then "
        "(cleared once access returns and the project is backfilled)",
    )
    access_check_at: datetime | None = Field(
        None, description="First run that found the project refused; a second one confirms"
    )
    reconciled_at: datetime | None = Field(None, description="Last completed reconciliation")
    reconcile_due_at: datetime | None = Field(None, description="Next reconciliation")
    reconcile_held_at: datetime | None = Field(
        None,
        description="A reconciliation held back a big removal: the next one must find the same",
    )


class UserSyncStatus(BaseModel):
    user_id: str
    email: str | None
    last_sync_at: datetime | None
    projects: list[ProjectSyncStatus]


class RecentRuns(BaseModel):
    count: int
    successful: int
    success_rate: float | None = Field(description="successful / count over recent runs")
    last_run_at: datetime | None
    last_success_at: datetime | None


class SyncStatus(BaseModel):
    users: list[UserSyncStatus]
    recent_runs: RecentRuns


@router.get(
    "/api/sync-status",
    tags=["status"],
    summary="Last sync per user, each project's cursor and last error, recent run success",
    response_model=SyncStatus,
    responses=error_responses(401, 422, 503),
    openapi_extra=SIGNED,
)
async def sync_status(
    request: Request,
    sessionmaker: SessionmakerDep,
    _caller: Annotated[RunAuth, Depends(require_caller)],
    # No NUL: PostgreSQL text cannot hold it (the query would fail with a 500).
    user_id: Annotated[str | None, Query(max_length=200, pattern=r"^[^\x00]*$")] = None,
) -> SyncStatus:
    async with sessionmaker() as s:
        users = await repo.sync_status(s, user_id)
        runs = await repo.recent_runs(s, limit=50)
    finished = [r for r in runs if r.finished_at is not None]
    ok = [r for r in finished if r.success]
    return SyncStatus(
        users=[
            UserSyncStatus(
                user_id=u.user_id,
                email=u.email,
                last_sync_at=u.last_sync_at,
                projects=[ProjectSyncStatus(**asdict(p)) for p in u.projects],
            )
            for u in users
        ],
        recent_runs=RecentRuns(
            count=len(finished),
            successful=len(ok),
            success_rate=(len(ok) / len(finished)) if finished else None,
            last_run_at=runs[0].started_at if runs else None,
            last_success_at=ok[0].finished_at if ok else None,
        ),
    )


@router.get("/metrics", tags=["status"], summary="Prometheus metrics", response_class=Response)
async def prometheus_metrics() -> Response:
    return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
