"""The image cache: every image of a selection decoded once into a uint8 memory-mapped array.

The array is keyed by the file list, the image size and the decoder version, and reused while
a content check passes; a damaged entry is rebuilt with a notice.
"""
from __future__ import annotations

import hashlib
import io
import json
import sys
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from apga.data.decode import decode_image, decode_mask
from apga.errors import DataError
from apga.utils import atomic_write_bytes, atomic_write_json

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

