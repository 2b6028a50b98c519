"""`runs` (the last poll runs) and `status` (runs, each user's last sync, failing projects)."""

from __future__ import annotations


def runs() -> None:
    """Show the last poll runs."""


def status() -> None:
    """Show the last runs, each user's last sync and the failing projects."""
