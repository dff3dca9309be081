"""MkDocs hooks: pages generated at build time, so they cannot drift from their source.

- ``reference/cli.md``: the command-line reference, walked from the typer app itself
  (``fm2s.cli.app``); tests/test_docs.py compares it with ``fm2s-tile --help``.
- ``benchmark-results.md`` (and its plots): ``benchmarks/RESULTS.md`` as it is.
- ``changelog.md``: ``CHANGELOG.md`` as it is (its links to ``docs/`` made the site's).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent
#: repository files published on the site unchanged: source -> page path
COPIED = {"benchmarks/RESULTS.md": "benchmark-results.md",
          "benchmarks/throughput.png": "throughput.png",
          "benchmarks/quality_vs_time.png": "quality_vs_time.png",
          "CHANGELOG.md": "changelog.md"}


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _is_argument(param) -> bool:
    # typer runs on click or on its own copy of it: no isinstance against click's classes
    return param.param_type_name == "argument"


def _usage(command, path: str, ctx) -> str:
    arguments = [p.name.upper() if p.required else f"[{p.name.upper()}]"
                 for p in command.get_params(ctx) if _is_argument(p)]
    return " ".join([path, "[OPTIONS]", *arguments])


def _params_table(command, ctx) -> list[str]:
    rows = ["| argument or option | type | description |", "|---|---|---|"]
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        shown, help_text = record
        if _is_argument(param):
            names, kind = param.name.upper(), shown.split(" ", 1)[-1]
        else:
            names = ", ".join([*param.opts, *param.secondary_opts])
            kind = shown[len(names):].strip() if shown.startswith(names) else ""
        kind = f"`{kind}`" if kind else ""
        rows.append(f"| `{names}` | {kind} | {_escape(help_text)} |")
    return rows


def cli_reference() -> str:
    """The command-line reference in Markdown, from the click command of ``fm2s.cli.app``."""
    import typer.main

    from fm2s.cli import app

    group = typer.main.get_command(app)
    root = group.context_class(group, info_name="fm2s-tile")
    lines = ["# Command-line reference", "",
             "Generated from the command-line program itself when the site is built "
             "(`fm2s-tile --help` and `fm2s-tile COMMAND --help` print the same).", "",
             f"`{_usage(group, 'fm2s-tile', root)} COMMAND [ARGS]...`", "",
             (group.help or "").strip(), "", *_params_table(group, root), "",
             "| command | what it does |", "|---|---|"]
    names = group.list_commands(root)
    for name in names:
        summary = _escape(group.commands[name].get_short_help_str(200))
        lines.append(f"| [`{name}`](#{name}) | {summary} |")
    for name in names:
        command = group.commands[name]
        ctx = command.context_class(command, info_name=name, parent=root)
        lines += ["", f"## {name}", "", f"`{_usage(command, 'fm2s-tile ' + name, ctx)}`", "",
                  (command.help or "").strip(), "", *_params_table(command, ctx)]
    return "\n".join(lines) + "\n"


def on_files(files, config):
    from mkdocs.structure.files import File

    files.append(File.generated(config, "reference/cli.md", content=cli_reference()))
    for source, page in COPIED.items():
        if source.endswith(".md"):
            # links written for the repository (docs/x.md) point at the site's pages (x.md)
            text = (ROOT / source).read_text(encoding="utf-8").replace("](docs/", "](")
            files.append(File.generated(config, page, content=text))
        else:
            files.append(File.generated(config, page, abs_src_path=str(ROOT / source)))
    return files
