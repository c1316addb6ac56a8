"""The image cache: every image of a selection decoded once into a uint8 memory-mapped array.

An entry is an array file (`<key>.u8`, N rows of size x size bytes) and its description
(`<key>.json`: shape, unreadable rows and why, the CRC-32 of each source file and of each row of
the array). The key covers the decoding settings (apga/data/decode.py's `decoder_settings`), the
image size, and each file's path, size, mtime and ctime. An entry is reused only when its
description is readable, its array has the right size, and the bytes of up to 256 source files
and of up to 256 rows (each spread over the list) still have their recorded CRCs: a file of the
right size whose bytes were lost (zeros after a crash) is caught when it is opened, and rebuilt
with a notice. Every other row is checked against its CRC the first time a process reads it
(`CheckedRows`): every byte is verified before it is used, and opening an entry costs the same
at MURA's 40,000 images as at 400. The array is written and fsynced before its description,
each by an atomic rename.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from apga.data.decode import decode_with_depth, decoder_settings, read_image_file
from apga.errors import DataError, ImageError
from apga.utils import atomic_write_json, fsync_folder, notice, storage_error, warn

CONTENT_CHECKS = 256  # source files whose bytes are checked against the cache each time it is reused
PARALLEL_DECODE = 256  # a cache of this many images or more is decoded by --num-workers processes; fewer: in process
UNREADABLE = -1  # the CRC recorded for a file that could not be read at all


class ImageFiles(torch.utils.data.Dataset):
    """Decodes image files one by one: builds the cache, serves `apga.predict`, and is the slow
    path in benchmarks.

    Yields (index, (size, size) uint8 array or None, CRC-32 of the file's bytes, None or the
    reason it could not be decoded, the bit depth read off a 16-bit file's largest value or None):
    the caller decides whether to stop or skip a bad file.
    """

    def __init__(self, files: list[Path], size: int, masks: bool = False, bit_depth: int | None = None):
        self.files, self.size, self.masks, self.bit_depth = files, size, masks, bit_depth

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            content = read_image_file(self.files[i])
        except ImageError as error:
            return i, None, UNREADABLE, str(error), None
        try:
            pixels, bits = decode_with_depth(content, self.size, str(self.files[i]), self.masks, self.bit_depth)
            return i, pixels, zlib.crc32(content), None, bits
        except ImageError as error:
            return i, None, zlib.crc32(content), str(error), None


def keep_as_list(batch):
    """A DataLoader collate function that leaves the items as they are."""
    return batch


def _cache_key(files: list[str | Path], size: int, masks: bool, bit_depth: int | None = None) -> str:
    """The decoding settings, and each file's path, size, mtime and ctime.

    ctime changes whenever a file's content is replaced, also when its mtime is set back."""
    settings = json.dumps(decoder_settings(), sort_keys=True)
    digest = hashlib.sha256(f"{settings}|{size}|{'masks' if masks else 'images'}|{bit_depth}".encode())
    for file in files:
        stat = os.stat(file)
        digest.update(f"{file}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}\n".encode())
    return digest.hexdigest()[:20]


def _checked_files(count: int) -> np.ndarray:
    """Positions of the files (and rows) whose content is checked on reuse: all of few, else evenly spread."""
    return np.unique(np.linspace(0, count - 1, min(count, CONTENT_CHECKS)).round().astype(int)) if count else np.array([], int)


def row_checksums(array: np.ndarray) -> list[int]:
    """CRC-32 of each row's bytes (about 3 GB/s: a second for the whole of MURA at 224 px)."""
    return [zlib.crc32(row) for row in array.reshape(len(array), -1)]


class CheckedRows:
    """The rows of a cache entry's array, (N, S, S) uint8, read like a numpy array (`rows[i]`,
    `rows[index_array]`, `np.asarray(rows)`), each checked against its recorded CRC-32 the first
    time this process reads it. Raises `DataError` for a row whose bytes changed on disk, after
    removing the entry's description so that the next command rebuilds it."""

    def __init__(self, array: np.ndarray, crcs: np.ndarray, meta_file: Path):
        self.array, self.crcs, self.meta_file = array, np.asarray(crcs, dtype=np.int64), Path(meta_file)
        self.checked = np.zeros(len(array), dtype=bool)  # set from several threads: idempotent

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    @property
    def dtype(self):
        return self.array.dtype

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, rows) -> np.ndarray:
        positions = (np.asarray(rows) % len(self.array) if isinstance(rows, (np.ndarray, list))
                     else np.arange(len(self.array))[rows])
        out = np.ascontiguousarray(self.array[rows])
        unchecked = np.flatnonzero(~self.checked[positions].reshape(-1))
        flat = out.reshape(-1, *self.array.shape[1:])
        for i in unchecked:  # zlib releases the GIL: a reading thread checks beside the training step
            row = int(positions.reshape(-1)[i])
            if zlib.crc32(flat[i]) != self.crcs[row]:
                self.meta_file.unlink(missing_ok=True)
                raise DataError(f"the image cache {self.meta_file.with_suffix('.u8')} is damaged: row {row} does not "
                                f"match its checksum (bytes lost on disk); rerun the command: the cache is rebuilt "
                                f"and runs resume from their last checkpoints")
        self.checked[positions.reshape(-1)[unchecked]] = True
        return out

    def __array__(self, dtype=None, copy=None):
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)


def _damage(data_file: Path, meta_file: Path, files: list[str | Path], size: int) -> str | None:
    """Why a cache entry cannot be used (None when it can): unreadable, truncated, damaged or stale."""
    try:
        meta = json.loads(meta_file.read_text())
        shape, crcs, rows = tuple(meta["shape"]), meta["crc32"], meta["row_crc32"]
    except (OSError, ValueError, KeyError, TypeError):
        return "its description is unreadable"
    if shape != (len(files), size, size) or len(crcs) != len(files) or len(rows) != len(files):
        return "it describes another file list"
    if data_file.stat().st_size != int(np.prod(shape)):
        return f"it holds {data_file.stat().st_size} bytes instead of {int(np.prod(shape))} (truncated)"
    for i in _checked_files(len(files)):
        try:
            same = zlib.crc32(Path(files[i]).read_bytes()) == crcs[i]
        except OSError:
            same = crcs[i] == UNREADABLE  # it could not be read when cached either
        if not same:
            return f"{files[i]} changed since it was cached"
    sample = _checked_files(len(files))  # the other rows are checked when first read (CheckedRows)
    array = np.memmap(data_file, np.uint8, "r", shape=shape)
    damaged = sample[np.asarray(row_checksums(array[sample])) != np.asarray(rows)[sample]]
    if len(damaged):
        return (f"{len(damaged)} of the {len(sample)} rows checked do not match their checksums (e.g. row {damaged[0]}: "
                f"bytes lost on disk)")
    return None


class Cached(NamedTuple):
    array: CheckedRows  # (N, size, size) uint8, memory-mapped, each row checked when first read
    usable: np.ndarray  # (N,) bool: readable rows
    crcs: np.ndarray    # (N,) CRC-32 of each file's bytes when it was decoded (part of the data fingerprint)
    rows: np.ndarray    # (N,) CRC-32 of each decoded row: what a run learns from (part of the data fingerprint)


def cached_array(files: list[str | Path], size: int, cache_dir: Path, *, masks: bool = False,
                 skip_bad: bool = False, num_workers: int = 0, desc: str = "decode",
                 bit_depth: int | None = None) -> Cached:
    """(N, size, size) uint8 memory map of the decoded files, a bool array of usable rows, and the
    files' CRC-32s. Built once (with a progress bar), then reused while it checks out (module
    docstring); a damaged entry is rebuilt with a notice. An unreadable file stops with a
    `DataError` naming it and why, unless `skip_bad` (then it is left out, with a warning)."""
    cache_dir = Path(cache_dir)
    key = _cache_key(files, size, masks, bit_depth)
    data_file, meta_file = cache_dir / f"{key}.u8", cache_dir / f"{key}.json"
    meta = None
    if data_file.is_file() and meta_file.is_file():
        damage = _damage(data_file, meta_file, files, size)
        if damage:
            notice(f"the image cache {data_file} cannot be used ({damage}); rebuilding it")
        else:
            meta = json.loads(meta_file.read_text())
    if meta is None:
        meta = _build_cache(files, size, masks, data_file, meta_file, num_workers, desc, bit_depth)
    depths = sorted(set(meta.get("inferred_bits", [])) - {None})
    if len(depths) > 1:
        warn(f"the 16-bit images of {desc} were read with different bit depths ({', '.join(map(str, depths))} bits, "
             f"each from its largest value; the darker ones come out brighter); if they share one, pass --bit-depth "
             f"(e.g. {depths[-1]})")
    usable = np.ones(len(files), dtype=bool)
    usable[meta["bad"]] = False
    if meta["bad"]:
        first = meta["reasons"][0]
        if not skip_bad:
            raise DataError(f"{first}; replace it, or pass --skip-bad-images 1 to leave it out "
                            f"({len(meta['bad'])} unreadable in all)")
        warn(f"skipped {len(meta['bad'])} unreadable image(s) ({desc}); the first: {first}")
    array = np.memmap(data_file, dtype=np.uint8, mode="r", shape=tuple(meta["shape"]))
    rows = np.asarray(meta["row_crc32"], dtype=np.int64)
    return Cached(CheckedRows(array, rows, meta_file), usable, np.asarray(meta["crc32"], dtype=np.int64), rows)


def _build_cache(files, size, masks, data_file: Path, meta_file: Path, num_workers: int, desc: str,
                 bit_depth: int | None = None) -> dict:
    """Decode every file into the array, row by row in file order (unreadable ones are zeros, listed in
    the description with their reason); the array is fsynced and renamed before its description.
    Returns the description. Concurrent builders of one key write the same bytes: each renames its
    own complete files into place, and an old description beside a new array still matches it."""
    try:
        data_file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise storage_error(data_file.parent, error) from None
    bad, reasons, crcs, rows, inferred = [], [], [0] * len(files), [0] * len(files), [None] * len(files)
    workers = num_workers if len(files) >= PARALLEL_DECODE else 0  # starting workers costs more than a few images
    loader = torch.utils.data.DataLoader(ImageFiles(files, size, masks, bit_depth), batch_size=64,
                                         num_workers=workers, collate_fn=keep_as_list)
    partial = data_file.with_name(f".{data_file.name}.{socket.gethostname()}.{os.getpid()}.partial")  # unique on a shared file system
    blank = np.zeros((size, size), dtype=np.uint8)
    try:
        with open(partial, "wb") as handle:
            for batch in tqdm(loader, desc=f"{desc} ({len(files)} images -> cache)", leave=False,
                              disable=len(files) < 500):
                for i, pixels, crc, reason, bits in batch:  # in file order: the loader keeps it
                    crcs[i], inferred[i] = crc, bits
                    if pixels is None:
                        bad.append(i)
                        reasons.append(reason)
                        pixels = blank
                    row = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
                    rows[i] = zlib.crc32(row)
                    handle.write(row)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, data_file)
        fsync_folder(data_file.parent)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise storage_error(data_file, error) from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    meta = {"shape": [len(files), size, size], "bad": bad, "reasons": reasons, "files": len(files), "crc32": crcs,
            "row_crc32": rows, "inferred_bits": inferred}
    atomic_write_json(meta_file, meta)
    return meta
