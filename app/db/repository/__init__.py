"""Every SQL statement of the service lives in this package; callers pass an AsyncSession.

Portable across PostgreSQL and SQLite: upserts use each dialect's ON CONFLICT, chosen once
per call from the session's dialect; batches are one statement per page, never per row.
One module per section (accounts, events, cursors, leases, runs); callers import the package
(`from app.db import repository as repo`) and never a module of it.
"""

from app.db.repository.accounts import *  # noqa: F403
from app.db.repository.claim import *  # noqa: F403
from app.db.repository.cursors import *  # noqa: F403
from app.db.repository.events import *  # noqa: F403
from app.db.repository.leases import *  # noqa: F403
from app.db.repository.people import *  # noqa: F403
from app.db.repository.runs import *  # noqa: F403
from app.db.repository.schema import *  # noqa: F403
from app.db.repository.work_items import *  # noqa: F403
