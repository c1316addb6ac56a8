"""Images: PNG decoding, a uint8 cache of resized images, datasets and the run's data splits.

Decoding happens once: every image of a selection is decoded, converted to grey and resized,
then stored as uint8 in a memory-mapped file keyed by the file list and the image size. An
epoch then reads whole batches from that array (`__getitems__`), and the float conversion
(divide by 255, one grey channel copied to 3, as the paper) happens on the batch's device.
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from apga import mura
from apga.errors import DataError
from apga.utils import atomic_write_bytes, atomic_write_json

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def decode_image(path: str | Path, size: int) -> np.ndarray:
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


def decode_mask(path: str | Path, size: int) -> np.ndarray:
    """A relevance-region PNG -> (size, size) uint8 in {0, 1}."""
    return (decode_image(path, size) >= 128).astype(np.uint8)


class PngImages(torch.utils.data.Dataset):
    """Decodes PNGs one by one: used to build the cache and as the slow path in benchmarks.

    An unreadable file yields `None` in place of the array, so the caller decides whether to
    stop or skip it.
    """

    def __init__(self, files: list[Path], size: int, masks: bool = False):
        self.files, self.size, self.masks = files, size, masks

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            decode = decode_mask if self.masks else decode_image
            return i, decode(self.files[i], self.size)
        except (OSError, ValueError, SyntaxError):  # PIL raises these for truncated/corrupt files
            return i, None


def _collate_keep(batch):
    return batch


def _cache_key(files: list[Path], size: int, masks: bool) -> str:
    digest = hashlib.sha256(f"v1|{size}|{masks}".encode())
    for file in files:
        stat = file.stat()
        digest.update(f"{file}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def cached_array(files: list[Path], size: int, cache_dir: Path, *, masks: bool = False,
                 skip_bad: bool = False, num_workers: int = 0, desc: str = "decode") -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size) uint8 memory map of the decoded files, and a bool array of usable rows.

    Built once (with a progress bar) and reused while the files and size stay the same; a
    changed image size or file set gets a new cache file. Written atomically.
    """
    cache_dir = Path(cache_dir)
    key = _cache_key(files, size, masks)
    data_file, meta_file = cache_dir / f"{key}.u8", cache_dir / f"{key}.json"
    if not (data_file.is_file() and meta_file.is_file()):
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DataError(f"cannot create the image cache folder {cache_dir} ({error.strerror}); "
                            f"pass a writable --cache-dir") from None
        array = np.zeros((len(files), size, size), dtype=np.uint8)
        bad = []
        loader = torch.utils.data.DataLoader(PngImages(files, size, masks), batch_size=64,
                                             num_workers=num_workers, collate_fn=_collate_keep)
        for batch in tqdm(loader, desc=f"{desc} ({len(files)} PNGs -> cache)", leave=False,
                          disable=len(files) < 500):
            for i, pixels in batch:
                if pixels is None:
                    bad.append(i)
                else:
                    array[i] = pixels
        if bad and not skip_bad:
            raise DataError(f"cannot read image {files[bad[0]]} (truncated or not a PNG); replace it, "
                            f"or pass --skip-bad-images to leave it out ({len(bad)} unreadable in all)")
        atomic_write_bytes(data_file, array.tobytes())
        atomic_write_json(meta_file, {"shape": list(array.shape), "bad": bad, "files": len(files)})
    meta = json.loads(meta_file.read_text())
    usable = np.ones(len(files), dtype=bool)
    usable[meta["bad"]] = False
    if meta["bad"]:
        print(f"warning: skipped {len(meta['bad'])} unreadable image(s) ({desc}), e.g. {files[meta['bad'][0]]}",
              file=sys.stderr)
    return np.memmap(data_file, dtype=np.uint8, mode="r", shape=tuple(meta["shape"])), usable


class CachedImages(torch.utils.data.Dataset):
    """Batches of uint8 images (and relevance masks, if any) read from rows of a cached array.

    `__getitems__` lets the DataLoader fetch a whole batch with one fancy-indexing read; the
    batch is (images (B, S, S) uint8, labels (B,), positions (B,), masks (B, S, S) uint8 or
    an empty tensor). Positions index this dataset, in the order of its index table.
    """

    def __init__(self, images: np.ndarray, rows: np.ndarray, labels: np.ndarray, masks: np.ndarray | None = None):
        self.images, self.rows, self.masks = images, np.asarray(rows), masks
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, positions):
        order = np.sort(np.asarray(positions))  # rows are ascending: memmaps read fastest in file order
        rows = self.rows[order]
        images = torch.from_numpy(np.ascontiguousarray(self.images[rows]))
        masks = torch.from_numpy(np.ascontiguousarray(self.masks[rows])) if self.masks is not None else torch.empty(0)
        return images, torch.from_numpy(self.labels[order]), torch.from_numpy(order), masks

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
    has_masks: bool


def _cached_split(config, index: pd.DataFrame, cache_dir: Path, desc: str, with_masks: bool):
    """Decoded images (and masks) of every row of `index`, and which rows are readable."""
    root = Path(config.data_root)
    images, usable = cached_array([root / p for p in index["path"]], config.image_size, cache_dir,
                                  skip_bad=config.skip_bad_images, num_workers=config.num_workers, desc=desc)
    masks = None
    if with_masks:
        mask_files = [root / mura.MASK_DIR / Path(p).relative_to(mura.MURA_DIR) for p in index["path"]]
        masks, _ = cached_array(mask_files, config.image_size, cache_dir, masks=True,
                                num_workers=config.num_workers, desc=f"{desc} masks")
    return images, masks, usable


def _split(index: pd.DataFrame, images, masks, rows: np.ndarray) -> Split:
    rows = np.asarray(rows)
    sub = index.iloc[rows].reset_index(drop=True)
    return Split(sub, CachedImages(images, rows, sub["label"].to_numpy(), masks))


def prepare_run_data(config, seed: int) -> RunData:
    """Train/selection/report splits of one run: body part, holdout and k-shot applied.

    The whole body part is decoded into the cache once; k-shot subsets and holdout splits of
    any seed are rows of that array.
    """
    root = Path(config.data_root)
    cache_dir = Path(config.cache_dir) if config.cache_dir else root / ".apga-cache"
    train = mura.select_body_part(mura.load_split(root, "train"), config.body_part)
    valid = mura.select_body_part(mura.load_split(root, "valid"), config.body_part)
    has_masks = (root / mura.MASK_DIR).is_dir()
    holdout = config.model_selection == "holdout"  # only a held-out selection split needs training masks
    train_images, train_masks, train_ok = _cached_split(config, train, cache_dir, "train", has_masks and holdout)
    valid_images, valid_masks, valid_ok = _cached_split(config, valid, cache_dir, "valid", has_masks)

    train_rows = np.flatnonzero(train_ok)
    select = report = _split(valid, valid_images, valid_masks, np.flatnonzero(valid_ok))
    if holdout:
        held = mura.holdout_patients(train.iloc[train_rows], config.holdout_fraction, seed)
        select = _split(train, train_images, train_masks, train_rows[held])
        train_rows = train_rows[~held]
    if config.n_shot is not None:
        train_rows = train_rows[mura.k_shot_indices(train["label"].to_numpy()[train_rows], config.n_shot, seed)]
    if train["label"].to_numpy()[train_rows].min() == train["label"].to_numpy()[train_rows].max():
        raise DataError(f"the {config.body_part} training images hold only one class; check the data set")
    # the training split carries no masks: the loop never reads them
    return RunData(_split(train, train_images, None, train_rows), select, report, has_masks)


def make_loader(dataset: CachedImages, batch_size: int, *, shuffle: bool, num_workers: int = 0,
                pin_memory: bool = False, sampler=None) -> torch.utils.data.DataLoader:
    """Batches from a cached dataset. Reseed `loader.generator` (or call `sampler.set_epoch`)
    before an epoch to fix its order."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        collate_fn=_collate_keep, generator=torch.Generator() if shuffle and sampler is None else None,
        num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0,
    )
