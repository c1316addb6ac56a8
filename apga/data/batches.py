"""Batches: rows of cached arrays as dicts of tensors, their order, and their conversion to model input.

The data order is part of what a run computes, so it depends on nothing but (seed, epoch): not on
how many processes read the data, nor on how often the run was resumed. `BatchOrder` says which
positions each batch of a pass holds; `BatchLoader` reads them from the cache in the calling
process, a background thread reading ahead. Decoded images are in the cache already, so there is
nothing for worker processes to do per batch: reading a batch is one fancy-indexing copy out of a
memory map (docs/speed.md measures it against DataLoader workers).
"""
from __future__ import annotations

import queue
import threading

import numpy as np
import torch

from apga.errors import DataError


class CachedImages(torch.utils.data.Dataset):
    """Batches of uint8 images (and ground-truth masks, if any) read from rows of cached arrays.

    `__getitems__` reads a whole batch with one fancy-indexing read. A batch is a dict: "image"
    (B, S, S) uint8, "label" (B,), "position" (B,) (positions index this dataset, in the order of
    its index table), "patient" (B,) int64 codes (equal codes: the same patient) when given, and
    for generated data "bone" and "finding" (B, S, S) uint8 in {0, 1}.
    """

    def __init__(self, images: np.ndarray, rows: np.ndarray, labels: np.ndarray,
                 truths: dict[str, np.ndarray] | None = None, patients: np.ndarray | None = None):
        self.images, self.rows, self.truths = images, np.asarray(rows), dict(truths or {})
        self.labels = np.asarray(labels, dtype=np.int64)
        self.patients = None if patients is None else np.asarray(patients, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, positions) -> dict[str, torch.Tensor]:
        order = np.sort(np.asarray(positions))  # rows are ascending: memmaps read fastest in file order
        rows = self.rows[order]
        batch = {"image": torch.from_numpy(np.ascontiguousarray(self.images[rows])),
                 "label": torch.from_numpy(self.labels[order]), "position": torch.from_numpy(order)}
        if self.patients is not None:
            batch["patient"] = torch.from_numpy(self.patients[order])
        for name, array in self.truths.items():
            batch[name] = torch.from_numpy(np.ascontiguousarray(array[rows]))
        return batch

    def __getitem__(self, position):
        return self.__getitems__([position])


class BatchOrder:
    """The positions of each batch of one pass over `size` items: a pure function of (seed, epoch).

    With a `seed` (a tuple of parts, e.g. (run seed, method name)), pass `epoch` is a permutation
    drawn from a generator seeded with `apga.utils.derive_seed(*seed, epoch, "order")`; without
    one, positions in order (evaluation).
    Under data parallelism (`world_size` > 1) the pass is padded to a multiple of the world size
    by repeating its first positions (as torch's DistributedSampler does) and rank r takes every
    world_size-th position from r: the same order, sharded. A last batch of a single image (which
    batch norm cannot normalise in training) is merged into the batch before it: set
    `merge_single=False` for evaluation, where a batch of one is fine.

    Call `set_epoch(e)` before iterating over pass e (as with DistributedSampler).
    Raises `DataError` for a training order of a single image.
    """

    def __init__(self, size: int, batch_size: int, *, seed: tuple | None = None, rank: int = 0, world_size: int = 1,
                 merge_single: bool = True):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size, self.merge_single = rank, world_size, merge_single
        self.epoch = 0
        if merge_single and seed is not None and -(-size // world_size) == 1:
            raise DataError(f"the training set has {size} image(s) for {world_size} process(es): batch norm needs at "
                            f"least 2 images per batch; add training images (or --n-shot 1 or more)")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def positions(self) -> np.ndarray:
        """This rank's positions of the current pass, in the order they are batched."""
        if self.seed is None:
            order = np.arange(self.size)
        else:
            from apga.utils import derive_seed

            generator = torch.Generator().manual_seed(derive_seed(*self.seed, self.epoch, "order"))
            # One draw is skipped: the loader of versions before 0.3 drew a worker seed from this
            # generator before shuffling, and runs written then keep their order (and results).
            torch.empty((), dtype=torch.int64).random_(generator=generator)
            order = torch.randperm(self.size, generator=generator).numpy()
        if self.world_size > 1:
            padded = -(-self.size // self.world_size) * self.world_size
            order = np.resize(order, padded)[self.rank::self.world_size]  # np.resize repeats from the start
        return order

    def __iter__(self):
        positions = self.positions()
        starts = list(range(0, len(positions), self.batch_size))
        if self.merge_single and len(starts) > 1 and len(positions) - starts[-1] == 1:
            starts.pop()
        ends = starts[1:] + [len(positions)]
        for start, end in zip(starts, ends):
            yield positions[start:end].tolist()

    def __len__(self) -> int:
        count = -(-self.size // self.world_size)
        batches = -(-count // self.batch_size)
        return batches - 1 if self.merge_single and batches > 1 and count % self.batch_size == 1 else batches


class BatchLoader:
    """The batches of `dataset` in `order`, read in the calling process; a background thread reads
    up to `prefetch` batches ahead (pinned in page-locked memory with `pin_memory`, for
    non-blocking copies to a GPU). Same batches, same order, whatever `prefetch`.

    Iterate once per pass; `set_epoch` goes to the order. Errors in the reading thread are raised
    in the caller."""

    def __init__(self, dataset: CachedImages, order: BatchOrder, *, prefetch: int = 2, pin_memory: bool = False):
        self.dataset, self.order, self.prefetch, self.pin_memory = dataset, order, prefetch, pin_memory

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.order)

    def _read(self, positions: list[int]) -> dict[str, torch.Tensor]:
        batch = self.dataset.__getitems__(positions)
        return {k: v.pin_memory() for k, v in batch.items()} if self.pin_memory else batch

    def __iter__(self):
        batches = list(self.order)  # the order is fixed when the pass starts
        if self.prefetch < 1:
            for positions in batches:
                yield self._read(positions)
            return
        ready: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def read_ahead():
            try:
                for positions in batches:
                    if stop.is_set():
                        return
                    ready.put((self._read(positions), None))
            except BaseException as error:  # handed to the caller, which raises it
                ready.put((None, error))

        reader = threading.Thread(target=read_ahead, name="apga-batch-reader", daemon=True)
        reader.start()
        try:
            for _ in batches:
                batch, error = ready.get()
                if error is not None:
                    raise error
                yield batch
        finally:
            stop.set()
            while reader.is_alive():  # unblock a reader waiting on a full queue, then let it end
                try:
                    ready.get_nowait()
                except queue.Empty:
                    reader.join(timeout=0.01)


def to_model_input(images_u8: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """(B, S, S) uint8 -> (B, 3, S, S) float in [0, 1]: grey copied to 3 channels (paper)."""
    images = images_u8.unsqueeze(1).float().div_(255.0).expand(-1, 3, -1, -1)  # (B, 3, S, S)
    return images.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def make_loader(dataset: CachedImages, batch_size: int, *, shuffle: bool = False, seed: tuple | None = None,
                rank: int = 0, world_size: int = 1, prefetch: int = 2, pin_memory: bool = False) -> BatchLoader:
    """Batches of a cached dataset: in a seeded order (`shuffle`, with `seed`; call
    `loader.set_epoch(e)` before pass e; `seed` is a tuple of parts, BatchOrder), or in order. Raises ValueError for `shuffle` without a seed."""
    if shuffle and seed is None:
        raise ValueError("a shuffled loader needs a seed: its order is a function of (seed, epoch)")
    order = BatchOrder(len(dataset), batch_size, seed=seed if shuffle else None, rank=rank, world_size=world_size,
                       merge_single=shuffle)
    return BatchLoader(dataset, order, prefetch=prefetch, pin_memory=pin_memory)
