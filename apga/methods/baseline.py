"""The baseline: DenseNet trained from scratch on the clean images (the paper's baseline; docs/method.md)."""
from __future__ import annotations

from apga.methods.base import Method


class Baseline(Method):
    name = "baseline"
    fine_tuned = False

    def networks(self):
        return {"classifier": (self.classifier, self.config.lr)}
