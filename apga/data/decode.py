"""Decoding image files into (size, size) uint8 grey arrays."""
from __future__ import annotations

import numpy as np
from PIL import Image

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

