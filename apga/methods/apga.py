"""APGA: Adversarial Policy Gradient Augmentation (METHOD.md section 2; paper Fig. 1).

Notation of the paper's script: the agent outputs p = sigmoid(agent(x)) (B, 1, H, W); the
action a marks pixels; the reward is r = CE(f(x * (1 - a)), y) - CE(f(x), y), one scalar per
batch; b is its moving-average baseline and R = r - b the advantage.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from apga.masks import adversarial_images, area_penalty, greedy_action
from apga.methods.base import Method, Phase
from apga.utils import eval_mode

REWARD_BASELINE_DECAY = 0.5
POLICY_SCALE, EMPTY_PENALTY, FULL_PENALTY = 100.0, 0.1, 0.01


def update_reward_baseline(baseline: torch.Tensor | None, reward: torch.Tensor) -> torch.Tensor:
    """b <- 0.5 b + 0.5 r, starting at the first reward (step 6)."""
    if baseline is None:
        return reward.clone()
    return REWARD_BASELINE_DECAY * baseline + (1 - REWARD_BASELINE_DECAY) * reward


def policy_loss(logits: torch.Tensor, action: torch.Tensor, advantage: torch.Tensor) -> torch.Tensor:
    """100 BCE(p, a) R + 0.1 |R| BCE(p, 0) + 0.01 |R| BCE(p, 1) (step 7).

    BCE(p, a) = -mean log pi(a): minimising R * BCE(p, a) is REINFORCE on the taken action.
    The |R|-weighted terms penalise masks that cover everything or nothing. Computed from
    logits for numerical stability; `action` and `advantage` carry no gradient.
    """
    advantage = advantage.detach()
    log_likelihood = F.binary_cross_entropy_with_logits(logits, action.detach())
    return POLICY_SCALE * log_likelihood * advantage + advantage.abs() * area_penalty(logits, EMPTY_PENALTY, FULL_PENALTY)


class APGA(Method):
    name = "apga"
    uses_agent = True
    validates_mid_epoch = True

    def __init__(self, config, classifier, agent=None):
        super().__init__(config, classifier, agent)
        self.reward_baseline: torch.Tensor | None = None

    @property
    def variant(self) -> str:
        parts = [] if self.config.estimator == "greedy" else [self.config.estimator]
        if self.config.agent_scale != 1:
            parts.append(f"scale{self.config.agent_scale:g}")
        return "-".join(parts)

    def choose_action(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Greedy (the paper: p > 0.5) or a Bernoulli sample (proper REINFORCE)."""
        if self.config.estimator == "greedy":
            return greedy_action(probabilities)
        uniform = torch.rand(probabilities.shape, generator=self.generator, device=probabilities.device)
        return (uniform < probabilities).to(probabilities.dtype)

    def phases(self, images, labels):
        # 1. classifier step on the clean batch
        clean = self.classifier_phase(images, labels, "clean_loss")
        yield clean
        # 2-3. the agent proposes a mask; marked pixels are blanked
        logits = self.agent(images)  # (B, 1, H, W)
        probabilities = torch.sigmoid(logits.detach().float())
        action = self.choose_action(probabilities)
        # 4-5. reward from the classifier in eval mode, without gradient
        with torch.no_grad(), eval_mode(self.classifier):
            adversarial_loss = F.cross_entropy(self.classifier(adversarial_images(images, action)), labels)
        reward = self.dist.mean((adversarial_loss - clean.loss.detach()).float())  # the same on every rank
        # 6. moving-average baseline, then the advantage
        self.reward_baseline = update_reward_baseline(self.reward_baseline, reward)
        advantage = reward - self.reward_baseline
        # 7. policy update (the agent's logits of step 2: the agent has not changed since)
        loss = policy_loss(logits.float(), action, advantage)
        yield Phase(loss, ("agent",), {
            "adversarial_loss": adversarial_loss, "reward": reward, "reward_baseline": self.reward_baseline,
            "advantage": advantage, "policy_loss": loss.detach(), "mask_area": action.mean(),
        })
        # 8. a fresh mask from the updated agent; classifier step on the kept region
        yield self.kept_region_phase(images, labels, greedy_action(self.mask_probabilities(images)))

    def state_dict(self):
        return {"reward_baseline": self.reward_baseline}

    def load_state_dict(self, state):
        self.reward_baseline = state.get("reward_baseline")
