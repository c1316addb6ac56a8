"""Batches: rows of cached arrays as dicts of tensors, and their conversion to model input."""
from __future__ import annotations

import numpy as np
import torch

from apga.data.cache import keep_as_list


class CachedImages(torch.utils.data.Dataset):
    """Batches of uint8 images (and ground-truth masks, if any) read from rows of cached arrays.

    `__getitems__` lets the DataLoader fetch a whole batch with one fancy-indexing read. A batch
    is a dict: "image" (B, S, S) uint8, "label" (B,), "position" (B,) (positions index this
    dataset, in the order of its index table), "patient" (B,) int64 codes (equal codes: the same
    patient) when given, and for generated data "bone" and "finding" (B, S, S) uint8 in {0, 1}.
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


def to_model_input(images_u8: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """(B, S, S) uint8 -> (B, 3, S, S) float in [0, 1]: grey copied to 3 channels (paper)."""
    images = images_u8.unsqueeze(1).float().div_(255.0).expand(-1, 3, -1, -1)  # (B, 3, S, S)
    return images.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)



def make_loader(dataset: CachedImages, batch_size: int, *, shuffle: bool, num_workers: int = 0,
                pin_memory: bool = False, sampler=None) -> torch.utils.data.DataLoader:
    """Batches from a cached dataset. Reseed `loader.generator` (or call `sampler.set_epoch`)
    before an epoch to fix its order."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        collate_fn=keep_as_list, generator=torch.Generator() if shuffle and sampler is None else None,
        num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0,
    )
