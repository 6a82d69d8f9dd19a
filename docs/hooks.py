"""MkDocs hook: the two reference pages are generated from the code at every build, never kept by hand.

- ``reference/keys.md``: every key of a space file, from ``describe_schema()``, the text ``lic-search validate
  --keys`` prints (so a key added to the config models appears here with its type, default and meaning);
- ``reference/cli.md``: every subcommand's ``--help``, from the argparse parsers ``search.cli.build_parser()``
  builds (the same discovery of ``search/commands/`` that ``lic-search`` itself uses).

Run ``python3 docs/hooks.py keys`` (or ``cli``) to print a page without building the site.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS_PAGE = "reference/keys.md"
CLI_PAGE = "reference/cli.md"
HELP_COLUMNS = "100"  # argparse wraps --help to the terminal: a fixed width keeps the page the same everywhere


def _importable() -> None:
    if str(ROOT) not in sys.path:  # a checkout that was not installed with pip
        sys.path.insert(0, str(ROOT))


def schema_entries() -> list[tuple[str, str]]:
    """(dotted key, text) for every line of ``validate --keys``, in its order."""
    _importable()
    from search.space import describe_schema

    entries = []
    for line in describe_schema().splitlines():
        key, _, text = line.partition(": ")
        entries.append((key.rstrip(":"), text.strip()))
    return entries


def _inline(text: str) -> str:
    """Plain text as HTML, with `backtick` spans as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


_LEAF = re.compile(r"^(?P<type>.*?); (?:default (?P<default>.*?)|(?P<required>required))\.(?: (?P<about>.*))?$")


def keys_page() -> str:
    """Markdown: one table per section of a space file; each row's id is the key (``keys.md#trial.schedule.lr``)."""
    entries = schema_entries()
    parents = {key.rpartition(".")[0] for key, _ in entries}
    top: list[tuple[str, str]] = []  # keys outside every section (name, description)
    sections: dict[str, tuple[str, list[tuple[str, str]]]] = {}  # heading -> (about, rows)
    for key, text in entries:
        depth = key.count(".")
        if key in parents and (depth == 0 or depth == 1 and key.startswith("trial.")):
            sections[key] = (text, [])
            continue
        owner = [s for s in sections if key.startswith(s + ".")]
        (sections[owner[-1]][1] if owner else top).append((key, text))
    out = ["# Space keys", "",
           "Every key a space file may set, with its type, default and meaning. This page is generated at each "
           "build from the same source as `lic-search validate --keys` (`search/space/describe.py`), so it "
           "always matches the installed code. Any value under `trial` may be a sampling primitive "
           "(see [Spaces and primitives](../spaces.md)). Link to a key as `reference/keys.md#<key>`.", ""]
    for heading, (about, rows) in {"top-level keys": ("", top), **sections}.items():
        out += [f"## {heading}", ""]
        if about:
            out += [_inline(about), ""]
        if not rows:
            continue
        out += ['<table class="lic-keys">', "<thead><tr><th>key</th><th>accepts</th><th>default</th>"
                "<th>meaning</th></tr></thead>", "<tbody>"]
        for key, text in rows:
            match = _LEAF.match(text)
            if match and key not in parents:
                accepts, about_key = match["type"], match["about"] or ""
                default = "required" if match["required"] else match["default"]
            else:  # a sub-section (e.g. trial.model.auxt): its keys follow
                accepts, default, about_key = "a mapping", "", text
            shown = f"<code>{html.escape(default)}</code>" if default else ""
            out.append(f'<tr id="{html.escape(key)}"><td><code>{html.escape(key)}</code></td>'
                       f"<td>{_inline(accepts)}</td><td>{shown}</td><td>{_inline(about_key)}</td></tr>")
        out += ["</tbody>", "</table>", ""]
    return "\n".join(out)


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """The ``lic-search`` subcommands by name, as ``lic-search --help`` lists them."""
    _importable()
    from search.cli import build_parser

    parser = build_parser()
    return {"": parser, **dict(_subparsers(parser).choices)}


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    """The parser's one subcommand action (argparse keeps it among its private ``_actions``)."""
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action


def cli_page() -> str:
    """Markdown: ``lic-search --help`` and each subcommand's ``--help``."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        parsers = subcommands()
        helps = {name: parser.format_help() for name, parser in parsers.items()}
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved
    out = ["# Command line", "",
           "Every `lic-search` subcommand with its `--help`, generated at each build from the argparse parsers "
           "(`search/cli.py` discovers one module per subcommand in `search/commands/`). Any subcommand also "
           "takes `--verbose`, which shows the third-party notices the quiet console filters.", ""]
    out += ["| command | what it does |", "| --- | --- |"]
    for name, parser in parsers.items():
        if name:
            summary = _command_help(parsers[""], name)
            out.append(f"| [`lic-search {name}`](#lic-search-{name}) | {summary} |")
    out.append("")
    for name, text in helps.items():
        out += [f"## lic-search {name}".rstrip(), "", "```text", text.rstrip(), "```", ""]
    return "\n".join(out)


def _command_help(parser: argparse.ArgumentParser, name: str) -> str:
    for choice in _subparsers(parser)._choices_actions:
        if choice.dest == name:
            return html.escape(choice.help or "").replace("|", "\\|")
    return ""


def on_files(files, config):
    """Add the generated pages to the site (MkDocs calls this before it builds the navigation)."""
    from mkdocs.structure.files import File

    for page, render in ((KEYS_PAGE, keys_page), (CLI_PAGE, cli_page)):
        files.append(File.generated(config, page, content=render()))
    return files


if __name__ == "__main__":
    print({"keys": keys_page, "cli": cli_page}[sys.argv[1] if len(sys.argv) > 1 else "keys"]())
