"""What a poll run reports: per-user results and the run summary (the /api/poll body)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.sync.shard import Shard

UserStatusName = Literal["processed", "failed", "skipped"]


class UserSkipped(Exception):
    """The user cannot be synced now for a reason that is not a failure (no token...)."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class ProjectFailure(BaseModel):
    gitlab_project_id: str
    project_path: str
    error: str = Field(description="Error class, e.g. GitLabNotFound, GitLabUnavailable")
    status: int | None = Field(None, description="HTTP status GitLab answered, if any")
    message: str
    retry_after: float | None = Field(None, description="GitLab's requested wait (429), seconds")


class UserResult(BaseModel):
    user_id: str
    status: UserStatusName
    reason: str | None = Field(
        None,
        description=(
            "Why a user was skipped or failed: fresh, in_progress, no_token, token_expired, "
            "token_revoked, token_invalid, token_refresh_failed, not_found, no_projects, "
            "gitlab_unavailable, rate_limited, database_unavailable, projects_failed, "
            "deadline_exceeded, lease_lost, error"
        ),
    )
    stored: int = Field(0, description="Events inserted")
    updated: int = Field(0, description="Events whose content changed and was rewritten")
    projects: int = 0
    failed_projects: list[ProjectFailure] = Field(default_factory=list)
    attempts: int = 0
    duration_ms: int = 0


AuthMethodName = Literal["inngest_signature", "bearer", "oidc", "unsigned"]


class RunAuth(BaseModel):
    """How the caller that started a run authenticated (recorded with the run)."""

    method: AuthMethodName = Field(
        description=(
            "inngest_signature (X-Inngest-Signature), bearer (static signing key), oidc "
            "(a Google ID token), unsigned (ALLOW_UNSIGNED_POLLS, development)"
        )
    )
    email: str | None = Field(None, description="The service account of an OIDC caller")


class EventCounts(BaseModel):
    stored: int = 0
    updated: int = 0


class PollSummary(BaseModel):
    """The original job's summary plus what happened to each user."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "success": True,
                    "processed": 2,
                    "failed": 0,
                    "skipped": 1,
                    "total": 3,
                    "run_id": "6f1c2b0e3a4d4e1f9b7a0c1d2e3f4a5b",
                    "trigger": "cloud_scheduler",
                    "auth": {
                        "method": "oidc",
                        "email": "scheduler@my-project.iam.gserviceaccount.com",
                    },
                    "started_at": "2026-11-29T12:00:00.000Z",
                    "duration_ms": 812,
                    "events": {"stored": 148, "updated": 3},
                    "users": [
                        {
                            "user_id": "u1",
                            "status": "processed",
                            "reason": None,
                            "stored": 100,
                            "updated": 3,
                            "projects": 3,
                            "failed_projects": [],
                            "attempts": 1,
                            "duration_ms": 640,
                        },
                        {
                            "user_id": "u3",
                            "status": "skipped",
                            "reason": "no_token",
                            "stored": 0,
                            "updated": 0,
                            "projects": 1,
                            "failed_projects": [],
                            "attempts": 0,
                            "duration_ms": 2,
                        },
                    ],
                }
            ]
        }
    )

    success: bool = Field(description="processed > 0 or total == 0, as the original job")
    processed: int
    failed: int
    skipped: int
    total: int
    run_id: str
    trigger: str = "api"
    auth: RunAuth | None = Field(
        None,
        description="How the /api/poll caller authenticated; null for other runs (CLI, Inngest)",
    )
    started_at: datetime
    duration_ms: int
    events: EventCounts
    users: list[UserResult]
    error: str | None = Field(None, description="Why the run could not run (503 only)")
    shard: int | None = Field(None, description="The shard this run synced (sharded polls)")
    shards: int | None = Field(None, description="How many shards the users are split into")


def summarize(
    *,
    results: list[UserResult],
    run_id: str,
    trigger: str,
    started_at: datetime,
    duration_ms: int,
    error: str | None = None,
    auth: RunAuth | None = None,
    shard: Shard | None = None,
) -> PollSummary:
    processed = sum(1 for r in results if r.status == "processed")
    failed = sum(1 for r in results if r.status == "failed")
    skipped = sum(1 for r in results if r.status == "skipped")
    total = len(results)
    return PollSummary(
        success=(processed > 0 or total == 0) and error is None,
        processed=processed,
        failed=failed,
        skipped=skipped,
        total=total,
        run_id=run_id,
        trigger=trigger,
        auth=auth,
        started_at=started_at,
        duration_ms=duration_ms,
        events=EventCounts(
            stored=sum(r.stored for r in results), updated=sum(r.updated for r in results)
        ),
        users=results,
        error=error,
        shard=shard.index if shard else None,
        shards=shard.count if shard else None,
    )
