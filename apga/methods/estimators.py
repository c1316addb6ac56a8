"""How APGA's agent turns its output into masks and learns from the classifier's loss.

One small class per estimator, found through `ESTIMATORS` (name -> class). An estimator says:
- `probabilities(logits)`: the agent's mask probability map p, (B, 1, H, W);
- `policy_phase(method, images, labels, clean_loss)`: the agent's loss (steps 2-7 of docs/method.md);
- `keep_mask(probabilities)`: the deterministic mask of the kept-region step and of evaluation;
- `policy_area(probabilities)`: the expected fraction of pixels its policy marks, per image;
- `state_dict()` / `load_state_dict()`: what it carries between steps (for checkpoints).

`greedy` is the paper's: threshold at 0.5, one reward per batch with a moving-average baseline.
`sample` draws Bernoulli actions instead (proper REINFORCE, still one reward per batch). `rloo`
(docs/method.md) acts on a coarse grid of cells, draws K samples per image, and rewards
each with its own loss against a leave-one-out baseline, under an area budget and a prior.
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F

from apga.methods.masks import adversarial_images, area_penalty, greedy_action, top_fraction
from apga.methods.base import Phase
from apga.utils import eval_mode, full_precision

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


class Greedy:
    """The paper's estimator: a = 1[p > 0.5], reward r = CE(f(x (1 - a)), y) - CE(f(x), y) for the
    whole batch, baseline b <- 0.5 b + 0.5 r, advantage R = r - b, `policy_loss` (steps 2-7)."""

    name: ClassVar[str] = "greedy"
    reward_uses_clean_loss: ClassVar[bool] = True  # the reward is adversarial minus clean loss

    def __init__(self, config):
        self.config = config
        self.reward_baseline: torch.Tensor | None = None

    def init_agent(self, agent) -> None:
        """Called once on a fresh agent (before any checkpoint is loaded)."""

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits.float())

    def action(self, probabilities: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return greedy_action(probabilities)

    def policy_phase(self, method, images: torch.Tensor, labels: torch.Tensor, clean_loss: torch.Tensor) -> Phase:
        logits = method.agent(images)  # (B, 1, H, W)
        probabilities = torch.sigmoid(logits.detach().float())
        action = self.action(probabilities, method.generator)
        # 4-5. reward from the classifier in eval mode, without gradient, in float32 (under --amp
        # too: the clean term is the clean step's loss computed in float32, APGA.phases)
        with torch.no_grad(), eval_mode(method.classifier), full_precision(images.device):
            adversarial = adversarial_images(images.float(), action, method.fill)
            adversarial_loss = F.cross_entropy(method.classifier(adversarial), labels)
        reward = method.dist.mean((adversarial_loss - clean_loss).float())  # the same on every rank
        # 6. moving-average baseline, then the advantage
        self.reward_baseline = update_reward_baseline(self.reward_baseline, reward)
        advantage = reward - self.reward_baseline
        # 7. policy update (the agent's logits of step 2: the agent has not changed since)
        loss = policy_loss(logits.float(), action, advantage)
        return Phase(loss, ("agent",), {
            "adversarial_loss": adversarial_loss, "reward": reward, "reward_baseline": self.reward_baseline,
            "advantage": advantage, "policy_loss": loss.detach(), "mask_area": action.mean(),
        })

    def keep_mask(self, probabilities: torch.Tensor) -> torch.Tensor:
        return greedy_action(probabilities)

    def policy_area(self, probabilities: torch.Tensor) -> torch.Tensor:
        return self.action(probabilities, None).flatten(1).mean(1)

    def state_dict(self) -> dict:
        return {"reward_baseline": self.reward_baseline}

    def load_state_dict(self, state: dict) -> None:
        self.reward_baseline = state.get("reward_baseline")


class Sampled(Greedy):
    """Bernoulli REINFORCE: a ~ Bernoulli(p), otherwise the paper's batch reward and loss."""

    name: ClassVar[str] = "sample"

    def action(self, probabilities, generator):
        if generator is None:  # the expected action (for `policy_area`)
            return probabilities
        uniform = torch.rand(probabilities.shape, generator=generator, device=probabilities.device)
        return (uniform < probabilities).to(probabilities.dtype)


class RLOO:
    """REINFORCE with a leave-one-out baseline on a coarse grid (docs/method.md).

    Cells of `mask_cell` px: p_c = sigmoid(avgpool(agent(x))). K samples a^(k) ~ Bernoulli(p_c)
    per image; all B K masked images go through the classifier as one batch. Per-image reward
    r_b^(k) = CE(f(x_b (1 - a^(k))), y_b) - CE(f(x_b), y_b); advantage A_b^(k) = r_b^(k) -
    mean_{j != k} r_b^(j), divided by its root mean square over the batch (its mean is 0 by
    construction). The clean term is the same for every sample of an image, so it cancels from
    the advantage: it is not computed, and the logged reward uses the clean step's batch loss.
    Loss:

        -mean_{b,k} [A_b^(k) mean_c log pi(a_c^(k))] + lambda mean_b (mean_c p_c - rho)^2
        + w mean_{b,c} BCE(p_c, rho)

    lambda (`area_weight`) is the area budget, w (`prior_weight`) a per-cell pull of every cell
    toward the prior rho (`mask_area`). The agent's last bias starts at logit(rho), so the first
    masks are sparse. The deterministic mask is the top-rho cells of p (`keep_fraction`: another share).
    """

    name: ClassVar[str] = "rloo"
    reward_uses_clean_loss: ClassVar[bool] = False  # it cancels from the advantage (only the logged reward has it)

    def __init__(self, config):
        self.config = config
        self.cell = config.mask_cell
        self.samples, self.area = config.policy_samples, config.mask_area
        self.keep_fraction = config.mask_area if config.keep_fraction is None else config.keep_fraction

    def init_agent(self, agent) -> None:
        with torch.no_grad():
            agent.final.bias.fill_(math.log(self.area / (1 - self.area)))

    def grid(self, images_or_maps: torch.Tensor) -> tuple[int, int]:
        h, w = images_or_maps.shape[-2:]
        return h // self.cell, w // self.cell

    def cell_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(logits.float(), self.grid(logits))  # (B, 1, h, w)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        cells = torch.sigmoid(self.cell_logits(logits))
        return F.interpolate(cells, size=logits.shape[-2:], mode="nearest")  # (B, 1, H, W), constant per cell

    def policy_phase(self, method, images, labels, clean_loss) -> Phase:
        b, k = len(images), self.samples
        cell_logits = self.cell_logits(method.agent(images))  # (B, 1, h, w)
        p = torch.sigmoid(cell_logits)
        uniform = torch.rand((k, *p.shape), generator=method.generator, device=p.device)
        actions = (uniform < p.detach()).float()  # (K, B, 1, h, w)
        marked = F.interpolate(actions.flatten(0, 1), size=images.shape[-2:], mode="nearest")  # (K B, 1, H, W)
        adversarial = adversarial_images(images.float(), marked, method.fill)  # (K B, C, H, W)
        with torch.no_grad(), eval_mode(method.classifier), full_precision(images.device):  # rewards in float32
            losses = F.cross_entropy(method.classifier(adversarial), labels.repeat(k),
                                     reduction="none").float().view(k, b)  # (K, B): the rewards up to a per-image constant
        leave_one_out = (losses.sum(0, keepdim=True) - losses) / (k - 1)
        advantage = losses - leave_one_out
        advantage = advantage / (method.dist.mean(advantage.square().mean()).sqrt() + 1e-8)
        log_prob = -F.binary_cross_entropy_with_logits(cell_logits.expand_as(actions), actions,
                                                       reduction="none").flatten(2).mean(2)  # (K, B)
        policy = -(advantage * log_prob).mean()
        area = p.flatten(1).mean(1)  # (B,)
        budget = self.config.area_weight * (area - self.area).square().mean()
        prior = self.config.prior_weight * F.binary_cross_entropy_with_logits(
            cell_logits, torch.full_like(cell_logits, self.area))
        loss = policy + budget + prior
        adversarial_loss = losses.mean()
        return Phase(loss, ("agent",), {
            "adversarial_loss": adversarial_loss, "reward": method.dist.mean(adversarial_loss - clean_loss.float()),
            "reward_sd": losses.std(0).mean(),  # the spread of one image's samples: what the advantage sees
            "policy_loss": policy.detach(), "budget_loss": budget.detach(), "prior_loss": prior.detach(),
            "mask_area": area.detach().mean(),
        })

    def keep_mask(self, probabilities: torch.Tensor) -> torch.Tensor:
        """The top-rho cells of p (at least one), as a pixel mask; `--keep-fraction` keeps another
        share of the cells, ranked by the same p (the agent still learns under the budget rho)."""
        cells = F.adaptive_avg_pool2d(probabilities.float(), self.grid(probabilities))
        return F.interpolate(top_fraction(cells, self.keep_fraction), size=probabilities.shape[-2:], mode="nearest")

    def policy_area(self, probabilities: torch.Tensor) -> torch.Tensor:
        return probabilities.flatten(1).mean(1)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


ESTIMATORS = {cls.name: cls for cls in (Greedy, Sampled, RLOO)}
