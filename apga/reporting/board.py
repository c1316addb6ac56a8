"""`--tensorboard 1`: a run's metrics and mask gallery as TensorBoard logs, in `<run>/tensorboard/`.

Every row of the run's metrics.csv (losses, selection metrics, APGA's reward, advantage and mask
area; mid-epoch validations too) becomes scalars `train/<name>` and `val/<name>` at the training
iteration it was measured at; each gallery PNG becomes an image `masks`. `tensorboard --logdir
runs/` shows every run of an out-dir side by side. The tensorboard package is optional.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

BOARD_DIR = "tensorboard"
NOT_SCALARS = ("epoch", "iteration", "seconds")


class RunBoard:
    """The TensorBoard writer of one run; `steps_per_epoch` turns fractional epochs into iterations."""

    def __init__(self, run_dir: Path, steps_per_epoch: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run_dir) / BOARD_DIR))
        self.steps_per_epoch = max(1, steps_per_epoch)

    def step(self, epoch: float) -> int:
        return int(round(epoch * self.steps_per_epoch))

    def scalars(self, row: dict) -> None:
        """One metrics.csv row: train_* and val_* columns as train/* and val/* scalars."""
        step = self.step(row["epoch"])
        for name, value in row.items():
            if name in NOT_SCALARS or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            split, _, metric = name.partition("_")
            self.writer.add_scalar(f"{split}/{metric}" if split in ("train", "val") else name, value, step)

    def picture(self, png: Path, epoch: float, tag: str = "masks") -> None:
        """A gallery PNG (image, map, adversarial, kept, per row) as an image."""
        self.writer.add_image(tag, np.asarray(Image.open(png).convert("RGB")), self.step(epoch), dataformats="HWC")

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
