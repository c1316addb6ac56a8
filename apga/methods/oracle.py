"""The ceiling of the masking methods: APGA's kept-region step with the ground-truth relevance
mask (the bones of generated data, a CSV task's `mask` column) instead of the agent's: a perfect
agent. Everything else is as the other fine-tuned methods: it starts from the baseline, takes the
clean step (unless --clean-step 0), and is evaluated with its mask at test time too (TTA, kept
region). What it gains over random masks of its area is what any mask could gain with this scheme;
what the agent recovers of that gain is in the report (docs/method.md).
"""
from __future__ import annotations

from apga.methods.base import Method
from apga.methods.masks import no_policy_area


class Oracle(Method):
    name = "oracle"
    switch = 0
    about = "the ceiling (ground-truth masks)"
    masks = True

    def phases(self, batch):
        yield from self.clean_phase(batch)
        yield self.kept_region_phase(batch["image"], batch["label"],
                                     self.keep_mask(self.mask_probabilities(batch["image"], batch)))

    def mask_probabilities(self, images, truths=None):
        """The ground-truth relevance mask, (B, 1, H, W) in {0, 1}; None for images without one
        (`apga.predict` on new images: the oracle's classifier alone)."""
        if not truths or truths.get("bone") is None:
            return None
        return truths["bone"].float()

    policy_area = staticmethod(no_policy_area)  # its masks are given: "collapsed" does not apply
