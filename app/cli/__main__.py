"""`python -m app.cli` (tests and environments without the console script)."""

from app.cli import main

main()
