"""The documentation site builds with warnings as errors, a broken link or anchor fails the build, and the two
generated references are complete: every key `lic-search validate --keys` prints and every subcommand.

The site is built in this process through MkDocs' own API (as `mkdocs build --strict` does), so the project
is imported once for both builds; nothing is fetched (no privacy/social plugins, no fonts)."""

from __future__ import annotations

import argparse
import html
import logging
import os
import shutil
from pathlib import Path

import pytest

mkdocs_build = pytest.importorskip("mkdocs.commands.build", reason="mkdocs is in the test extra: pip install -e '.[test]'")
from mkdocs.config import load_config  # noqa: E402
from mkdocs.exceptions import Abort  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def build(config_file: Path, site_dir: Path) -> None:
    """``mkdocs build --strict`` of ``config_file`` into ``site_dir``; raises Abort on any warning."""
    os.environ.setdefault("NO_MKDOCS_2_WARNING", "1")
    config = load_config(config_file=str(config_file), strict=True, site_dir=str(site_dir))
    mkdocs_build.build(config)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site_dir = tmp_path_factory.mktemp("site")
    build(ROOT / "mkdocs.yml", site_dir)
    return site_dir


def page_text(site: Path, page: str) -> str:
    return html.unescape((site / page / "index.html").read_text(encoding="utf-8"))


def test_every_validate_key_is_in_the_key_reference(site):
    from search.space import describe_schema

    keys = [line.partition(": ")[0].rstrip(":") for line in describe_schema().splitlines()]
    text = page_text(site, "reference/keys")
    assert len(keys) > 50
    missing = [key for key in keys if f'id="{key}"' not in text and f"## {key}" not in text
               and f">{key}<" not in text]
    assert not missing, f"keys of validate --keys missing from the built key reference: {missing}"


def test_every_subcommand_is_in_the_cli_reference(site):
    from search.cli import build_parser

    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    text = page_text(site, "reference/cli")
    assert len(action.choices) >= 10
    for name, sub in action.choices.items():
        assert f"usage: lic-search {name}" in text, name
        for option in (o for a in sub._actions for o in a.option_strings if o.startswith("--")):
            assert option in text, f"lic-search {name} {option}"


def test_pages_and_pictures_are_in_the_site(site):
    for png in (ROOT / "docs").glob("*.png"):
        assert (site / png.name).is_file(), png.name
    assert "lic-search" in page_text(site, "")
    assert "baseline" in page_text(site, "ablations")


def test_a_broken_link_or_anchor_fails_the_build(tmp_path, caplog):
    """The real config and pages, plus one page with a link to a missing page and one to a missing anchor."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    index = tmp_path / "docs" / "index.md"
    index.write_text(index.read_text(encoding="utf-8")
                     + "\n[gone](no-such-page.md) and [lost](spaces.md#no-such-heading)\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="mkdocs"), pytest.raises(Abort, match="strict mode"):
        build(tmp_path / "mkdocs.yml", tmp_path / "site")
    warnings = caplog.text
    assert "no-such-page.md" in warnings and "no-such-heading" in warnings, warnings
