"""Pictures of what a masking method does: a grid per run (gallery/) and one overlay per image (apga.predict).

Grid: a row per image, captioned with its label (where known) and the classifier's probability of
abnormal; four tiles: the image with the ground-truth outlines where known (the relevance region in
green, the finding in red), the map (the agent's p, Grad-CAM, a random box) on a fixed scale from 0
(black) to 1 (yellow), so that a near-constant map (a collapsed agent's) looks flat and is labelled
'flat map' instead of being stretched into structure; the adversarial image (the marked pixels
blanked); the kept region. The overlay of apga.predict draws the map and the kept region's outline
over the radiograph with the probabilities on it, beside the same four tiles.
"""
from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from apga.data import to_model_input
from apga.methods.masks import adversarial_images, kept_images
from apga.utils import atomic_write_bytes, eval_mode

COLUMNS = ("image", "map p (0 to 1)", "adversarial", "kept region")
LEGEND = "outlines: green = relevance region (bone), red = finding"
FLAT = 0.02  # a map whose values span less than this is drawn as it is and labelled flat
TRUTH_COLOURS = {"bone": (40, 200, 60), "finding": (235, 50, 40)}
KEPT_COLOUR = (0, 220, 255)
TEXT, BACKGROUND = (255, 255, 255), (0, 0, 0)


@dataclass
class MaskPictures:
    """A method's outputs on a batch, on the host, at the model's resolution S: `image`, `map`,
    `adversarial`, `kept` (N, S, S) floats in [0, 1], `keep` (N, S, S) bool, `probability` (N,)
    the classifier's probability of abnormal on the whole image."""
    image: np.ndarray
    map: np.ndarray
    adversarial: np.ndarray
    kept: np.ndarray
    keep: np.ndarray
    probability: np.ndarray


@torch.no_grad()
def mask_pictures(method, images: torch.Tensor, maps: torch.Tensor | None = None, truths: dict | None = None,
                  probability: torch.Tensor | None = None) -> MaskPictures | None:
    """The pictures of model inputs `images` (N, 3, S, S) from the method's maps (N, 1, S, S),
    computed here unless given (`truths` for the oracle's), and the classifier's probabilities (N,),
    computed unless given; None for methods without masks."""
    networks = [method.classifier] + ([method.agent] if method.agent is not None else [])
    with eval_mode(*networks):
        if maps is None:
            maps = method.mask_probabilities(images, truths)
        if maps is None:
            return None
        if probability is None:
            probability = torch.softmax(method.classifier(images).float(), dim=1)[:, 1]
    keep = method.keep_mask(maps)  # (N, 1, S, S)

    def host(tensor: torch.Tensor) -> np.ndarray:
        return tensor[:, 0].float().clamp(0, 1).cpu().numpy()

    return MaskPictures(host(images), host(maps.float()), host(adversarial_images(images, keep, method.fill)),
                        host(kept_images(images, keep, method.fill)), host(keep) > 0.5,
                        probability.float().cpu().numpy())


@functools.lru_cache(maxsize=8)
def font(size: int) -> ImageFont.ImageFont:
    """A scalable font: Pillow's own (10.1 and later), else matplotlib's DejaVu Sans, else the bitmap one."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        pass
    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except (ImportError, OSError):
        return ImageFont.load_default()


@functools.lru_cache(maxsize=1)
def _colours() -> np.ndarray:
    """(256, 3) uint8: viridis (perceptually uniform, dark to yellow) for a map's 0..1."""
    from matplotlib import colormaps

    return (colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def _resized(array: np.ndarray, size: int) -> np.ndarray:
    """(S, S) -> (size, size) by nearest neighbour: every model pixel stays a visible block."""
    index = np.arange(size) * array.shape[0] // size
    return array[index][:, index]


def _grey(array: np.ndarray, size: int) -> np.ndarray:
    return np.repeat((_resized(array, size) * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def _coloured(values: np.ndarray, size: int) -> np.ndarray:
    return _colours()[(_resized(values, size) * 255).round().astype(np.int64).clip(0, 255)]


def _edge(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """The pixels of a bool mask (H, W) within `width` of its boundary, inside it."""
    inner = mask.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:] &= inner[:-1]
        shrunk[:-1] &= inner[1:]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return mask & ~inner


def _outlined(rgb: np.ndarray, masks: dict[str, np.ndarray | None], colours: dict[str, tuple]) -> np.ndarray:
    rgb = rgb.copy()
    for name, mask in masks.items():
        if mask is not None and mask.any():
            rgb[_edge(_resized(mask.astype(bool), rgb.shape[0]))] = colours[name]
    return rgb


def is_flat(values: np.ndarray) -> bool:
    return float(values.max() - values.min()) < FLAT


def _label_tile(tile: Image.Image, text: str) -> None:
    """`text` in a dark box at the tile's top left."""
    draw = ImageDraw.Draw(tile)
    box = draw.textbbox((3, 2), text, font=font(12))
    draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=BACKGROUND)
    draw.text((3, 2), text, fill=TEXT, font=font(12))


def tiles(pictures: MaskPictures, i: int, tile: int, truths: dict[str, np.ndarray | None] | None = None) -> Image.Image:
    """The four tiles of image `i`, side by side: (tile, 4 tile) RGB."""
    image = _outlined(_grey(pictures.image[i], tile), truths or {}, TRUTH_COLOURS)
    shown = [image, _coloured(pictures.map[i], tile), _grey(pictures.adversarial[i], tile), _grey(pictures.kept[i], tile)]
    strip = Image.fromarray(np.concatenate(shown, axis=1))
    if is_flat(pictures.map[i]):
        map_tile = strip.crop((tile, 0, 2 * tile, tile))
        _label_tile(map_tile, f"flat map, p ≈ {pictures.map[i].mean():.2f}")
        strip.paste(map_tile, (tile, 0))
    return strip


def caption(probability: float, label: float | None = None, extra: str = "") -> str:
    """'abnormal (label 1) · p(abnormal) 0.83' and what else is given."""
    known = label is not None and not (isinstance(label, float) and math.isnan(label))
    parts = ([f"label: {'abnormal' if label >= 0.5 else 'normal'}"] if known else ["label unknown"]) + [
        f"p(abnormal) {probability:.2f}"]
    return " · ".join(parts + ([extra] if extra else []))


def _text_band(width: int, lines: list[str], size: int = 13) -> Image.Image:
    height = (size + 5) * len(lines) + 4
    band = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(band)
    for number, line in enumerate(lines):
        draw.text((4, 2 + number * (size + 5)), line, fill=TEXT, font=font(size))
    return band


def _header(tile: int, title: str, legend: bool = True, columns: tuple[str, ...] = COLUMNS) -> Image.Image:
    """`columns`' titles centred over their tiles and, under the map's, its colour bar; above them the
    title and the outlines' legend (wrapped to the width)."""
    width = tile * len(columns)
    lines = ([title] if title else []) + (_wrapped(LEGEND, width, 12) if legend else [])
    titles = Image.new("RGB", (width, 20), BACKGROUND)
    draw = ImageDraw.Draw(titles)
    for number, name in enumerate(columns):
        size = 13
        while size > 8 and draw.textlength(name, font=font(size)) > tile - 6:
            size -= 1
        left = number * tile + (tile - draw.textlength(name, font=font(size))) / 2
        draw.text((left, 3), name, fill=TEXT, font=font(size))
    parts = ([_text_band(width, lines, 12)] if lines else []) + [titles]
    if COLUMNS[1] in columns:
        parts.append(_colour_bar(tile, len(columns), columns.index(COLUMNS[1])))
    return _stacked(parts)


def _colour_bar(tile: int, count: int, column: int) -> Image.Image:
    """A band of `count` tiles' width with the map's colour scale, 0 to 1, under column `column`."""
    band = Image.new("RGB", (tile * count, 16), BACKGROUND)
    draw = ImageDraw.Draw(band)
    left, right = column * tile + 14, (column + 1) * tile - 14
    bar = _colours()[np.linspace(0, 255, right - left).round().astype(int)]  # (width, 3)
    band.paste(Image.fromarray(np.repeat(bar[None], 8, axis=0)), (left, 4))
    draw.text((column * tile + 4, 1), "0", fill=TEXT, font=font(11))
    draw.text((right + 4, 1), "1", fill=TEXT, font=font(11))
    return band


def _wrapped(text: str, width: int, size: int) -> list[str]:
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines, line = [], ""
    for word in text.split(" "):
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font(size)) > width - 8:
            lines.append(line)
            trial = word
        line = trial
    return lines + [line]


def _stacked(parts: list[Image.Image], gap: int = 0) -> Image.Image:
    width = max(part.width for part in parts)
    picture = Image.new("RGB", (width, sum(part.height for part in parts) + gap * (len(parts) - 1)), BACKGROUND)
    top = 0
    for part in parts:
        picture.paste(part, (0, top))
        top += part.height + gap
    return picture


def gallery_picture(pictures: MaskPictures, labels=None, truths: dict[str, np.ndarray] | None = None,
                    tile: int = 128, title: str = "") -> Image.Image:
    """A row per image: its caption (label, probability, the map's range) over its four tiles.
    `labels` (N,) 0/1 or None; `truths`: name -> (N, S, S) masks ("bone", "finding")."""
    rows = [_header(tile, title)]
    for i in range(len(pictures.probability)):
        label = None if labels is None else float(labels[i])
        spread = f"map {pictures.map[i].min():.2f} to {pictures.map[i].max():.2f}"
        rows.append(_text_band(tile * len(COLUMNS), [f"{i + 1}. " + caption(pictures.probability[i], label, spread)]))
        rows.append(tiles(pictures, i, tile, {name: masks[i] for name, masks in (truths or {}).items()}))
    return _stacked(rows)


def overlay_picture(pictures: MaskPictures, i: int, lines: list[str], size: int = 256, tile: int = 128) -> Image.Image:
    """Image `i`: the map (fixed scale, half transparent) and the kept region's outline (cyan) drawn
    over the radiograph, under `lines` of text (its name, label, probabilities); beside it the four
    tiles, two by two."""
    grey = _grey(pictures.image[i], size).astype(np.float32)
    blended = (0.55 * grey + 0.45 * _coloured(pictures.map[i], size)).round().astype(np.uint8)
    over = Image.fromarray(_outlined(blended, {"kept": pictures.keep[i]}, {"kept": KEPT_COLOUR}))
    left = _stacked([_text_band(size, [part for line in lines for part in _wrapped(line, size, 13)]), over])
    strip = tiles(pictures, i, tile)
    side = _stacked([_text_band(2 * tile, _wrapped("the map over the image, the kept region outlined in cyan",
                                                   2 * tile, 12), 12),
                     _header(tile, "", legend=False, columns=COLUMNS[:2]), strip.crop((0, 0, 2 * tile, tile)),
                     _header(tile, "", legend=False, columns=COLUMNS[2:]), strip.crop((2 * tile, 0, 4 * tile, tile))])
    picture = Image.new("RGB", (left.width + 8 + side.width, max(left.height, side.height)), BACKGROUND)
    picture.paste(left, (0, 0))
    picture.paste(side, (left.width + 8, 0))
    return picture


def save_png(picture: Image.Image, path: Path) -> Path:
    """`picture` as a PNG at `path`, written atomically."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def save_gallery(method, batch: dict, path: Path, device, tile: int = 128, title: str = "") -> Path | None:
    """Write the grid for a loader's `batch` (its "image" (N, S, S) uint8, "label", and the truths
    "bone" and "finding" where the data has them: the oracle's masks and the outlines); None for
    methods without masks."""
    truths = {name: batch[name] for name in TRUTH_COLOURS if name in batch}
    pictures = mask_pictures(method, to_model_input(batch["image"].to(device)),
                             truths={name: mask.to(device).unsqueeze(1).float() for name, mask in truths.items()})
    if pictures is None:
        return None
    labels = batch["label"].cpu().numpy() if "label" in batch else None
    picture = gallery_picture(pictures, labels, {name: mask.cpu().numpy() > 0 for name, mask in truths.items()},
                              tile, title)
    return save_png(picture, path)
