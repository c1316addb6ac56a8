"""Does a mask find what matters? The measures of docs/method.md, batched on the device.

From a method's probability map (B, 1, H, W), at fixed areas rho (its top-rho pixels):
- `bone_precision_10`, `bone_precision_30`: the share of the top-10 % / 30 % pixels inside the bone;
- `finding_cover_10`: on images with a finding, the share of it that the top-10 % pixels cover;
- `pointing_hit`: on images with a finding, whether the map's maximum lies in it (with ties, the
  share of the maximal pixels that do: a constant map scores the finding's area, not 1);
- `bone_auroc`, `finding_auroc`: the pixel AUROC of the map against the bone / the finding, per image;
- `location_gap_10`: CE increase from blanking the top-10 % mask minus the increase from blanking
  the same mask rolled by half the image: near 0 for a pattern that
  ignores the image and anatomy alike, but above 0 for one that sits where anatomy usually is;
- `swap_gap_10`: the same against the mask of another patient's image (the nearest earlier image
  of the batch whose patient differs) blanked on this image: near 0 for any mask that ignores the
  image, so it measures what is specific to each image. A partner of the same patient (often the
  same study, another view) would share much of the anatomy and pull the measure toward 0;
- `occlusion_agreement_10`: the share of the top-10 % mask inside the top-10 % pixels of the
  classifier's own occlusion map (apga/evaluation/occlusion.py): needs no ground truth;
- `mask_sd`: the across-image standard deviation of the map, averaged over pixels: near 0 for a
  map that ignores the image (on the map's own scale: rloo's p sits near rho, so its sd is small);
- `collapsed`: 1 when the method's policy area (the fraction of pixels its policy marks) is
  outside [0.02, 0.98]; blank (NaN) for masks that are given, not learned (the oracle's truth,
  random boxes), whose area is set by the data or by a setting.
Each per-image value is averaged over the images where it is defined. IoU with the bone region
is not among them: keeping every pixel scores the bones' share of the image.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from apga.config import default_mask_cell
from apga.evaluation.columns import MASK_QUALITY
from apga.methods.masks import adversarial_images, top_fraction
from apga.evaluation.occlusion import occlusion_map

COLUMNS = tuple(column.name for column in MASK_QUALITY)  # declared, with headers, in apga/evaluation/columns.py
COLLAPSE_BOUNDS = (0.02, 0.98)


def occlusion_cell(images: torch.Tensor) -> int:
    """The occlusion grid's cell: a grid of at least 8 x 8 cells."""
    return default_mask_cell(images.shape[-1])


def region_precision(top: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """|top & region| / |top| per image, (B,)."""
    return (top * region).flatten(1).sum(1) / top.flatten(1).sum(1).clamp(min=1)


def region_cover(top: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """|top & region| / |region| per image, NaN where the region is empty, (B,)."""
    size = region.flatten(1).sum(1)
    cover = (top * region).flatten(1).sum(1) / size.clamp(min=1)
    return torch.where(size > 0, cover, torch.nan)


def pointing_hit(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """The share of each map's maximal pixels that lie in the region, NaN where it is empty, (B,)."""
    flat, inside = maps.flatten(1).float(), region.flatten(1)
    peak = (flat >= flat.max(1, keepdim=True).values).float()
    hit = (peak * inside).sum(1) / peak.sum(1)
    return torch.where(inside.sum(1) > 0, hit, torch.nan)


def pixel_auroc(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """AUROC of each map's pixel values against the region (ties count one half), (B,); NaN where
    the region is empty or covers the whole image. Mann-Whitney with mid-ranks, all images at once."""
    scores, truth = maps.flatten(1).double(), region.flatten(1).double()
    n = scores.shape[1]
    ordered, order = scores.sort(1)
    truth = truth.gather(1, order)
    position = torch.arange(n, device=scores.device).expand_as(ordered)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, position, 0).cummax(1).values  # first position of each pixel's tie group
    last = torch.where(ends, position, n - 1).flip(1).cummin(1).values.flip(1)  # and its last
    ranks = (first + last).double() / 2 + 1
    positives = truth.sum(1)
    negatives = n - positives
    auroc = ((ranks * truth).sum(1) - positives * (positives + 1) / 2) / (positives * negatives).clamp(min=1)
    return torch.where((positives > 0) & (negatives > 0), auroc, torch.nan).float()


def other_patient_partners(patients: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each image of a batch, the nearest earlier image (cyclically) of another patient.

    `patients`: (B,) codes, equal for images of one patient. Returns (B,) partner indices and a
    (B,) bool that is False where the batch holds no image of another patient (then the index is
    the image's own)."""
    b = len(patients)
    index = torch.arange(b, device=patients.device)
    if b < 2:
        return index, torch.zeros(b, dtype=torch.bool, device=patients.device)
    shifts = torch.arange(1, b, device=patients.device)
    candidates = (index[None, :] - shifts[:, None]) % b  # (B - 1, B): the images 1, 2, ... before each
    differs = patients[candidates] != patients[None, :]  # (B - 1, B)
    first = differs.int().argmax(0)  # the first shift that reaches another patient (0 where none does)
    partners = candidates.gather(0, first[None])[0]
    has = differs.any(0)
    return torch.where(has, partners, index), has


@torch.no_grad()
def location_gaps(classifier, images: torch.Tensor, labels: torch.Tensor, top: torch.Tensor,
                  fill: str = "zero", patients: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two controls for where a mask is, per image (B,), from one classifier call on 3 B images:

    - location gap: CE(f(x with `top` blanked)) - CE(f(x with `top` rolled by half the image
      blanked)). A mask that ignores the image but sits where anatomy
      usually is (centre-biased boxes) still scores above 0 on it;
    - swap gap: the same against the mask of another patient's image of the batch
      (`other_patient_partners`; without `patients`, every image counts as its own patient),
      blanked on this one: 0 in expectation for any mask that ignores the image (NaN where the
      batch holds no other patient).
    Every term is an increase over the same clean loss, so the clean loss cancels."""
    h, w = images.shape[-2:]
    rolled = torch.roll(top, shifts=(h // 2, w // 2), dims=(2, 3))
    if patients is None:
        patients = torch.arange(len(images), device=images.device)
    partners, has_partner = other_patient_partners(patients.to(images.device))
    swapped = top[partners]
    masked = adversarial_images(images, torch.cat([top, rolled, swapped]), fill)  # (3 B, C, H, W)
    losses = F.cross_entropy(classifier(masked).float(), labels.repeat(3), reduction="none").view(3, len(images))
    swap_gap = torch.where(has_partner, losses[0] - losses[2], torch.nan)
    return losses[0] - losses[1], swap_gap


def location_gap(classifier, images, labels, top, fill: str = "zero") -> torch.Tensor:
    """The location gap of `location_gaps` alone."""
    return location_gaps(classifier, images, labels, top, fill)[0]


class MapQuality:
    """Accumulates the per-image measures of a split's batches; `summary()` averages them."""

    def __init__(self, fill: str = "zero", seed: int = 0):
        self.fill = fill
        self.values: dict[str, list[torch.Tensor]] = {}
        self.sums: torch.Tensor | None = None  # (2, H W): per-pixel sum and sum of squares of the maps, for mask_sd
        self.count = 0
        self.seed = seed

    def _add(self, name: str, value: torch.Tensor) -> None:
        self.values.setdefault(name, []).append(value.detach().float())

    @torch.no_grad()
    def add(self, classifier, images, labels, maps, policy_area, bone=None, finding=None,
            occlusion: torch.Tensor | None = None, patients: torch.Tensor | None = None) -> None:
        """One batch: the classifier in eval mode, `maps` (B, 1, H, W), truths (B, 1, H, W) or None,
        the classifier's occlusion maps of these images if already known (else computed), and the
        images' patient codes (B,) for the swap gap's partners."""
        generator = torch.Generator(maps.device).manual_seed(self.seed + self.count)  # random tie-breaking
        top = {rho: top_fraction(maps, rho / 100, generator) for rho in (10, 30)}
        self._add("policy_area", policy_area)
        rolled_gap, swap_gap = location_gaps(classifier, images, labels, top[10], self.fill, patients=patients)
        self._add("location_gap_10", rolled_gap)
        self._add("swap_gap_10", swap_gap)
        if occlusion is None:
            occlusion = occlusion_map(classifier, images, labels, occlusion_cell(images), self.fill)
        occlusion = F.interpolate(occlusion.float(), size=maps.shape[-2:], mode="nearest")
        self._add("occlusion_agreement_10", region_precision(top[10], top_fraction(occlusion, 0.1, generator)))
        if bone is not None:
            bone = bone.float()
            for rho in (10, 30):
                self._add(f"bone_precision_{rho}", region_precision(top[rho], bone))
            self._add("bone_auroc", pixel_auroc(maps, bone))
        if finding is not None:
            finding = finding.float()
            self._add("finding_cover_10", region_cover(top[10], finding))
            self._add("pointing_hit", pointing_hit(maps, finding))
            self._add("finding_auroc", pixel_auroc(maps, finding))
        flat = maps.flatten(1).double()
        batch_sums = torch.stack([flat.sum(0), flat.square().sum(0)])  # (2, H W)
        self.sums = batch_sums if self.sums is None else self.sums + batch_sums
        self.count += len(maps)

    def summary(self) -> dict[str, float]:
        """Mean of each measure over the images where it is defined (NaN if none), mask_sd, collapsed."""
        values = {name: torch.cat(parts).cpu().numpy() for name, parts in self.values.items()}
        out = {name: float(np.nanmean(v)) if np.isfinite(v).any() else math.nan
               for name, v in values.items() if name != "policy_area"}
        for name in COLUMNS:
            out.setdefault(name, math.nan)
        mean, mean_square = (self.sums / self.count).cpu().numpy()
        out["mask_sd"] = float(np.sqrt(np.maximum(mean_square - mean ** 2, 0)).mean())
        out["policy_area"] = float(values["policy_area"].mean())
        low, high = COLLAPSE_BOUNDS
        out["collapsed"] = math.nan if math.isnan(out["policy_area"]) else float(not low <= out["policy_area"] <= high)
        return out
