"""Mask semantics and batched mask samplers (METHOD.md sections 2 and 4).

A mask is (B, 1, H, W) with 1 on the pixels the agent *marked*. Adversarial images blank the
marked pixels; kept-region images keep only them. All samplers work on the whole batch on its
device from a seeded generator: one different box per image, no Python loop over images.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def greedy_action(probabilities: torch.Tensor) -> torch.Tensor:
    """The paper's action: mark a pixel when its probability exceeds 0.5."""
    return (probabilities > 0.5).to(probabilities.dtype)


def adversarial_images(images: torch.Tensor, marked: torch.Tensor) -> torch.Tensor:
    """x * (1 - a): the marked pixels are set to 0 (step 3)."""
    return images * (1 - marked)


def kept_images(images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """x * a': only the marked region survives (step 8)."""
    return images * keep


def random_boxes(batch: int, height: int, width: int, *, area: tuple[float, float] | torch.Tensor,
                 ratio: tuple[float, float], generator: torch.Generator, device) -> torch.Tensor:
    """One random axis-aligned box per image, as a (B, 1, H, W) float mask (1 inside).

    The box's area fraction is uniform in `area` (or given per image as a (B,) tensor), its
    aspect ratio h/w log-uniform in `ratio` (Cutout/RandomErasing's sampling), its position
    uniform among the places where it fits.
    """
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
    top = ((height - box_h + 1) * uniform()).floor()
    left = ((width - box_w + 1) * uniform()).floor()
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    inside_rows = (rows >= top.view(-1, 1, 1)) & (rows < (top + box_h).view(-1, 1, 1))  # (B, H, 1)
    inside_cols = (cols >= left.view(-1, 1, 1)) & (cols < (left + box_w).view(-1, 1, 1))  # (B, 1, W)
    return (inside_rows & inside_cols).unsqueeze(1).float()  # (B, 1, H, W)


def cutout_masks(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Cutout's erased box per image: area 2-33 % of the image, aspect in [0.3, 1/0.3]."""
    b, _, h, w = images.shape
    return random_boxes(b, h, w, area=(0.02, 0.33), ratio=(0.3, 1 / 0.3), generator=generator, device=images.device)


def area_penalty(logits: torch.Tensor, empty_weight: float, full_weight: float) -> torch.Tensor:
    """empty_weight BCE(p, 0) + full_weight BCE(p, 1), from logits: the terms that keep a mask
    from covering everything or nothing (APGA's policy loss and end-to-end's loss)."""
    empty = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))
    full = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    return empty_weight * empty + full_weight * full


def mask_area(mask: torch.Tensor) -> torch.Tensor:
    """Fraction of marked pixels of each image, (B,)."""
    return mask.flatten(1).float().mean(1)
