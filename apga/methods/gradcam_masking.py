"""Grad-CAM masking: keep where a frozen copy of the baseline's Grad-CAM exceeds 0.5."""
from __future__ import annotations

import copy

import torch

from apga.methods.gradcam import grad_cam
from apga.methods.base import Method


class GradCamMasking(Method):
    name = "gradcam"
    switch = 1
    about = "Grad-CAM masking"
    masks = True

    def __init__(self, config, classifier, agent=None):
        super().__init__(config, classifier, agent)
        # Built from the classifier as it is now: the best baseline checkpoint (none without networks).
        self.reference = None if classifier is None else copy.deepcopy(classifier).eval().requires_grad_(False)

    def phases(self, batch):
        images, labels = batch["image"], batch["label"]
        yield from self.clean_phase(batch)
        yield self.kept_region_phase(images, labels, self.keep_mask(self.mask_probabilities(images)))

    def mask_probabilities(self, images, truths=None):
        with torch.autocast(images.device.type, enabled=False):
            return grad_cam(self.reference, images.float(), "features.norm5")
