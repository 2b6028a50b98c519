"""The README's settings table, the Settings fields and .env.example name the same
variables, and the table lists every variable the code reads: they cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def readme_table() -> dict[str, str]:
    """Variable -> default column, from the table under `## Configuration`."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*`([A-Z][A-Z0-9_]*)`\s*\|([^|]*)\|", line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} listed twice"
            rows[m.group(1)] = m.group(2).strip()
    assert rows, "no settings table under ## Configuration"
    return rows


def env_example() -> set[str]:
    text = (ROOT / ".env.example").read_text()
    return set(re.findall(r"^([A-Z][A-Z0-9_]*)=", text, re.M))


def settings_variables() -> set[str]:
    return {name.upper() for name in Settings.model_fields}


def variables_read_outside_settings() -> set[str]:
    """What the code reads from the environment itself: CLI options' envvar=..., and
    os.environ / os.getenv lookups (directly or through a NAME_ENV constant)."""
    found: set[str] = set()
    for path in (ROOT / "app").rglob("*.py"):
        src = path.read_text()
        found |= set(re.findall(r'envvar\s*=\s*"([A-Z][A-Z0-9_]*)"', src))
        found |= set(re.findall(r'(?:environ\.get|getenv|environ\[)\(?\s*"([A-Z][A-Z0-9_]*)"', src))
        found |= set(re.findall(r'^[A-Z_]*_ENV\s*=\s*"([A-Z][A-Z0-9_]*)"', src, re.M))
    return found


def test_readme_lists_every_variable_the_code_reads_and_nothing_else() -> None:
    documented = set(readme_table())
    read = settings_variables() | variables_read_outside_settings()
    assert read - documented == set(), "missing from the README settings table"
    assert documented - read == set(), "in the README table but read by no code"


def test_env_example_holds_every_setting_and_only_documented_ones() -> None:
    example = env_example()
    assert settings_variables() - example == set(), "Settings fields missing in .env.example"
    assert example - set(readme_table()) == set(), ".env.example names undocumented variables"


def test_readme_defaults_match_the_settings_defaults() -> None:
    table = readme_table()
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        cell = table[name.upper()]
        if default is None:
            assert cell == "–", (name, cell)
        elif isinstance(default, list):
            # Comma-separated settings: empty shows as "–" (with what that means), else joined.
            expected = ",".join(str(v) for v in default)
            assert cell.startswith("–") if not default else cell == f"`{expected}`", (name, cell)
        else:
            if isinstance(default, bool):
                expected = str(default).lower()
            elif isinstance(default, float) and default.is_integer():
                expected = str(int(default))
            else:
                expected = str(default)
            assert cell == f"`{expected}`", (name, cell, expected)
