"""Pictures of what a masking method does: a grid per run (gallery/) and one overlay per image (predict).

Columns: the image, the mask map (agent's p, Grad-CAM, or a random box; scaled to [0, 1] per image,
so that rloo's p, which sits near rho, shows its structure), the adversarial image (marked pixels
blanked) and the kept-region image.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from apga.data import to_model_input
from apga.methods.masks import adversarial_images, kept_images, scale_to_unit
from apga.utils import atomic_write_bytes, eval_mode

COLUMNS = ("image", "map (min-max)", "adversarial", "kept")


@torch.no_grad()
def mask_panels(method, images: torch.Tensor, probabilities: torch.Tensor | None = None,
                tile: int = 96, truths: dict | None = None) -> np.ndarray | None:
    """(N, tile, 4 tile) uint8 rows of the four columns for model inputs `images` (N, 3, S, S), from
    the method's maps (computed here unless given; `truths` for the oracle's); None for methods
    without masks."""
    if probabilities is None:
        networks = [method.classifier] + ([method.agent] if method.agent is not None else [])
        with eval_mode(*networks):
            probabilities = method.mask_probabilities(images, truths)
    if probabilities is None:
        return None
    keep = method.keep_mask(probabilities)
    scaled = scale_to_unit(probabilities.float())  # (N, 1, S, S)
    panels = [images[:, :1], scaled, adversarial_images(images, keep, method.fill)[:, :1],
              kept_images(images, keep, method.fill)[:, :1]]
    grid = torch.cat([torch.nn.functional.interpolate(p.float(), size=(tile, tile), mode="nearest") for p in panels], dim=3)
    return (grid.clamp(0, 1) * 255).round().byte().squeeze(1).cpu().numpy()


def write_panels(rows: np.ndarray, path: Path, title: str = "") -> Path:
    """A PNG of `rows` (N, tile, 4 tile) under a header naming the columns (and `title`)."""
    tile = rows.shape[-1] // len(COLUMNS)
    header = Image.new("L", (rows.shape[-1], 14 + (12 if title else 0)), 0)
    draw = ImageDraw.Draw(header)
    for i, name in enumerate(COLUMNS):
        draw.text((i * tile + 3, 1), name, fill=255)
    if title:
        draw.text((3, 13), title, fill=255)
    picture = np.concatenate([np.asarray(header)] + list(rows), axis=0)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def save_gallery(method, batch: dict, path: Path, device, tile: int = 96) -> Path | None:
    """Write the grid for a loader's `batch` (its "image" (N, S, S) uint8, and "bone" for the
    oracle's masks); None for methods without masks."""
    truths = {"bone": batch["bone"].to(device).unsqueeze(1).float()} if "bone" in batch else None
    rows = mask_panels(method, to_model_input(batch["image"].to(device)), tile=tile, truths=truths)
    return None if rows is None else write_panels(rows, path)
