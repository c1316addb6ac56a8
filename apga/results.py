"""results.csv: one row per (body part, seed, n_shot, method), appended atomically.

Rows are never overwritten. Concurrent writers (a shell loop with `&`) take an exclusive
lock on a side file, then rewrite the table to a temporary file and rename it, so a reader
never sees a half-written table and no row is lost.
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
IDENTITY = ["body_part", "seed", "n_shot", "method", "variant", "model_selection"]
METRICS = ["accuracy", "accuracy_tta", "auroc", "kappa", "study_accuracy", "study_accuracy_tta",
           "study_auroc", "study_kappa", "mask_iou", "mask_recall", "mask_area", "kept_accuracy",
           "removed_accuracy", "selection_accuracy", "best_epoch", "epochs_trained"]


@contextlib.contextmanager
def locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_results(path: Path) -> pd.DataFrame:
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        return pd.DataFrame(columns=IDENTITY + METRICS)
    return pd.read_csv(path, dtype={"n_shot": str, "variant": str}, keep_default_na=False, na_values=[""])


def append_row(path: Path, row: dict) -> None:
    """Append one row under the lock; columns of old and new rows are unioned."""
    path = Path(path)
    with locked(path):
        table = read_results(path)
        new = pd.DataFrame([row])
        table = new if table.empty else pd.concat([table, new], ignore_index=True)
        ordered = [c for c in IDENTITY + METRICS if c in table.columns]
        table = table[ordered + [c for c in table.columns if c not in ordered]]
        buffer = io.StringIO()
        table.to_csv(buffer, index=False)
        atomic_write_bytes(path, buffer.getvalue().encode())


def has_row(path: Path, run_id: str) -> bool:
    path = Path(path)
    with locked(path):
        table = read_results(path)
    return "run_id" in table.columns and (table["run_id"] == run_id).any()


def writable_dir(path: Path) -> bool:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)
