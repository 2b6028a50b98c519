"""Seeding, the scenario's minimum request count, request-log analysis and the lower bound."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from app.db.models import Account, MonitoredProject, User, new_id, utcnow

PER_PAGE = 100  # the service's GITLAB_PER_PAGE default and GitLab's maximum

_LIST = re.compile(r"^/api/v4/projects/([^/]+)/(issues|merge_requests)$")
# Notes (story schema) or threads (newest schema) of one item: both follow its listing page.
_NOTES = re.compile(
    r"^/api/v4/projects/([^/]+)/(issues|merge_requests)/(\d+)/(?:notes|discussions)$"
)
_ITEM_URL = re.compile(r"/-/(issues|merge_requests)/(\d+)#note_\d+$")


@dataclass
class SeedUser:
    user_id: str
    username: str
    token: str
    projects: list[tuple[str, str, str]]  # (gitlab id, name, path)


async def seed(db_url: str, users: list[SeedUser]) -> None:
    """Users, GitLab accounts and monitored projects, in one transaction (ORM bulk insert)."""
    from app.db.engine import create_engine, create_sessionmaker
    from app.settings import load_settings

    engine = create_engine(load_settings(database_url=db_url))
    try:
        async with create_sessionmaker(engine)() as s, s.begin():
            now = utcnow()
            s.add_all(
                User(
                    id=u.user_id,
                    email=f"{u.username}@bench.test",
                    name=u.username,
                    createdAt=now,
                    updatedAt=now,
                )
                for u in users
            )
            await s.flush()
            for u in users:
                s.add(
                    Account(
                        id=new_id(),
                        userId=u.user_id,
                        accountId=f"bench-{u.username}",
                        providerId="gitlab",
                        accessToken=u.token,
                        createdAt=now,
                        updatedAt=now,
                    )
                )
                s.add_all(
                    MonitoredProject(
                        id=new_id(),
                        userId=u.user_id,
                        gitlabProjectId=pid,
                        projectName=name,
                        projectPath=path,
                        createdAt=now,
                    )
                    for pid, name, path in u.projects
                )
    finally:
        await engine.dispose()


async def count_events(db_url: str) -> int:
    import sqlalchemy as sa

    from app.db.engine import create_engine
    from app.settings import load_settings

    engine = create_engine(load_settings(database_url=db_url))
    try:
        async with engine.connect() as c:
            return (await c.execute(sa.text('SELECT count(*) FROM "Event"'))).scalar_one()
    finally:
        await engine.dispose()


async def make_reconciliation_due(db_url: str) -> int:
    """Every (user, project) reconciliation due now: a day's reconciliations in one poll."""
    import sqlalchemy as sa

    from app.db.engine import create_engine
    from app.db.models import SyncCursor, utcnow
    from app.settings import load_settings

    engine = create_engine(load_settings(database_url=db_url))
    try:
        async with engine.begin() as c:
            stmt = sa.update(SyncCursor).values(reconcile_due_at=utcnow())
            return (await c.execute(stmt)).rowcount
    finally:
        await engine.dispose()


@dataclass
class ProjectTruth:
    """What one user sees in one project (every user sees the same: all are members)."""

    issues: set[int] = field(default_factory=set)  # iids
    mrs: set[int] = field(default_factory=set)
    noted: set[tuple[str, int]] = field(default_factory=set)  # (kind, iid) with user notes
    events: int = 0


def project_truth(expected: list[dict[str, Any]]) -> ProjectTruth:
    t = ProjectTruth(events=len(expected))
    for e in expected:
        url = e["gitlabUrl"]
        if e["type"] == "comment":
            m = _ITEM_URL.search(url)
            if m:
                t.noted.add((m.group(1), int(m.group(2))))
        else:
            iid = int(url.rsplit("/", 1)[1])
            (t.issues if e["type"] == "issue" else t.mrs).add(iid)
    return t


def pages(n: int) -> int:
    return max(1, math.ceil(n / PER_PAGE))


def reconciliation_requests(truths: dict[str, ProjectTruth], users: int) -> int:
    """A reconciliation with nothing to remove: every page of both complete listings per user
    and project, no notes (every stored comment count matches GitLab's)."""
    return users * sum(pages(len(t.issues)) + pages(len(t.mrs)) for t in truths.values())


def minimum_requests(
    truths: dict[str, ProjectTruth],
    users: int,
    changed: dict[str, set[tuple[str, int]]] | None,
    *,
    threads: bool = False,
) -> int:
    """Pages of issues + pages of MRs + one notes request per item with user notes, for each
    user and project; `changed` (incremental/warm): only those items, {} = nothing changed.
    `threads` (the newest app's schema): one Discussions request per listed item instead, for
    every item has its threads read whole (the bench's items have far fewer than 100)."""
    per_user = 0
    for pid, t in truths.items():
        items = {("issues", i) for i in t.issues} | {("merge_requests", i) for i in t.mrs}
        if changed is None:
            per_user += pages(len(t.issues)) + pages(len(t.mrs))
            per_user += len(items) if threads else len(t.noted)
        else:
            c = changed.get(pid, set())
            per_user += pages(sum(1 for k, _ in c if k == "issues"))
            per_user += pages(sum(1 for k, _ in c if k == "merge_requests"))
            per_user += len(c & items) if threads else len(c & t.noted)
    return per_user * users


@dataclass
class LogStats:
    requests: int
    by_kind: dict[str, int]
    errors: int
    chain: int  # longest chain of dependent requests
    per_user_max: int
    users: int


def analyse_log(entries: list[dict[str, Any]]) -> LogStats:
    """GitLab API requests only (/api/v4); the chain: pages of one listing follow each other
    (rel=next), and a notes request needs the page that listed its item."""
    api = [e for e in entries if e["path"].startswith("/api/v4")]
    list_pages: Counter[tuple[Any, ...]] = Counter()
    notes_pages: Counter[tuple[Any, ...]] = Counter()
    for e in api:
        if m := _LIST.match(e["path"]):
            list_pages[(e["username"], m.group(1), m.group(2))] += 1
        elif m := _NOTES.match(e["path"]):
            notes_pages[(e["username"], m.group(1), m.group(2), m.group(3))] += 1
    deepest_notes: dict[tuple[Any, ...], int] = defaultdict(int)
    for (user, pid, kind, _iid), n in notes_pages.items():
        deepest_notes[(user, pid, kind)] = max(deepest_notes[(user, pid, kind)], n)
    keys = set(list_pages) | set(deepest_notes)
    chain = max((list_pages[k] + deepest_notes.get(k, 0) for k in keys), default=0)
    per_user = Counter(e["username"] for e in api)
    return LogStats(
        requests=len(api),
        by_kind=dict(Counter(e["kind"] for e in api)),
        errors=sum(1 for e in api if e["status"] >= 400),
        chain=chain,
        per_user_max=max(per_user.values(), default=0),
        users=len(per_user),
    )


def lower_bound(stats: LogStats, latency_s: float, u: int, c: int, cap: int) -> float:
    """max(chain x L, total x L / min(u x c, cap), busiest user x L / min(c, cap)); u is
    capped at the number of users that made requests (one user cannot use the other users'
    slots), cap is the instance-wide limit on requests in flight (GITLAB_MAX_IN_FLIGHT)."""
    users = max(1, min(u, stats.users))
    return max(
        stats.chain * latency_s,
        stats.requests * latency_s / min(users * c, cap),
        stats.per_user_max * latency_s / min(c, cap),
    )
