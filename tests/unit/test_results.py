"""summarize: `success` is false only for real failures; skips say which users and why."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.sync.results import UserResult, skip_reasons_text, summarize

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def user(uid: str, status: str, reason: str | None = None) -> UserResult:
    return UserResult(user_id=uid, status=status, reason=reason)  # type: ignore[arg-type]


def summary(*results: UserResult, error: str | None = None):
    return summarize(
        results=list(results), run_id="r", trigger="api", started_at=T0, duration_ms=1, error=error
    )


@pytest.mark.parametrize(
    ("results", "success"),
    [
        ([], True),
        ([user("a", "processed")], True),
        ([user("a", "processed"), user("b", "failed", "error")], True),  # as the original job
        # A manual refresh of users synced seconds ago: the service doing its job.
        ([user("a", "skipped", "fresh")], True),
        ([user("a", "skipped", "fresh"), user("b", "skipped", "fresh")], True),
        # Another run is syncing the user right now.
        ([user("a", "skipped", "in_progress")], True),
        ([user("a", "skipped", "fresh"), user("b", "failed", "gitlab_unavailable")], True),
        # Real failures.
        ([user("a", "failed", "error")], False),
        ([user("a", "skipped", "no_token")], False),
        ([user("a", "skipped", "not_found")], False),
        ([user("a", "skipped", "token_revoked"), user("b", "failed", "error")], False),
    ],
)
def test_success_is_false_only_for_real_failures(results, success) -> None:
    assert summary(*results).success is success


def test_skipped_users_stay_reported_with_their_reason() -> None:
    s = summary(
        user("a", "skipped", "fresh"),
        user("b", "skipped", "fresh"),
        user("c", "skipped", "no_token"),
        user("d", "processed"),
    )
    assert (s.processed, s.failed, s.skipped, s.total) == (1, 0, 3, 4)
    assert s.skipped_reasons == {"fresh": 2, "no_token": 1}
    assert [(u.user_id, u.reason) for u in s.users if u.status == "skipped"] == [
        ("a", "fresh"),
        ("b", "fresh"),
        ("c", "no_token"),
    ]


@pytest.mark.parametrize(
    ("given", "code"),
    [
        ("database unavailable", "database_unavailable"),
        ("gitlab unavailable", "gitlab_unavailable"),
        ("database_unavailable", "database_unavailable"),
    ],
)
def test_a_run_that_could_not_run_fails_with_a_code_and_a_sentence(given, code) -> None:
    s = summary(user("a", "skipped", "fresh"), error=given)
    assert s.success is False
    assert s.error == code
    assert s.detail and " " in s.detail and s.detail != code


def test_a_run_specific_detail_wins_over_the_codes_sentence() -> None:
    # The unreachable host is known to the run only (sync/poller.py).
    text = "GitLab at https://gitlab.example.invalid cannot be reached: DNS lookup failed"
    s = summarize(
        results=[user("a", "skipped", "gitlab_unreachable")],
        run_id="r",
        trigger="cli",
        started_at=T0,
        duration_ms=1,
        error="gitlab_unreachable",
        detail=text,
    )
    assert (s.success, s.error, s.detail) == (False, "gitlab_unreachable", text)
    assert s.skipped_reasons == {"gitlab_unreachable": 1}
    assert summary(error="gitlab_unreachable").detail.startswith("GitLab cannot be reached")


def test_skip_reasons_text_names_one_reason_or_counts_the_most_frequent_first():
    assert skip_reasons_text(None) == skip_reasons_text({}) == ""
    assert skip_reasons_text({"fresh": 3}) == "fresh"
    assert skip_reasons_text({"no_token": 1, "fresh": 2, "in_progress": 1}) == (
        "2 fresh, 1 in_progress, 1 no_token"
    )
