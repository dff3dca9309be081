"""The documentation site: its command-line page is the program's own --help."""

import importlib.util
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fm2s.cli import app

ROOT = Path(__file__).resolve().parents[1]
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[a-z])(?![\w-])")
runner = CliRunner()


def _hooks():
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "mkdocs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _help(*command: str) -> str:
    res = runner.invoke(app, [*command, "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    return res.output


def _commands(help_text: str) -> list[str]:
    panel = help_text.split("Commands", 1)[1]
    return re.findall(r"^[│|]\s+([a-z][a-z-]*)\s{2,}", panel, flags=re.M)


@pytest.fixture(scope="module")
def page():
    """The command-line page as the site build generates it, split by command."""
    text = _hooks().cli_reference()
    parts = re.split(r"^## ", text, flags=re.M)
    sections = {"": parts[0]}
    sections.update((part.split("\n", 1)[0].strip(), part) for part in parts[1:])
    return sections


def test_the_page_lists_every_command(page):
    commands = _commands(_help())
    assert len(commands) >= 6 and "train-and-apply" in commands
    assert sorted(set(page) - {""}) == sorted(commands)


@pytest.mark.parametrize("command", ["", "train-and-apply", "apply", "bench", "info", "sample",
                                     "demo"])
def test_the_page_lists_every_option_of_a_command(page, command):
    shown = _help(*([command] if command else []))
    if command:
        shown = shown.split("Usage:", 1)[1]
    flags = set(FLAG.findall(shown))
    assert "--help" in flags
    assert set(FLAG.findall(page[command])) == flags
    # every argument of the usage line (typer writes {name}, or [name] if optional), by name
    usage = next(line for line in _help(*([command] if command else [])).splitlines()
                 if "Usage:" in line)
    arguments = re.findall(r"[{\[]([a-z]\w*)[}\]]", usage)
    assert bool(arguments) == (command not in ("", "bench"))
    for argument in arguments:
        assert f"`{argument.upper()}" in page[command]
