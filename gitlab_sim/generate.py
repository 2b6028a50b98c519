"""Deterministic seed data: the same seed (and the same `now`) always gives the same world.

Shapes chosen to trip a naive client: nested project paths, private and public projects,
users sharing projects, confidential issues (some by non-members of public projects),
internal and system notes, null descriptions and avatars, unicode, labels with commas,
notes whose first line is long or padded, and MRs in every state; threads with replies,
resolved and open, assignees, and `#N`/`!N` references ("Fixes #2").

Threads and assignees are drawn from a second random stream, after everything else: the
first stream's draws, and so the items, notes and their times, are those of the worlds
built before threads existed (the benchmark's figures stay comparable across versions).
"""

from __future__ import annotations

import random
import time

from gitlab_sim.world import Item, Note, OAuthApp, SimConfig, World

DAY_MS = 86_400_000

_NAMES = [
    "Ada Lovelace",
    "Zoë Ångström",
    "Renée Müller",
    "李雷",
    "José Ñúñez",
    "Grace Hopper",
    "Søren Kierkegaard",
    "Алиса Петрова",
    "Chloé O'Brien",
    "Dmitriy Zaporozhets",
]
_GROUPS = ["group-a", "group-b/sub", "group-a/sub/deep", "platform", "group-c/tools/sub"]
_LABELS = [
    "bug",
    "feature",
    "priority::high",
    "priority::low",
    "needs, triage",
    "UX/UI",
    "documentation",
    "Ünïcödé",
    "good first issue",
    "tech debt, later",
    "backend",
    "frontend",
]
_VERBS = ["Fix", "Add", "Refactor", "Remove", "Improve", "Investigate", "Document", "Réparer"]
_NOUNS = [
    "login page padding",
    "flaky CI job",
    "search results pagination",
    "crash on empty input",
    "naïve date parsing",
    "timezone handling (UTC±)",
    "日本語 rendering",
    "emoji 🚀 in titles",
    "rate limit backoff",
    "OAuth refresh race",
    'quotes "and" <tags>',
    "commas, semicolons; and colons:",
]
_DESCRIPTIONS = [
    "Steps to reproduce:\n1. Open the page\n2. Click *Save*\n\nExpected: it saves.",
    "Fixes #2. Omnis vero earum sunt corporis dolor et placeat.",
    "Ça ne marche pas avec les caractères accentués — voir la capture.",
    "```python\nprint('hello')\n```\nThe snippet above fails on 3.12.",
    "Related to #1 and !2. /cc @user1",
    "多言語のテキストを含む説明。",
    "",
]
_NOTE_BODIES = [
    "Looks good to me 👍",
    "LGTM",
    "   Padded first line, stripped in titles   \nand a second line",
    "This first line is deliberately very long so that a comment title built from it must be "
    "cut at ninety-seven characters and end with an ellipsis.\nSecond line.",
    "Can we also check the `updated_after` handling?\n\n```\ncurl /api/v4/...\n```",
    "Merci ! Ça marche très bien.",
    "@user2 could you take a look?",
    "I pushed a fix in 3f2a1b, please re-test.",
    "Ещё один комментарий с юникодом.",
    "Needs a rebase (see #3), then ready.",
]
_SYSTEM_BODIES = [
    "added ~bug label",
    "removed ~needs, triage label",
    "changed the description",
    "assigned to @user2",
    "mentioned in merge request !3",
    "changed title from **Old** to **New**",
    "marked this issue as related to #1",
    "changed milestone to %v1.0",
]


def generate_world(
    *,
    seed: int = 1,
    users: int = 5,
    projects: int = 4,
    issues: int = 30,
    merge_requests: int = 15,
    notes: int = 4,
    days: int = 30,
    big_project_issues: int = 0,
    big_project_notes: int = 1,
    now_ms: int | None = None,
    base_url: str = "http://127.0.0.1",
    config: SimConfig | None = None,
    oauth_app: OAuthApp | None = None,
) -> World:
    """Build a world from a seed.

    users/projects: how many; issues/merge_requests: per project; notes: average notes per
    item (user and system); days: timestamps spread over this many days before `now_ms`
    (default: the real clock). big_project_issues > 0 adds one more private project
    `big-group/monorepo` holding that many issues (and `big_project_notes` notes per issue on
    average), shared by the first two users.
    """
    if users < 1:
        raise ValueError("users must be >= 1")
    rng = random.Random(seed)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    world = World(config=config, oauth_app=oauth_app, base_url=base_url, token_seed=seed)
    # Freeze the world clock to `now` at build time only for created_ms stamps of users.
    world.clock_offset_ms = now - int(time.time() * 1000)

    for i in range(1, users + 1):
        name = _NAMES[(i - 1) % len(_NAMES)]
        avatar = None if i % 3 == 0 else f"{base_url}/uploads/-/system/user/avatar/{i}/avatar.png"
        token = f"sim-user{i}-token-{rng.getrandbits(64):016x}"
        world.create_user(f"user{i}", name, avatar, user_id=i, token=token)

    all_users = list(range(1, users + 1))
    for j in range(1, projects + 1):
        group = _GROUPS[(j - 1) % len(_GROUPS)]
        visibility = "private" if j % 2 == 1 else "public"
        # Two consecutive users always share project j, so users overlap across projects.
        members = {(j - 1) % users + 1, j % users + 1}
        members |= {u for u in all_users if rng.random() < 0.3}
        world.create_project(
            f"{group}/project-{j}",
            visibility=visibility,
            members=sorted(members),
            name=f"Project {j}",
            project_id=j,
        )
    if big_project_issues > 0:
        world.create_project(
            "big-group/monorepo",
            visibility="private",
            members=sorted({1, min(2, users)}),
            name="Monorepo",
            project_id=projects + 1,
        )

    span = max(days, 1) * DAY_MS
    all_items: list[Item] = []
    all_notes: list[Note] = []
    for p in world.projects.values():
        big = p.path_with_namespace == "big-group/monorepo"
        counts = (
            [("issue", big_project_issues, big_project_notes), ("merge_request", 0, 0)]
            if big
            else [("issue", issues, notes), ("merge_request", merge_requests, notes)]
        )
        members = sorted(p.members)
        for kind, n, avg_notes in counts:
            for _ in range(n):
                it = _make_item(rng, kind, p.id, p.visibility, members, all_users, now, span)
                all_items.append(it)
                _make_notes(rng, it, avg_notes, members, p.visibility, all_users, now)
                all_notes.extend(it.notes)

    # Global ids and per-project iids follow creation order, as in GitLab.
    all_items.sort(key=lambda i: i.created_ms)
    next_id = {"issue": 1, "merge_request": 1}
    next_iid: dict[tuple[int, str], int] = {}
    for it in all_items:
        it.id = next_id[it.kind]
        next_id[it.kind] += 1
        key = (it.project_id, it.kind)
        it.iid = next_iid.get(key, 1)
        next_iid[key] = it.iid + 1
    all_notes.sort(key=lambda n: n.created_ms)
    for k, note in enumerate(all_notes, start=1):
        note.id = k
        world.notes[k] = note
    by_project: dict[tuple[int, str], list[Item]] = {}
    for it in all_items:
        it.notes.sort(key=lambda n: n.id)
        by_project.setdefault((it.project_id, it.kind), []).append(it)
    for (pid, kind), items in by_project.items():
        world.projects[pid].index(kind).bulk_load(items)  # type: ignore[arg-type]
    world._reserve_ids("issue", next_id["issue"] - 1)
    world._reserve_ids("merge_request", next_id["merge_request"] - 1)
    world._reserve_ids("note", len(all_notes))
    _threads_and_assignees(world, random.Random(seed * 7919 + 1), all_items)
    # From here on the world runs on the real clock again.
    world.clock_offset_ms = 0
    return world


def _threads_and_assignees(world: World, rng: random.Random, items: list[Item]) -> None:
    """Assignees among the project's members; notes grouped into threads: some replies to
    an earlier comment, some standalone comments started as threads (resolvable), half of
    the threads resolved by the item's author."""
    for it in items:
        members = sorted(world.projects[it.project_id].members)
        if members and rng.random() < 0.5:
            it.assignee_ids = rng.sample(members, min(len(members), rng.randint(1, 2)))
        threads: list[list[Note]] = []
        for n in sorted(it.notes, key=lambda n: (n.created_ms, n.id)):
            comments = [t for t in threads if not t[0].system]
            if not n.system and comments and rng.random() < 0.3:
                thread = rng.choice(comments)
                thread.append(n)
                for m in thread:
                    m.individual = False
                n.discussion_id = thread[0].discussion_id
                continue
            n.discussion_id = world.new_discussion_id()
            n.individual = n.system or rng.random() >= 0.2
            threads.append([n])
        for thread in threads:
            if not thread[0].individual and rng.random() < 0.5:
                for m in thread:
                    m.resolved, m.resolved_by = True, it.author_id
                    m.resolved_ms = thread[-1].created_ms


def _make_item(
    rng: random.Random,
    kind: str,
    project_id: int,
    visibility: str,
    members: list[int],
    all_users: list[int],
    now: int,
    span: int,
) -> Item:
    created = now - 1000 - int(rng.random() * span)
    updated = created + int(rng.random() * (now - 1000 - created))
    # Anyone may open issues on a public project: such authors see their confidential issues.
    pool = all_users if (visibility == "public" and rng.random() < 0.2) or not members else members
    author = rng.choice(pool)
    title = f"{rng.choice(_VERBS)} {rng.choice(_NOUNS)}"
    description = None if rng.random() < 0.15 else rng.choice(_DESCRIPTIONS)
    labels = rng.sample(_LABELS, rng.randint(0, 3))
    if kind == "issue":
        state = "opened" if rng.random() < 0.7 else "closed"
    else:
        state = rng.choice(["opened", "closed", "merged"])
    return Item(
        kind=kind,  # type: ignore[arg-type]
        id=0,
        iid=0,
        project_id=project_id,
        title=title,
        description=description,
        state=state,
        author_id=author,
        labels=labels,
        created_ms=created,
        updated_ms=updated,
        confidential=kind == "issue" and rng.random() < 0.12,
        closed_ms=updated if state == "closed" else None,
        merged_ms=updated if state == "merged" else None,
    )


def _make_notes(
    rng: random.Random,
    it: Item,
    avg: int,
    members: list[int],
    visibility: str,
    all_users: list[int],
    now: int,
) -> None:
    k = rng.randint(0, 2 * avg) if avg > 0 else 0
    latest = it.updated_ms
    for _ in range(k):
        created = it.created_ms + int(rng.random() * (it.updated_ms - it.created_ms))
        system = rng.random() < 0.3
        internal = not system and bool(members) and rng.random() < 0.1
        if internal or not (visibility == "public" and rng.random() < 0.3) and members:
            author = rng.choice(members)
        else:
            author = rng.choice(all_users)
        body = rng.choice(_SYSTEM_BODIES if system else _NOTE_BODIES)
        edited = not system and rng.random() < 0.15
        updated = created + int(rng.random() * (now - 1000 - created)) if edited else created
        n = Note(0, body, author, created, updated, system, internal, it)
        it.notes.append(n)
        if not system:
            it.user_notes_count += 1
        latest = max(latest, updated)
    # A note touches its parent (ThrottledTouch aside), so the parent is at least as recent.
    it.updated_ms = latest
