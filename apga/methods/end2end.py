"""End-to-end masking: the agent's soft mask is trained cooperatively by backpropagation.

CE(f(x * p), y) + 0.5 BCE(p, 0) + 0.6 BCE(p, 1) is backpropagated into both networks, then
the same kept-region classifier step as APGA (docs/method.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from apga.methods.masks import area_penalty
from apga.methods.base import Method, Phase, variant_name

EMPTY_PENALTY, FULL_PENALTY = 0.5, 0.6


class EndToEnd(Method):
    name = "end2end"
    switch = 1
    about = "end-to-end (cooperative) masking"
    masks = True
    uses_agent = True
    mid_epoch_validation = True

    @property
    def variant(self) -> str:
        return variant_name(self.config, kept_step=True, agent=True, clean_step=True)

    def phases(self, batch):
        images, labels = batch["image"], batch["label"]
        yield from self.clean_phase(batch)
        logits = self.agent(images).float()  # (B, 1, H, W)
        soft_mask = torch.sigmoid(logits)
        masked_loss = F.cross_entropy(self.classifier(images * soft_mask), labels)
        penalty = area_penalty(logits, EMPTY_PENALTY, FULL_PENALTY)
        yield Phase(masked_loss + penalty, ("classifier", "agent"),
                    {"masked_loss": masked_loss.detach(), "mask_area": soft_mask.detach().mean()})
        yield self.kept_region_phase(images, labels, self.keep_mask(self.mask_probabilities(images)))
