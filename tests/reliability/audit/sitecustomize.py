"""Loaded by service subprocesses of the reliability tests (PYTHONPATH), only when
GI_SYNC_AUDIT names a file: every user sync's lease-held work (the public seam
`UserLease.held`) is appended there as one JSON line {user, pid, start, end} on the
system-wide monotonic clock, so tests can prove that no
user is ever synced by two runs at once, even across processes."""

import os

if os.environ.get("GI_SYNC_AUDIT"):
    import json
    import time
    from contextlib import asynccontextmanager

    from app.sync.lease import UserLease

    _path = os.environ["GI_SYNC_AUDIT"]
    _original = UserLease.held

    @asynccontextmanager
    async def _audited(self):
        start = time.monotonic()
        try:
            async with _original(self):
                yield
        finally:
            line = json.dumps(
                {"user": self.user_id, "pid": os.getpid(), "start": start, "end": time.monotonic()}
            )
            fd = os.open(_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)

    UserLease.held = _audited
