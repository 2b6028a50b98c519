"""Sharded polls: `{"shard": k, "shards": N}` (POST) and `?shard=k&shards=N` (GET) split the
users by a stable hash; N shards together sync every user exactly once; bad shards are 422."""

from __future__ import annotations

import json

import pytest

from app.sync.shard import shard_of
from gitlab_sim.server import SimulatorServer
from tests.integration.test_poll_api import client_for, signed
from tests.support import SIGNING_KEY, add_user, make_settings, project_tuple, query

BEARER = {"Authorization": f"Bearer {SIGNING_KEY}"}


async def test_shards_partition_the_users_and_are_recorded(db_url):
    with SimulatorServer(seed=3, users=8, projects=1, issues=1, merge_requests=0, notes=0) as sim:
        for i in range(1, 9):
            sim.world.add_member(1, i)
        ids = [
            add_user(db_url, f"u{i}@example.com", sim.token(f"user{i}"), [project_tuple(sim, 1)])
            for i in range(1, 9)
        ]
        async with client_for(make_settings(db_url, sim.url)) as c:
            seen: list[str] = []
            for k in range(3):
                body = json.dumps({"shard": k, "shards": 3}).encode()
                r = await c.post("/api/poll", content=body, headers=signed(body))
                assert r.status_code == 200, r.text
                summary = r.json()
                assert (summary["shard"], summary["shards"]) == (k, 3)
                users = [u["user_id"] for u in summary["users"]]
                assert all(u["status"] == "processed" for u in summary["users"])
                assert sorted(users) == sorted(u for u in ids if shard_of(u, 3) == k)
                seen += users
            r = await c.get("/api/poll", params={"shard": 1, "shards": 2}, headers=BEARER)
            assert r.status_code == 200, r.text
            assert sorted(u["user_id"] for u in r.json()["users"]) == sorted(
                u for u in ids if shard_of(u, 2) == 1
            )
            r = await c.post("/api/poll", content=b"{}", headers=signed(b"{}"))
            assert r.json()["shard"] is None and r.json()["total"] == 8
    assert sorted(seen) == sorted(ids)  # every user once across the shards
    rows = query(db_url, "SELECT shard, shards, total FROM poll_run ORDER BY started_at")
    assert [r[:2] for r in rows] == [(0, 3), (1, 3), (2, 3), (1, 2), (None, None)]
    assert sum(r[2] for r in rows[:3]) == 8 and rows[4][2] == 8


@pytest.mark.parametrize(
    "body",
    [
        {"shard": 4, "shards": 4},
        {"shard": -1, "shards": 4},
        {"shard": 0, "shards": 0},
        {"shard": 0, "shards": 1001},
        {"shard": 0},
        {"shards": 4},
        {"shard": "0", "shards": 4},
        {"shard": 0, "shards": 2, "user_ids": ["u1"]},
    ],
)
async def test_bad_shards_are_refused(db_url, body):
    raw = json.dumps(body).encode()
    async with client_for(make_settings(db_url)) as c:
        r = await c.post("/api/poll", content=raw, headers=signed(raw))
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_request"
    assert query(db_url, "SELECT count(*) FROM poll_run")[0][0] == 0


@pytest.mark.parametrize(
    "params", [{"shard": "x", "shards": "2"}, {"shard": "2", "shards": "2"}, {"shards": "2"}]
)
async def test_bad_query_shards_are_refused(db_url, params):
    async with client_for(make_settings(db_url)) as c:
        r = await c.get("/api/poll", params=params, headers=BEARER)
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "invalid_request"
        # POST takes the shard in its (signed) body only.
        r = await c.post("/api/poll", params={"shard": 0, "shards": 2}, headers=BEARER)
        assert r.status_code == 422
        assert "body" in r.json()["detail"]


async def test_openapi_documents_the_shard(db_url):
    async with client_for(make_settings(db_url)) as c:
        spec = (await c.get("/openapi.json")).json()
    post = spec["paths"]["/api/poll"]["post"]
    schema = post["requestBody"]["content"]["application/json"]["schema"]
    assert {"shard", "shards"} <= set(schema["properties"])
    assert {"shard": 0, "shards": 4} in schema["examples"]
    get = spec["paths"]["/api/poll"]["get"]
    assert [p["name"] for p in get["parameters"]] == ["shard", "shards"]
