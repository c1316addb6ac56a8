"""Pictures of results, drawn with matplotlib (headless, Agg).

- `plot_shots`: accuracy and AUROC against n_shot, one line per method, with the seeds' 95 % interval;
- `plot_paired`: each method's paired difference from the baseline of the same seed, with its 95 % interval;
- `plot_mask_quality`: the mask-quality measures of each masking method beside the floors;
- `plot_roc`: each method's ROC curves on the reported split, image and study level, a curve per seed;
- `plot_curves`: one run's metrics.csv: losses, selection accuracy and, for APGA, reward, advantage and mask area.
Each plot says how many seeds it shows (an interval needs two; one seed is said to have none), which
direction is better, and keeps the floors apart from the methods. Each returns the paths it wrote.
The report (apga/reporting/summary.py) draws the first four next to summary.md; the training loop
draws a run's curves next to its metrics.csv.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from apga.evaluation.columns import BY_NAME
from apga.evaluation.evaluate import REPORT_PREDICTIONS_FILE
from apga.reporting.results import method_rank
from apga.reporting.stats import t_interval
from apga.utils import atomic_write_bytes, file_name, notice

SHOT_ORDER_LAST = "all"
REPORT_PLOTS = ("accuracy_vs_shots-*.png", "paired_differences-*.png", "mask_quality-*.png",
                "roc-*.png")  # what the report draws
QUALITY_PANELS = tuple(BY_NAME[name] for name in ("bone_precision_10", "finding_cover_10", "location_gap_10",
                                                   "swap_gap_10", "occlusion_agreement_10"))  # mask-quality columns drawn


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    """The figure as a PNG at `path`, written atomically. Characters of a title that matplotlib's
    font lacks (a data set named in Chinese: matplotlib/matplotlib#14269, #20251, a warning per
    glyph and draw) are one notice; they show as boxes."""
    import io
    import warnings

    buffer = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(figure)
    missing = sorted({match[1] for w in caught for match in [re.search(r"Glyph \d+ \((.*?)\) missing", str(w.message))]
                      if match})
    for other in (w for w in caught if not re.search(r"Glyph \d+ .*missing", str(w.message))):
        warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
    if missing:
        notice(f"{Path(path).name}: matplotlib's font has no {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}; "
               f"those characters show as boxes")
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def _shot_key(shot) -> float:
    return math.inf if str(shot) == SHOT_ORDER_LAST else float(shot)


def _safe(name: str) -> str:
    return file_name(str(name), portable=True)


def seeds_note(counts) -> str:
    """What the intervals of a plot are, from the seeds behind each point: '5 seeds: mean and 95 % t
    interval', '1 seed: no interval', or '1-5 seeds: 95 % t interval where 2 or more'."""
    counts = [int(c) for c in counts if c]
    if not counts:
        return ""
    low, high = min(counts), max(counts)
    if high == 1:
        return "1 seed: no interval (one seed proves nothing)"
    if low == high:
        return f"{high} seeds: mean and 95 % t interval"
    return f"{low}-{high} seeds: mean, 95 % t interval where 2 or more"


def _seeds(count: int) -> str:
    return f"{count} seed" + ("" if count == 1 else "s")


def plot_shots(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per body part: accuracy and AUROC against n_shot (x: k per class, 'all' last), a panel per protocol."""
    plt = _pyplot()
    written = []
    scored = table[pd.to_numeric(table["accuracy"], errors="coerce").notna()]
    metrics = [BY_NAME[name] for name in ("accuracy", "auroc") if name in scored.columns]
    for body_part, part in scored.groupby("body_part"):
        protocols = sorted(part["model_selection"].unique())
        shots = sorted(part["n_shot"].astype(str).unique(), key=_shot_key)
        figure, axes = plt.subplots(len(metrics), len(protocols), figsize=(5.5 * len(protocols), 3.9 * len(metrics)),
                                    squeeze=False, layout="constrained")
        labels = sorted(set(part["label"]), key=method_rank)
        for column, protocol in enumerate(protocols):
            runs = part[part["model_selection"] == protocol]
            counts = runs.groupby(["label", runs["n_shot"].astype(str)])["seed"].nunique()
            for metric_row, metric in enumerate(metrics):
                axis = axes[metric_row, column]
                for number, label in enumerate(labels):  # each method a little to the side, so intervals do not hide
                    group = runs[runs["label"] == label]
                    stats = [t_interval(pd.to_numeric(group[group["n_shot"].astype(str) == k].get(metric.name),
                                                      errors="coerce")) for k in shots]
                    means, halves = zip(*stats)
                    dodge = 0.06 * (number - (len(labels) - 1) / 2)
                    axis.errorbar(np.arange(len(shots)) + dodge, means, yerr=halves, marker="o", capsize=3,
                                  label=f"{label} ({_seeds(group['seed'].nunique())})", color=f"C{number}")
                axis.set_xticks(range(len(shots)), shots)
                axis.set_xlabel("n_shot (images per class)")
                axis.set_ylabel(f"{metric.axis_label}, reported split")
                axis.set_title(f"{body_part}, selection '{protocol}': {metric.header}\n{seeds_note(counts)}",
                               fontsize=10)
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
        labels = [f"{r.method}  (k={r.n_shot}, {r.model_selection}; {_seeds(r.pairs)}"
                  + (", no interval)" if r.pairs < 2 else ")") for r in part.itertuples()]
        figure, axis = plt.subplots(figsize=(8.5, 0.34 * len(part) + 1.8), layout="constrained")
        y = np.arange(len(part))[::-1]
        low = (part["delta"] - part["delta_low"]).fillna(0).to_numpy()
        high = (part["delta_high"] - part["delta"]).fillna(0).to_numpy()
        colours = ["tab:green" if lo > 0 else "tab:red" if hi < 0 else "tab:gray"
                   for lo, hi in zip(part["delta_low"].fillna(0), part["delta_high"].fillna(0))]
        for position, delta, below, above, colour, pairs in zip(y, part["delta"], low, high, colours, part["pairs"]):
            axis.errorbar(delta, position, xerr=[[below], [above]], fmt="o" if pairs > 1 else "x", color=colour,
                          capsize=3)
        axis.axvline(0, color="black", linewidth=1)
        axis.set_yticks(y, labels, fontsize=8)
        axis.set_xlabel("accuracy minus the same seed's baseline (right of 0: better than the baseline)")
        axis.set_title(f"{body_part}: paired differences from the baseline\n{seeds_note(part['pairs'])}; green: "
                       f"interval above 0, red: below, grey: across", fontsize=10)
        axis.grid(axis="x", alpha=0.3)
        written.append(_save(figure, out_dir / f"paired_differences-{_safe(body_part)}.png"))
    return written


def plot_mask_quality(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per body part and protocol: the mask-quality measures of each method and, apart from them
    (hatched, behind a line), each floor; bars per n_shot."""
    plt = _pyplot()
    written = []
    if "location_gap_10" not in table.columns:
        return written
    measured = table[pd.to_numeric(table["location_gap_10"], errors="coerce").notna()]
    for (body_part, protocol), part in measured.groupby(["body_part", "model_selection"]):
        labels = sorted(set(part["label"]), key=lambda label: (label.startswith("floor"), method_rank(label)))
        floors = [label.startswith("floor") for label in labels]
        shots = sorted(part["n_shot"].astype(str).unique(), key=_shot_key)
        seeds = part.groupby("label")["seed"].nunique()
        panels = [c for c in QUALITY_PANELS
                  if c.name in part.columns and pd.to_numeric(part[c.name], errors="coerce").notna().any()]
        figure, axes = plt.subplots(len(panels), 1, figsize=(max(7, 0.75 * len(labels) * len(shots) / 2 + 3),
                                                             2.6 * len(panels)), squeeze=False, layout="constrained")
        width = 0.8 / len(shots)
        for axis, column in zip(axes[:, 0], panels):
            for i, shot in enumerate(shots):
                stats = [t_interval(pd.to_numeric(part[(part["label"] == label)
                                                          & (part["n_shot"].astype(str) == shot)][column.name],
                                                     errors="coerce")) for label in labels]
                means, halves = zip(*stats)
                bars = axis.bar(np.arange(len(labels)) + (i - (len(shots) - 1) / 2) * width, means, width, yerr=halves,
                                capsize=2, color=f"C{i}", label=f"n_shot {shot}")
                for bar, floor in zip(bars, floors):
                    if floor:  # a floor needs no training: drawn apart from the methods
                        bar.set_hatch("///")
                        bar.set_alpha(0.55)
            axis.set_ylabel(column.axis_label, fontsize=8)
            axis.axhline(0, color="black", linewidth=0.8)
            if any(floors) and not all(floors):
                axis.axvline(floors.index(True) - 0.5, color="grey", linestyle="--", linewidth=1)
            axis.set_xticks(np.arange(len(labels)), [f"{label}\n({_seeds(seeds[label])})" for label in labels],
                            rotation=30, ha="right", fontsize=8)
            for tick, floor in zip(axis.get_xticklabels(), floors):
                if floor:
                    tick.set_color("dimgrey")
                    tick.set_style("italic")
            axis.grid(axis="y", alpha=0.3)
        axes[0, 0].set_title(f"{body_part}, selection '{protocol}': mask quality of the methods, and right of the "
                             f"dashed line the floors (hatched, no training)\n{seeds_note(seeds)}", fontsize=10)
        axes[0, 0].legend(fontsize=8)
        written.append(_save(figure, out_dir / f"mask_quality-{_safe(body_part)}-{_safe(protocol)}.png"))
    return written


def read_report_predictions(out_dir: Path, run_ids) -> list[pd.DataFrame]:
    """The per-image predictions on the reported split of the runs `run_ids` that wrote them
    (apga/evaluation/evaluate.py: runs of versions before this file have none)."""
    found = []
    for run_id in run_ids:
        path = Path(out_dir) / str(run_id) / REPORT_PREDICTIONS_FILE
        if path.is_file():
            found.append(pd.read_csv(path, keep_default_na=False, na_values=[""]))
    return found


def _level(frame: pd.DataFrame, level: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities of a run's report predictions, per image or per study (MURA's protocol)."""
    if level == "study":
        frame = frame.groupby("study").agg(label=("label", "max"), probability=("probability", "mean"))
    return frame["label"].to_numpy(), frame["probability"].to_numpy()


def _roc(labels, probabilities) -> tuple[np.ndarray, np.ndarray, float] | None:
    from sklearn.metrics import roc_auc_score, roc_curve

    if len(set(labels)) < 2:
        return None
    false_positive, true_positive, _ = roc_curve(labels, probabilities)
    return false_positive, true_positive, float(roc_auc_score(labels, probabilities))


def plot_roc(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per (body part, n_shot, protocol): each method's ROC curve on the reported split, image level and
    study level (a study's probability is the mean of its images'), a curve per seed, from the runs'
    report_predictions.csv; nothing for groups whose runs wrote none."""
    plt = _pyplot()
    written = []
    scored = table[pd.to_numeric(table["accuracy"], errors="coerce").notna()] if "run_id" in table.columns else table.iloc[:0]
    for (body_part, shot, protocol), part in scored.groupby(["body_part", "n_shot", "model_selection"]):
        curves = {label: read_report_predictions(out_dir, runs["run_id"])
                  for label, runs in part.groupby("label")}
        curves = {label: frames for label, frames in curves.items() if frames}
        if not curves:
            continue
        figure, axes = plt.subplots(1, 2, figsize=(11, 5), layout="constrained")
        for axis, level in zip(axes, ("image", "study")):
            for number, label in enumerate(sorted(curves, key=method_rank)):
                rocs = [roc for roc in (_roc(*_level(frame, level)) for frame in curves[label]) if roc is not None]
                if not rocs:
                    continue
                mean, half = t_interval([roc[2] for roc in rocs])
                name = (f"{label}: AUROC {mean:.3f}" + ("" if math.isnan(half) else f" ± {half:.3f}")
                        + f" ({_seeds(len(rocs))})")
                for seed, (false_positive, true_positive, _) in enumerate(rocs):
                    axis.plot(false_positive, true_positive, color=f"C{number}", linewidth=1.2 if len(rocs) == 1 else 0.8,
                              alpha=1 if len(rocs) == 1 else 0.6, label=None if seed else name)
            axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
            axis.set_xlabel("false positive rate (1 - specificity)")
            axis.set_ylabel("true positive rate (sensitivity)")
            axis.set_title(f"{level} level" + (" (mean of its images' probabilities)" if level == "study" else ""),
                           fontsize=10)
            axis.set_aspect("equal")
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7, loc="lower right")
        counts = [len(frames) for frames in curves.values()]
        figure.suptitle(f"{body_part}, n_shot {shot}, selection '{protocol}': ROC on the reported split, a curve per "
                        f"seed (up and left is better); {seeds_note(counts).split(':')[0]}", fontsize=10)
        written.append(_save(figure, out_dir / f"roc-{_safe(body_part)}-{_safe(shot)}-{_safe(protocol)}.png"))
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
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False, layout="constrained")
    for axis, (name, columns) in zip(axes[0], panels):
        for column in columns:
            points = history[["epoch", column]].dropna()
            axis.plot(points["epoch"], points[column], marker="." if len(points) < 40 else None,
                      label=column.removeprefix("train_").removeprefix("val_") + (" (selection)" if column.startswith("val_") else ""))
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are counted, not measured
        axis.set_title(name)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, path)
