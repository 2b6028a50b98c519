"""The app shell: health endpoints, the OpenAPI page, and `projects add` through GitLab."""

from __future__ import annotations

from typer.testing import CliRunner

from app.cli import cli
from gitlab_sim.server import SimulatorServer
from tests.integration.test_poll_api import client_for
from tests.support import add_user, make_settings, query


async def test_health_and_docs(db_url):
    async with client_for(make_settings(db_url)) as c:
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        assert (await c.get("/readyz")).status_code == 200
        docs = await c.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        spec = (await c.get("/openapi.json")).json()
    assert spec["info"]["title"] == "gitlab-insights"
    assert spec["info"]["version"] and "api/poll" in spec["info"]["description"]
    post = spec["paths"]["/api/poll"]["post"]
    assert {"200", "401", "413", "422", "503"} <= set(post["responses"])
    summary = spec["components"]["schemas"]["PollSummary"]
    assert summary["examples"][0]["processed"] == 2
    assert "requestBody" in post


async def test_readyz_is_503_when_the_database_is_unreachable():
    settings = make_settings("postgresql://nobody:pw@127.0.0.1:1/none", db_pool_timeout=2)
    async with client_for(settings) as c:
        r = await c.get("/readyz")
        assert (await c.get("/healthz")).status_code == 200
    assert r.status_code == 503
    assert "pw" not in r.text


def test_projects_add_resolves_through_gitlab(db_url, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with SimulatorServer(seed=3, users=4, projects=4, issues=1, merge_requests=1, notes=0) as sim:
        add_user(db_url, "u1@example.com", sim.token("user1"))
        monkeypatch.setenv("DATABASE_URL", db_url)
        monkeypatch.setenv("GITLAB_INSTANCE_URL", sim.url)
        runner = CliRunner()
        path = sim.world.project(2).path_with_namespace
        r = runner.invoke(cli, ["projects", "add", "--user", "u1@example.com", path, "1"])
        assert r.exit_code == 0, r.output
        rows = sorted(
            query(db_url, 'SELECT "gitlabProjectId", "projectPath" FROM "MonitoredProject"')
        )
        assert rows == [("1", sim.world.project(1).path_with_namespace), ("2", path)]
        # A project the user cannot see: one line, nothing stored.
        r = runner.invoke(cli, ["projects", "add", "--user", "u1@example.com", "3"])
        assert r.exit_code == 1 and "not found" in r.output
        assert len(query(db_url, 'SELECT 1 FROM "MonitoredProject"')) == 2
        # Lookups authenticate with the user's token.
        assert any(q["path"] == "/api/v4/projects/1" for q in sim.world.requests())
