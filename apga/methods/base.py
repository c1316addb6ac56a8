"""What every training method shares, and the protocol between a method and the loop.

A method's `phases(batch)` is a generator of `Phase`s: a loss, the networks whose optimizers step
on it, and detached values to log. A batch is a dict: "image" (B, 3, H, W) model input, "label"
(B,), and, where the data has ground truth, "bone" (B, 1, H, W) in {0, 1}: the relevance region
(the bones of generated data, a CSV task's `mask` column). The loop owns everything else (zero_grad,
backward, AMP scaling, optimizer steps, validation, checkpoints): after each yielded phase it
steps the named optimizers, then resumes the generator, so a later phase sees the updated
networks (APGA's step 8 uses the agent updated in step 7).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from apga.distributed import Dist
from apga.methods.masks import donor_indices, greedy_action, kept_images, swapped_background_images


def variant_name(config, *, policy: bool = False, kept_step: bool = False, agent: bool = False,
                 clean_step: bool = False, fill: bool = True) -> str:
    """What a run's settings change from the paper's, in one name ('' for the paper's): with
    `policy`, APGA's estimator (and its settings that differ from their defaults) and agent
    warm-up; always the fill; with `kept_step`, the kept-region batch norm; with `agent`, the
    agent's input scale; with `clean_step`, a scheme without the clean classifier step ('noclean');
    the fill unless `fill` is False (a method that blanks nothing).
    E.g. 'rloo-warmup300-frozenbn'. Variants sit side by side in one out-dir."""
    from apga.config import default_mask_cell, defaults

    parts = []
    if policy:
        parts += [] if config.estimator == "greedy" else [config.estimator]
        if config.estimator == "rloo":
            standard = defaults() | {"mask_cell": default_mask_cell(config.image_size)}
            for name, short in (("mask_cell", "cell"), ("policy_samples", "k"), ("mask_area", "rho"),
                                ("area_weight", "lambda"), ("prior_weight", "w"), ("keep_fraction", "keep")):
                if getattr(config, name) != standard[name]:
                    parts.append(f"{short}{getattr(config, name):g}")
        if config.agent_warmup:
            parts.append(f"warmup{config.agent_warmup}")
        if config.freeze_agent:
            parts.append("frozenagent")
    if fill and config.fill != "zero":
        parts.append(f"{config.fill}fill")
    if kept_step and config.kept_norm != "batch":
        parts.append(f"{config.kept_norm}bn")
    if kept_step and config.kept_background != "fill":
        parts.append(f"{config.kept_background}bg")
    if agent and config.agent_scale != 1:
        parts.append(f"scale{config.agent_scale:g}")
    if clean_step and not config.clean_step:
        parts.append("noclean")
    return "-".join(parts)


@contextlib.contextmanager
def batch_norm_frozen(network: nn.Module):
    """Batch-norm layers in eval mode for the block (running statistics used, not updated)."""
    norms = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for norm in norms:
        norm.eval()
    try:
        yield
    finally:
        for norm in norms:
            norm.train()


@contextlib.contextmanager
def batch_norm_statistics_kept(network: nn.Module):
    """Batch-norm running statistics as they were before the block: a forward in training mode
    that leaves no trace (the clean step then folds the batch in once, as it would have)."""
    norms = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (mean, var, count) in zip(norms, saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


@dataclass
class Phase:
    loss: torch.Tensor
    networks: tuple[str, ...]                      # names of the optimizers that step on this loss
    logs: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars, averaged per epoch


class Method:
    """Baseline-style training: one classifier step on the clean batch."""

    name: ClassVar[str] = "baseline"             # its results' method column, run folder and --train-<name> flag
    switch: ClassVar[int | None] = None          # --train-<name>'s default (None: always trained, the baseline)
    about: ClassVar[str] = ""                    # --train-<name>'s help: what the method does, in a few words
    masks: ClassVar[bool] = False                # trains on the region its own masks keep: floors, mask quality
    uses_fill: ClassVar[bool] = True             # blanks pixels (so --fill can change it), if fine-tuned
    uses_agent: ClassVar[bool] = False          # the runner builds the UNet11 agent for it
    mid_epoch_validation: ClassVar[bool] = False  # the paper's: also validate every `val_every` iterations
    fine_tuned: ClassVar[bool] = True            # starts from the best baseline checkpoint

    def __init__(self, config, classifier: nn.Module, agent: nn.Module | None = None):
        self.config = config
        self.classifier = classifier
        self.agent = agent
        self.fill = config.fill  # what blanked pixels become (masks.fill_values)
        self.generator: torch.Generator | None = None  # on the batch's device; reseeded each epoch by the loop
        self.dist = Dist()  # set by the runner under torchrun

    def ignored_settings(self) -> set[str]:
        """Config fields that cannot change this method's run: a finished or interrupted run of it
        is resumed even when they differ (e.g. APGA's estimator does not touch the baseline)."""
        ignored = set()
        if self.name != "apga":
            ignored |= {"estimator", "agent_warmup", "freeze_agent"}
        if self.name != "apga" or self.config.estimator != "rloo":
            ignored |= {"mask_cell", "policy_samples", "mask_area", "area_weight", "prior_weight", "keep_fraction"}
        if not self.uses_agent:
            ignored |= {"agent_scale", "agent_width", "agent_lr"}
        if not self.fine_tuned:
            ignored |= {"finetune_lr", "finetune_epochs", "fill", "clean_step"}
        if not self.uses_fill:
            ignored.add("fill")
        if self.name != "random":
            ignored.add("floor_area")
        if not self.has_kept_step:
            ignored |= {"kept_norm", "kept_background"}
        if self.config.model_selection == "last":
            ignored.add("patience")  # no early stopping
        if self.mid_epoch_validation:
            ignored.add("val_cadence")  # it validates every --val-every iterations under either cadence
        elif not self.validates_mid_epoch:
            ignored.add("val_every")
        return ignored

    @property
    def validates_mid_epoch(self) -> bool:
        """Also validate every `val_every` iterations: APGA and end-to-end (the paper), or every
        method under `--val-cadence equal`."""
        return self.mid_epoch_validation or self.config.val_cadence == "equal"

    def networks(self) -> dict[str, tuple[nn.Module, float]]:
        """Name -> (network, learning rate) of everything this method trains."""
        networks = {"classifier": (self.classifier, self.config.finetune_lr)}
        if self.agent is not None:
            networks["agent"] = (self.agent, self.config.agent_lr)
        return networks

    @property
    def variant(self) -> str:
        """Distinguishes settings of one method in results ('' for the paper's)."""
        return (variant_name(self.config, kept_step=self.has_kept_step, clean_step=True, fill=self.uses_fill)
                if self.fine_tuned else "")

    @property
    def has_kept_step(self) -> bool:
        """Trains on kept-region images (so --kept-norm can change it): the masking methods."""
        return self.masks

    def inputs(self) -> dict:
        """What this run starts from beyond its settings and data (part of its identity)."""
        return {}

    def phases(self, batch: dict[str, torch.Tensor]) -> Iterator[Phase]:
        yield self.classifier_phase(batch["image"], batch["label"], "loss")

    @property
    def warmup_steps(self) -> int:
        """Steps of `warmup_phases` before the first epoch (APGA's `--agent-warmup`; others: none)."""
        return 0

    def warmup_phases(self, batch: dict[str, torch.Tensor]) -> Iterator[Phase]:
        """A warm-up step's phases; they must not train the classifier (it is in eval mode)."""
        return iter(())

    def mask_probabilities(self, images: torch.Tensor, truths: dict | None = None) -> torch.Tensor | None:
        """(B, 1, H, W) in [0, 1] for masking methods (their map: what evaluation ranks), else None.
        `truths`: the batch's ground truth ("bone"), for the oracle; the other methods ignore it.

        Methods with an agent: its probabilities p = sigmoid(agent(x))."""
        if self.agent is None:
            return None
        with torch.no_grad():
            return torch.sigmoid(self.agent(images).float())

    def keep_mask(self, probabilities: torch.Tensor) -> torch.Tensor:
        """The deterministic (B, 1, H, W) mask of the kept-region step and of evaluation: p > 0.5."""
        return greedy_action(probabilities)

    def policy_area(self, probabilities: torch.Tensor) -> torch.Tensor:
        """The expected fraction of pixels the method marks, per image (B,): its keep mask's area,
        unless its policy samples (then the mean of p). A collapsed mask has this near 0 or 1."""
        return self.keep_mask(probabilities).flatten(1).mean(1)

    # --- helpers shared by the methods ------------------------------------------------
    def clean_phase(self, batch: dict[str, torch.Tensor]) -> Iterator[Phase]:
        """The clean classifier step that opens a fine-tuned method's step (none under --clean-step 0)."""
        if self.config.clean_step:
            yield self.classifier_phase(batch["image"], batch["label"], "clean_loss")

    def classifier_phase(self, images: torch.Tensor, labels: torch.Tensor, log_name: str) -> Phase:
        loss = F.cross_entropy(self.classifier(images), labels)
        return Phase(loss, ("classifier",), {log_name: loss.detach()})

    def kept_region_phase(self, images: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> Phase:
        """Classifier step on the image with only the kept region (APGA's step 8).

        `--kept-norm batch` (the paper): batch norm normalises the kept images with their own
        statistics and folds them into its running averages, which evaluation then applies to
        clean images. `frozen`: the step normalises with the running statistics of the clean
        images and leaves them as they are (auxiliary batches kept out of BN, as AdvProp does).

        `--kept-background fill` (the paper): the rest of the image is the fill (`--fill`); `swap`:
        another image's background, drawn from the method's generator (`swapped_background_images`)."""
        if self.config.kept_background == "swap":
            donors = donor_indices(len(images), self.generator, images.device)
            kept = swapped_background_images(images, keep, donors, self.fill)
        else:
            kept = kept_images(images, keep, self.fill)
        if self.config.kept_norm == "frozen":
            with batch_norm_frozen(self.classifier):
                phase = self.classifier_phase(kept, labels, "keep_loss")
        else:
            phase = self.classifier_phase(kept, labels, "keep_loss")
        phase.logs["keep_area"] = keep.mean()
        return phase

    def state_dict(self) -> dict:
        """Method state beyond the networks (e.g. APGA's reward baseline), for checkpoints."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
