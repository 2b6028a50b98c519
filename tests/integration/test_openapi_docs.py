"""What /docs shows is true: the documented answers of /api/poll are whole answers (the
model's and a real one's fields, nulls included), every documented example is valid for its
model, and no route has a title FastAPI made up from a function name."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.api.errors import ErrorBody
from app.main import create_app
from app.sync.results import PollSummary
from tests.support import SIGNING_KEY, add_user, make_settings

BEARER = {"Authorization": f"Bearer {SIGNING_KEY}"}


def shape(value: Any) -> Any:
    """The field names of an answer, nested; lists by their first item, data keys left out."""
    if isinstance(value, dict):
        return {k: None if k == "skipped_reasons" else shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return None


def poll_examples(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every documented /api/poll answer: the 200 (PollSummary's examples) and the 503s."""
    found = {
        f"PollSummary example {i}": ex
        for i, ex in enumerate(schema["components"]["schemas"]["PollSummary"]["examples"])
    }
    for method in ("get", "post"):
        content = schema["paths"]["/api/poll"][method]["responses"]["503"]["content"]
        found[f"{method} 503"] = content["application/json"]["example"]
    return found


@pytest.fixture
def schema(tmp_path) -> dict[str, Any]:
    url = f"sqlite+aiosqlite:///{tmp_path}/docs.db"
    return create_app(make_settings(url, inngest_event_key="docs-event-key")).openapi()


def test_poll_examples_are_whole_answers_of_the_model(schema):
    for name, example in poll_examples(schema).items():
        # Validating fills what is missing and drops what is unknown: equal means neither.
        whole = PollSummary.model_validate(example).model_dump(mode="json")
        assert example == whole, name
    ok = schema["components"]["schemas"]["PollSummary"]["examples"][0]
    assert ok["events"]["removed"] > 0 and ok["reconciliation"]["projects"] > 0
    assert ok["users"][0]["reason"] is None  # a null the answer carries, not dropped


async def test_poll_examples_have_the_fields_of_a_real_answer(db_url, schema):
    add_user(db_url, "ada@example.com", None, [("7", "p", "g/p")])  # skipped: no token
    app = create_app(make_settings(db_url))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            r = await c.post("/api/poll", headers=BEARER)
    assert r.status_code == 200, r.text
    real = r.json()
    assert real["users"], real
    for name, example in poll_examples(schema).items():
        expected = shape(real)
        if not example["users"]:  # the 503: nobody was synced
            expected["users"] = []
        assert shape(example) == expected, name


def test_every_documented_error_example_is_an_error_body(schema):
    seen = 0
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for code, response in operation.get("responses", {}).items():
                content = response.get("content", {}).get("application/json", {})
                if content.get("schema", {}).get("$ref") != "#/components/schemas/ErrorBody":
                    continue
                example = content["example"]
                assert set(example) <= set(ErrorBody.model_fields), (path, method, code)
                ErrorBody.model_validate(example)
                seen += 1
    assert seen > 10


def test_no_route_has_a_title_made_up_from_its_function_name(schema):
    operations = [
        (path, method, op) for path, ops in schema["paths"].items() for method, op in ops.items()
    ]
    assert {"get", "put", "post"} <= {m for p, m, _ in operations if p == "/api/inngest"}
    for path, method, op in operations:
        # FastAPI's own: the function name title-cased ("Get Api Inngest"), also its id's start.
        summary = op["summary"]
        from_name = op["operationId"].startswith(summary.lower().replace(" ", "_"))
        assert not (from_name and summary == summary.title()), (path, method, summary)
