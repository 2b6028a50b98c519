"""The shard partition: every user in exactly one shard, the same in every process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from app.sync.shard import MAX_SHARDS, Shard, shard_of, shard_problem

IDS = [f"clx{i:05d}user" for i in range(2000)] + ["u1", "ü-ñ", "a" * 200]


@pytest.mark.parametrize("shards", [1, 2, 3, 4, 7, 16])
def test_every_user_is_in_exactly_one_shard(shards):
    owners = {uid: [k for k in range(shards) if Shard(k, shards).holds(uid)] for uid in IDS}
    assert all(len(ks) == 1 for ks in owners.values())
    # A hash, not a range: the shards come out roughly even (2,003 ids).
    counts = Counter(ks[0] for ks in owners.values())
    assert len(counts) == shards
    assert min(counts.values()) > len(IDS) / shards * 0.8


def test_the_partition_is_pinned_and_the_same_in_other_processes():
    # Python's hash() of a str differs per process (PYTHONHASHSEED); sha256 does not. These
    # values are part of the contract: changing them reshuffles every deployment's shards.
    pinned = {uid: shard_of(uid, 10) for uid in IDS[:50]}
    code = (
        "import json, sys; from app.sync.shard import shard_of; "
        "print(json.dumps({u: shard_of(u, 10) for u in json.loads(sys.argv[1])}))"
    )
    for seed in ("0", "1", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", code, json.dumps(IDS[:50])],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert json.loads(out) == pinned


def test_known_values():
    # int(sha256("u1")[:8], big) % n, computed independently (documented in the README).
    import hashlib

    digest = hashlib.sha256(b"u1").hexdigest()
    assert shard_of("u1", 1000) == int(digest[:16], 16) % 1000


@pytest.mark.parametrize(
    ("shard", "shards", "ok"),
    [
        (0, 1, True),
        (3, 4, True),
        (MAX_SHARDS - 1, MAX_SHARDS, True),
        (4, 4, False),
        (-1, 4, False),
        (0, 0, False),
        (0, MAX_SHARDS + 1, False),
    ],
)
def test_shard_bounds(shard, shards, ok):
    assert (shard_problem(shard, shards) is None) is ok
    if ok:
        assert Shard(shard, shards).count == shards
    else:
        with pytest.raises(ValueError):
            Shard(shard, shards)
