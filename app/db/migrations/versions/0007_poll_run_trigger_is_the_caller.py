"""poll_run.trigger names who called, never how: signed /api/poll runs were not Inngest

Until this version a signed /api/poll call was recorded with trigger `inngest`, whoever sent
it (a curl script, a crontab): the signature method was taken for the caller. Those rows are
relabelled `api`, the trigger such a call gets now. They are told apart exactly: the Inngest
functions recorded their runs without `auth_method` (NULL) until this version, while every
/api/poll run since 0003 has one. Runs older than 0003 carry no `auth_method` and stay as
they are. Data only, on this service's own poll_run table; no column changes.

`gitlab-insights serve` migrates before it serves, so no run of the new code (whose Inngest
runs do record `auth_method`) exists yet when this runs.

Revision ID: 0007
Revises: 0006
Create Date: 2024-01-07 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "UPDATE poll_run SET trigger = 'api' WHERE trigger = 'inngest' AND auth_method IS NOT NULL"
    )


def downgrade() -> None:
    # The old label was wrong, and the relabelled rows are no longer told apart: keep them.
    pass
