"""MkDocs hooks: pages generated at build time, so they cannot drift from their source.

- ``reference/cli.md``: the command-line reference, walked from the typer app itself
  (``fm2s.cli.app``); tests/test_docs.py compares it with ``fm2s-tile --help``.
- ``benchmark-results.md`` (and its plots): ``benchmarks/RESULTS.md`` as it is.
- ``changelog.md``: ``CHANGELOG.md`` as it is.
"""

from __future__ import annotations

from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent
#: repository files published on the site unchanged: source -> page path
COPIED = {"benchmarks/RESULTS.md": "benchmark-results.md",
          "benchmarks/throughput.png": "throughput.png",
          "benchmarks/quality_vs_time.png": "quality_vs_time.png",
          "CHANGELOG.md": "changelog.md"}


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _usage(command: click.Command, path: str, ctx: click.Context) -> str:
    pieces = [p.human_readable_name.upper() if isinstance(p, click.Argument) else None
              for p in command.get_params(ctx)]
    arguments = [p for p in pieces if p]
    return " ".join([path, "[OPTIONS]", *arguments])


def _params_table(command: click.Command, ctx: click.Context) -> list[str]:
    rows = ["| argument or option | description |", "|---|---|"]
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, help_text = record
        if isinstance(param, click.Argument):
            names = param.human_readable_name.upper() + " " + names.split(" ", 1)[1] \
                if " " in names else param.human_readable_name.upper()
        rows.append(f"| `{names}` | {_escape(help_text)} |")
    return rows


def cli_reference() -> str:
    """The command-line reference in Markdown, from the click command of ``fm2s.cli.app``."""
    import typer.main

    from fm2s.cli import app

    group = typer.main.get_command(app)
    root = click.Context(group, info_name="fm2s-tile")
    lines = ["# Command-line reference", "",
             "Generated from the command-line program itself when the site is built "
             "(`fm2s-tile --help` and `fm2s-tile COMMAND --help` print the same).", "",
             f"`{_usage(group, 'fm2s-tile', root)} COMMAND [ARGS]...`", "",
             (group.help or "").strip(), "", *_params_table(group, root), "",
             "| command | what it does |", "|---|---|"]
    names = group.list_commands(root)
    for name in names:
        lines.append(f"| [`{name}`](#{name}) | {_escape(group.commands[name].get_short_help_str(200))} |")
    for name in names:
        command = group.commands[name]
        ctx = click.Context(command, info_name=name, parent=root)
        lines += ["", f"## {name}", "", f"`{_usage(command, 'fm2s-tile ' + name, ctx)}`", "",
                  (command.help or "").strip(), "", *_params_table(command, ctx)]
    return "\n".join(lines) + "\n"


def on_files(files, config):
    from mkdocs.structure.files import File

    files.append(File.generated(config, "reference/cli.md", content=cli_reference()))
    for source, page in COPIED.items():
        files.append(File.generated(config, page, abs_src_path=str(ROOT / source)))
    return files
