"""The data of one run: train, selection and report splits of MURA's body part or a CSV task.

Decoding happens once: every image of a selection is decoded, converted to grey and resized,
then stored as uint8 in a memory-mapped file keyed by the file list and the image size
(apga/data/cache.py). An epoch then reads whole batches from that array (`__getitems__`), and the
float conversion (divide by 255, one grey channel copied to 3, as the paper) happens on the
batch's device (apga/data/batches.py).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from apga.data import csv_index, mura
from apga.data.batches import CachedImages
from apga.data.cache import cached_array
from apga.errors import DataError
from apga.utils import warn


@dataclass
class Split:
    """One split of a run: its index rows and its cached dataset."""
    index: pd.DataFrame
    dataset: CachedImages


@dataclass
class RunData:
    train: Split
    select: Split   # the split checkpoints are selected on (valid, or held-out training patients)
    report: Split   # the split that is reported (always MURA's validation split)
    truths: tuple[str, ...]  # ground-truth masks the splits carry: "bone" (the relevance region), "finding"
    fingerprint: str  # identifies the images and labels of every split (see data_fingerprint)


TRUTH_DIRS = {"bone": mura.MASK_DIR, "finding": mura.FINDING_DIR}


def _cached_split(config, root: Path, index: pd.DataFrame, cache_dir: Path, desc: str, truths: tuple[str, ...]):
    """Decoded images (and ground-truth masks) of every row of `index`, and which rows are readable."""
    images, usable, crcs, rows = cached_array(joined(root, index["path"]), config.image_size, cache_dir,
                                              skip_bad=config.skip_bad_images, num_workers=config.num_workers,
                                              desc=desc, bit_depth=config.bit_depth)
    index["crc32"], index["row_crc32"] = crcs, rows  # the files' and the decoded images' content: the fingerprint
    masks = {}
    for name in truths:
        cached = cached_array(_truth_files(root, index, name), config.image_size, cache_dir, masks=True,
                              num_workers=config.num_workers, desc=f"{desc} {name} masks")
        masks[name] = cached.array
        if "mask" in index.columns and name == "bone":  # a CSV's own masks: part of the fingerprint
            index["mask_crc32"], index["mask_row_crc32"] = cached.crcs, cached.rows
            if not np.asarray(cached.array[np.flatnonzero(usable)]).any():
                raise DataError(f"every mask of the {desc} rows is empty: the mask column's files must mark the "
                                f"relevant region with non-zero pixels (0/1 or 0/255)")
    return images, masks, usable


def joined(root: Path, relative: pd.Series) -> list[str]:
    """`str(root / p)` of every relative path p, without a Path object per file (a warm start at
    MURA's 40,000 images spent most of its time building them): plain joins where p is already
    in the form pathlib gives, pathlib where it is not ('./', '//', a trailing '/', an absolute path)."""
    prefix = str(root) + "/"
    return [prefix + p if _plain(p) else str(root / p) for p in relative.astype(str).tolist()]


def _plain(path: str) -> bool:
    """A relative path that pathlib would join as it is."""
    return not (path.startswith(("/", "./")) or path.endswith(("/", "/.")) or "//" in path or "/./" in path
                or path in ("", "."))


def _truth_files(root: Path, index: pd.DataFrame, name: str) -> list[str]:
    """The ground-truth mask file of every row: a CSV task's `mask` column (the relevance region),
    or the generated data's mask folders beside MURA-v1.1/."""
    if "mask" in index.columns and name == "bone":
        return joined(root, index["mask"])
    return joined(root / TRUTH_DIRS[name], index["path"].str.removeprefix(mura.MURA_DIR + "/"))


def available_truths(root: Path, train: pd.DataFrame, valid: pd.DataFrame) -> tuple[str, ...]:
    """Which ground truths the data has: the generated data's bones and findings, or a CSV's masks."""
    if "mask" in train.columns:
        return ("bone",)
    in_mura_layout = pd.concat([train, valid])["path"].str.startswith(mura.MURA_DIR + "/").all()
    return tuple(name for name, folder in TRUTH_DIRS.items() if in_mura_layout and (root / folder).is_dir())


def _split(index: pd.DataFrame, images, masks: dict, rows: np.ndarray) -> Split:
    rows = np.asarray(rows)
    sub = index.iloc[rows].reset_index(drop=True)
    patients = pd.factorize(sub["patient"])[0]
    return Split(sub, CachedImages(images, rows, sub["label"].to_numpy(), masks, patients))


def require_both_classes(labels, what: str, fix: str) -> None:
    """A split with one class cannot be scored (no AUROC or kappa, a meaningless accuracy): refused."""
    present = set(np.unique(np.asarray(labels)).tolist())
    if present != {0, 1}:
        only = "no" if not present else "only abnormal (1)" if present == {1} else "only normal (0)"
        raise DataError(f"{what} holds {only} images; accuracy, AUROC and kappa need normal and abnormal images: {fix}")


def warn_on_copies(train: pd.DataFrame, valid: pd.DataFrame, source: str) -> None:
    """A warning naming the validation images whose file is a byte-for-byte copy of a training image
    under another name (the same CRC-32 of the file and of its decoded image): the reported numbers
    are then partly measured on training data (stefyste/RIAWELC#2: every test radiograph was a copy
    of a training one; zalandoresearch/fashion-mnist#44). A warning, not a refusal: two patients'
    blank images may be the same bytes."""
    key = ["crc32", "row_crc32"]
    copies = valid.merge(train[key + ["path"]], on=key, suffixes=("", "_train"))
    if copies.empty:
        return
    first = copies.iloc[0]
    warn(f"{copies['path'].nunique()} validation image(s) of {source} are byte-for-byte copies of training images "
         f"(e.g. {first['path']!r} = {first['path_train']!r}): the reported numbers are partly measured on training "
         f"data; remove the copies from one split")


def data_fingerprint(root: Path, splits: dict[str, Split]) -> str:
    """A short digest of what a run learns from and is measured on: every split's image paths,
    labels, file contents and decoded images (their CRC-32s; after k-shot, holdout and skipped
    unreadable images), a CSV task's masks likewise, and, for generated data, the generator's
    parameters and version. Part of a
    run's identity: a finished run is reused only on the same fingerprint (an image replaced in
    place, or decoded otherwise by a new decoder or --bit-depth, changes it; a data set copied
    elsewhere does not)."""
    digest = hashlib.sha256()
    generated = Path(root) / "GENERATED.json"
    if generated.is_file():
        digest.update(generated.read_bytes())
    for name, split in splits.items():
        digest.update(f"[{name} {len(split.index)}]\n".encode())
        rows = zip(split.index["path"], split.index["label"], split.index["crc32"], split.index["row_crc32"])
        digest.update("".join(f"{p},{y},{c},{r}\n" for p, y, c, r in rows).encode())
        if "mask_crc32" in split.index.columns:  # a CSV task's masks (generated ones: GENERATED.json)
            masks = zip(split.index["mask"], split.index["mask_crc32"], split.index["mask_row_crc32"])
            digest.update("".join(f"mask {m},{c},{r}\n" for m, c, r in masks).encode())
    return digest.hexdigest()[:16]


def data_source(config) -> tuple[Path, str]:
    """The folder image paths are relative to, and what runs on it are called in results: the body
    part on MURA, the CSV's name on `--data-csv` data."""
    if config.data_csv:
        return Path(config.data_csv).parent, csv_index.dataset_name(config.data_csv)
    return Path(config.data_root), config.body_part


def load_index(config) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The train and valid index (MURA's body part, or the CSV's rows), sorted by path: a run does
    not depend on the order of the rows of an index file."""
    if config.data_csv:
        index = csv_index.read_csv_index(config.data_csv)
        train, valid = index[index["split"] == "train"], index[index["split"] == "valid"]
    else:
        root = Path(config.data_root)
        train = mura.select_body_part(mura.load_split(root, "train"), config.body_part)
        valid = mura.select_body_part(mura.load_split(root, "valid"), config.body_part)
    return tuple(split.sort_values("path", kind="stable").reset_index(drop=True) for split in (train, valid))


def prepare_run_data(config, seed: int) -> RunData:
    """Train/selection/report splits of one run: body part, holdout and k-shot applied.

    The whole body part (or CSV) is decoded into the cache once; k-shot subsets and holdout
    splits of any seed are rows of that array. Ground-truth masks are read where the generated
    data's mask folders sit beside MURA-v1.1/.
    """
    root, name = data_source(config)
    cache_dir = Path(config.cache_dir) if config.cache_dir else root / ".apga-cache"
    train, valid = load_index(config)
    truths = available_truths(root, train, valid)
    holdout = config.model_selection == "holdout"  # a held-out selection split measures masks on findings too
    train_truths = truths if holdout else tuple(t for t in truths if t == "bone")  # the oracle trains on "bone"
    train_images, train_masks, train_ok = _cached_split(config, root, train, cache_dir, "train", train_truths)
    valid_images, valid_masks, valid_ok = _cached_split(config, root, valid, cache_dir, "valid", truths)

    train_rows = np.flatnonzero(train_ok)
    source = config.data_csv or f"{root / mura.MURA_DIR} ({name})"
    warn_on_copies(train[train_ok], valid[valid_ok], source)
    require_both_classes(valid["label"].to_numpy()[valid_ok], f"the valid split of {source}",
                         "check the data root and --body-part, or the CSV's split column")
    require_both_classes(train["label"].to_numpy()[train_rows], f"the train split of {source}",
                         "check the data root and --body-part, or the CSV's split column")
    select = report = _split(valid, valid_images, valid_masks, np.flatnonzero(valid_ok))
    if holdout:
        held = mura.holdout_patients(train.iloc[train_rows], config.holdout_fraction, seed)
        if len(np.unique(train["label"].to_numpy()[train_rows[held]])) < 2:
            warn(f"the held-out selection split of seed {seed} ({int(held.sum())} images) holds one class: selecting "
                 f"on it rewards predicting that class; raise --holdout-fraction")
        select = _split(train, train_images, train_masks, train_rows[held])
        train_rows = train_rows[~held]
    if config.n_shot is not None:
        train_rows = train_rows[mura.k_shot_indices(train["label"].to_numpy()[train_rows], config.n_shot, seed)]
    # the training split carries the relevance region (the oracle's masks), not the findings
    train_split = _split(train, train_images, {k: v for k, v in train_masks.items() if k == "bone"}, train_rows)
    splits = {"train": train_split, "select": select, "report": report}
    return RunData(**splits, truths=truths, fingerprint=data_fingerprint(root, splits))

