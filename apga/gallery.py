"""A PNG grid of what a masking method does to a fixed set of validation images.

Columns: the image, the mask probability (agent's p, Grad-CAM, or a random box), the
adversarial image (marked pixels blanked) and the kept-region image.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from apga.data import to_model_input
from apga.masks import adversarial_images, greedy_action, kept_images
from apga.utils import atomic_write_bytes, eval_mode

COLUMNS = ("image", "mask p", "adversarial", "kept")


@torch.no_grad()
def save_gallery(method, images_u8: torch.Tensor, path: Path, device, tile: int = 96) -> Path | None:
    """Write the grid for `images_u8` (N, S, S) uint8; None for methods without masks."""
    images = to_model_input(images_u8.to(device))
    networks = [method.classifier] + ([method.agent] if method.agent is not None else [])
    with eval_mode(*networks):
        probabilities = method.mask_probabilities(images)
    if probabilities is None:
        return None
    keep = greedy_action(probabilities)
    panels = [images[:, :1], probabilities, adversarial_images(images, keep)[:, :1], kept_images(images, keep)[:, :1]]
    grid = torch.cat([torch.nn.functional.interpolate(p.float(), size=(tile, tile), mode="nearest") for p in panels], dim=3)
    rows = (grid.clamp(0, 1) * 255).round().byte().squeeze(1).cpu().numpy()  # (N, tile, 4 * tile)
    header = Image.new("L", (4 * tile, 14), 0)
    draw = ImageDraw.Draw(header)
    for i, title in enumerate(COLUMNS):
        draw.text((i * tile + 3, 1), title, fill=255)
    picture = np.concatenate([np.asarray(header)] + list(rows), axis=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return path
