"""The original story's algorithm (Story 3.5, TypeScript/Inngest), in Python, as a reference.

Users one after another; a user's projects in parallel; per project every page of issues,
then every page of MRs, then one notes request per item with user notes, one after
another; all of the user's events stored at the end (the original's storeEvents:
createMany with skipDuplicates, here the same upsert the service uses, in chunks); then
LastSync = now, used as `updated_after` by the next run (no overlap). Same simulator, same
rows, same database writes as the service, so the ratio is measured side by side.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

import httpx

from app.db import repository as repo
from app.db.engine import create_engine, create_sessionmaker
from app.db.models import utcnow
from app.gitlab import schemas
from app.gitlab.client import format_gitlab_time
from app.gitlab.schemas import GitLabIssue, GitLabMergeRequest
from app.settings import load_settings
from app.sync.transform import (
    EventRow,
    ProjectRef,
    transform_issue,
    transform_merge_request,
    transform_note,
)
from bench.measure import SeedUser

_ISSUES = schemas.ISSUES
_MRS = schemas.MERGE_REQUESTS
_NOTES = schemas.NOTES
CHUNK = 1000


@dataclass
class BaselineResult:
    stored: int = 0
    updated: int = 0


async def _pages(client: httpx.AsyncClient, path: str, params: dict[str, str]) -> list[bytes]:
    out = []
    while True:
        r = await client.get(path, params=params)
        r.raise_for_status()
        out.append(r.content)
        nxt = r.links.get("next", {}).get("url")
        if not nxt:
            return out
        params = dict(httpx.QueryParams(urlsplit(nxt).query))


async def _project(
    client: httpx.AsyncClient, pid: str, ref: ProjectRef, since: datetime | None
) -> list[EventRow]:
    base = {"scope": "all", "per_page": "100", "order_by": "updated_at", "sort": "desc"}
    if since is not None:
        base["updated_after"] = format_gitlab_time(since)
    rows: list[EventRow] = []
    items: list[tuple[str, GitLabIssue | GitLabMergeRequest]] = []
    for body in await _pages(client, f"/projects/{pid}/issues", base):
        for it in _ISSUES.validate_json(body):
            rows.append(transform_issue(it, ref))
            items.append(("issues", it))
    for body in await _pages(client, f"/projects/{pid}/merge_requests", {**base, "state": "all"}):
        for it in _MRS.validate_json(body):
            rows.append(transform_merge_request(it, ref))
            items.append(("merge_requests", it))
    for kind, it in items:
        if it.user_notes_count <= 0:
            continue
        r = await client.get(
            f"/projects/{pid}/{kind}/{it.iid}/notes",
            params={"per_page": "100", "sort": "desc", "order_by": "updated_at"},
        )
        r.raise_for_status()
        for note in _NOTES.validate_json(r.content):
            if note.system:
                continue
            note.web_url = f"{it.web_url}#note_{note.id}"
            rows.append(transform_note(note, ref))
    return rows


async def run_baseline(db_url: str, gitlab_url: str, users: list[SeedUser]) -> BaselineResult:
    engine = create_engine(load_settings(database_url=db_url))
    sm = create_sessionmaker(engine)
    result = BaselineResult()
    try:
        async with httpx.AsyncClient(base_url=f"{gitlab_url}/api/v4", timeout=60) as http:
            for u in users:  # one user after another
                async with sm() as s:
                    last = await repo.get_last_sync(s, u.user_id)
                since = last.lastSyncAt if last else None
                http.headers["Authorization"] = f"Bearer {u.token}"
                per_project = await asyncio.gather(
                    *(
                        _project(http, pid, ProjectRef(pid, name, path), since)
                        for pid, name, path in u.projects
                    )
                )
                rows = [r for rs in per_project for r in rs]
                async with sm() as s, s.begin():
                    for i in range(0, len(rows), CHUNK):
                        counts = await repo.upsert_events(s, u.user_id, rows[i : i + CHUNK])
                        result.stored += counts.inserted
                        result.updated += counts.updated
                    await repo.upsert_last_sync(s, u.user_id, utcnow())
    finally:
        await engine.dispose()
    return result
