"""The README's set-up and test commands are what CI runs."""

import re
import shlex
from pathlib import Path

import typer.main

from fm2s.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _commands(text: str) -> list[str]:
    return [c for line in text.splitlines() for c in re.split(r"\s*&&\s*", line.strip()) if c]


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Set-up", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    setup, tests = [line for line in block.strip().splitlines() if line.strip()]
    ci = _commands((ROOT / ".ci" / "run").read_text())
    for command in _commands(setup) + _commands(tests):
        assert command in ci, f"README command not run by .ci/run: {command}"


def test_readme_is_a_front_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_readme_commands_name_real_commands_and_options():
    """Every fm2s-tile line of the README parses: its command and options exist, its values
    are valid choices (parsed by the program's own parser, nothing run)."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Common tasks", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]
    group = typer.main.get_command(app)
    assert len(lines) >= 6
    for line in lines:
        words = shlex.split(line)
        assert words[0] == "fm2s-tile", line
        if words[1].startswith("--"):
            assert words[1] in ("--help", "--version"), line
            continue
        command = group.commands[words[1]]
        ctx = command.make_context(words[1], words[2:], resilient_parsing=False)
        assert ctx.params, line
