"""Write the metric tables of docs/method.md and docs/outputs.md from the column declarations
(apga/evaluation/columns.py): `python docs/generate_tables.py` (a test keeps them in step).

Each table stands between `<!-- generated: NAME -->` and `<!-- end: NAME -->` in its page."""
from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apga.evaluation.columns import CLASSIFICATION, MASK_QUALITY, OTHER  # noqa: E402

DOCS = Path(__file__).resolve().parent


def _table(columns, truth: bool) -> str:
    lines = ["| column | shown as | better | what it measures |" + (" needs ground truth |" if truth else ""),
             "|---|---|---|---|" + ("---|" if truth else "")]
    for column in columns:
        cells = [f"`{column.name}`", column.header, column.better or "neither", column.meaning.replace("|", "/")]
        if truth:
            cells.append("yes" if column.needs_truth else "no")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


TABLES = {  # page -> {name: table}
    "method.md": {"mask-quality": _table(MASK_QUALITY, truth=True)},
    "outputs.md": {"metrics": _table(CLASSIFICATION + OTHER, truth=False)},
}


def generated(text: str, name: str, table: str) -> str:
    """`text` with the block between the markers of `name` replaced by `table`."""
    pattern = re.compile(rf"(<!-- generated: {name} -->\n).*?(<!-- end: {name} -->)", re.DOTALL)
    assert pattern.search(text), f"no markers for {name}"
    return pattern.sub(lambda match: match.group(1) + table + "\n" + match.group(2), text)


def page_text(page: str) -> str:
    """The page as it should read, its tables generated."""
    text = (DOCS / page).read_text()
    for name, table in TABLES[page].items():
        text = generated(text, name, table)
    return text


if __name__ == "__main__":
    for page in TABLES:
        (DOCS / page).write_text(page_text(page))
        print(f"wrote the tables of {DOCS / page}")
