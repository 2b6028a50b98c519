"""An item edited while its listing is being paged must not cost its comments.

GitLab lists issues `updated_at desc` with offset pages: an item edited mid-listing jumps to
the already-read first page, so this fetch never sees it. Its new updated_at is after the
fetch start, so the next run lists it again, but the comments it had before were then fetched
only from that run's `since`, which lies after them: they were lost for good.
"""

from __future__ import annotations

import threading
import time

from gitlab_sim.faults import FaultSpec
from gitlab_sim.server import SimulatorServer
from tests.reliability.helpers import check_stored_before, cursor_rows
from tests.support import LiveServer, add_user, assert_equal_truth, make_settings


def test_item_edited_mid_pagination_keeps_its_comments(db_url):
    with SimulatorServer(seed=5, users=1, projects=0) as sim:
        w = sim.world
        p = w.create_project("g/race", members=["user1"])
        for n in range(12):
            w.create_issue(p.id, f"issue {n}")
        oldest = w.project(p.id).issues.by_iid[1]
        notes = [w.add_note(p.id, "issue", oldest.iid, f"old comment {k}") for k in range(3)]
        # Age everything so the cursor's overlap cannot rescue the comments.
        with w.lock:
            for it in list(w.project(p.id).issues.by_iid.values()):
                w.project(p.id).issues.set_updated(it, it.updated_ms - 3_600_000)
                it.created_ms -= 3_600_000
            for k, n in enumerate(notes):
                n.created_ms = n.updated_ms = oldest.updated_ms - 1000 + k
        uid = add_user(
            db_url,
            "u1@example.com",
            sim.token("user1"),
            [(str(p.id), p.name, p.path_with_namespace)],
        )
        # Page 2 of the issue listing answers late; the oldest issue is edited meanwhile.
        w.add_fault(FaultSpec(kind="slow", path=r"/issues$", min_page=2, count=1, delay=1.0))
        settings = make_settings(db_url, sim.url, gitlab_per_page=4)

        def edit_when_page_one_is_read() -> None:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if any(e["kind"] == "issues" for e in w.requests()):
                    w.update_issue(p.id, oldest.iid, title="edited mid-listing")
                    return
                time.sleep(0.005)

        with LiveServer(settings) as server:
            editor = threading.Thread(target=edit_when_page_one_is_read, daemon=True)
            editor.start()
            r = server.poll()
            editor.join(timeout=20)
            assert r.status_code == 200, r.text
            assert r.json()["processed"] == 1
            assert w.project(p.id).issues.by_iid[1].title == "edited mid-listing"
            # No cursor stands past data that is not stored.
            [(_, pid, cursor_at)] = cursor_rows(db_url)
            assert check_stored_before(db_url, sim, uid, "user1", [p.id], cursor_at) == []
            r = server.poll()
            assert r.status_code == 200, r.text
        assert_equal_truth(db_url, uid, sim, "user1", [p.id])
