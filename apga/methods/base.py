"""What every training method shares, and the protocol between a method and the loop.

A method's `phases(images, labels)` is a generator of `Phase`s: a loss, the networks whose
optimizers step on it, and detached values to log. The loop owns everything else (zero_grad,
backward, AMP scaling, optimizer steps, validation, checkpoints): after each yielded phase it
steps the named optimizers, then resumes the generator, so a later phase sees the updated
networks (APGA's step 8 uses the agent updated in step 7).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from apga.distributed import Dist
from apga.masks import kept_images


@dataclass
class Phase:
    loss: torch.Tensor
    networks: tuple[str, ...]                      # names of the optimizers that step on this loss
    logs: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars, averaged per epoch


class Method:
    """Baseline-style training: one classifier step on the clean batch."""

    name: ClassVar[str] = "baseline"
    uses_agent: ClassVar[bool] = False          # the runner builds the UNet11 agent for it
    validates_mid_epoch: ClassVar[bool] = False  # also validate every `val_every` iterations
    fine_tuned: ClassVar[bool] = True            # starts from the best baseline checkpoint

    def __init__(self, config, classifier: nn.Module, agent: nn.Module | None = None):
        self.config = config
        self.classifier = classifier
        self.agent = agent
        self.generator: torch.Generator | None = None  # on the batch's device; reseeded each epoch by the loop
        self.dist = Dist()  # set by the runner under torchrun

    def ignored_settings(self) -> set[str]:
        """Config fields that cannot change this method's run: a finished or interrupted run of it
        is resumed even when they differ (e.g. APGA's estimator does not touch the baseline)."""
        ignored = set()
        if not self.uses_agent:
            ignored |= {"agent_scale", "agent_width", "agent_lr"}
        if not self.fine_tuned:
            ignored |= {"finetune_lr", "finetune_epochs"}
        if not self.validates_mid_epoch:
            ignored.add("val_every")
        if self.name != "apga":
            ignored.add("estimator")
        return ignored

    def networks(self) -> dict[str, tuple[nn.Module, float]]:
        """Name -> (network, learning rate) of everything this method trains."""
        networks = {"classifier": (self.classifier, self.config.finetune_lr)}
        if self.agent is not None:
            networks["agent"] = (self.agent, self.config.agent_lr)
        return networks

    @property
    def variant(self) -> str:
        """Distinguishes settings of one method in results ('' for the default)."""
        return ""

    def phases(self, images: torch.Tensor, labels: torch.Tensor) -> Iterator[Phase]:
        yield self.classifier_phase(images, labels, "loss")

    def mask_probabilities(self, images: torch.Tensor) -> torch.Tensor | None:
        """(B, 1, H, W) in [0, 1] for masking methods (keep where > 0.5), else None.

        Methods with an agent: its probabilities p = sigmoid(agent(x))."""
        if self.agent is None:
            return None
        with torch.no_grad():
            return torch.sigmoid(self.agent(images).float())

    # --- helpers shared by the methods ------------------------------------------------
    def classifier_phase(self, images: torch.Tensor, labels: torch.Tensor, log_name: str) -> Phase:
        loss = F.cross_entropy(self.classifier(images), labels)
        return Phase(loss, ("classifier",), {log_name: loss.detach()})

    def kept_region_phase(self, images: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> Phase:
        """Classifier step on x * keep, the image with only the kept region (APGA's step 8)."""
        phase = self.classifier_phase(kept_images(images, keep), labels, "keep_loss")
        phase.logs["keep_area"] = keep.mean()
        return phase

    def state_dict(self) -> dict:
        """Method state beyond the networks (e.g. APGA's reward baseline), for checkpoints."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
