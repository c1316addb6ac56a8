"""results.csv: one row per run (its `run_id`, the run's folder), written atomically.

A run's row holds its latest result: when a run id is trained again (`--resume 0`, new inputs),
its row is replaced, so the table never keeps a number that its run no longer produces.
Concurrent writers (a shell loop with `&`) take an exclusive lock on a side file, then rewrite
the table to a temporary file and rename it, so a reader never sees a half-written table and no
row is lost.
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import os
from pathlib import Path

import pandas as pd

from apga.utils import atomic_write_bytes

RESULTS_FILE = "results.csv"
METHOD_ORDER = ["baseline", "cutout", "gradcam", "end2end", "apga", "random", "floor"]  # how tables and plots list them
IDENTITY = ["body_part", "seed", "n_shot", "method", "variant", "model_selection"]
METRICS = ["accuracy", "accuracy_tta", "auroc", "kappa", "study_accuracy", "study_accuracy_tta",
           "study_auroc", "study_kappa", "bone_precision_10", "bone_precision_30", "finding_cover_10",
           "pointing_hit", "bone_auroc", "finding_auroc", "location_gap_10", "swap_gap_10", "mask_sd",
           "occlusion_agreement_10",
           "collapsed", "policy_area", "mask_area", "keep_area", "mask_iou", "mask_recall", "kept_accuracy",
           "removed_accuracy", "selection_accuracy", "selection_evaluations", "best_epoch", "epochs_trained"]


@contextlib.contextmanager
def locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def method_rank(label: str) -> tuple[int, str]:
    """Sort key of a method label such as 'apga[rloo]': METHOD_ORDER, then the label."""
    name = label.split("[")[0]
    return (METHOD_ORDER.index(name) if name in METHOD_ORDER else len(METHOD_ORDER), label)


def read_results(path: Path) -> pd.DataFrame:
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        return pd.DataFrame(columns=IDENTITY + METRICS)
    text_columns = ("n_shot", "variant", "run_id", "data_fingerprint", "baseline_digest", "checkpoint_digest",
                    "code_version")  # hex digests must not be read as numbers
    return pd.read_csv(path, dtype={c: str for c in text_columns}, keep_default_na=False, na_values=[""])


def upsert_row(path: Path, row: dict) -> None:
    """Write one run's row under the lock, replacing the row of the same `run_id` if there is one;
    columns of old and new rows are unioned, and `superseded` is updated for the whole table."""
    path = Path(path)
    with locked(path):
        table = read_results(path)
        if "run_id" in table.columns and "run_id" in row:
            table = table[table["run_id"] != row["run_id"]]
        new = pd.DataFrame([row])
        _write(path, new if table.empty else pd.concat([table, new], ignore_index=True))


def remove_row(path: Path, run_id: str) -> None:
    """Drop a run's row (it is being trained anew, and its old numbers are no longer its own)."""
    path = Path(path)
    if not path.is_file():
        return
    with locked(path):
        table = read_results(path)
        if "run_id" in table.columns and (table["run_id"] == run_id).any():
            _write(path, table[table["run_id"] != run_id])


def mark_superseded(table: pd.DataFrame) -> pd.DataFrame:
    """`superseded` = 1 for rows whose run no longer matches what it depends on, in the same seed
    folder: a fine-tuned run or floor whose baseline digest or data fingerprint is not the current
    baseline row's (the baseline was trained again), or a random floor whose kept area is not the
    current area of its APGA variant. The report leaves them out; they stay in the file as history."""
    table = table.copy()
    if table.empty or "run_id" not in table.columns:
        return table

    def column(name: str) -> pd.Series:
        return table[name].astype(str) if name in table.columns else pd.Series("nan", index=table.index)

    seed_dir = table["run_id"].astype(str).map(lambda run_id: "/".join(run_id.split("/")[:2]))
    is_baseline = table["method"] == "baseline"
    baseline_of = dict(zip(seed_dir[is_baseline], zip(column("checkpoint_digest")[is_baseline],
                                                      column("data_fingerprint")[is_baseline])))
    key = seed_dir + "|" + table.get("variant", pd.Series("", index=table.index)).fillna("").astype(str)
    is_apga = table["method"] == "apga"
    area_of = dict(zip(key[is_apga], pd.to_numeric(table.get("selection_mask_area"), errors="coerce")[is_apga])) \
        if "selection_mask_area" in table.columns else {}
    keep_area = pd.to_numeric(table["keep_area"], errors="coerce") if "keep_area" in table.columns else None
    started_from, fingerprint = column("baseline_digest"), column("data_fingerprint")
    stale = []
    for i in table.index:  # a loop over the rows of a results table (hundreds), not in any training step
        baseline = baseline_of.get(seed_dir[i])
        outdated = not is_baseline[i] and baseline is not None and (started_from[i], fingerprint[i]) != baseline
        area = area_of.get(key[i])
        if table["method"][i] == "random" and keep_area is not None and area is not None and area == area:
            outdated = outdated or keep_area[i] != area
        stale.append(int(outdated))
    table["superseded"] = stale
    return table


def _write(path: Path, table: pd.DataFrame) -> None:
    table = mark_superseded(table)
    ordered = [c for c in IDENTITY + METRICS if c in table.columns]
    table = table[ordered + [c for c in table.columns if c not in ordered]]
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue().encode())


def writable_dir(path: Path) -> bool:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)
