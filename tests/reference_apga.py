"""A slow, obvious APGA step in the published script's structure: one image at a time.

Masks are thresholded in numpy per image (a host round trip each), each image is masked and its
adversarial loss computed on its own, and the agent runs a fresh forward for the policy loss, as
the published code did. Used by the equivalence test and, for timing, by benchmarks/bench_step.py.
`reference_rloo_loss` does the same for the rloo estimator: one image and one sample at a time.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def per_image_masks(probabilities: torch.Tensor) -> torch.Tensor:
    masks = []
    for p in probabilities:
        masks.append(torch.from_numpy((p.detach().cpu().numpy() > 0.5).astype(np.float32)))
    return torch.stack(masks).to(probabilities.device)


def reference_policy_step(classifier, agent, images, labels, clean_loss: float, baseline):
    """Steps 2-7: masks, reward, baseline, advantage and policy loss (not yet minimised)."""
    actions = per_image_masks(torch.sigmoid(agent(images)))
    classifier.eval()
    adversarial_losses = []
    with torch.no_grad():
        for i in range(len(images)):  # mask, forward and loss one image at a time
            adversarial = (images[i] * (1 - actions[i])).unsqueeze(0)
            adversarial_losses.append(F.cross_entropy(classifier(adversarial), labels[i:i + 1]).item())
    classifier.train()
    adversarial_loss = float(np.mean(adversarial_losses))
    reward = adversarial_loss - clean_loss
    baseline = reward if baseline is None else 0.5 * baseline + 0.5 * reward
    advantage = reward - baseline
    probabilities = torch.sigmoid(agent(images))  # the published code's fresh forward
    loss = (100 * F.binary_cross_entropy(probabilities, actions) * advantage
            + 0.1 * abs(advantage) * F.binary_cross_entropy(probabilities, torch.zeros_like(actions))
            + 0.01 * abs(advantage) * F.binary_cross_entropy(probabilities, torch.ones_like(actions)))
    return actions, reward, baseline, loss


def reference_step(classifier, agent, classifier_optimizer, agent_optimizer, images, labels, baseline):
    """One whole APGA step (steps 1-8) with updates; returns the new reward baseline."""
    clean_loss = F.cross_entropy(classifier(images), labels)
    classifier_optimizer.zero_grad()
    clean_loss.backward()
    classifier_optimizer.step()
    _, _, baseline, loss = reference_policy_step(classifier, agent, images, labels, clean_loss.item(), baseline)
    agent_optimizer.zero_grad()
    loss.backward()
    agent_optimizer.step()
    with torch.no_grad():
        keep = per_image_masks(torch.sigmoid(agent(images)))
    kept = torch.stack([images[i] * keep[i] for i in range(len(images))])
    keep_loss = F.cross_entropy(classifier(kept), labels)
    classifier_optimizer.zero_grad()
    keep_loss.backward()
    classifier_optimizer.step()
    return baseline


def reference_rloo_loss(classifier, logits, images, labels, uniform, cell: int, area: float, area_weight: float,
                        prior_weight: float):
    """The rloo estimator's loss (apga/methods/estimators.py, docs/method.md) one image and one sample
    at a time, from the same uniform draws (K, B, 1, h, w) as the batched step."""
    k_samples, b = uniform.shape[:2]
    h, w = images.shape[-2] // cell, images.shape[-1] // cell
    per_image_cells = []
    for i in range(b):
        per_image_cells.append(torch.stack([torch.stack([logits[i, 0, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell].mean()
                                                         for c in range(w)]) for r in range(h)]))  # (h, w)
    classifier.eval()
    rewards, adversarial_losses = torch.zeros(k_samples, b), torch.zeros(k_samples, b)
    with torch.no_grad():
        for i in range(b):
            clean = F.cross_entropy(classifier(images[i:i + 1]), labels[i:i + 1]).item()
            p = torch.sigmoid(per_image_cells[i])
            for k in range(k_samples):
                action = (uniform[k, i, 0] < p).float()  # (h, w)
                marked = action.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
                adversarial = (images[i] * (1 - marked)).unsqueeze(0)
                adversarial_losses[k, i] = F.cross_entropy(classifier(adversarial), labels[i:i + 1]).item()
                rewards[k, i] = adversarial_losses[k, i] - clean
    classifier.train()
    advantages = torch.zeros(k_samples, b)
    for i in range(b):
        for k in range(k_samples):
            others = [rewards[j, i] for j in range(k_samples) if j != k]
            advantages[k, i] = rewards[k, i] - sum(others) / len(others)
    advantages = advantages / (advantages.square().mean().sqrt() + 1e-8)
    policy, budget, prior = 0.0, 0.0, 0.0
    for i in range(b):
        p = torch.sigmoid(per_image_cells[i])
        for k in range(k_samples):
            action = (uniform[k, i, 0] < p.detach()).float()
            log_prob = (action * torch.log(p) + (1 - action) * torch.log(1 - p)).mean()
            policy = policy - advantages[k, i] * log_prob / (k_samples * b)
        budget = budget + area_weight * (p.mean() - area) ** 2 / b
        prior = prior - prior_weight * (area * torch.log(p) + (1 - area) * torch.log(1 - p)).mean() / b
    return policy + budget + prior, adversarial_losses
