"""Cutout (DeVries & Taylor 2017): an extra classifier step with one random box per image zeroed."""
from __future__ import annotations

from apga.methods.masks import adversarial_images, cutout_masks
from apga.methods.base import Method


class Cutout(Method):
    name = "cutout"

    def phases(self, images, labels):
        yield self.classifier_phase(images, labels, "clean_loss")
        erased = cutout_masks(images, self.generator)  # (B, 1, H, W), a different box per image
        yield self.classifier_phase(adversarial_images(images, erased, self.fill), labels, "cutout_loss")
