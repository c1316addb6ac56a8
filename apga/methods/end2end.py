"""End-to-end masking: the agent's soft mask is trained cooperatively by backpropagation.

CE(f(x * p), y) + 0.5 BCE(p, 0) + 0.6 BCE(p, 1) is backpropagated into both networks, then
the same kept-region classifier step as APGA (METHOD.md section 4).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from apga.masks import greedy_action, kept_images
from apga.methods.base import Method, Phase

EMPTY_PENALTY, FULL_PENALTY = 0.5, 0.6


class EndToEnd(Method):
    name = "end2end"
    uses_agent = True
    validates_mid_epoch = True

    def networks(self):
        return {"classifier": (self.classifier, self.config.finetune_lr), "agent": (self.agent, self.config.agent_lr)}

    def phases(self, images, labels):
        yield self.classifier_phase(images, labels, "clean_loss")
        logits = self.agent(images).float()  # (B, 1, H, W)
        soft_mask = torch.sigmoid(logits)
        masked_loss = F.cross_entropy(self.classifier(images * soft_mask), labels)
        penalty = (EMPTY_PENALTY * F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))
                   + FULL_PENALTY * F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits)))
        yield Phase(masked_loss + penalty, ("classifier", "agent"),
                    {"masked_loss": masked_loss.detach(), "mask_area": soft_mask.detach().mean()})
        keep = greedy_action(self.mask_probabilities(images))
        phase = self.classifier_phase(kept_images(images, keep), labels, "keep_loss")
        phase.logs["keep_area"] = keep.mean()
        yield phase

    def mask_probabilities(self, images):
        with torch.no_grad():
            return torch.sigmoid(self.agent(images).float())
