"""The summary of results.csv: per body part, n_shot and protocol, each method over seeds.

    python -m apga.report runs/

prints two markdown tables and writes them to runs/summary.md, with plots beside it (apga/reporting/plots.py:
accuracy and AUROC against n_shot, paired differences from the baseline, mask quality):
- accuracy: mean and standard deviation over seeds, the paired difference from the baseline of
  the same seed with its 95 % confidence interval (Student's t over the seeds that have both),
  in how many seeds the method beat that baseline, AUROC, TTA accuracy, study kappa, and how
  many selection evaluations chose the checkpoint (the `val` protocol takes the best of them on
  the reported split, so more evaluations mean more optimism);
- mask quality (masking methods and the floors, apga/evaluation/floors.py): the measures of
  apga/evaluation/mask_quality.py, mean over seeds, and how many seeds collapsed.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from apga.evaluation.columns import BY_NAME, MASK_QUALITY
from apga.methods import MASKING_METHODS
from apga.reporting import plots
from apga.reporting.stats import ratio_interval, t_interval
from apga.errors import StorageError
from apga.reporting.results import RESULTS_FILE, index_table, method_rank, out_dirs, rebuild
from apga.utils import atomic_write_bytes, error, notice, warn

SUMMARY_FILE = "summary.md"
GROUP = ["body_part", "n_shot", "model_selection"]
QUALITY = [column.name for column in MASK_QUALITY if column.name != "collapsed"]  # collapsed: counted, not averaged
ACCURACY_MEANS = ("auroc", "accuracy_tta", "study_kappa", "selection_evaluations")  # after Δ and wins, means over seeds
FEW_SEEDS = 5  # a paired difference from fewer seeds is printed with a note


def label(method: str, variant) -> str:
    return method + (f"[{variant}]" if isinstance(variant, str) and variant else "")


def paired_interval(differences, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of paired differences and its two-sided t confidence interval (NaN with < 2 pairs)."""
    mean, half = t_interval(differences, level)
    return mean, mean - half, mean + half


def _numeric(frame: pd.DataFrame, column: str) -> pd.Series:
    return pd.to_numeric(frame[column], errors="coerce") if column in frame.columns else pd.Series(np.nan, frame.index)


def _prepared(table: pd.DataFrame) -> pd.DataFrame:
    """Current rows only (superseded ones are history: apga/reporting/results.py), each labelled method[variant]."""
    table = table.copy()
    if "superseded" in table.columns:
        table = table[pd.to_numeric(table["superseded"], errors="coerce").fillna(0) == 0]
    table["label"] = [label(m, v) for m, v in zip(table["method"], table.get("variant", [""] * len(table)))]
    return table.drop_duplicates(subset=GROUP + ["seed", "label"], keep="last")


def _current_rows_with(table: pd.DataFrame, column: str) -> pd.DataFrame | None:
    """The current (not superseded), labelled rows that have `column`; None if no row can."""
    if table.empty or column not in table.columns:
        return None
    table = _prepared(table)
    return table[_numeric(table, column).notna()]


def _ordered(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.assign(_order=frame["method"].map(method_rank))
    return frame.sort_values(GROUP + ["_order"]).drop(columns="_order").reset_index(drop=True)


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Accuracy summary: one row per (body part, n_shot, protocol, method[variant])."""
    columns = GROUP + ["method", "seeds", "accuracy_mean", "accuracy_std", "delta", "delta_low", "delta_high",
                       "pairs", "wins"] + [f"{name}_mean" for name in ACCURACY_MEANS]
    table = _current_rows_with(table, "accuracy")
    if table is None:
        return pd.DataFrame(columns=columns)
    rows = []
    for key, group in table.groupby(GROUP, sort=True):
        baseline = group[group["label"] == "baseline"].set_index("seed")["accuracy"].astype(float)
        for name, runs in group.groupby("label", sort=False):
            accuracy = runs.set_index("seed")["accuracy"].astype(float)
            paired = accuracy.reindex(baseline.index).dropna()
            differences = paired - baseline[paired.index]
            delta, low, high = paired_interval(differences) if name != "baseline" else (math.nan,) * 3
            rows.append(dict(zip(GROUP, key)) | {
                "method": name, "seeds": len(runs), "accuracy_mean": accuracy.mean(),
                "accuracy_std": accuracy.std(ddof=1), "delta": delta, "delta_low": low, "delta_high": high,
                "pairs": len(paired), "wins": int((differences > 0).sum())}
                | {f"{column}_mean": _numeric(runs, column).mean() for column in ACCURACY_MEANS})
    return _ordered(pd.DataFrame(rows, columns=columns))


def summarize_masks(table: pd.DataFrame) -> pd.DataFrame:
    """Mask-quality summary: one row per masking method[variant] and floor, means over seeds; `collapsed`
    as 'collapsed seeds/seeds with a policy', and the mean policy area of the collapsed seeds."""
    columns = GROUP + ["method", "seeds"] + QUALITY + ["collapsed", "collapsed_area"]
    table = _current_rows_with(table, "location_gap_10")
    if table is None:
        return pd.DataFrame(columns=columns)
    rows = []
    for key, group in table.groupby(GROUP, sort=True):
        for name, runs in group.groupby("label", sort=False):
            collapsed = _numeric(runs, "collapsed")
            rows.append(dict(zip(GROUP, key)) | {"method": name, "seeds": len(runs)}
                        | {column: _numeric(runs, column).mean() for column in QUALITY}
                        | {"collapsed": f"{int(collapsed.sum())}/{collapsed.notna().sum()}" if collapsed.notna().any()
                           else "",
                           "collapsed_area": _numeric(runs, "policy_area")[collapsed == 1].mean()})
    return _ordered(pd.DataFrame(rows, columns=columns))


CEILING_METRICS = ("accuracy", "accuracy_tta", "kept_accuracy")  # training with masks; masks at test time too


def scheme(variant) -> frozenset:
    """The parts of a variant that change the kept-region scheme (fill, batch norm, background,
    clean step): a method is compared with the oracle of the same scheme."""
    parts = str(variant or "").split("-")
    return frozenset(p for p in parts if p.endswith(("fill", "bn", "bg")) or p == "noclean")


def summarize_ceiling(table: pd.DataFrame) -> pd.DataFrame:
    """Each masking method between its floor and its ceiling, per (body part, n_shot, protocol,
    scheme) and metric: the oracle's gain over the random floor of its area (`ceiling`, paired
    over seeds, 95 % t interval), the method's gain over that floor, and the share of the ceiling
    it recovers, gain_recovered = (method − floor) / (oracle − floor) with a percentile bootstrap
    interval over seeds; shown only where the ceiling is clear of zero (its interval above 0). Every
    column of a method's row is over the same seeds: those the method, the oracle and the floor share."""
    columns = GROUP + ["metric", "method", "seeds", "ceiling", "ceiling_low", "ceiling_high", "gain", "gain_low",
                       "gain_high", "recovered", "recovered_low", "recovered_high"]
    table = _current_rows_with(table, "accuracy")
    rows = []
    if table is None or "variant" not in table.columns:
        return pd.DataFrame(columns=columns)
    for key, group in table.groupby(GROUP, sort=True):
        for oracle_variant in group.loc[group["method"] == "oracle", "variant"].fillna("").unique():
            floor_label = label("random", "-".join(p for p in ("oraclearea", oracle_variant) if p))
            oracle_label = label("oracle", oracle_variant)
            same_scheme = group[[scheme(v) == scheme(oracle_variant) for v in group["variant"]]]
            methods = same_scheme[same_scheme["method"].isin([m for m in MASKING_METHODS if m != "oracle"])
                                  & (same_scheme["label"] != floor_label)]["label"].unique()
            for metric in CEILING_METRICS:
                by_seed = {name: group[group["label"] == name].set_index("seed")[metric].astype(float)
                           if metric in group.columns else pd.Series(dtype=float)
                           for name in (floor_label, oracle_label, *methods)}
                floor, oracle = by_seed[floor_label], by_seed[oracle_label]
                ceiling_diffs = (oracle - floor).dropna()
                if not len(ceiling_diffs):
                    continue
                for name in (oracle_label, *methods):
                    gains = (by_seed[name] - floor).dropna()
                    seeds = gains.index.intersection(ceiling_diffs.index)  # one set of seeds for every column
                    gains, ceilings = gains[seeds], ceiling_diffs[seeds]
                    ceiling, c_low, c_high = paired_interval(ceilings)
                    gain, g_low, g_high = paired_interval(gains)
                    recovered = (math.nan,) * 3
                    if name != oracle_label and c_low > 0:
                        recovered = ratio_interval(gains, ceilings)
                    rows.append(dict(zip(GROUP, key)) | {
                        "metric": metric, "method": name, "seeds": len(seeds), "ceiling": ceiling,
                        "ceiling_low": c_low, "ceiling_high": c_high, "gain": gain, "gain_low": g_low,
                        "gain_high": g_high, "recovered": recovered[0], "recovered_low": recovered[1],
                        "recovered_high": recovered[2]})
    return pd.DataFrame(rows, columns=columns)


def ceiling_to_markdown(summary: pd.DataFrame) -> str:
    headers = ["body part", "n_shot", "selection", "metric", "method", "seeds", "ceiling: oracle − floor [95% CI]",
               "method − floor [95% CI]", "gain recovered [95% CI]"]

    def interval(mean, low, high):
        return "" if math.isnan(mean) else f"{mean:+.3f}" + ("" if math.isnan(low) else f" [{low:+.3f}, {high:+.3f}]")

    rows = []
    for row in summary.itertuples():
        if row.method.startswith("oracle"):
            recovered = ""
        elif row.seeds < 2:
            recovered = "too few seeds"  # shared with the oracle and the floor: no interval
        elif math.isnan(row.ceiling_low) or row.ceiling_low <= 0:
            recovered = "no ceiling"
        else:
            recovered = "" if math.isnan(row.recovered) else (
                f"{row.recovered:.2f}" + ("" if math.isnan(row.recovered_low)
                                          else f" [{row.recovered_low:.2f}, {row.recovered_high:.2f}]"))
        rows.append([row.body_part, row.n_shot, row.model_selection, row.metric, row.method, row.seeds,
                     interval(row.ceiling, row.ceiling_low, row.ceiling_high),
                     interval(row.gain, row.gain_low, row.gain_high), recovered])
    return _table(headers, rows)


def _table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in cells) + " |" for cells in rows]
    return "\n".join(lines)


FEW_SEEDS_MARK = "†"


def to_markdown(summary: pd.DataFrame) -> str:
    """The accuracy table; a Δ from fewer than FEW_SEEDS paired seeds is marked (`few_seeds_note`)."""
    headers = ["body part", "n_shot", "selection", "method", "seeds", BY_NAME["accuracy"].header,
               "Δ vs baseline [95% CI]", "wins"] + [BY_NAME[name].header for name in ACCURACY_MEANS]
    rows = []
    for row in summary.itertuples():
        accuracy = f"{row.accuracy_mean:.3f}" + ("" if math.isnan(row.accuracy_std) else f" ± {row.accuracy_std:.3f}")
        if row.method == "baseline" or math.isnan(row.delta):
            delta, wins = "", ""
        else:
            interval = "" if math.isnan(row.delta_low) else f" [{row.delta_low:+.3f}, {row.delta_high:+.3f}]"
            delta = f"{row.delta:+.3f}{interval}" + (FEW_SEEDS_MARK if row.pairs < FEW_SEEDS else "")
            wins = f"{row.wins}/{row.pairs}"
        rows.append([row.body_part, row.n_shot, row.model_selection, row.method, row.seeds, accuracy, delta, wins]
                    + [BY_NAME[name].shown(getattr(row, f"{name}_mean")) for name in ACCURACY_MEANS])
    return _table(headers, rows)


def few_seeds_note(summary: pd.DataFrame) -> str:
    """What a Δ from fewer than FEW_SEEDS seeds can say ('' when every Δ has enough)."""
    few = summary[(summary["method"] != "baseline") & summary["delta"].notna() & (summary["pairs"] < FEW_SEEDS)]
    if few.empty:
        return ""
    single = (few["pairs"] == 1).any()
    return (f"{FEW_SEEDS_MARK} from {few['pairs'].min()}"
            + (f"-{few['pairs'].max()}" if few["pairs"].max() != few["pairs"].min() else "")
            + f" seed(s), fewer than {FEW_SEEDS}: "
            + ("one seed has no interval, and its difference is as likely noise as an effect; " if single else
               "so few seeds give wide intervals that say little; ")
            + f"run --n-runs {FEW_SEEDS} or more before reading a difference.")


def masks_to_markdown(summary: pd.DataFrame) -> str:
    """The mask-quality table: a column per declared measure (apga/evaluation/columns.py), in its order."""
    headers = ["body part", "n_shot", "selection", "method", "seeds"] + [column.header for column in MASK_QUALITY]
    rows = [[row.body_part, row.n_shot, row.model_selection, row.method, row.seeds]
            + [column.shown(getattr(row, column.name)) for column in MASK_QUALITY] for row in summary.itertuples()]
    return _table(headers, rows)


def collapse_note(summary: pd.DataFrame) -> str:
    """One line per method whose agent collapsed in some seed ('' when none did)."""
    lines = []
    for row in summary.itertuples():
        count, _, total = str(row.collapsed).partition("/")
        if count.isdigit() and int(count) > 0:
            lines.append(f"- **{row.method} collapsed** in {count} of {total} seed(s) ({row.body_part}, n_shot "
                         f"{row.n_shot}, {row.model_selection}): its policy marks {row.collapsed_area:.1%} of the "
                         f"pixels (outside 2-98 %), nearly all or none, so its map tells little about where the "
                         f"classifier looks.")
    return "\n".join(lines)


def reported_split(table: pd.DataFrame) -> str:
    """What the reported split is, in words: MURA's validation split, a CSV task's `valid` rows, or both
    (from each row's settings; 'the reported split' where a row does not say)."""
    sources = set()
    for settings in table.get("config", pd.Series(dtype=object)).dropna():
        try:
            sources.add("csv" if json.loads(settings).get("data_csv") else "mura")
        except (TypeError, ValueError):
            continue
    words = {"mura": "MURA's validation split", "csv": "the CSV task's rows of split 'valid'"}
    return " and ".join(words[s] for s in sorted(sources, reverse=True)) if sources else "the reported split"


def render(table: pd.DataFrame) -> str:
    """Both tables of a results table, with the notes that say how to read them."""
    accuracy = summarize(table)
    text = (f"## Accuracy\n\nImage-level accuracy on {reported_split(table)}: mean ± standard "
            "deviation over seeds. Δ: mean paired difference from the baseline of the same seed, with its 95 % "
            "t confidence interval; wins: seeds in which the method beat that baseline. Selection 'val' = "
            "checkpoint chosen on the reported split (the paper's protocol; optimistic, the more so the more "
            "selection evaluations); 'holdout' = chosen on held-out training patients; 'last' = the last epoch's "
            "checkpoint, no selection.\n\n"
            + to_markdown(accuracy) + "\n")
    note = few_seeds_note(accuracy)
    if note:
        text += f"\n{note}\n"
    stale = int(pd.to_numeric(table.get("superseded", pd.Series(dtype=float)), errors="coerce").fillna(0).sum())
    if stale:
        text += (f"\n{stale} row(s) of results.csv are superseded (their baseline, data or the floor's area changed "
                 f"since they ran) and are left out; rerun those methods to replace them.\n")
    ceiling = summarize_ceiling(table)
    if not ceiling.empty:
        text += ("\n## Between the floor and the ceiling\n\nThe oracle trains (and, for TTA and the kept region, "
                 "tests) with the ground-truth relevance masks: its gain over the random floor of its area is what a "
                 "mask can give with this scheme. Each masking method of the same scheme: its gain over that floor and "
                 "the share of the ceiling it recovers (a bootstrap interval over seeds), where the ceiling's interval "
                 "is above zero (else: no ceiling). docs/method.md.\n\n" + ceiling_to_markdown(ceiling) + "\n")
    masks = summarize_masks(table)
    if not masks.empty:
        better = ", ".join(c.header for c in MASK_QUALITY if c.better == "higher")
        text += ("\n## Mask quality\n\nFrom each method's map on the reported split, mean over seeds "
                 "(apga/evaluation/mask_quality.py). floor[...] rows need no training (apga/evaluation/floors.py): a "
                 "method that does not beat them has found nothing. Bone and finding columns need ground truth "
                 "(generated data); location gap, occlusion agreement and mask sd do not. Higher is better for "
                 f"{better}. collapsed: seeds whose policy area left [0.02, 0.98].\n\n" + masks_to_markdown(masks)
                 + "\n")
        collapsed = collapse_note(masks)
        if collapsed:
            text += f"\n{collapsed}\n"
    return text


def write(table: pd.DataFrame, out_dir: str | Path) -> Path:
    """summary.md and the plots (apga/reporting/plots.py) of a results table, in `out_dir`.

    Plots this report no longer draws (a body part, n_shot or protocol whose rows are all
    superseded or gone) are deleted: no picture stays beside a summary that leaves its rows out."""
    out_dir = Path(out_dir)
    path = out_dir / SUMMARY_FILE
    atomic_write_bytes(path, render(table).encode())
    written = set()
    if not table.empty:
        prepared = _prepared(table)
        written |= set(plots.plot_shots(prepared, out_dir))
        written |= set(plots.plot_paired(summarize(table), out_dir))
        written |= set(plots.plot_mask_quality(prepared, out_dir))
        written |= set(plots.plot_roc(prepared, out_dir))
    for pattern in plots.REPORT_PLOTS:
        for stale in out_dir.glob(pattern):
            if stale not in written:
                stale.unlink()
    return path


def main(out_dir: str = "runs") -> None:
    """Rebuild results.csv of `out_dir` (or of each out-dir below it, e.g. runs/demo from runs) from its
    runs' result.json files; print and write the summary. Where the folder cannot be written
    (read-only storage), the tables are printed and a warning names what was not written."""
    folder = Path(out_dir)
    if not folder.is_dir():
        error(f"no folder {out_dir}; pass the --out-dir of a training command or sweep")
        sys.exit(2)
    found = out_dirs(folder)
    if not found:
        error(f"no finished runs in {out_dir} or below it; pass the --out-dir of a training command or sweep "
              f"(the demo's is runs/demo), or run apga_mura.py (or python -m apga.sweep) first")
        sys.exit(2)
    if found != [folder]:
        notice(f"{out_dir} holds no runs of its own; reporting the out-dir(s) below it: "
               f"{', '.join(str(path) for path in found)}")
    for number, path in enumerate(found):
        if len(found) > 1:
            print(f"{'' if number == 0 else chr(10)}# {path}\n")
        report_folder(path)


def report_folder(out_dir: Path) -> None:
    """Print the summary of one out-dir and write results.csv, summary.md and the plots into it, or say
    in a warning what could not be written."""
    unwritten = []
    try:
        table = rebuild(out_dir)
    except StorageError as problem:
        table, unwritten = index_table(out_dir), [f"{RESULTS_FILE} ({problem.reason})"]
    if not unwritten:
        try:
            path = write(table, out_dir)
        except StorageError as problem:
            unwritten.append(f"{SUMMARY_FILE} and the plots ({problem.reason})")
    print(render(table))
    if unwritten:
        warn(f"could not write into {out_dir}: {'; '.join(unwritten)}. The tables above are complete; to keep them "
             f"as files, copy {out_dir} to a writable folder and run python -m apga.report there")
    else:
        print(f"written to {path}, with the plots beside it")
