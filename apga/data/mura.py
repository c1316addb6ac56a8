"""The MURA v1.1 index: CSV parsing, labels from paths, body parts, k-shot and holdout splits.

Layout (Rajpurkar et al., MURA v1.1):
    <data_root>/MURA-v1.1/{train,valid}/XR_<PART>/patientNNNNN/studyK_{positive,negative}/imageM.png
with `{train,valid}_image_paths.csv` (one column, no header in the official files) and
`{train,valid}_labeled_studies.csv` (study folder with a trailing '/', label 0/1).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from apga.config import BODY_PARTS
from apga.data.csv_index import decoded_text
from apga.errors import DataError

MURA_DIR = "MURA-v1.1"
MASK_DIR = "MURA-v1.1-masks"  # generated data only: ground-truth relevance regions (the bones)
FINDING_DIR = "MURA-v1.1-findings"  # generated data only: the finding of each abnormal image (else empty)
SPLITS = ("train", "valid")

_IMAGE_PATH = re.compile(
    r"^MURA-v1\.1/(?P<split>train|valid)/XR_(?P<part>[A-Z]+)/patient(?P<patient>\d+)/"
    r"(?P<study>study\d+_(?P<finding>positive|negative))/(?P<image>[^/]+\.png)$",
    re.IGNORECASE,
)


def _csv_rows(path: Path) -> list[list[str]]:
    """Rows of a small CSV, tolerating a BOM, CRLF line endings and blank lines."""
    if not path.is_file():
        raise DataError(f"missing CSV file {path}; put the official MURA-v1.1 folder (with its four CSV files) there")
    text = decoded_text(path)
    rows = [[cell.strip().strip('"') for cell in line.split(",")] for line in text.splitlines() if line.strip()]
    if not rows:
        raise DataError(f"{path} is empty; re-extract MURA-v1.1 from the official archive")
    return rows


def read_image_paths(path: Path) -> list[str]:
    """Image paths from `*_image_paths.csv`, with or without a header row."""
    rows = _csv_rows(path)
    if not rows[0][0].lower().endswith(".png"):  # a header row, as some copies in the wild have
        rows = rows[1:]
    bad = [row for row in rows if len(row) != 1 or not row[0].lower().endswith(".png")]
    if bad:
        raise DataError(f"{path} has an unknown column layout (row {bad[0]!r}); expected one column of "
                        f"MURA-v1.1/.../imageN.png paths, as in the official file")
    return [row[0] for row in rows]


def read_labeled_studies(path: Path) -> dict[str, int]:
    """Study folder (no trailing '/') -> label from `*_labeled_studies.csv`, header or not."""
    rows = _csv_rows(path)
    if rows[0][-1] not in ("0", "1"):
        rows = rows[1:]
    table = {}
    for row in rows:
        if len(row) != 2 or row[1] not in ("0", "1"):
            raise DataError(f"{path} has an unknown column layout (row {row!r}); expected 'study folder/,label' "
                            f"with label 0 or 1, as in the official file")
        table[row[0].rstrip("/")] = int(row[1])
    return table


def parse_image_path(path: str) -> dict:
    """Body part, patient, study and label (1 = abnormal) from a MURA image path."""
    match = _IMAGE_PATH.match(path)
    if not match:
        raise DataError(f"image path {path!r} does not follow the MURA-v1.1 layout "
                        f"(MURA-v1.1/<split>/XR_<PART>/patientN/studyK_<positive|negative>/imageM.png)")
    part = match["part"].lower()
    if part not in BODY_PARTS:
        raise DataError(f"image path {path!r} names an unknown body part XR_{match['part']}")
    return {
        "split": match["split"].lower(),
        "body_part": part,
        "patient": match["patient"],
        "study": path.rsplit("/", 1)[0],
        "label": int(match["finding"].lower() == "positive"),
    }


def require_mura(root: Path) -> Path:
    """The MURA-v1.1 folder under `root`, or a DataError saying where to put it."""
    mura = Path(root) / MURA_DIR
    if not mura.is_dir() and (Path(root) / "train_image_paths.csv").is_file():
        raise DataError(f"{root} is the {MURA_DIR} folder itself; pass the folder that holds it: --data-root "
                        f"{Path(root).absolute().parent}")
    if not mura.is_dir():
        raise DataError(f"no MURA data at {mura}; register at https://stanfordmlgroup.github.io/competitions/mura/, "
                        f"unzip MURA-v1.1 into {root}/, or try the generated data with --demo")
    return mura


def load_split(data_root: str | Path, split: str, check_files: bool = True) -> pd.DataFrame:
    """One split of the index: columns path, split, body_part, patient, study, label.

    Every image of the CSV is kept (the published script dropped the first of each split by
    reading the header-less files with a header). Labels derived from paths are checked
    against `<split>_labeled_studies.csv`.
    """
    root = Path(data_root)
    mura = require_mura(root)
    paths = read_image_paths(mura / f"{split}_image_paths.csv")
    studies = read_labeled_studies(mura / f"{split}_labeled_studies.csv")
    rows = [parse_image_path(p) | {"path": p} for p in paths]
    index = pd.DataFrame(rows, columns=["path", "split", "body_part", "patient", "study", "label"])
    wrong_split = index[index["split"] != split]
    if len(wrong_split):
        raise DataError(f"{split}_image_paths.csv lists {wrong_split['path'].iloc[0]!r} from another split")
    if index["path"].duplicated().any():
        raise DataError(f"{split}_image_paths.csv lists {index['path'][index['path'].duplicated()].iloc[0]!r} twice")
    for row in index.itertuples():
        if row.study not in studies:
            raise DataError(f"study {row.study!r} of image {row.path!r} is missing from {split}_labeled_studies.csv")
        if studies[row.study] != row.label:
            raise DataError(f"label mismatch: {row.path!r} is in a '{'positive' if row.label else 'negative'}' folder "
                            f"but {split}_labeled_studies.csv gives its study label {studies[row.study]}")
    if check_files:
        check_paths(root, index["path"])
    return index


def check_paths(root: Path, paths) -> None:
    """Every path stays inside the data root (lexically: a symlinked MURA folder is fine) and exists."""
    base = os.fspath(root)
    for path in paths:
        normal = os.path.normpath(path)
        if os.path.isabs(normal) or normal == ".." or normal.startswith(".." + os.sep):
            raise DataError(f"CSV path {path!r} points outside the data root {root}; fix the CSV")
        if not os.path.isfile(os.path.join(base, normal)):  # no Path per file: 40,000 of them at MURA's size
            raise DataError(f"image {root / normal} listed in the CSV does not exist; re-extract MURA-v1.1 "
                            f"or fix the CSV")


def select_body_part(index: pd.DataFrame, body_part: str) -> pd.DataFrame:
    selected = index if body_part == "all" else index[index["body_part"] == body_part]
    if selected.empty:
        raise DataError(f"no {body_part} images in the {index['split'].iloc[0] if len(index) else ''} split; "
                        f"check --body-part and the data root")
    return selected.reset_index(drop=True)


def k_shot_indices(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k positive and k negative positions, without replacement: a pure function of (labels, k, seed)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for label in (0, 1):
        candidates = np.flatnonzero(labels == label)
        if k > len(candidates):
            raise DataError(f"--n-shot {k} is larger than the {len(candidates)} "
                            f"{'abnormal' if label else 'normal'} training images available; use at most "
                            f"{min((labels == 0).sum(), (labels == 1).sum())}")
        chosen.append(rng.choice(candidates, size=k, replace=False))
    return np.sort(np.concatenate(chosen))


def holdout_patients(index: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of rows whose patient is held out (a patient-level split of training data)."""
    patients = np.array(sorted(index["patient"].unique()))
    rng = np.random.default_rng(seed)
    n_held = max(1, int(round(fraction * len(patients))))
    if n_held >= len(patients):
        raise DataError(f"only {len(patients)} training patient(s): too few to hold some out; "
                        f"use --model-selection val")
    held = set(rng.choice(patients, size=n_held, replace=False))
    return index["patient"].isin(held).to_numpy()
