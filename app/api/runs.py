"""GET /api/runs: the poll run history, newest first, a page at a time."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import async_sessionmaker

from app.api.deps import get_sessionmaker, require_caller
from app.api.errors import error_responses
from app.api.openapi import SIGNED
from app.db import repository as repo
from app.sync.results import TRIGGER_DESCRIPTION, RunAuth, TriggerName, run_auth

router = APIRouter(tags=["status"])

SessionmakerDep = Annotated[async_sessionmaker, Depends(get_sessionmaker)]


class Run(BaseModel):
    run_id: str
    trigger: TriggerName = Field(description=TRIGGER_DESCRIPTION)
    auth: RunAuth | None = Field(
        None,
        description="How the caller authenticated, as in the /api/poll answer; null for CLI "
        "runs (and runs recorded before it was kept)",
    )
    started_at: datetime
    finished_at: datetime | None = Field(description="null while running, or if it crashed")
    duration_ms: int | None
    success: bool | None
    status_code: int | None = Field(description="What /api/poll answered: 200 or 503")
    total: int
    processed: int
    failed: int
    skipped: int
    skipped_reasons: dict[str, int] | None = Field(
        None,
        description='Users skipped per reason, as /api/poll answers (e.g. {"fresh": 1}); '
        "null while running and for runs recorded before this was kept",
    )
    events_stored: int
    events_updated: int
    error: str | None = Field(description="Why the run could not run (503), else null")


class RunPage(BaseModel):
    runs: list[Run]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (older) page; null on the last page"
    )


def _encode_cursor(run: repo.RunRecord) -> str:
    raw = f"{run.started_at.isoformat()}|{run.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, run_id = raw.split("|", 1)
        started = datetime.fromisoformat(at)
        # Naive means UTC, as stored; out-of-range instants fail here, not in the database.
        started = started.replace(tzinfo=started.tzinfo or UTC).astimezone(UTC)
        return started, run_id
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError):
        raise HTTPException(
            422, detail={"error": "invalid_request", "detail": "cursor: not a cursor we issued"}
        ) from None


def _run(r: repo.RunRecord) -> Run:
    duration = None
    if r.finished_at is not None:
        duration = round((r.finished_at - r.started_at).total_seconds() * 1000)
    return Run(
        run_id=r.id,
        trigger=r.trigger,
        auth=run_auth(r.auth_method, r.auth_email),
        started_at=r.started_at,
        finished_at=r.finished_at,
        duration_ms=duration,
        success=r.success,
        status_code=r.status_code,
        total=r.total,
        processed=r.processed,
        failed=r.failed,
        skipped=r.skipped,
        skipped_reasons=r.skipped_reasons,
        events_stored=r.events_stored,
        events_updated=r.events_updated,
        error=r.error,
    )


@router.get(
    "/api/runs",
    summary="Poll run history, newest first (trigger, timings, counts, status, error)",
    response_model=RunPage,
    responses=error_responses(401, 422, 503),
    openapi_extra=SIGNED,
)
async def list_runs(
    sessionmaker: SessionmakerDep,
    _caller: Annotated[str, Depends(require_caller)],
    limit: Annotated[int, Query(ge=1, le=200, description="Runs per page")] = 50,
    cursor: Annotated[
        str | None,
        Query(max_length=300, pattern=r"^[A-Za-z0-9_-]*$", description="next_cursor of a page"),
    ] = None,
) -> RunPage:
    before = _decode_cursor(cursor) if cursor else None
    async with sessionmaker() as s:
        records = await repo.list_runs(s, limit=limit + 1, before=before)
    page = records[:limit]
    more = len(records) > limit
    return RunPage(
        runs=[_run(r) for r in page],
        next_cursor=_encode_cursor(page[-1]) if more and page else None,
    )
