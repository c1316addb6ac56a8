"""Images: PNG decoding, a uint8 cache of resized images, datasets and the run's data splits.

Decoding happens once: every image of a selection is decoded, converted to grey and resized,
then stored as uint8 in a memory-mapped file keyed by the file list and the image size. An
epoch then reads whole batches from that array (`__getitems__`), and the float conversion
(divide by 255, one grey channel copied to 3, as the paper) happens on the batch's device.
"""
from __future__ import annotations

import hashlib
import io
import json
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from apga import csv_index, mura
from apga.errors import DataError
from apga.utils import atomic_write_bytes, atomic_write_json

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def decode_image(path, size: int) -> np.ndarray:
    """Any PNG (grey, colour, palette, alpha, 16-bit; any size) -> (size, size) uint8 grey."""
    with Image.open(path) as image:
        image.load()
        if image.mode in _SIXTEEN_BIT_MODES:
            values = np.asarray(image, dtype=np.float32) / 65535.0
            resized = Image.fromarray(values, mode="F").resize((size, size), Image.BILINEAR)
            return np.clip(np.rint(np.asarray(resized) * 255.0), 0, 255).astype(np.uint8)
        if image.mode in ("LA", "RGBA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA").convert("RGB")  # drop alpha, keep the intensities
        grey = image.convert("L")
        return np.asarray(grey.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def decode_mask(path, size: int) -> np.ndarray:
    """A ground-truth mask PNG -> (size, size) uint8 in {0, 1}."""
    return (decode_image(path, size) >= 128).astype(np.uint8)


class PngImages(torch.utils.data.Dataset):
    """Decodes PNGs one by one: used to build the cache and as the slow path in benchmarks.

    Yields (index, array or None, crc32 of the file's bytes): an unreadable file gives `None`
    in place of the array, so the caller decides whether to stop or skip it.
    """

    def __init__(self, files: list[Path], size: int, masks: bool = False):
        self.files, self.size, self.masks = files, size, masks

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            content = Path(self.files[i]).read_bytes()
        except OSError:
            return i, None, None
        try:
            decode = decode_mask if self.masks else decode_image
            return i, decode(io.BytesIO(content), self.size), zlib.crc32(content)
        except (OSError, ValueError, SyntaxError):  # PIL raises these for truncated/corrupt files
            return i, None, zlib.crc32(content)


def _collate_keep(batch):
    return batch


# Bump when decoding changes what a cached array holds (resampling, grey conversion, thresholds).
DECODER_VERSION = 2
CONTENT_CHECKS = 256  # files whose bytes are checked against the cache each time it is reused
UNREADABLE = -1  # the CRC recorded for a file that could not be read at all


def _cache_key(files: list[Path], size: int, masks: bool) -> str:
    """Every setting that changes the decoded array, and each file's path, size, mtime and ctime.

    ctime changes whenever a file's content is replaced, also when its mtime is set back."""
    digest = hashlib.sha256(f"decoder{DECODER_VERSION}|{size}|{'masks' if masks else 'images'}".encode())
    for file in files:
        stat = file.stat()
        digest.update(f"{file}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}\n".encode())
    return digest.hexdigest()[:20]


def _checked_files(count: int) -> np.ndarray:
    """Positions of the files whose content is checked on reuse: all of few, else evenly spread."""
    return np.unique(np.linspace(0, count - 1, min(count, CONTENT_CHECKS)).round().astype(int)) if count else np.array([], int)


def _damage(data_file: Path, meta_file: Path, files: list[Path], size: int) -> str | None:
    """Why a cache entry cannot be used (None when it can): unreadable, truncated or stale."""
    try:
        meta = json.loads(meta_file.read_text())
        shape, crcs = tuple(meta["shape"]), meta["crc32"]
    except (OSError, ValueError, KeyError, TypeError):
        return "its description is unreadable"
    if shape != (len(files), size, size) or len(crcs) != len(files):
        return "it describes another file list"
    if data_file.stat().st_size != int(np.prod(shape)):
        return f"it holds {data_file.stat().st_size} bytes instead of {int(np.prod(shape))} (truncated)"
    for i in _checked_files(len(files)):
        try:
            same = zlib.crc32(files[i].read_bytes()) == crcs[i]
        except OSError:
            same = crcs[i] == UNREADABLE  # it could not be read when cached either
        if not same:
            return f"{files[i]} changed since it was cached"
    return None


class Cached(NamedTuple):
    array: np.ndarray   # (N, size, size) uint8, memory-mapped
    usable: np.ndarray  # (N,) bool: readable rows
    crcs: np.ndarray    # (N,) CRC-32 of each file's bytes when it was decoded (part of the data fingerprint)


def cached_array(files: list[Path], size: int, cache_dir: Path, *, masks: bool = False,
                 skip_bad: bool = False, num_workers: int = 0, desc: str = "decode") -> Cached:
    """(N, size, size) uint8 memory map of the decoded files, a bool array of usable rows, and the
    files' CRC-32s.

    Built once (with a progress bar) and reused while the key (decoder version, size, each
    file's path, size, mtime and ctime) is the same and a content check passes: the bytes of
    up to 256 files, spread over the list, must have the CRC-32 they had when decoded. A
    damaged entry (truncated array, unreadable description, changed file) is rebuilt with a
    notice. Written atomically: the array first, then its description.
    """
    cache_dir = Path(cache_dir)
    key = _cache_key(files, size, masks)
    data_file, meta_file = cache_dir / f"{key}.u8", cache_dir / f"{key}.json"
    fresh = not (data_file.is_file() and meta_file.is_file())
    if not fresh:
        damage = _damage(data_file, meta_file, files, size)
        if damage:
            print(f"notice: the image cache {data_file} cannot be used ({damage}); rebuilding it", file=sys.stderr)
            fresh = True
    if fresh:
        _build_cache(files, size, masks, data_file, meta_file, num_workers, desc)
    meta = json.loads(meta_file.read_text())
    usable = np.ones(len(files), dtype=bool)
    usable[meta["bad"]] = False
    if meta["bad"]:
        if not skip_bad:
            raise DataError(f"cannot read image {files[meta['bad'][0]]} (truncated or not a PNG); replace it, "
                            f"or pass --skip-bad-images to leave it out ({len(meta['bad'])} unreadable in all)")
        print(f"warning: skipped {len(meta['bad'])} unreadable image(s) ({desc}), e.g. {files[meta['bad'][0]]}",
              file=sys.stderr)
    array = np.memmap(data_file, dtype=np.uint8, mode="r", shape=tuple(meta["shape"]))
    return Cached(array, usable, np.asarray(meta["crc32"], dtype=np.int64))


def _build_cache(files, size, masks, data_file: Path, meta_file: Path, num_workers: int, desc: str) -> None:
    """Decode every file into the array; unreadable ones are listed in the description as "bad"."""
    try:
        data_file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create the image cache folder {data_file.parent} ({error.strerror}); "
                        f"pass a writable --cache-dir") from None
    array = np.zeros((len(files), size, size), dtype=np.uint8)
    bad, crcs = [], [0] * len(files)
    loader = torch.utils.data.DataLoader(PngImages(files, size, masks), batch_size=64,
                                         num_workers=num_workers, collate_fn=_collate_keep)
    for batch in tqdm(loader, desc=f"{desc} ({len(files)} PNGs -> cache)", leave=False, disable=len(files) < 500):
        for i, pixels, crc in batch:
            crcs[i] = crc if crc is not None else UNREADABLE
            if pixels is None:
                bad.append(i)
            else:
                array[i] = pixels
    meta_file.unlink(missing_ok=True)  # never a description beside an array it does not describe
    atomic_write_bytes(data_file, array.tobytes())
    atomic_write_json(meta_file, {"shape": list(array.shape), "bad": bad, "files": len(files), "crc32": crcs})


class CachedImages(torch.utils.data.Dataset):
    """Batches of uint8 images (and ground-truth masks, if any) read from rows of cached arrays.

    `__getitems__` lets the DataLoader fetch a whole batch with one fancy-indexing read. A batch
    is a dict: "image" (B, S, S) uint8, "label" (B,), "position" (B,) (positions index this
    dataset, in the order of its index table), and for generated data "bone" and "finding"
    (B, S, S) uint8 in {0, 1}.
    """

    def __init__(self, images: np.ndarray, rows: np.ndarray, labels: np.ndarray,
                 truths: dict[str, np.ndarray] | None = None):
        self.images, self.rows, self.truths = images, np.asarray(rows), dict(truths or {})
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, positions) -> dict[str, torch.Tensor]:
        order = np.sort(np.asarray(positions))  # rows are ascending: memmaps read fastest in file order
        rows = self.rows[order]
        batch = {"image": torch.from_numpy(np.ascontiguousarray(self.images[rows])),
                 "label": torch.from_numpy(self.labels[order]), "position": torch.from_numpy(order)}
        for name, array in self.truths.items():
            batch[name] = torch.from_numpy(np.ascontiguousarray(array[rows]))
        return batch

    def __getitem__(self, position):
        return self.__getitems__([position])


def to_model_input(images_u8: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """(B, S, S) uint8 -> (B, 3, S, S) float in [0, 1]: grey copied to 3 channels (paper)."""
    images = images_u8.unsqueeze(1).float().div_(255.0).expand(-1, 3, -1, -1)  # (B, 3, S, S)
    return images.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


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
    truths: tuple[str, ...]  # ground-truth masks the selection and report splits carry ("bone", "finding")
    fingerprint: str  # identifies the images and labels of every split (see data_fingerprint)


TRUTH_DIRS = {"bone": mura.MASK_DIR, "finding": mura.FINDING_DIR}


def _cached_split(config, root: Path, index: pd.DataFrame, cache_dir: Path, desc: str, truths: tuple[str, ...]):
    """Decoded images (and ground-truth masks) of every row of `index`, and which rows are readable."""
    images, usable, crcs = cached_array([root / p for p in index["path"]], config.image_size, cache_dir,
                                        skip_bad=config.skip_bad_images, num_workers=config.num_workers, desc=desc)
    index["crc32"] = crcs  # the images' content, for the data fingerprint
    masks = {}
    for name in truths:
        files = [root / TRUTH_DIRS[name] / Path(p).relative_to(mura.MURA_DIR) for p in index["path"]]
        masks[name] = cached_array(files, config.image_size, cache_dir, masks=True, num_workers=config.num_workers,
                                   desc=f"{desc} {name} masks").array
    return images, masks, usable


def _split(index: pd.DataFrame, images, masks: dict, rows: np.ndarray) -> Split:
    rows = np.asarray(rows)
    sub = index.iloc[rows].reset_index(drop=True)
    return Split(sub, CachedImages(images, rows, sub["label"].to_numpy(), masks))


def data_fingerprint(root: Path, splits: dict[str, Split]) -> str:
    """A short digest of what a run learns from and is measured on: every split's image paths,
    labels and file contents (their CRC-32s; after k-shot, holdout and skipped unreadable images)
    and, for generated data, the generator's parameters and version. Part of a run's identity: a
    finished run is reused only on the same fingerprint (an image replaced in place changes it; a
    data set copied elsewhere does not)."""
    digest = hashlib.sha256()
    generated = Path(root) / "GENERATED.json"
    if generated.is_file():
        digest.update(generated.read_bytes())
    for name, split in splits.items():
        digest.update(f"[{name} {len(split.index)}]\n".encode())
        rows = zip(split.index["path"], split.index["label"], split.index["crc32"])
        digest.update("".join(f"{p},{y},{c}\n" for p, y, c in rows).encode())
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
    in_mura_layout = pd.concat([train, valid])["path"].str.startswith(mura.MURA_DIR + "/").all()
    truths = tuple(name for name, folder in TRUTH_DIRS.items() if in_mura_layout and (root / folder).is_dir())
    holdout = config.model_selection == "holdout"  # only a held-out selection split needs training masks
    train_images, train_masks, train_ok = _cached_split(config, root, train, cache_dir, "train",
                                                        truths if holdout else ())
    valid_images, valid_masks, valid_ok = _cached_split(config, root, valid, cache_dir, "valid", truths)

    train_rows = np.flatnonzero(train_ok)
    select = report = _split(valid, valid_images, valid_masks, np.flatnonzero(valid_ok))
    if holdout:
        held = mura.holdout_patients(train.iloc[train_rows], config.holdout_fraction, seed)
        select = _split(train, train_images, train_masks, train_rows[held])
        train_rows = train_rows[~held]
    if config.n_shot is not None:
        train_rows = train_rows[mura.k_shot_indices(train["label"].to_numpy()[train_rows], config.n_shot, seed)]
    if train["label"].to_numpy()[train_rows].min() == train["label"].to_numpy()[train_rows].max():
        raise DataError(f"the {name} training images hold only one class; check the data set")
    # the training split carries no masks: the loop never reads them
    splits = {"train": _split(train, train_images, {}, train_rows), "select": select, "report": report}
    return RunData(**splits, truths=truths, fingerprint=data_fingerprint(root, splits))


def make_loader(dataset: CachedImages, batch_size: int, *, shuffle: bool, num_workers: int = 0,
                pin_memory: bool = False, sampler=None) -> torch.utils.data.DataLoader:
    """Batches from a cached dataset. Reseed `loader.generator` (or call `sampler.set_epoch`)
    before an epoch to fix its order."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        collate_fn=_collate_keep, generator=torch.Generator() if shuffle and sampler is None else None,
        num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0,
    )
