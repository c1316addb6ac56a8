"""Pictures of results, drawn with matplotlib (headless, Agg).

- `plot_shots`: accuracy and AUROC against n_shot, one line per method, with the seeds' 95 % interval;
- `plot_paired`: each method's paired difference from the baseline of the same seed, with its 95 % interval;
- `plot_mask_quality`: the mask-quality measures of each masking method beside the floors;
- `plot_curves`: one run's metrics.csv: losses, selection accuracy and, for APGA, reward, advantage and mask area.
Each returns the paths it wrote. The report (apga/reporting/summary.py) draws the first three next to
summary.md; the training loop draws a run's curves next to its metrics.csv.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from apga.evaluation.columns import BY_NAME
from apga.reporting.results import method_rank
from apga.reporting.stats import t_interval
from apga.utils import atomic_write_bytes

SHOT_ORDER_LAST = "all"
REPORT_PLOTS = ("accuracy_vs_shots-*.png", "paired_differences-*.png", "mask_quality-*.png")  # what the report draws
QUALITY_PANELS = tuple(BY_NAME[name] for name in ("bone_precision_10", "finding_cover_10", "location_gap_10",
                                                   "swap_gap_10", "occlusion_agreement_10"))  # mask-quality columns drawn


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(figure)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def _shot_key(shot) -> float:
    return math.inf if str(shot) == SHOT_ORDER_LAST else float(shot)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


def plot_shots(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per body part: accuracy and AUROC against n_shot (x: k per class, 'all' last), a panel per protocol."""
    plt = _pyplot()
    written = []
    scored = table[pd.to_numeric(table["accuracy"], errors="coerce").notna()]
    for body_part, part in scored.groupby("body_part"):
        protocols = sorted(part["model_selection"].unique())
        shots = sorted(part["n_shot"].astype(str).unique(), key=_shot_key)
        figure, axes = plt.subplots(2, len(protocols), figsize=(5.5 * len(protocols), 7.5), squeeze=False,
                                    layout="constrained")
        labels = sorted(set(part["label"]), key=method_rank)
        for column, protocol in enumerate(protocols):
            runs = part[part["model_selection"] == protocol]
            for metric_row, metric in enumerate(("accuracy", "auroc")):
                axis = axes[metric_row, column]
                for number, label in enumerate(labels):  # each method a little to the side, so intervals do not hide
                    group = runs[runs["label"] == label]
                    stats = [t_interval(pd.to_numeric(group[group["n_shot"].astype(str) == k].get(metric),
                                                      errors="coerce")) for k in shots]
                    means, halves = zip(*stats)
                    dodge = 0.06 * (number - (len(labels) - 1) / 2)
                    axis.errorbar(np.arange(len(shots)) + dodge, means, yerr=halves, marker="o", capsize=3, label=label,
                                  color=f"C{number}")
                axis.set_xticks(range(len(shots)), shots)
                axis.set_xlabel("n_shot (images per class)")
                axis.set_ylabel(f"{'accuracy' if metric == 'accuracy' else 'AUROC'} (reported split)")
                axis.set_title(f"{body_part}, selection '{protocol}': {metric}, mean ± 95 % CI")
                axis.grid(alpha=0.3)
        axes[0, -1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
        written.append(_save(figure, out_dir / f"accuracy_vs_shots-{_safe(body_part)}.png"))
    return written


def plot_paired(summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per body part: a forest plot of each method's paired accuracy difference from the baseline."""
    plt = _pyplot()
    written = []
    rows = summary[summary["method"] != "baseline"].dropna(subset=["delta"])
    for body_part, part in rows.groupby("body_part"):
        part = part.assign(_shot=part["n_shot"].map(_shot_key)).sort_values(["model_selection", "_shot", "method"])
        labels = [f"{r.method}  (k={r.n_shot}, {r.model_selection})" for r in part.itertuples()]
        figure, axis = plt.subplots(figsize=(8, 0.32 * len(part) + 1.5), layout="constrained")
        y = np.arange(len(part))[::-1]
        low = (part["delta"] - part["delta_low"]).fillna(0).to_numpy()
        high = (part["delta_high"] - part["delta"]).fillna(0).to_numpy()
        colours = ["tab:green" if lo > 0 else "tab:red" if hi < 0 else "tab:gray"
                   for lo, hi in zip(part["delta_low"].fillna(0), part["delta_high"].fillna(0))]
        for position, delta, below, above, colour in zip(y, part["delta"], low, high, colours):
            axis.errorbar(delta, position, xerr=[[below], [above]], fmt="o", color=colour, capsize=3)
        axis.axvline(0, color="black", linewidth=1)
        axis.set_yticks(y, labels, fontsize=8)
        axis.set_xlabel("accuracy minus the same seed's baseline (mean, 95 % CI)")
        axis.set_title(f"{body_part}: paired differences from the baseline")
        axis.grid(axis="x", alpha=0.3)
        written.append(_save(figure, out_dir / f"paired_differences-{_safe(body_part)}.png"))
    return written


def plot_mask_quality(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per body part and protocol: the mask-quality measures of each method and floor, bars per n_shot."""
    plt = _pyplot()
    written = []
    if "location_gap_10" not in table.columns:
        return written
    measured = table[pd.to_numeric(table["location_gap_10"], errors="coerce").notna()]
    for (body_part, protocol), part in measured.groupby(["body_part", "model_selection"]):
        labels = sorted(set(part["label"]), key=method_rank)
        shots = sorted(part["n_shot"].astype(str).unique(), key=_shot_key)
        panels = [(c.name, c.axis_label) for c in QUALITY_PANELS
                  if c.name in part.columns and pd.to_numeric(part[c.name], errors="coerce").notna().any()]
        figure, axes = plt.subplots(len(panels), 1, figsize=(max(7, 0.75 * len(labels) * len(shots) / 2 + 3),
                                                             2.6 * len(panels)), squeeze=False, layout="constrained")
        width = 0.8 / len(shots)
        for axis, (column, title) in zip(axes[:, 0], panels):
            for i, shot in enumerate(shots):
                stats = [t_interval(pd.to_numeric(part[(part["label"] == label)
                                                          & (part["n_shot"].astype(str) == shot)][column],
                                                     errors="coerce")) for label in labels]
                means, halves = zip(*stats)
                axis.bar(np.arange(len(labels)) + (i - (len(shots) - 1) / 2) * width, means, width, yerr=halves,
                         capsize=2, label=f"n_shot {shot}")
            axis.set_ylabel(title, fontsize=8)
            axis.axhline(0, color="black", linewidth=0.8)
            axis.set_xticks(np.arange(len(labels)), labels, rotation=30, ha="right", fontsize=8)
            axis.grid(axis="y", alpha=0.3)
        axes[0, 0].set_title(f"{body_part}, selection '{protocol}': mask quality, mean ± 95 % CI over seeds")
        axes[0, 0].legend(fontsize=8)
        written.append(_save(figure, out_dir / f"mask_quality-{_safe(body_part)}-{_safe(protocol)}.png"))
    return written


CURVE_PANELS = (
    ("losses", lambda c: c.startswith("train_") and c.endswith("loss")),
    ("selection accuracy", lambda c: c in ("val_accuracy", "val_accuracy_tta")),
    ("reward", lambda c: c in ("train_reward", "train_reward_baseline", "train_advantage", "train_reward_sd")),
    ("mask area", lambda c: c in ("train_mask_area", "train_keep_area", "val_mask_area")),
)


def plot_curves(metrics_csv: Path, path: Path, title: str = "") -> Path | None:
    """A run's training curves from its metrics.csv (None when it has no rows)."""
    history = pd.read_csv(metrics_csv)
    if history.empty:
        return None
    plt = _pyplot()
    panels = [(name, [c for c in history.columns if pick(c) and history[c].notna().any()]) for name, pick in CURVE_PANELS]
    panels = [(name, columns) for name, columns in panels if columns]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False, layout="constrained")
    for axis, (name, columns) in zip(axes[0], panels):
        for column in columns:
            points = history[["epoch", column]].dropna()
            axis.plot(points["epoch"], points[column], marker="." if len(points) < 40 else None,
                      label=column.removeprefix("train_").removeprefix("val_") + (" (selection)" if column.startswith("val_") else ""))
        axis.set_xlabel("epoch")
        axis.set_title(name)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, path)
