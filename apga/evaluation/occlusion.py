"""The classifier's own occlusion map (Zeiler & Fergus 2014), batched on the device.

For every cell of a grid, the increase of the cross-entropy loss when that cell alone is
blanked: which regions this classifier needs for this image. It needs no ground truth, so the
agreement of a mask with it can be measured on MURA too. With non-overlapping cells it equals
Captum's `Occlusion` (sliding window = stride = the cell, baseline = the fill, forward = minus the
per-image loss); the tests check it against Captum.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from apga.methods.masks import adversarial_images


@torch.no_grad()
def occlusion_map(classifier, images: torch.Tensor, labels: torch.Tensor, cell: int, fill: str = "zero",
                  max_batch: int = 256) -> torch.Tensor:
    """(B, 1, H / cell, W / cell): CE(f(x with the cell blanked), y) - CE(f(x), y).

    The B x cells occluded images go through the classifier in batches of at most `max_batch`
    (a loop over groups of cells, never over images). The classifier's mode is the caller's.
    """
    b, _, h, w = images.shape
    grid = (h // cell, w // cell)
    cells = grid[0] * grid[1]
    clean = F.cross_entropy(classifier(images).float(), labels, reduction="none")  # (B,)
    one_hot = torch.eye(cells, device=images.device).view(cells, 1, *grid)
    cell_masks = F.interpolate(one_hot, size=(h, w), mode="nearest")  # (cells, 1, H, W)
    per_chunk = max(1, max_batch // b)
    increases = []
    for start in range(0, cells, per_chunk):
        marked = cell_masks[start:start + per_chunk]  # (c, 1, H, W)
        c = len(marked)
        occluded = adversarial_images(images, marked.repeat_interleave(b, 0), fill)  # (c B, C, H, W)
        losses = F.cross_entropy(classifier(occluded).float(), labels.repeat(c), reduction="none")
        increases.append(losses.view(c, b) - clean)
    return torch.cat(increases).T.reshape(b, 1, *grid)
