"""Who called /api/poll (the run's `trigger`), told from what the caller itself sends.

How the caller authenticated is recorded apart (`RunAuth`, from deps.authenticate_caller):
a credential does not say who holds it. The signing key signs the built-in scheduler, a
curl script and Vercel Cron alike; an OIDC token may come from any Google service account.
So who called is read from what each caller sends whatever its credential:

- `scheduler`: the built-in scheduler, which names itself (`X-GitLab-Insights-Trigger`);
- `cloud_scheduler`: Google Cloud Scheduler, which adds `X-CloudScheduler: true` and
  `User-Agent: Google-Cloud-Scheduler` to every call;
- `vercel_cron`: Vercel Cron (`User-Agent: vercel-cron/1.0`);
- `manual`: any other caller naming users (`user_ids`): a manual refresh;
- `api`: any other caller (curl, a crontab, a script that signs like Inngest).

Never `inngest`: Inngest reaches the service only through /api/inngest (its executor's
body, `{"event", "events", "ctx", "steps"}`, is no /api/poll body and answers 422), and the
Inngest functions record their runs with trigger `inngest` themselves. These labels are for
the run history only; nothing is allowed or refused by them.
"""

from __future__ import annotations

from collections.abc import Mapping

from app.sync.results import TriggerName

# Sent by the built-in scheduler (app/scheduler/runner.py) with every call.
TRIGGER_HEADER = "x-gitlab-insights-trigger"


def caller_trigger(headers: Mapping[str, str], *, names_users: bool) -> TriggerName:
    """The trigger of an authenticated /api/poll call; `headers` as received (any case)."""
    h = {k.lower(): v for k, v in headers.items()}
    agent = h.get("user-agent", "").lower()
    if h.get(TRIGGER_HEADER, "").strip().lower() == "scheduler":
        return "scheduler"
    if "x-cloudscheduler" in h or "google-cloud-scheduler" in agent:
        return "cloud_scheduler"
    if "vercel-cron" in agent:
        return "vercel_cron"
    return "manual" if names_users else "api"
