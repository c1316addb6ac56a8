"""results.csv appends (also from concurrent processes) and the summary table."""
from __future__ import annotations

import multiprocessing

import pandas as pd

from apga.report import summarize, to_markdown
from apga.results import append_row, read_results


def _writer(args):
    path, worker = args
    for i in range(10):
        append_row(path, {"body_part": "elbow", "seed": worker, "n_shot": "all", "method": f"m{i}",
                          "variant": "", "model_selection": "val", "accuracy": i / 10, "run_id": f"{worker}/{i}"})


def test_concurrent_writers_lose_no_row(tmp_path):
    path = tmp_path / "results.csv"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.map(_writer, [(path, w) for w in range(4)])
    table = read_results(path)
    assert len(table) == 40 and table["run_id"].is_unique
    assert not list(tmp_path.glob(".results.csv.*"))  # no temporary file left behind


def test_rows_are_appended_with_new_columns(tmp_path):
    path = tmp_path / "results.csv"
    append_row(path, {"body_part": "hand", "seed": 89, "method": "baseline", "accuracy": 0.5})
    append_row(path, {"body_part": "hand", "seed": 89, "method": "apga", "accuracy": 0.6, "accuracy_tta": 0.7})
    table = read_results(path)
    assert table["method"].tolist() == ["baseline", "apga"]
    assert pd.isna(table["accuracy_tta"][0]) and table["accuracy_tta"][1] == 0.7


def test_summary_means_deltas_and_wins():
    rows = []
    for seed, base, apga in ((89, 0.70, 0.75), (90, 0.80, 0.78), (91, 0.60, 0.66)):
        for method, accuracy in (("baseline", base), ("apga", apga)):
            rows.append({"body_part": "elbow", "n_shot": "all", "model_selection": "val", "seed": seed,
                         "method": method, "variant": "", "accuracy": accuracy})
    summary = summarize(pd.DataFrame(rows)).set_index("method")
    assert abs(summary.loc["apga", "accuracy_mean"] - 0.73) < 1e-9
    assert abs(summary.loc["apga", "delta_vs_baseline"] - 0.03) < 1e-9
    assert summary.loc["apga", "wins"] == "2/3"
    assert abs(summary.loc["baseline", "accuracy_std"] - 0.1) < 1e-9
    # std of 0.75, 0.78, 0.66 = sqrt(0.0078 / 2) = 0.062
    assert "| elbow | all | val | apga | 3 | 0.730 ± 0.062 | +0.030 | 2/3 |" in to_markdown(summarize(pd.DataFrame(rows)))
