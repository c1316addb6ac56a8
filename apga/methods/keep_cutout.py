"""KeepCutout (KeepAugment's selective cut, Gong et al., CVPR 2021): Cutout that never cuts the
region the classifier being trained finds salient.

Each step draws each image's box size as Cutout does (area 2-33 %, aspect 0.3-3.3), scores every
place the box fits by the share of the image's saliency it would cover (the paper's importance
score, Eq. 1: the saliency inside the box over the whole image's), sets the threshold to the
`KEEP_QUANTILE` quantile of those scores (the paper's adaptive threshold) and places the box
uniformly among the places at or below it: the paper's "keep sampling until the score is below
the threshold", in one batched draw. The saliency is the Grad-CAM (apga/methods/gradcam.py) of the
classifier as it is at that step for each image's label (the paper's saliency is of the label's
logit too), which is low resolution by construction (DenseNet's last feature map, upsampled), the
paper's cheap approximation in spirit; the paper's own map is the input gradient. Where an image's
map is 0 everywhere (Grad-CAM's ReLU of a negative sum, frequent early in training), every place
passes and the box is Cutout's; the step logs the share of such images (`flat_saliency` in
metrics.csv). The cut image then takes a classifier step beside the clean one, as Cutout.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from apga.distributed import unwrap
from apga.methods.base import Method
from apga.methods.gradcam import grad_cam
from apga.methods.masks import CUTOUT_BOX, adversarial_images, box_masks, box_sizes

KEEP_QUANTILE = 0.5  # the paper sets the threshold as a quantile of the candidates' scores; the median here


def box_scores(saliency: torch.Tensor, box_h: torch.Tensor, box_w: torch.Tensor) -> torch.Tensor:
    """(B, H, W): the share of each image's saliency ((B, 1, H, W), >= 0) that its box of size
    (box_h, box_w) ((B,) pixels) covers with its top-left corner at each pixel; NaN where it does not fit."""
    b, _, h, w = saliency.shape
    values = saliency[:, 0].float()
    integral = F.pad(values.cumsum(1).cumsum(2), (1, 0, 1, 0)).flatten(1)  # (B, (H+1)(W+1))
    top = torch.arange(h, device=saliency.device).view(1, h, 1).expand(b, h, w)
    left = torch.arange(w, device=saliency.device).view(1, 1, w).expand(b, h, w)
    bottom = top + box_h.long().view(b, 1, 1)
    right = left + box_w.long().view(b, 1, 1)
    fits = (bottom <= h) & (right <= w)
    bottom, right = bottom.clamp(max=h), right.clamp(max=w)

    def at(row, col):
        return integral.gather(1, (row * (w + 1) + col).flatten(1)).view(b, h, w)

    covered = at(bottom, right) - at(top, right) - at(bottom, left) + at(top, left)
    share = covered / values.sum((1, 2)).clamp_min(1e-12).view(b, 1, 1)
    return torch.where(fits, share, torch.full_like(share, float("nan")))


def keep_cutout_masks(saliency: torch.Tensor, generator: torch.Generator,
                      quantile: float = KEEP_QUANTILE) -> torch.Tensor:
    """(B, 1, H, W) float masks of the cut boxes (1 inside): Cutout's sizes, each box placed
    uniformly among the places whose saliency share is at most the `quantile` of its image's."""
    b, _, h, w = saliency.shape
    box_h, box_w = box_sizes(b, h, w, **CUTOUT_BOX, generator=generator, device=saliency.device)
    scores = box_scores(saliency, box_h, box_w)  # (B, H, W)
    threshold = torch.nanquantile(scores.flatten(1), quantile, dim=1).view(b, 1, 1)
    allowed = scores <= threshold  # NaN (does not fit) compares False; the least salient place always passes
    draw = torch.rand(b, h, w, generator=generator, device=saliency.device)
    place = torch.where(allowed, draw, torch.full_like(draw, -1.0)).flatten(1).argmax(1)  # uniform among allowed
    return box_masks((place // w).float(), (place % w).float(), box_h, box_w, h, w)


class KeepCutout(Method):
    name = "keepcutout"
    switch = 0
    about = "KeepCutout (Cutout off the salient region)"

    def phases(self, batch):
        images, labels = batch["image"], batch["label"]
        yield from self.clean_phase(batch)
        with torch.autocast(images.device.type, enabled=False):  # the saliency of each image's label
            saliency = grad_cam(unwrap(self.classifier), images.float(), "features.norm5", targets=labels)
        erased = keep_cutout_masks(saliency, self.generator)
        phase = self.classifier_phase(adversarial_images(images, erased, self.fill), labels, "cutout_loss")
        # a map that is 0 everywhere spares nothing: the box is then Cutout's, anywhere it fits
        phase.logs["flat_saliency"] = (saliency.flatten(1).amax(1) == 0).float().mean()
        yield phase
