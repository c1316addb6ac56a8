"""Any binary image task from one CSV file: `python apga_mura.py --data-csv my.csv`.

Columns (a header row is required; order does not matter):
- `path`: the image file, relative to the CSV's folder (or absolute);
- `label`: 0 (normal) or 1 (abnormal);
- `split`: `train` or `valid` (valid is the reported split, as MURA's);
- `study` (optional): images of one study are averaged for the study-level metrics (default: each
  image is its own study);
- `patient` (optional): holdout selection and k-shot keep a patient's images together (default:
  the study).

The result is the same index as MURA's (apga/data/mura.py): columns path, split, body_part, patient,
study, label, with paths relative to the CSV's folder. Every check names the CSV line (the header
is line 1) and what to fix.
"""
from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from apga.errors import DataError

REQUIRED = ("path", "label", "split")
SPLITS = ("train", "valid")


def dataset_name(csv_path: str | Path) -> str:
    """What runs on a CSV are called in results (in place of a body part): the file's stem."""
    return Path(csv_path).stem


def read_csv_index(csv_path: str | Path, check_files: bool = True) -> pd.DataFrame:
    """The index of every row of the CSV, checked; paths relative to the CSV's folder."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"no CSV file at {csv_path}; pass --data-csv the path of a CSV with columns "
                        f"path,label,split[,study,patient]")
    text = csv_path.read_bytes().decode("utf-8-sig", errors="replace")
    try:
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DataError(f"{csv_path} is not a readable CSV ({str(error).splitlines()[0]}); write one row per image "
                        f"with a header row path,label,split") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise DataError(f"{csv_path} has no column {', '.join(missing)} (found: {', '.join(table.columns)}); its header "
                        f"row must name path, label and split (study and patient are optional)")
    table = table.apply(lambda column: column.str.strip())
    line = pd.Series(range(2, len(table) + 2), index=table.index)  # the header is line 1

    def fail(rows: pd.Series, message):
        """`message`: the text for the first offending row (a function of that row)."""
        first = rows[rows].index[0]
        raise DataError(f"{csv_path} line {line[first]}: {message(table.loc[first])}")

    if table.empty:
        raise DataError(f"{csv_path} has a header but no rows; list one image per row")
    bad = ~table["label"].isin(["0", "1"])
    if bad.any():
        fail(bad, lambda row: f"label {row['label']!r} must be 0 (normal) or 1 (abnormal)")
    bad = ~table["split"].str.lower().isin(SPLITS)
    if bad.any():
        fail(bad, lambda row: f"split {row['split']!r} must be train or valid")
    bad = table["path"] == ""
    if bad.any():
        fail(bad, lambda row: "the path is empty")
    bad = table["path"].duplicated()
    if bad.any():
        fail(bad, lambda row: f"image {row['path']!r} is listed twice")
    if check_files:
        root = csv_path.parent
        exists = table["path"].map(lambda p: (root / p).is_file())
        if not exists.all():
            fail(~exists, lambda row: f"image {row['path']!r} does not exist (paths are relative to {root})")
    index = pd.DataFrame({
        "path": table["path"], "split": table["split"].str.lower(), "body_part": dataset_name(csv_path),
        "label": table["label"].astype(int),
    })
    index["study"] = table["study"] if "study" in table and (table["study"] != "").all() else table["path"]
    index["patient"] = table["patient"] if "patient" in table and (table["patient"] != "").all() else index["study"]
    _check_splits(csv_path, index, line)
    return index[["path", "split", "body_part", "patient", "study", "label"]]


def _check_splits(csv_path: Path, index: pd.DataFrame, line: pd.Series) -> None:
    for split in SPLITS:
        rows = index[index["split"] == split]
        if rows.empty:
            raise DataError(f"{csv_path} has no {split} rows; give some images split {split}")
        if rows["label"].nunique() < 2:
            raise DataError(f"the {split} rows of {csv_path} hold only label {rows['label'].iloc[0]}; each split needs "
                            f"normal (0) and abnormal (1) images")
    shared = set(index.loc[index["split"] == "train", "patient"]) & set(index.loc[index["split"] == "valid", "patient"])
    if shared:
        patient = sorted(shared)[0]
        lines = [line[i] for i in index.index[index["patient"] == patient]]
        raise DataError(f"{csv_path}: patient {patient!r} is in both splits (lines {', '.join(map(str, lines[:4]))}); "
                        f"keep each patient's images in one split")
    labels = index.groupby("study")["label"].nunique()
    if (labels > 1).any():
        study = labels[labels > 1].index[0]
        first = index.index[index["study"] == study][0]
        raise DataError(f"{csv_path} line {line[first]}: study {study!r} has images labelled 0 and 1; a study has one "
                        f"label")


