"""The front page and docs/: short, generated where they list the code, and no dead link."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "datasets" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in page.read_text().splitlines() if line.startswith("#")}


def test_the_flags_page_is_generated_from_the_config():
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate_flags", ROOT / "docs" / "generate_flags.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs" / "flags.md").read_text() == module.flags_markdown(), "run: python docs/generate_flags.py"
    from apga.config import field_help

    for name in field_help():
        assert f"`--{name.replace('_', '-')}`" in module.flags_markdown(), name


def test_the_metric_tables_are_generated_from_the_column_declarations():
    """docs/method.md and docs/outputs.md list each metric column as apga/evaluation/columns.py declares it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate_tables", ROOT / "docs" / "generate_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for page in module.TABLES:
        assert (ROOT / "docs" / page).read_text() == module.page_text(page), "run: python docs/generate_tables.py"
    from apga.evaluation.columns import METRICS

    documented = (ROOT / "docs" / "method.md").read_text() + (ROOT / "docs" / "outputs.md").read_text()
    for column in METRICS:
        assert f"| `{column.name}` | {column.header} |" in documented, column.name


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_of_a_page_resolves(page):
    dead = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            dead.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            dead.append(target)
    assert not dead, dead


def test_the_link_check_sees_a_dead_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n[ok](page.md#title) [gone](nowhere.md) [bad anchor](page.md#nothing)\n")
    found = [t for t in LINK.findall(page.read_text())
             if not (page.parent / t.partition("#")[0]).exists()
             or (t.partition("#")[2] and t.partition("#")[2] not in anchors(page.parent / t.partition("#")[0]))]
    assert found == ["nowhere.md", "page.md#nothing"]


def test_the_front_page_is_short_and_points_to_the_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in readme, page.name


def test_nothing_points_outside_the_repository():
    outside = ["METHOD" + ".md", "../" + "shared"]
    tracked = [*PAGES, *ROOT.joinpath("apga").rglob("*.py"), *ROOT.joinpath("benchmarks").rglob("*.py"),
               *ROOT.joinpath("tests").rglob("*.py")]
    hits = [f"{path.relative_to(ROOT)}: {word}" for path in tracked for word in outside if word in path.read_text()]
    assert not hits, hits
