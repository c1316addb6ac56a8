"""Mask semantics and batched mask samplers (docs/method.md: APGA's step, end-to-end, Cutout).

A mask is (B, 1, H, W) with 1 on the pixels the agent *marked*. Adversarial images blank the
marked pixels; kept-region images keep only them. Blanked pixels are filled with 0 (the paper),
the image's mean, or a blurred copy of the image (`--fill`). All samplers work on the whole batch
on its device from a seeded generator: one different box per image, no Python loop over images.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from apga.config import FILLS


def scale_to_unit(maps: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Each map of a batch (B, ...) scaled to [0, 1]: (x - min) / (max - min + eps). Monotone per
    map, so it keeps every ranking (top-rho masks); a constant map becomes 0."""
    flat = maps.flatten(1)
    flat = flat - flat.min(1, keepdim=True).values
    return (flat / (flat.max(1, keepdim=True).values + eps)).view_as(maps)


def no_policy_area(maps: torch.Tensor) -> torch.Tensor:
    """NaN per image (B,): the `policy_area` of a mask that is given, not learned (the oracle's
    truth, random boxes, the floors), so "collapsed" does not apply to it."""
    return torch.full((len(maps),), torch.nan, device=maps.device)


def greedy_action(probabilities: torch.Tensor) -> torch.Tensor:
    """The paper's action: mark a pixel when its probability exceeds 0.5."""
    return (probabilities > 0.5).to(probabilities.dtype)


def fill_values(images: torch.Tensor, fill: str = "zero") -> torch.Tensor | float:
    """What blanked pixels become: 0 (the paper), each image's mean intensity, or the image blurred
    by a Gaussian of sigma = side / 22 (about 10 px at 224 px; Fong & Vedaldi 2017's blur fill)."""
    if fill == "zero":
        return 0.0
    if fill == "mean":
        return images.mean((1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    if fill == "blur":
        return gaussian_blur(images, sigma=images.shape[-1] / 22)
    raise ValueError(f"unknown fill {fill!r}; choose one of {', '.join(FILLS)}")


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of every channel, reflecting at the borders."""
    radius = max(1, min(int(3 * sigma), min(images.shape[-2:]) - 1))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(images.dtype)
    channels = images.shape[1]
    x = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def adversarial_images(images: torch.Tensor, marked: torch.Tensor, fill: str = "zero") -> torch.Tensor:
    """x * (1 - a) + fill * a: the marked pixels are blanked (step 3).

    `marked` may hold r masks per image, (r B, 1, H, W): block k (rows k B to (k + 1) B - 1) masks
    the batch's k-th copy. The result is (r B, C, H, W), with the fill computed once per image."""
    b = len(images)
    if len(marked) % b:
        raise ValueError(f"{len(marked)} masks for {b} images: need a multiple of the batch size")
    marked = marked.view(len(marked) // b, b, *marked.shape[1:])  # (r, B, 1, H, W)
    blanked = images * (1 - marked) + fill_values(images, fill) * marked  # zero fill: exactly x * (1 - a)
    return blanked.flatten(0, 1)


def kept_images(images: torch.Tensor, keep: torch.Tensor, fill: str = "zero") -> torch.Tensor:
    """x * a' + fill * (1 - a'): only the marked region survives (step 8)."""
    return adversarial_images(images, 1 - keep, fill)


def donor_indices(batch_size: int, generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """(B,) indices of another image of the batch for each image: one random cycle through the
    batch (a derangement, so no image is its own donor). A batch of one is its own donor."""
    order = torch.randperm(batch_size, generator=generator, device=device)
    donors = torch.empty_like(order)
    donors[order] = order.roll(-1)
    return donors


def swapped_background_images(images: torch.Tensor, keep: torch.Tensor, donors: torch.Tensor,
                              fill: str = "zero") -> torch.Tensor:
    """The kept region of each image on another image's background (`--kept-background swap`).

    x_i a_i + (1 - a_i) [(1 - a_d) x_d + a_d f_d], d = donors[i]: image i keeps its region a_i;
    outside it lies the donor with the donor's own kept region blanked (its adversarial image,
    `--fill` computed from the donor), so no pixel of the donor's kept region (for the oracle: its
    bones, where its finding is) and nothing of image i outside a_i (not even blurred) is there.
    Images (B, C, H, W), keep (B, 1, H, W) in [0, 1], donors (B,) from `donor_indices`. Whatever
    outside the kept region predicted the label in training (a burnt-in marker, the background)
    then comes from the donor, another image of the batch (the donors of a derangement are slightly
    more often of the other label: 52 % at a batch of 32 with balanced labels), and the images look
    whole (Xiao et al. 2021, "Noise or Signal", the Mixed-Rand background). A batch of one has no
    donor: its image keeps the fill (`kept_images`)."""
    if len(images) == 1:
        return kept_images(images, keep, fill)
    return images * keep + adversarial_images(images, keep, fill)[donors] * (1 - keep)


def top_fraction(maps: torch.Tensor, fraction: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The `fraction` of each map's pixels with the highest values, as a (B, 1, H, W) float mask.

    round(fraction * H * W) pixels (at least 1) per image. Ties are broken at random (from
    `generator`), so that a constant map selects random pixels rather than the first rows.
    """
    b = maps.shape[0]
    flat = maps.detach().reshape(b, -1).float()  # (B, N)
    count = max(1, round(fraction * flat.shape[1]))
    if generator is None:
        generator = torch.Generator(maps.device).manual_seed(0)
    shuffle = torch.rand(flat.shape, generator=generator, device=maps.device).argsort(dim=1)  # (B, N)
    order = flat.gather(1, shuffle).argsort(dim=1, descending=True, stable=True)[:, :count]  # ties: shuffled order
    chosen = torch.zeros_like(flat).scatter_(1, shuffle.gather(1, order), 1.0)
    return chosen.view(b, 1, *maps.shape[-2:])


def random_boxes(batch: int, height: int, width: int, *, area: tuple[float, float] | torch.Tensor,
                 ratio: tuple[float, float], generator: torch.Generator, device) -> torch.Tensor:
    """One random axis-aligned box per image, as a (B, 1, H, W) float mask (1 inside).

    The box's area fraction is uniform in `area` (or given per image as a (B,) tensor), its
    aspect ratio h/w log-uniform in `ratio` (Cutout/RandomErasing's sampling), its position
    uniform among the places where it fits.
    """
    box_h, box_w = box_sizes(batch, height, width, area=area, ratio=ratio, generator=generator, device=device)
    top = ((height - box_h + 1) * torch.rand(batch, generator=generator, device=device)).floor()
    left = ((width - box_w + 1) * torch.rand(batch, generator=generator, device=device)).floor()
    return box_masks(top, left, box_h, box_w, height, width)


def box_sizes(batch: int, height: int, width: int, *, area: tuple[float, float] | torch.Tensor,
              ratio: tuple[float, float], generator: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Each box's height and width in pixels, (B,) float each (`random_boxes`' sampling of the size)."""
    def uniform(n=batch):
        return torch.rand(n, generator=generator, device=device)

    if isinstance(area, torch.Tensor):
        fraction = area.to(device=device, dtype=torch.float32).clamp(0.0, 1.0)
    else:
        fraction = area[0] + (area[1] - area[0]) * uniform()
    log_ratio = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * uniform()
    box_area = fraction * height * width
    box_h = torch.sqrt(box_area * log_ratio.exp()).round().clamp(0, height)  # (B,)
    box_w = torch.sqrt(box_area / log_ratio.exp()).round().clamp(0, width)
    return box_h, box_w


def box_masks(top: torch.Tensor, left: torch.Tensor, box_h: torch.Tensor, box_w: torch.Tensor, height: int,
              width: int) -> torch.Tensor:
    """(B, 1, H, W) float masks, 1 inside each image's box (its top-left corner and size, (B,) each, pixels)."""
    device = top.device
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    inside_rows = (rows >= top.view(-1, 1, 1)) & (rows < (top + box_h).view(-1, 1, 1))  # (B, H, 1)
    inside_cols = (cols >= left.view(-1, 1, 1)) & (cols < (left + box_w).view(-1, 1, 1))  # (B, 1, W)
    return (inside_rows & inside_cols).unsqueeze(1).float()  # (B, 1, H, W)


CUTOUT_BOX = dict(area=(0.02, 0.33), ratio=(0.3, 1 / 0.3))  # Cutout's boxes: area 2-33 %, aspect in [0.3, 1/0.3]


def cutout_masks(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Cutout's erased box per image (CUTOUT_BOX)."""
    b, _, h, w = images.shape
    return random_boxes(b, h, w, **CUTOUT_BOX, generator=generator, device=images.device)


def area_penalty(logits: torch.Tensor, empty_weight: float, full_weight: float) -> torch.Tensor:
    """empty_weight BCE(p, 0) + full_weight BCE(p, 1), from logits: the terms that keep a mask
    from covering everything or nothing (APGA's policy loss and end-to-end's loss)."""
    empty = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))
    full = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    return empty_weight * empty + full_weight * full


def mask_area(mask: torch.Tensor) -> torch.Tensor:
    """Fraction of marked pixels of each image, (B,)."""
    return mask.flatten(1).float().mean(1)
