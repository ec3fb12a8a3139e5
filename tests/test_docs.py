"""The README stays a newcomer's page and the docs site holds the rest: its links resolve, every page is in the nav.

(`make test` also builds the site with `mkdocs build --strict`, which checks links and anchors inside docs/.)"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_readme_is_short_and_says_what_the_model_is_not():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    assert "Research use; not a medical device" in readme
    assert "make run" in readme and "make test" in readme


def test_readme_links_to_files_that_exist():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", readme) if not t.startswith(("http", "#"))]
    assert targets, "the README links to no docs page"
    missing = [t for t in targets if not (REPO / t).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_every_docs_page_is_in_the_nav():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    in_nav = {next(iter(item.values())) for item in config["nav"]}
    pages = {p.relative_to(REPO / "docs").as_posix() for p in (REPO / "docs").rglob("*.md")}
    assert pages == in_nav, f"pages not in the nav: {pages - in_nav}; nav entries without a page: {in_nav - pages}"
