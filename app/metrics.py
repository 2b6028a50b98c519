"""Prometheus metrics of the service (prometheus_client renders the exposition format)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

POLL_RUNS = Counter(
    "gitlab_insights_poll_runs_total", "Poll runs by result", ["result"], registry=REGISTRY
)
USERS = Counter(
    "gitlab_insights_user_syncs_total",
    "Per-user sync outcomes by status and reason",
    ["status", "reason"],
    registry=REGISTRY,
)
RUN_DURATION = Histogram(
    "gitlab_insights_poll_run_duration_seconds",
    "Duration of poll runs",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
    registry=REGISTRY,
)
GITLAB_REQUESTS = Counter(
    "gitlab_insights_gitlab_requests_total",
    "GitLab API requests by endpoint and status",
    ["endpoint", "status"],
    registry=REGISTRY,
)
EVENTS = Counter(
    "gitlab_insights_events_total",
    "Events written by type and action (stored = inserted, updated = changed)",
    ["type", "action"],
    registry=REGISTRY,
)
# --- access loss and deletions (README: "Access and deletions") ---------------------------
EVENTS_REMOVED = Counter(
    "gitlab_insights_events_removed_total",
    "Events removed because GitLab no longer shows them to their user, by cause "
    "(access_lost, reconciliation, notes)",
    ["cause"],
    registry=REGISTRY,
)
RECONCILIATIONS = Counter(
    "gitlab_insights_reconciliations_total",
    "Reconciliations of a (user, project) by result (clean, removed, held, failed)",
    ["result"],
    registry=REGISTRY,
)
RECONCILE_REQUESTS = Counter(
    "gitlab_insights_reconcile_requests_total",
    "GitLab requests made by reconciliations (also counted in gitlab_requests_total)",
    registry=REGISTRY,
)
ACCESS_LOST = Counter(
    "gitlab_insights_access_lost_total",
    "Projects whose access loss was confirmed for a user (their events removed)",
    registry=REGISTRY,
)
LAST_SUCCESS = Gauge(
    "gitlab_insights_last_successful_run_timestamp_seconds",
    "Unix time of the last successful poll run",
    registry=REGISTRY,
)
RUNS_IN_PROGRESS = Gauge(
    "gitlab_insights_poll_runs_in_progress", "Poll runs currently executing", registry=REGISTRY
)
DB_POOL_CHECKED_OUT = Gauge(
    "gitlab_insights_db_connections_in_use",
    "Database connections checked out of the pool",
    registry=REGISTRY,
)
DB_CONNECTION_WAIT = Histogram(
    "gitlab_insights_db_connection_wait_seconds",
    "Time spent waiting for a database connection from the pool",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
    registry=REGISTRY,
)


def render() -> bytes:
    return generate_latest(REGISTRY)
