"""GitLabClient with a run's ReachabilityDetector, and its logs: one line per request, not
per attempt.

The client talks to a scripted wire (a GitLabWire whose answers each test lists), because
respx replaces an exception's cause, which is what tells a refused connection apart; the
real wires' reading of real failures is tested over real sockets in
tests/integration/test_gitlab_unreachable.py. Waits recorded, never slept; requests
counted, never timed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from loguru import logger
from multidict import CIMultiDict

from app import retry
from app.gitlab.client import GitLabClient
from app.gitlab.errors import (
    ConnectFailure,
    GitLabNotFound,
    GitLabUnavailable,
    GitLabUnreachable,
)
from app.gitlab.reachability import ReachabilityDetector
from app.gitlab.transport import WireError, WireResponse
from app.settings import Settings, load_settings

TOKEN = "glpat-SECRET-token-value"
INSTANCE = "https://gitlab.example.com"
ATTEMPTS = 4

Answer = WireResponse | WireError | Callable[[], WireResponse | WireError]


def ok(body: Any) -> WireResponse:
    return WireResponse(
        200, CIMultiDict({"content-type": "application/json"}), json.dumps(body).encode()
    )


def status(code: int) -> WireResponse:
    return WireResponse(code, CIMultiDict(), b"{}")


def no_connection(why: ConnectFailure | None = "connection_refused") -> WireError:
    return WireError("ClientConnectorError", connect_failure=why)


def project(pid: int) -> dict[str, Any]:
    return {"id": pid, "name": f"p{pid}", "path_with_namespace": f"g/p{pid}"}


class ScriptedWire:
    """Answers by path: a list is served in order (its last item repeats), else the item."""

    def __init__(self, script: dict[str, Answer | list[Answer]]) -> None:
        self.script = script
        self.calls: list[str] = []

    async def get(self, url: str, headers: Mapping[str, str]) -> WireResponse:
        path = url.split("/api/v4", 1)[1].split("?", 1)[0]
        self.calls.append(path)
        entry = self.script[path]
        if isinstance(entry, list):
            entry = entry.pop(0) if len(entry) > 1 else entry[0]
        answer = entry() if callable(entry) else entry
        if isinstance(answer, WireError):
            raise answer
        return answer


def settings() -> Settings:
    return load_settings(
        gitlab_instance_url=INSTANCE,
        gitlab_backoff_base=0,
        gitlab_backoff_max=0,
        gitlab_rate_limit_max_wait=0,
        gitlab_max_attempts=ATTEMPTS,
    )


def client(wire: ScriptedWire, detector: ReachabilityDetector | None = None) -> GitLabClient:
    return GitLabClient(wire, settings(), TOKEN, reachability=detector)


@pytest.fixture(autouse=True)
def waits() -> Iterator[list[float]]:
    with retry.recorded_waits() as recorded:
        yield recorded


@pytest.fixture
def logs() -> Iterator[list[tuple[str, str]]]:
    lines: list[tuple[str, str]] = []
    sink = logger.add(
        lambda m: lines.append((m.record["level"].name, m.record["message"])),
        level="DEBUG",
        format="{message}",
    )
    yield lines
    logger.remove(sink)


def above_debug(lines: list[tuple[str, str]]) -> list[str]:
    return [text for level, text in lines if level != "DEBUG"]


# --- one log line per request -------------------------------------------------------------


async def test_a_request_that_succeeds_after_retries_is_one_info_line(logs):
    wire = ScriptedWire({"/projects/1": [status(503), status(502), ok(project(1))]})
    await client(wire).project(1)
    assert len(wire.calls) == 3
    assert above_debug(logs) == ["GitLab GET /projects/1: answered after 3 attempts"]
    # Each retry is still there, at DEBUG.
    assert sum("retry" in text for level, text in logs if level == "DEBUG") == 2


async def test_a_request_that_finally_fails_is_one_info_line(logs):
    wire = ScriptedWire({"/projects/1": no_connection()})
    with pytest.raises(GitLabUnavailable) as info:
        await client(wire).project(1)
    assert len(wire.calls) == ATTEMPTS
    assert info.value.connect_failure == "connection_refused"
    assert above_debug(logs) == [
        f"GitLab GET /projects/1: failed after {ATTEMPTS} attempt(s): "
        "GitLab unreachable on /projects/1 (ClientConnectorError)"
    ]
    assert {level for level, _ in logs} == {"DEBUG", "INFO"}


async def test_a_request_answered_at_once_logs_nothing_above_debug(logs):
    wire = ScriptedWire({"/projects/1": ok(project(1)), "/projects/2": status(404)})
    await client(wire).project(1)
    with pytest.raises(GitLabNotFound):  # final at once: the caller reports it
        await client(wire).project(2)
    assert above_debug(logs) == []


# --- the run's detector -------------------------------------------------------------------


async def test_clients_of_a_run_share_the_count_and_stop_sending_once_it_trips(logs):
    detector = ReachabilityDetector(2, INSTANCE)
    wire = ScriptedWire({f"/projects/{i}": no_connection() for i in (1, 2, 3)})
    alice, bob = client(wire, detector), client(wire, detector)
    with pytest.raises(GitLabUnavailable):
        await alice.project(1)
    assert not detector.tripped
    with pytest.raises(GitLabUnavailable):
        await bob.project(2)  # the second request in a row, from another user's client
    assert detector.tripped
    assert len(wire.calls) == 2 * ATTEMPTS
    for c in (alice, bob):
        with pytest.raises(GitLabUnreachable) as info:
            await c.project(3)
        assert "connection refused" in str(info.value)
    assert len(wire.calls) == 2 * ATTEMPTS  # nothing more was sent
    assert [t for t in above_debug(logs) if "cannot be reached" in t] == [
        "GitLab at https://gitlab.example.com cannot be reached: connection refused "
        "(2 requests in a row): this run sends no more GitLab requests"
    ]


async def test_any_answer_resets_the_count_even_an_error():
    detector = ReachabilityDetector(2, INSTANCE)
    wire = ScriptedWire({"/projects/1": no_connection(), "/projects/2": status(500)})
    c = client(wire, detector)
    for pid in (1, 2, 1, 2, 1):
        with pytest.raises(GitLabUnavailable):
            await c.project(pid)
    assert not detector.tripped  # never two requests in a row without a connection


async def test_a_blip_the_retries_ride_out_resets_the_count():
    detector = ReachabilityDetector(1, INSTANCE)
    wire = ScriptedWire({"/projects/1": [no_connection(), no_connection(), ok(project(1))]})
    await client(wire, detector).project(1)
    assert len(wire.calls) == 3
    assert not detector.tripped and detector.streak == 0


async def test_failures_that_say_nothing_about_reachability_neither_count_nor_reset():
    detector = ReachabilityDetector(2, INSTANCE)
    wire = ScriptedWire({"/projects/1": no_connection(), "/projects/2": no_connection(None)})
    c = client(wire, detector)
    with pytest.raises(GitLabUnavailable):
        await c.project(1)
    with pytest.raises(GitLabUnavailable) as info:
        await c.project(2)  # a timeout, say
    assert info.value.connect_failure is None
    assert detector.streak == 1
    with pytest.raises(GitLabUnavailable):
        await c.project(1)
    assert detector.tripped


async def test_a_request_retrying_when_the_run_trips_stops_at_its_next_attempt():
    detector = ReachabilityDetector(1, INSTANCE)

    def meanwhile() -> WireResponse:
        detector.connect_failed("dns_failure")  # another user's request tripped the run
        return status(503)

    wire = ScriptedWire({"/projects/1": meanwhile})
    with pytest.raises(GitLabUnreachable):
        await client(wire, detector).project(1)
    assert wire.calls == ["/projects/1"]  # no retry of a request the run gave up on


async def test_listings_and_notes_stop_too():
    detector = ReachabilityDetector(1, INSTANCE)
    detector.connect_failed("connection_refused")
    wire = ScriptedWire({})
    c = client(wire, detector)
    with pytest.raises(GitLabUnreachable):
        async for _ in c.issues(1, None):
            pass
    with pytest.raises(GitLabUnreachable):
        async for _ in c.notes(1, "Issue", 1, None, noteable_web_url="https://x/1"):
            pass
    assert wire.calls == []


async def test_without_a_detector_every_request_spends_its_retries():
    wire = ScriptedWire({"/projects/1": no_connection()})
    c = client(wire)
    for _ in range(3):
        with pytest.raises(GitLabUnavailable):
            await c.project(1)
    assert len(wire.calls) == 3 * ATTEMPTS
