"""APGA: Adversarial Policy Gradient Augmentation (the paper's Fig. 1; docs/method.md).

Each step: (1) a classifier step on the clean batch; (2-7) the agent proposes masks and learns,
by policy gradient, to mark the pixels whose blanking hurts the classifier most (how is the
estimator's business: apga/methods/estimators.py); (8) a classifier step on the image kept inside the
updated agent's mask. With `--freeze-agent 1` the agent learns in its warm-up only (steps 2-7
against the frozen baseline), and fine-tuning is steps 1 and 8 on its fixed masks: two stages.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from apga.methods import estimators
from apga.methods.base import Method, batch_norm_statistics_kept, variant_name
from apga.utils import eval_mode, full_precision


class APGA(Method):
    name = "apga"
    switch = 1
    about = "APGA (the REINFORCE agent)"
    masks = True
    uses_agent = True
    mid_epoch_validation = True

    def __init__(self, config, classifier, agent=None):
        super().__init__(config, classifier, agent)
        self.estimator = estimators.ESTIMATORS[config.estimator](config)
        if agent is not None:
            self.estimator.init_agent(agent)

    @property
    def variant(self) -> str:
        return apga_variant(self.config)

    def phases(self, batch):
        images, labels = batch["image"], batch["label"]
        if self.config.clean_step:
            in_float32 = self._clean_step_loss_in_float32(images, labels)  # the reward's clean term, under --amp
            clean = self.classifier_phase(images, labels, "clean_loss")
            yield clean  # 1.
            clean_loss = clean.loss.detach() if in_float32 is None else in_float32
        if not self.config.freeze_agent:  # --freeze-agent 1: the agent learned in its warm-up only
            if not self.config.clean_step:  # the reward's clean loss without a clean step
                clean_loss = self._clean_loss(images, labels)
            yield self.estimator.policy_phase(self, images, labels, clean_loss)  # 2-7.
        # 8. a fresh mask from the updated agent; classifier step on the kept region
        yield self.kept_region_phase(images, labels, self.keep_mask(self.mask_probabilities(images)))

    @property
    def warmup_steps(self):
        return self.config.agent_warmup

    def warmup_phases(self, batch):
        """Steps 2-7 alone, against the classifier as it is (`--agent-warmup`): no classifier step."""
        images, labels = batch["image"], batch["label"]
        yield self.estimator.policy_phase(self, images, labels, self._clean_loss(images, labels))

    def _clean_step_loss_in_float32(self, images, labels):
        """The loss of the clean step about to be taken, computed in float32, where the reward uses it
        and autocast is on (else None: the step's own loss is float32 already). Under `--amp` the
        step's forward runs in bf16 or fp16, whose rounding of the loss is the size of the reward
        (a difference of nearly equal losses); this forward is the same network in the same training
        mode, without gradient, its batch-norm running statistics left for the step to update."""
        if self.config.freeze_agent or not self.estimator.reward_uses_clean_loss \
                or not torch.is_autocast_enabled(images.device.type):
            return None
        with torch.no_grad(), full_precision(images.device), batch_norm_statistics_kept(self.classifier):
            return F.cross_entropy(self.classifier(images.float()), labels)

    def _clean_loss(self, images, labels):
        """The reward's clean term without a clean step: in eval mode, in float32 (as the rewards)."""
        with torch.no_grad(), eval_mode(self.classifier), full_precision(images.device):
            return F.cross_entropy(self.classifier(images.float()), labels)

    def mask_probabilities(self, images, truths=None):
        with torch.no_grad():
            return self.estimator.probabilities(self.agent(images))

    def keep_mask(self, probabilities):
        return self.estimator.keep_mask(probabilities)

    def policy_area(self, probabilities):
        return self.estimator.policy_area(probabilities)

    def state_dict(self):
        return self.estimator.state_dict()

    def load_state_dict(self, state):
        self.estimator.load_state_dict(state)


def apga_variant(config) -> str:
    """APGA's variant: its estimator and settings, warm-up, fill, kept-region norm, agent scale, scheme."""
    return variant_name(config, policy=True, kept_step=True, agent=True, clean_step=True)
