"""results.csv: the index of every run's `result.json` under an out-dir, rebuilt, never appended to.

A run writes only inside its own folder: its `result.json` (atomically, when it has finished)
carries its whole results row (`run_row`: identity, settings, inputs and metrics). `rebuild`
collects every such file into results.csv, one row per run id, with `superseded` marked; it is
written to a temporary file and renamed. So runs on many nodes never write one file: the table
is derived from their folders, and `python -m apga.report` (or the sweep) rebuilds it,
identically, whenever it is lost. A run trained anew deletes its result.json before it starts, so
its old numbers leave the table at the next rebuild. Rebuilds take a lock where the file system
honours it (a local disk); where it does not, the last rebuild of a batch of concurrent ones may
miss a run that finished during it, and the next rebuild restores it.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
from pathlib import Path

import pandas as pd

from apga.evaluation import columns
from apga.methods import METHODS
from apga.utils import atomic_write_bytes, file_lock, notice, storage_error, warn

RESULTS_FILE = "results.csv"
RESULT_FILE = "result.json"
METHOD_ORDER = [*METHODS, "floor"]  # how tables and plots list them: the registry's order, the floors last
IDENTITY = ["body_part", "seed", "n_shot", "method", "variant", "model_selection"]
METRICS = [column.name for column in columns.METRICS]  # the columns results.csv lists first, in this order
RUNTIME_COLUMNS = ("precision", "world_size", "effective_batch", "deterministic", "sync_bn")  # how a run trained
RUN_PATTERNS = ("*/seed*/*/" + RESULT_FILE, "*/seed*/floors/*/" + RESULT_FILE)  # run folders under an out-dir


def run_row(identity: dict, trained_with: dict, inputs: dict, result: dict) -> dict:
    """A run's results row: `identity` (body_part, seed, n_shot, method, variant, model_selection,
    run_id), its metrics `result`, and what it was trained with (`trained_with`, its config.json:
    settings, data fingerprint, inputs), not what a later command asked for."""
    settings = {k: v for k, v in trained_with.items() if k not in ("data_fingerprint", "inputs")}
    return {
        **identity, **result,
        "estimator": settings.get("estimator", "") if identity.get("method") in ("apga", "random") else "",
        "classifier": settings.get("classifier", ""), "image_size": settings.get("image_size", ""),
        "keep_area": inputs.get("keep_area", math.nan), "baseline_digest": inputs.get("baseline", ""),
        **{key: settings.get(key, "") for key in RUNTIME_COLUMNS},
        "config": json.dumps(settings, sort_keys=True, default=str),
    }


def locked(path: Path):
    """The lock that makes rebuilds of `path` (results.csv) one at a time (apga.utils.file_lock)."""
    return file_lock(path.with_name(path.name + ".lock"), guards=f"rebuilding {path.name}")


def read_result(path: Path) -> dict | None:
    """A run's result.json as its row; None when it is missing, damaged or holds no row (a cut or
    edited file: the run is trained again, never read as finished)."""
    try:
        row = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return row if isinstance(row, dict) else None


def collect(out_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """Every finished run's row under `out_dir`, sorted by run id, and the run ids of finished runs
    whose result.json carries no row (written by versions before 0.2)."""
    rows, old, damaged = [], [], []
    for pattern in RUN_PATTERNS:
        for path in sorted(Path(out_dir).glob(pattern)):
            try:
                row = json.loads(path.read_text())
            except (OSError, ValueError) as problem:  # result.json is written atomically: this is damage, not a write
                damaged.append(f"{path} ({getattr(problem, 'strerror', None) or type(problem).__name__})")
                continue
            if not isinstance(row, dict):
                damaged.append(f"{path} (a JSON {type(row).__name__}, not a results row)")
                continue
            if "run_id" in row:
                rows.append({k: v for k, v in row.items() if k not in ("inputs",)})
            else:
                old.append(str(path.parent.relative_to(out_dir)))
    if damaged:
        warn(f"{len(damaged)} run(s) under {out_dir} have a damaged result.json and are left out of the table: "
                f"{'; '.join(damaged[:3])}{' ...' if len(damaged) > 3 else ''}; the command that trained each trains "
                f"it again")
    table = pd.DataFrame(rows) if rows else pd.DataFrame(columns=IDENTITY + METRICS + ["run_id"])
    return table.sort_values("run_id", kind="stable").reset_index(drop=True), old


def rebuild(out_dir: str | Path) -> pd.DataFrame:
    """results.csv of `out_dir` from its runs' result.json files; returns the table as written.

    Runs finished by a version before 0.2 (their result.json carries no row) keep the row the old
    results.csv has for them; the next command that reaches them writes their row into result.json.
    A folder without finished runs gets no file (an empty table is returned). Raises `StorageError`
    when the folder cannot be written (read-only storage): `index_table` gives the table without
    writing it."""
    path = Path(out_dir) / RESULTS_FILE
    if not has_runs(out_dir):  # none left (the last one is being trained anew): no row may outlive its run
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return read_results(path)
    try:
        with locked(path):
            text = _csv_text(index_table(out_dir))
            atomic_write_bytes(path, text.encode())
    except OSError as problem:  # the lock file could not be made
        raise storage_error(path, problem) from None
    return read_results(path)


def index_table(out_dir: str | Path) -> pd.DataFrame:
    """What `rebuild` writes to results.csv, as it reads back, without writing anything."""
    path = Path(out_dir) / RESULTS_FILE
    table, old = collect(Path(out_dir))
    if old:
        previous = read_results(path)
        kept = previous[previous["run_id"].isin(old)] if "run_id" in previous.columns else previous.iloc[:0]
        notice(f"{len(old)} finished run(s) in {out_dir} were written by an older version; {len(kept)} keep their "
               f"row from the old {RESULTS_FILE}")
        table = pd.concat([table, kept], ignore_index=True).sort_values("run_id", kind="stable")
    return _read_csv(io.StringIO(_csv_text(table)))


def has_runs(out_dir: str | Path) -> bool:
    """Whether `out_dir` holds a finished run folder (its result.json) of its own."""
    return any(next(Path(out_dir).glob(pattern), None) is not None for pattern in RUN_PATTERNS)


def out_dirs(folder: str | Path, depth: int = 4) -> list[Path]:
    """`folder` if it holds finished runs, else the folders below it (up to `depth` levels) that do,
    sorted: the out-dirs a report of `folder` covers. Run folders themselves are not searched."""
    folder = Path(folder)
    if has_runs(folder):
        return [folder]
    found = []
    for root, folders, _ in os.walk(folder):
        here = Path(root)
        level = len(here.relative_to(folder).parts)
        if here != folder and has_runs(here):
            found.append(here)
            folders.clear()  # its groups and runs are its own
            continue
        folders[:] = sorted(f for f in folders if level < depth and not f.startswith(".")
                            and not f.startswith("seed") and f not in ("gallery", "tensorboard", "predictions"))
    return sorted(found)


def method_rank(label: str) -> tuple[int, str]:
    """Sort key of a method label such as 'apga[rloo]': METHOD_ORDER, then the label."""
    name = label.split("[")[0]
    return (METHOD_ORDER.index(name) if name in METHOD_ORDER else len(METHOD_ORDER), label)


TEXT_COLUMNS = ("n_shot", "variant", "run_id", "data_fingerprint", "baseline_digest", "checkpoint_digest",
                "code_version")  # hex digests must not be read as numbers


def read_results(path: Path) -> pd.DataFrame:
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        return pd.DataFrame(columns=IDENTITY + METRICS)
    return _read_csv(path)


def _read_csv(source) -> pd.DataFrame:
    return pd.read_csv(source, dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=False, na_values=[""])


def mark_superseded(table: pd.DataFrame) -> pd.DataFrame:
    """`superseded` = 1 for rows whose run no longer matches what it depends on, in the same seed
    folder: a fine-tuned run or floor whose baseline digest or data fingerprint is not the current
    baseline row's (the baseline was trained again), or that has no baseline row at all (it is
    being trained again), or a random floor whose kept area is not the current area of its APGA
    variant. The report leaves them out; they stay in the file as history."""
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
        # no baseline row: it is being trained anew (or was deleted), and these rows came from the old one
        outdated = not is_baseline[i] and (baseline is None or (started_from[i], fingerprint[i]) != baseline)
        area = area_of.get(key[i])
        if table["method"][i] == "random" and keep_area is not None and area is not None and area == area:
            outdated = outdated or keep_area[i] != area
        stale.append(int(outdated))
    table["superseded"] = stale
    return table


def _csv_text(table: pd.DataFrame) -> str:
    """results.csv's text: superseded rows marked, IDENTITY and METRICS first."""
    table = mark_superseded(table) if not table.empty else table
    ordered = [c for c in IDENTITY + METRICS if c in table.columns]
    table = table[ordered + [c for c in table.columns if c not in ordered]]
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    return buffer.getvalue()


def writable_dir(path: Path) -> bool:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)
