"""Following the original app's Refresh button on its newest schema.

The newest app's Refresh (events.manualRefresh) stores its rows with an upsert keyed on
"gitlabEventId" alone. On a database with this service's per-user key PostgreSQL refuses to
plan that statement (42P10, "no unique or exclusion constraint matching the ON CONFLICT
specification"): each item's transaction rolls back, nothing is written, and the app goes
on to move the user's LastSync. So a LastSync value this service did not write (it records
its own in sync_user) means someone pressed Refresh: the user is synced at once, and the
app, which watches LastSync, shows the result. Each such value is followed once, by one
process (repository.claim_app_refreshes).

Only on the newest app's schema: the story app's refresh stores its rows itself (an insert
that skips duplicates works with any unique key), and there this service never records its
LastSync writes.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from loguru import logger

from app.db import repository as repo
from app.db.models import utcnow
from app.sync.deps import SyncDeps
from app.sync.poller import PollOutcome, run_poll
from app.sync.results import TriggerName

TRIGGER: TriggerName = "app_refresh"
# LastSync writes older than this are history (an app upgraded meanwhile, a long stop), not
# a button pressed now.
RECENT = timedelta(minutes=10)


async def follow_once(deps: SyncDeps) -> PollOutcome | None:
    """Sync the users whose LastSync the app just moved; None when there were none (or the
    database has the story schema)."""
    async with deps.sessionmaker() as s, s.begin():
        if not (await repo.read_schema_profile(s)).work_items:
            return None
        users = await repo.claim_app_refreshes(s, utcnow() - RECENT)
    if not users:
        return None
    logger.bind(users=len(users)).info("the app's Refresh moved LastSync: syncing those users")
    # Not a manual refresh: its freshness check reads the LastSync the app just wrote.
    return await run_poll(deps, user_ids=users, trigger=TRIGGER, manual=False)


async def follow(deps: SyncDeps, interval_s: float) -> None:
    """`follow_once` every `interval_s` until cancelled; a failure is logged, never raised."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await follow_once(deps)
        except Exception as exc:  # noqa: BLE001 - the next look may work (database back)
            logger.warning("looking for the app's refreshes failed: {}", type(exc).__name__)


__all__ = ["RECENT", "TRIGGER", "follow", "follow_once"]
