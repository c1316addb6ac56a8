"""`python -m apga.report RUNS_DIR`: print the summary tables of RUNS_DIR/results.csv and write them,
with the plots, beside it (apga/reporting/)."""
from __future__ import annotations

import sys

from apga.cli import Command
from apga.reporting.summary import main

REPORT = Command(
    usage="python -m apga.report [RUNS_DIR]   (or: apga-report ...)",
    summary="Print the summary of RUNS_DIR/results.csv (default: runs): each method over seeds with its paired "
            "difference from the baseline and a 95 % interval, and the mask-quality table; write summary.md and the "
            "plots beside it.",
    flags=[], positionals=("out_dir",), path_positionals=("out_dir",), required=0,
)


def entry_point(argv: list[str] | None = None) -> None:
    """`python -m apga.report` and the `apga-report` console script."""
    REPORT.run(main, sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    entry_point()
