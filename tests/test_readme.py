"""The README's set-up and test commands are what CI runs."""

import re
from pathlib import Path

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
