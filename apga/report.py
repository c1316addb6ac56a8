"""The summary table of results.csv: per body part, n_shot and protocol, each method over seeds.

    python -m apga.report runs/

prints a markdown table and writes it to runs/summary.md: accuracy mean and standard
deviation over seeds, the difference from the baseline's mean, in how many seeds the method
beat the baseline of the same seed, TTA accuracy, study-level kappa and mask IoU.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd

from apga.results import read_results
from apga.utils import atomic_write_bytes

SUMMARY_FILE = "summary.md"
GROUP = ["body_part", "n_shot", "model_selection"]


def _label(row) -> str:
    return row["method"] + (f"[{row['variant']}]" if isinstance(row.get("variant"), str) and row["variant"] else "")


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (body part, n_shot, protocol, method[variant])."""
    columns = GROUP + ["method", "seeds", "accuracy_mean", "accuracy_std", "delta_vs_baseline", "wins",
                       "accuracy_tta_mean", "study_kappa_mean", "mask_iou_mean"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    table = table.copy()
    table["label"] = table.apply(_label, axis=1)
    for column in ("accuracy_tta", "study_kappa", "mask_iou"):
        if column not in table.columns:
            table[column] = math.nan
    table = table.drop_duplicates(subset=GROUP + ["seed", "label"], keep="last")
    rows = []
    for key, group in table.groupby(GROUP, sort=True):
        baseline = group[group["label"] == "baseline"].set_index("seed")["accuracy"]
        for label, runs in group.groupby("label", sort=False):
            paired = runs.set_index("seed")["accuracy"].reindex(baseline.index).dropna()
            wins = "" if label == "baseline" else f"{int((paired > baseline[paired.index]).sum())}/{len(paired)}"
            rows.append(dict(zip(GROUP, key)) | {
                "method": label, "seeds": len(runs),
                "accuracy_mean": runs["accuracy"].mean(), "accuracy_std": runs["accuracy"].std(ddof=1),
                "delta_vs_baseline": runs["accuracy"].mean() - baseline.mean() if len(baseline) else math.nan,
                "wins": wins,
                "accuracy_tta_mean": pd.to_numeric(runs["accuracy_tta"], errors="coerce").mean(),
                "study_kappa_mean": pd.to_numeric(runs["study_kappa"], errors="coerce").mean(),
                "mask_iou_mean": pd.to_numeric(runs["mask_iou"], errors="coerce").mean(),
            })
    order = {name: i for i, name in enumerate(["baseline", "cutout", "gradcam", "end2end", "apga", "random"])}
    summary = pd.DataFrame(rows, columns=columns)
    summary["_order"] = summary["method"].map(lambda m: order.get(m.split("[")[0], 99))
    return summary.sort_values(GROUP + ["_order", "method"]).drop(columns="_order").reset_index(drop=True)


def _cell(value, digits=3) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def to_markdown(summary: pd.DataFrame) -> str:
    headers = ["body part", "n_shot", "selection", "method", "seeds", "accuracy", "Δ vs baseline", "wins",
               "accuracy (TTA)", "study κ", "mask IoU"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in summary.itertuples():
        accuracy = f"{row.accuracy_mean:.3f}" + ("" if math.isnan(row.accuracy_std) else f" ± {row.accuracy_std:.3f}")
        delta = "" if row.method == "baseline" else f"{row.delta_vs_baseline:+.3f}"
        cells = [row.body_part, row.n_shot, row.model_selection, row.method, row.seeds, accuracy, delta, row.wins,
                 _cell(row.accuracy_tta_mean), _cell(row.study_kappa_mean), _cell(row.mask_iou_mean)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def write(summary: pd.DataFrame, out_dir: str | Path) -> Path:
    path = Path(out_dir) / SUMMARY_FILE
    text = ("Image-level accuracy on MURA's validation split: mean ± standard deviation over seeds; "
            "wins = seeds in which the method beat the baseline of the same seed.\n"
            "selection 'val' = checkpoint chosen on the reported split (the paper's protocol); "
            "'holdout' = chosen on held-out training patients.\n\n" + to_markdown(summary) + "\n")
    atomic_write_bytes(path, text.encode())
    return path


def main(out_dir: str = "runs") -> None:
    """Print and write the summary table of <out_dir>/results.csv."""
    table = read_results(Path(out_dir))
    if table.empty:
        print(f"error: no results in {Path(out_dir) / 'results.csv'}; run apga_mura.py first", file=sys.stderr)
        sys.exit(2)
    summary = summarize(table)
    path = write(summary, out_dir)
    print(to_markdown(summary))
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
