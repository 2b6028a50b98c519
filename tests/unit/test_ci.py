"""CI's own files: .ci/run runs exactly the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text()
    after = readme.split("Run the tests", 1)[1]
    return re.search(r"```bash\n(.+?)\n```", after, re.DOTALL)[1]


def test_ci_runs_the_readmes_test_command_verbatim() -> None:
    command = readme_test_command()
    assert "pip install -q -c constraints.txt -e '.[dev]'" in command  # the locked versions
    run = (ROOT / ".ci" / "run").read_text()
    assert command + " \\\n" in run
