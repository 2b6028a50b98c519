"""app.sync.deletions: the pure decisions behind removals (no I/O)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from app.sync.deletions import (
    ALL_HISTORY,
    Candidates,
    StoredEvent,
    StoredProject,
    access_loss_step,
    exceeds_guard,
    find_candidates,
    fingerprint,
    first_reconcile_at,
    item_ref,
    missing_comments,
    next_slot,
    note_id,
    parent_url,
    spread_offset,
)

BASE = "https://gitlab.example.com/g/p/-"
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
DAY = 86_400.0


def issue(n: int) -> StoredEvent:
    return StoredEvent(f"issue-{n}", "issue", f"{BASE}/issues/{n}")


def mr(n: int) -> StoredEvent:
    return StoredEvent(f"mr-{n}", "merge_request", f"{BASE}/merge_requests/{n}")


def comment(note: int, parent: StoredEvent) -> StoredEvent:
    return StoredEvent(f"note-{note}", "comment", f"{parent.url}#note_{note}")


def stored(*events: StoredEvent) -> StoredProject:
    return StoredProject.from_events(events)


# --- links between events -------------------------------------------------------------------


def test_parent_url_is_the_url_before_the_fragment():
    assert parent_url(f"{BASE}/issues/3#note_17") == f"{BASE}/issues/3"
    assert parent_url(f"{BASE}/issues/3") == f"{BASE}/issues/3"
    assert parent_url("") == ""
    assert parent_url("https://h/p/-/issues/3#note_1#x") == "https://h/p/-/issues/3"


@pytest.mark.parametrize(
    ("url", "ref"),
    [
        (f"{BASE}/issues/3", ("Issue", 3)),
        (f"{BASE}/issues/3/", ("Issue", 3)),
        (f"{BASE}/work_items/12", ("Issue", 12)),
        (f"{BASE}/merge_requests/45", ("MergeRequest", 45)),
        ("https://h/g/sub/p/-/merge_requests/1", ("MergeRequest", 1)),
        (f"{BASE}/issues/3#note_1", None),
        (f"{BASE}/issues/x", None),
        ("https://h/g/p/issues/3", None),  # no /-/: not a shape we wrote
        ("", None),
    ],
)
def test_item_ref(url, ref):
    assert item_ref(url) == ref


@pytest.mark.parametrize(
    ("event_id", "nid"), [("note-7", 7), ("note-", None), ("issue-7", None), ("xnote-7", None)]
)
def test_note_id(event_id, nid):
    assert note_id(event_id) == nid


def test_stored_project_groups_comments_under_their_item():
    i1, i2, m1 = issue(1), issue(2), mr(1)
    s = stored(i1, i2, m1, comment(10, i1), comment(11, i1), comment(12, m1))
    assert s.total == 6
    assert s.items == {"issue-1": i1.url, "issue-2": i2.url, "mr-1": m1.url}
    assert s.comments_of("issue-1") == ["note-10", "note-11"]
    assert s.comments_of("issue-2") == []
    assert s.comments_of("mr-1") == ["note-12"]
    assert s.comments_of("issue-99") == []


# --- candidates -------------------------------------------------------------------------------


def test_unlisted_items_go_with_their_comments():
    i1, i2, m1 = issue(1), issue(2), mr(1)
    s = stored(i1, i2, m1, comment(10, i1), comment(11, i2), comment(12, m1))
    c = find_candidates(s, {"issue-2", "mr-1"}, {})
    assert c == Candidates(items=["issue-1"], item_comments=["note-10"], comments=[])
    assert c.count == 2
    assert c.all_ids() == ["issue-1", "note-10"]


def test_comments_missing_from_a_complete_notes_read():
    i1, i2 = issue(1), issue(2)
    s = stored(i1, i2, comment(10, i1), comment(11, i1), comment(12, i2))
    # issue-1's notes were read whole and hold only note-11; issue-2's were not read.
    c = find_candidates(s, {"issue-1", "issue-2"}, {"issue-1": {"note-11", "note-99"}})
    assert c == Candidates(items=[], item_comments=[], comments=["note-10"])
    assert missing_comments(s, {"issue-1": set()}) == ["note-10", "note-11"]
    assert missing_comments(s, {"issue-7": set()}) == []


def test_nothing_is_a_candidate_when_everything_is_listed():
    i1 = issue(1)
    s = stored(i1, comment(10, i1))
    assert find_candidates(s, {"issue-1", "issue-5"}, {"issue-1": {"note-10"}}).count == 0
    assert find_candidates(stored(), set(), {}).count == 0


def test_orphan_comments_are_never_candidates():
    """A comment whose item is not stored (another URL, an adopted row) cannot be judged."""
    orphan = StoredEvent("note-5", "comment", f"{BASE}/issues/77#note_5")
    c = find_candidates(stored(issue(1), orphan), set(), {})
    assert c.all_ids() == ["issue-1"]


# --- the guard --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("removals", "total", "limit", "held"),
    [
        (0, 0, 10, False),
        (1, 2, 10, False),  # exactly half: trusted
        (2, 3, 10, True),  # more than half
        (3, 4, 10, True),
        (10, 100, 10, False),  # exactly the limit
        (11, 100, 10, True),
        (1, 1, 10, True),
    ],
)
def test_exceeds_guard(removals, total, limit, held):
    assert exceeds_guard(removals, total, limit) is held


def test_fingerprint_is_the_set_not_the_order():
    a = fingerprint(["issue-1", "note-2", "mr-3"])
    assert a == fingerprint(["mr-3", "issue-1", "note-2"])
    assert a != fingerprint(["issue-1", "note-2"])
    assert a != fingerprint(["issue-1", "note-2", "mr-4"])
    assert a.startswith("3:") and len(a) == 2 + 64
    # The count keeps apart sets whose ids would join alike.
    assert fingerprint(["a\nb"]) != fingerprint(["a", "b"])
    # A stored fingerprint is compared by the next reconciliation, maybe on another replica
    # or version: its form is fixed.
    digest = hashlib.sha256(b"issue-1\nmr-3").hexdigest()
    assert fingerprint(["mr-3", "issue-1"]) == f"2:{digest}"


# --- the schedule -----------------------------------------------------------------------------


def test_spread_offset_is_stable_and_within_the_interval():
    a = spread_offset("u1", "42", DAY)
    assert a == spread_offset("u1", "42", DAY)
    assert 0 <= a < DAY
    offsets = {spread_offset(f"u{i}", "42", DAY) for i in range(200)}
    assert len(offsets) == 200
    # Spread over the day: every quarter of it gets some of 200 pairs.
    quarters = {int(o // (DAY / 4)) for o in offsets}
    assert quarters == {0, 1, 2, 3}


def test_next_slot_is_strictly_after_on_the_pair_s_grid():
    offset = 3600.0  # 01:00 UTC every day
    assert next_slot(NOW, DAY, offset) == datetime(2024, 5, 2, 1, 0, tzinfo=UTC)
    early = datetime(2024, 5, 1, 0, 30, tzinfo=UTC)
    assert next_slot(early, DAY, offset) == datetime(2024, 5, 1, 1, 0, tzinfo=UTC)
    on_it = datetime(2024, 5, 1, 1, 0, tzinfo=UTC)
    assert next_slot(on_it, DAY, offset) == datetime(2024, 5, 2, 1, 0, tzinfo=UTC)
    quarter = 900.0
    assert next_slot(NOW, quarter, 0.0) == NOW + timedelta(seconds=900)


def test_first_reconciliation_is_a_whole_interval_after_the_first_sync():
    first = first_reconcile_at(NOW, DAY, "u1", "42")
    assert NOW + timedelta(days=1) < first <= NOW + timedelta(days=2)
    offset = spread_offset("u1", "42", DAY)
    assert (first - ALL_HISTORY).total_seconds() % DAY == pytest.approx(offset, abs=1e-3)


# --- access loss ------------------------------------------------------------------------------


def test_access_loss_needs_two_runs_the_window_apart():
    assert access_loss_step(None, NOW, 30) == "first"
    assert access_loss_step(NOW - timedelta(minutes=29), NOW, 30) == "wait"
    assert access_loss_step(NOW - timedelta(minutes=30), NOW, 30) == "remove"
    assert access_loss_step(NOW - timedelta(minutes=31), NOW, 30) == "remove"
    # 0: the next run confirms, but never the run that saw it first.
    assert access_loss_step(None, NOW, 0) == "first"
    assert access_loss_step(NOW, NOW, 0) == "remove"
