"""Floors for mask quality: maps that need no training, scored beside every method at the same
areas (docs/method.md). A method whose masks do not beat them has not found anything.

- `random-pixels`: uniform noise (its top-rho pixels are random pixels);
- `random-boxes`: one box per image of random aspect (1:2 to 2:1) around a random centre in the
  middle half of the image: centre-biased, as anatomy in radiographs is, so a strong floor. The
  map falls with the box-shaped distance from the centre, so its top-rho pixels form a box of
  area rho;
- `brightest`: the image's intensity (bone is bright; so are markers and collimation borders);
- `gradcam`: Grad-CAM of the baseline classifier (the map the Grad-CAM method masks with).

A floor behaves like a method for `evaluation.predict`: it has a classifier (the baseline's, for
the measures that need one: location gap, occlusion agreement), a fill, and a map. Every map is
scaled to [0, 1] per image (which keeps its ranking), so that `mask_sd` compares with the methods'.
"""
from __future__ import annotations

import math

import torch

from apga.methods.gradcam import grad_cam
from apga.methods.masks import no_policy_area, scale_to_unit, top_fraction

FLOORS = ("random-pixels", "random-boxes", "brightest", "gradcam")


def random_box_maps(batch: int, height: int, width: int, generator: torch.Generator, device) -> torch.Tensor:
    """(B, 1, H, W): minus the box-shaped distance from a random centre in the middle half."""
    def uniform(low, high):
        return low + (high - low) * torch.rand(batch, generator=generator, device=device)

    centre_y, centre_x = uniform(0.25, 0.75) * height, uniform(0.25, 0.75) * width
    aspect = torch.exp(uniform(math.log(0.5), math.log(2.0))).sqrt()  # sqrt(h / w) of the box
    rows = torch.arange(height, device=device).view(1, height, 1) + 0.5
    cols = torch.arange(width, device=device).view(1, 1, width) + 0.5
    dy = (rows - centre_y.view(-1, 1, 1)).abs() / aspect.view(-1, 1, 1)  # (B, H, 1)
    dx = (cols - centre_x.view(-1, 1, 1)).abs() * aspect.view(-1, 1, 1)  # (B, 1, W)
    return -torch.maximum(dy, dx).unsqueeze(1)  # (B, 1, H, W)


class Floor:
    """A map that needs no training, evaluated like a method's map (with the baseline classifier)."""

    name = "floor"
    agent = None

    def __init__(self, kind: str, classifier, fill: str = "zero", seed: int = 0):
        if kind not in FLOORS:
            raise ValueError(f"unknown floor {kind!r}; choose one of {', '.join(FLOORS)}")
        self.variant, self.classifier, self.fill, self.seed = kind, classifier, fill, seed
        self.batches = 0

    def mask_probabilities(self, images: torch.Tensor, truths: dict | None = None) -> torch.Tensor:
        """The floor's map of a batch in [0, 1]; random floors draw from a generator seeded per batch."""
        return scale_to_unit(self._maps(images).float())

    def _maps(self, images: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator(images.device).manual_seed(self.seed * 1000 + self.batches)
        self.batches += 1
        b, _, h, w = images.shape
        if self.variant == "random-pixels":
            return torch.rand((b, 1, h, w), generator=generator, device=images.device)
        if self.variant == "random-boxes":
            return random_box_maps(b, h, w, generator, images.device)
        if self.variant == "brightest":
            return images[:, :1].float()
        with torch.autocast(images.device.type, enabled=False):
            return grad_cam(self.classifier, images.float(), "features.norm5")

    def keep_mask(self, maps: torch.Tensor) -> torch.Tensor:
        return top_fraction(maps, 0.1)

    policy_area = staticmethod(no_policy_area)  # a floor has no policy to collapse
