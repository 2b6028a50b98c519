"""What a poll run reports: per-user results and the run summary (the /api/poll body)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.sync.shard import Shard

UserStatusName = Literal["processed", "failed", "skipped"]

# Skips that are the service doing its job, not failures: the user was synced moments ago
# (`fresh`, a manual refresh inside MIN_REFRESH_INTERVAL_SECONDS) or is being synced right
# now by another run (`in_progress`). They count towards `success` like a processed user.
DONE_SKIP_REASONS = frozenset({"fresh", "in_progress"})

# Why a run could not run (the 503 answers): machine code -> human text.
RUN_ERRORS: dict[str, str] = {
    "database_unavailable": "the database is unreachable; the run did not start",
    "gitlab_unavailable": "GitLab is unavailable: several users in a row failed with "
    "GitLab errors, the rest were skipped",
    "gitlab_unreachable": "GitLab cannot be reached: several requests in a row could not "
    "connect; the run stopped early and users not attempted were skipped",
}


def skip_reasons_text(reasons: Mapping[str, int] | None) -> str:
    """Why users were skipped, for run lines and tables: `fresh` when one reason covers them
    all, else `2 fresh, 1 no_token` (most frequent first); empty when none were."""
    if not reasons:
        return ""
    if len(reasons) == 1:
        return next(iter(reasons))
    ranked = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{n} {reason}" for reason, n in ranked)


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


# --- access loss and deletions (README: "Access and deletions") ---------------------------


class AccessLostProject(BaseModel):
    gitlab_project_id: str
    project_path: str
    since: datetime = Field(description="When the loss was confirmed and the events removed")


class ReconcileCounts(BaseModel):
    """What reconciliations did; their GitLab requests are counted apart from the sync's."""

    projects: int = Field(0, description="(user, project) pairs reconciled to the end")
    held: int = Field(
        0, description="Reconciliations whose removals wait for the next one to agree"
    )
    failed: int = Field(0, description="Reconciliations stopped by an error: nothing removed")
    requests: int = Field(0, description="GitLab requests made by reconciliations")

    def __iadd__(self, other: ReconcileCounts) -> ReconcileCounts:
        self.projects += other.projects
        self.held += other.held
        self.failed += other.failed
        self.requests += other.requests
        return self


class UserResult(BaseModel):
    user_id: str
    status: UserStatusName
    reason: str | None = Field(
        None,
        description=(
            "Why a user was skipped or failed: fresh, in_progress, no_token, token_expired, "
            "token_revoked, token_invalid, token_insufficient_scope, token_refresh_failed, "
            "not_found, no_projects, "
            "gitlab_unavailable, gitlab_unreachable (not attempted: the run found GitLab "
            "unreachable), rate_limited, database_unavailable, projects_failed, "
            "deadline_exceeded, lease_lost, error"
        ),
    )
    stored: int = Field(0, description="Events inserted")
    updated: int = Field(0, description="Events whose content changed and was rewritten")
    removed: int = Field(0, description="Events removed: GitLab no longer shows them to the user")
    access_lost: list[AccessLostProject] = Field(
        default_factory=list,
        description="Monitored projects the user can no longer read (their events removed)",
    )
    reconciliation: ReconcileCounts = Field(default_factory=ReconcileCounts)
    projects: int = 0
    failed_projects: list[ProjectFailure] = Field(default_factory=list)
    attempts: int = 0
    duration_ms: int = 0


AuthMethodName = Literal["inngest_signature", "bearer", "oidc", "unsigned"]

# Who started a run, recorded apart from how its caller authenticated (README, "Calling
# /api/poll"; app/api/callers.py tells the /api/poll callers apart).
TriggerName = Literal[
    "scheduler", "cloud_scheduler", "vercel_cron", "manual", "api", "inngest", "cli", "app_refresh"
]
TRIGGER_DESCRIPTION = (
    "Who started the run: scheduler (the built-in one), cloud_scheduler (Google Cloud "
    "Scheduler), vercel_cron (Vercel Cron), manual (another /api/poll caller naming "
    "user_ids), api (another /api/poll caller: curl, a crontab), inngest (the Inngest "
    "functions at /api/inngest), cli (gitlab-insights poll), app_refresh (the original app's "
    "Refresh button, followed by `serve`). How it authenticated is `auth`."
)


class RunAuth(BaseModel):
    """How the caller that started a run authenticated (recorded with the run)."""

    method: AuthMethodName = Field(
        description=(
            "inngest_signature (X-Inngest-Signature), bearer (static signing key), oidc "
            "(a Google ID token), unsigned (ALLOW_UNSIGNED_POLLS, development)"
        )
    )
    email: str | None = Field(None, description="The service account of an OIDC caller")


def run_auth(method: str | None, email: str | None) -> RunAuth | None:
    """A run record's auth columns as the object every answer shows (None when not kept)."""
    return None if method is None else RunAuth.model_validate({"method": method, "email": email})


class EventCounts(BaseModel):
    stored: int = 0
    updated: int = 0
    removed: int = 0


class PollSummary(BaseModel):
    """The original job's summary plus what happened to each user."""

    # The documented example is built from these models (example_summary): it cannot miss
    # a field the answer has.
    model_config = ConfigDict(
        json_schema_extra=lambda schema: schema.update(
            examples=[example_summary().model_dump(mode="json")]
        )
    )

    success: bool = Field(
        description=(
            "false only for a real failure: the run could not run (`error` set), or users were "
            "to be synced and none was processed. Users skipped as `fresh` (synced within "
            "MIN_REFRESH_INTERVAL_SECONDS) or `in_progress` (another run is syncing them) count "
            "as done, like processed ones; they stay listed in `skipped` and `users[]` with "
            "their reason. Otherwise: processed > 0 or total == 0, as the original job."
        )
    )
    processed: int
    failed: int
    skipped: int = Field(description="Users skipped, for any reason (see skipped_reasons)")
    total: int
    skipped_reasons: dict[str, int] = Field(
        default_factory=dict,
        description='How many users were skipped for each reason, e.g. {"fresh": 2}',
    )
    run_id: str
    trigger: TriggerName = Field("api", description=TRIGGER_DESCRIPTION)
    auth: RunAuth | None = Field(
        None,
        description="How the caller (of /api/poll, or Inngest calling /api/inngest) "
        "authenticated; null for CLI runs, which have no caller to authenticate",
    )
    started_at: datetime
    duration_ms: int
    events: EventCounts
    reconciliation: ReconcileCounts = Field(default_factory=ReconcileCounts)
    users: list[UserResult]
    error: str | None = Field(
        None,
        description="503 only: why the run could not run, as a code "
        "(database_unavailable, gitlab_unavailable, gitlab_unreachable)",
    )
    detail: str | None = Field(None, description="503 only: the same, for a human")
    shard: int | None = Field(None, description="The shard this run synced (sharded polls)")
    shards: int | None = Field(None, description="How many shards the users are split into")


def summarize(
    *,
    results: list[UserResult],
    run_id: str,
    trigger: TriggerName,
    started_at: datetime,
    duration_ms: int,
    error: str | None = None,
    detail: str | None = None,
    auth: RunAuth | None = None,
    shard: Shard | None = None,
) -> PollSummary:
    """The run's summary. `error` (the run could not run) is a code or the poller's words
    for one ("database unavailable"); the summary carries the code and a sentence: `detail`
    if given (it names what only the run knows, such as the unreachable host), else the
    code's own."""
    processed = sum(1 for r in results if r.status == "processed")
    failed = sum(1 for r in results if r.status == "failed")
    skipped_reasons: dict[str, int] = {}
    for r in results:
        if r.status == "skipped":
            reason = r.reason or "unknown"
            skipped_reasons[reason] = skipped_reasons.get(reason, 0) + 1
    skipped = sum(skipped_reasons.values())
    done = processed + sum(
        n for reason, n in skipped_reasons.items() if reason in DONE_SKIP_REASONS
    )
    total = len(results)
    code = text = None
    if error is not None:
        code = "_".join(error.strip().lower().split()) or "error"
        text = detail or RUN_ERRORS.get(code, error)
    return PollSummary(
        success=(done > 0 or total == 0) and error is None,
        processed=processed,
        failed=failed,
        skipped=skipped,
        total=total,
        skipped_reasons=skipped_reasons,
        run_id=run_id,
        trigger=trigger,
        auth=auth,
        started_at=started_at,
        duration_ms=duration_ms,
        events=_event_counts(results),
        reconciliation=_reconcile_counts(results),
        users=results,
        error=code,
        detail=text,
        shard=shard.index if shard else None,
        shards=shard.count if shard else None,
    )


def _event_counts(results: list[UserResult]) -> EventCounts:
    return EventCounts(
        stored=sum(r.stored for r in results),
        updated=sum(r.updated for r in results),
        removed=sum(r.removed for r in results),
    )


def _reconcile_counts(results: list[UserResult]) -> ReconcileCounts:
    total = ReconcileCounts()
    for r in results:
        total += r.reconciliation
    return total


# --- the documented examples (OpenAPI), built like a real answer --------------------------------

EXAMPLE_RUN_ID = "6f1c2b0e3a4d4e1f9b7a0c1d2e3f4a5b"
EXAMPLE_STARTED_AT = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def example_summary() -> PollSummary:
    """A Cloud Scheduler poll: two users processed (one reconciled a project and removed what
    GitLab no longer shows), one skipped without a token."""
    return summarize(
        results=[
            UserResult(
                user_id="u1",
                status="processed",
                stored=100,
                updated=3,
                removed=2,
                reconciliation=ReconcileCounts(projects=1, requests=2),
                projects=3,
                attempts=1,
                duration_ms=640,
            ),
            UserResult(
                user_id="u2", status="processed", stored=48, projects=2, attempts=1, duration_ms=410
            ),
            UserResult(
                user_id="u3", status="skipped", reason="no_token", projects=1, duration_ms=2
            ),
        ],
        run_id=EXAMPLE_RUN_ID,
        trigger="cloud_scheduler",
        auth=RunAuth(method="oidc", email="scheduler@my-project.iam.gserviceaccount.com"),
        started_at=EXAMPLE_STARTED_AT,
        duration_ms=812,
    )


def example_unavailable() -> PollSummary:
    """The 503 answer: the database was unreachable, the run did not start."""
    return summarize(
        results=[],
        run_id=EXAMPLE_RUN_ID,
        trigger="scheduler",
        auth=RunAuth(method="inngest_signature"),
        started_at=EXAMPLE_STARTED_AT,
        duration_ms=4,
        error="database_unavailable",
    )
