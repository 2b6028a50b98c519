"""schemathesis against the service's own OpenAPI schema, with valid authentication: no 500,
no response that breaks the schema. Bounded: few examples per operation, no shrinking."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gitlab_sim.server import SimulatorServer
from tests.support import SIGNING_KEY, LiveServer, add_user, make_settings, project_tuple

AUTH = {"Authorization": f"Bearer {SIGNING_KEY}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.mark.slow
def test_openapi_schema_fuzzing_finds_no_500_and_no_schema_violation(db_url):
    with SimulatorServer(seed=71, users=2, projects=1, issues=2, merge_requests=1, notes=1) as sim:
        add_user(db_url, "u1@example.com", sim.token("user1"), [project_tuple(sim, 1)])
        with LiveServer(make_settings(db_url, sim.url)) as server:
            schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
            operations = [
                op.ok()
                for op in schema.get_all_operations()
                if not op.ok().path.startswith("/api/inngest")
            ]
            assert {o.path for o in operations} >= {"/api/poll", "/api/sync-status", "/metrics"}
            failures: list[str] = []
            calls = 0
            for operation in operations:

                @settings(
                    max_examples=25,
                    deadline=None,
                    derandomize=True,
                    database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=operation.as_strategy())
                def run(case):
                    nonlocal calls
                    calls += 1
                    response = case.call(base_url=server.url, headers=AUTH, timeout=60)
                    try:
                        case.validate_response(response, checks=CHECKS)
                    except Exception as exc:  # noqa: BLE001 - collected, reported together
                        failures.append(f"{case.method} {case.path}: {exc}"[:800])

                run()
    assert calls >= len(operations) * 5, calls
    assert not failures, "\n\n".join(failures[:5])


def test_sync_status_hostile_user_id_is_a_4xx_never_a_500(db_url):
    with LiveServer(make_settings(db_url)) as server:
        url = f"{server.url}/api/sync-status"
        for raw, allowed in (
            ("%00", {422}),
            ("a%00b", {422}),
            ("%ED%A0%80", {200}),  # undecodable bytes arrive replaced: an unknown user
            ("%FF", {200}),
            ("x" * 201, {422}),
            ("u1&user_id=u2", {200, 422}),
        ):
            r = httpx.get(f"{url}?user_id={raw}", headers=AUTH, timeout=30)
            assert r.status_code in allowed, (raw, r.status_code, r.text[:200])
