"""Cutout (DeVries & Taylor 2017): an extra classifier step with one random box per image zeroed."""
from __future__ import annotations

from apga.methods.masks import adversarial_images, cutout_masks
from apga.methods.base import Method


class Cutout(Method):
    name = "cutout"
    switch = 1
    about = "Cutout"

    def phases(self, batch):
        images, labels = batch["image"], batch["label"]
        yield from self.clean_phase(batch)
        erased = cutout_masks(images, self.generator)  # (B, 1, H, W), a different box per image
        yield self.classifier_phase(adversarial_images(images, erased, self.fill), labels, "cutout_loss")
