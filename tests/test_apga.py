"""APGA's maths: known answers, and the batched step against a per-image reference."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from apga.config import make_config
from apga.methods.estimators import policy_loss, update_reward_baseline
from apga.methods.apga import APGA
from apga.models import build_agent, build_classifier
from apga.training.loop import make_optimizers
from reference_apga import reference_policy_step, reference_rloo_loss


def test_reward_baseline_update():
    first = update_reward_baseline(None, torch.tensor(0.8))
    assert torch.isclose(first, torch.tensor(0.8))  # starts at the first reward
    assert torch.isclose(update_reward_baseline(torch.tensor(1.0), torch.tensor(3.0)), torch.tensor(2.0))


def _log_prob_of_action(logits, action):
    return -F.binary_cross_entropy_with_logits(logits, action).item()


def test_policy_update_follows_the_sign_of_the_advantage():
    torch.manual_seed(0)
    for advantage, direction in ((0.5, 1), (-0.5, -1)):
        agent = build_agent(width=2)
        images = torch.rand(2, 3, 32, 32)
        logits = agent(images)
        action = (torch.rand_like(logits) > 0.5).float()  # any action taken
        before = _log_prob_of_action(logits.detach(), action)
        optimizer = torch.optim.SGD(agent.parameters(), lr=1e-3)
        policy_loss(logits, action, torch.tensor(advantage)).backward()
        optimizer.step()
        after = _log_prob_of_action(agent(images).detach(), action)
        assert np.sign(after - before) == direction


def test_policy_loss_known_value():
    logits = torch.zeros(1, 1, 2, 2)  # p = 0.5 everywhere: every BCE term is log 2
    value = policy_loss(logits, torch.ones_like(logits), torch.tensor(-0.2))
    assert np.isclose(value.item(), (100 * -0.2 + 0.2 * 0.1 + 0.2 * 0.01) * np.log(2), rtol=1e-6)


def _Config(**overrides):
    return make_config(preset="cpu", finetune_lr=1e-3, agent_lr=1e-3, **overrides)


def test_batched_step_equals_per_image_reference():
    torch.manual_seed(0)
    classifier, agent = build_classifier("densenet-small"), build_agent(width=2)
    images, labels = torch.rand(6, 3, 32, 32), torch.tensor([0, 1, 0, 1, 1, 0])
    method = APGA(_Config(), classifier, agent)
    method.estimator.reward_baseline = torch.tensor(0.3)
    # the reference gets its own copies: a train-mode forward updates BatchNorm's running statistics
    reference_classifier = copy.deepcopy(classifier)
    clean_loss = F.cross_entropy(reference_classifier(images), labels).item()
    expected_actions, reward, baseline, loss = reference_policy_step(reference_classifier, agent, images, labels,
                                                                     clean_loss, 0.3)
    loss = loss.item()
    phases = method.phases({"image": images, "label": labels})
    next(phases)  # clean phase: compare on the same, un-stepped networks
    policy = next(phases)
    actions = method.keep_mask(method.mask_probabilities(images))
    assert torch.equal(actions, expected_actions)
    assert np.isclose(policy.logs["reward"].item(), reward, atol=1e-5)
    assert np.isclose(method.estimator.reward_baseline.item(), baseline, atol=1e-5)
    assert np.isclose(policy.loss.item(), loss, rtol=1e-4, atol=1e-6)
    assert np.isclose(policy.logs["mask_area"].item(), expected_actions.mean().item())


def test_one_step_changes_both_networks_with_a_detached_reward():
    torch.manual_seed(0)
    classifier, agent = build_classifier("densenet-small"), build_agent(width=2)
    method = APGA(_Config(), classifier, agent)
    method.estimator.reward_baseline = torch.tensor(0.0)  # on the very first batch the advantage is 0 by definition
    optimizers = make_optimizers(method)
    before = {name: [p.detach().clone() for p in net.parameters()] for name, (net, _) in method.networks().items()}
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 1, 0])
    for phase in method.phases({"image": images, "label": labels}):
        for name in ("classifier", "agent"):
            optimizers[name].zero_grad(set_to_none=True)
        phase.loss.backward()
        assert all(not value.requires_grad for value in phase.logs.values())
        if phase.networks == ("agent",):  # the policy loss reaches the agent only
            assert all(p.grad is None for p in classifier.parameters())
            assert all(torch.isfinite(p.grad).all() for p in agent.parameters() if p.grad is not None)
        for name in phase.networks:
            optimizers[name].step()
    for name, (net, _) in method.networks().items():
        assert any(not torch.equal(a, b) for a, b in zip(before[name], net.parameters())), name


def test_sampled_estimator_draws_bernoulli_actions():
    config = _Config(estimator="sample")
    method = APGA(config, build_classifier("densenet-small"), build_agent(width=2))
    method.generator = torch.Generator().manual_seed(0)
    p = torch.full((1, 1, 64, 64), 0.3)
    actions = method.estimator.action(p, method.generator)
    assert set(actions.unique().tolist()) == {0.0, 1.0} and abs(actions.mean().item() - 0.3) < 0.03
    assert method.variant == "sample"


def test_policy_loss_known_value_away_from_one_half():
    """p != 0.5, so BCE(p, 0) != BCE(p, 1): swapped or dropped terms change the value."""
    logits = torch.tensor([[[[0.5, -1.0], [2.0, 0.0]]]])
    action = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    advantage = -0.3
    p = torch.sigmoid(logits).numpy().ravel()
    a = action.numpy().ravel()
    bce = lambda target: -np.mean(target * np.log(p) + (1 - target) * np.log(1 - p))  # noqa: E731
    expected = 100 * bce(a) * advantage + 0.1 * abs(advantage) * bce(np.zeros(4)) + 0.01 * abs(advantage) * bce(np.ones(4))
    assert np.isclose(policy_loss(logits, action, torch.tensor(advantage)).item(), expected, rtol=1e-6)


def _RlooConfig():
    return _Config(estimator="rloo", image_size=32, mask_cell=8, policy_samples=4, mask_area=0.1, area_weight=1.0,
                   prior_weight=0.3)


def test_rloo_step_equals_a_per_image_reference():
    torch.manual_seed(0)
    config = _RlooConfig()
    classifier, agent = build_classifier("densenet-small"), build_agent(width=2)
    method = APGA(config, classifier, agent)
    images, labels = torch.rand(3, 3, 32, 32), torch.tensor([0, 1, 1])
    method.generator = torch.Generator().manual_seed(5)
    phase = method.estimator.policy_phase(method, images, labels, clean_loss=torch.tensor(0.0))
    uniform = torch.rand((4, 3, 1, 4, 4), generator=torch.Generator().manual_seed(5))  # the same draws
    expected, adversarial_losses = reference_rloo_loss(copy.deepcopy(classifier), agent(images), images, labels,
                                                       uniform, cell=8, area=0.1, area_weight=1.0, prior_weight=0.3)
    assert np.isclose(phase.loss.item(), expected.item(), rtol=1e-4, atol=1e-6)
    assert np.isclose(phase.logs["adversarial_loss"].item(), adversarial_losses.mean().item(), atol=1e-5)
    assert np.isclose(phase.logs["reward"].item(), adversarial_losses.mean().item(), atol=1e-5)  # clean loss 0 here
    # and the gradients agree too
    grads = torch.autograd.grad(phase.loss, list(agent.parameters()))
    expected_grads = torch.autograd.grad(expected, list(agent.parameters()))
    for ours, theirs in zip(grads, expected_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-7)


def test_rloo_sends_all_masked_images_through_the_classifier_as_one_batch():
    config = _RlooConfig()
    classifier = build_classifier("densenet-small")
    batches = []
    classifier.register_forward_hook(lambda module, inputs, output: batches.append(len(inputs[0])))
    method = APGA(config, classifier, build_agent(width=2))
    method.generator = torch.Generator().manual_seed(0)
    method.estimator.policy_phase(method, torch.rand(5, 3, 32, 32), torch.tensor([0, 1, 0, 1, 1]), torch.tensor(0.0))
    assert batches == [4 * 5]  # the B x K masked images, in one call


def test_rloo_starts_sparse_and_keeps_the_top_rho_cells():
    config = _RlooConfig()
    agent = build_agent(width=2)
    method = APGA(config, build_classifier("densenet-small"), agent)
    assert torch.allclose(agent.final.bias, torch.logit(torch.tensor(0.1)))
    cells = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    probabilities = torch.nn.functional.interpolate(cells, size=(32, 32), mode="nearest")
    keep = method.keep_mask(probabilities)
    assert keep.flatten(1).sum(1).tolist() == [2 * 64, 2 * 64]  # round(0.1 * 16) = 2 cells of 8 x 8
    for image in range(2):
        top_two = cells[image].flatten().topk(2).indices
        kept_cells = torch.nn.functional.avg_pool2d(keep[image:image + 1], 8).flatten().nonzero().flatten()
        assert sorted(kept_cells.tolist()) == sorted(top_two.tolist())
    assert method.policy_area(probabilities).tolist() == pytest.approx(cells.flatten(1).mean(1).tolist())
    assert method.variant == "rloo-cell8"  # 8 px cells are not the default 4 px at 32 px


def test_rloo_keep_fraction_keeps_another_share_of_the_same_ranking():
    """--keep-fraction 0.5: the top half of the cells by p, while the budget rho stays 0.1."""
    config = _Config(estimator="rloo", image_size=32, mask_cell=8, mask_area=0.1, keep_fraction=0.5)
    method = APGA(config, build_classifier("densenet-small"), build_agent(width=2))
    cells = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    keep = method.keep_mask(torch.nn.functional.interpolate(cells, size=(32, 32), mode="nearest"))
    for image in range(2):
        kept_cells = torch.nn.functional.avg_pool2d(keep[image:image + 1], 8).flatten().nonzero().flatten()
        assert sorted(kept_cells.tolist()) == sorted(cells[image].flatten().topk(8).indices.tolist())
    assert method.estimator.area == 0.1 and method.variant == "rloo-cell8-keep0.5"
    assert "keep_fraction" in APGA(_Config(), build_classifier("densenet-small"), build_agent(width=2)).ignored_settings()
    with pytest.raises(Exception, match="--keep-fraction must be in"):
        _Config(estimator="rloo", keep_fraction=1.5)


class _PixelPolicy(torch.nn.Module):
    """An 'agent' with one free logit per pixel, the same for every image."""

    def __init__(self, size):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(1, 1, size, size))
        self.final = torch.nn.Conv2d(1, 1, 1)  # rloo sets its bias; unused here

    def forward(self, images):
        return self.logits.expand(len(images), -1, -1, -1) + self.final.bias


def test_rloo_learns_to_mark_the_cells_the_classifier_reads():
    """Against a classifier that reads only the left quarter of the image, the policy's
    probability rises on the left cells and falls elsewhere."""
    from test_mask_quality import BrightLeft

    torch.manual_seed(0)
    config = _RlooConfig()
    agent = _PixelPolicy(32)
    method = APGA(config, BrightLeft(), agent)
    method.generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam([agent.logits], lr=0.05)
    for _ in range(60):
        images, labels = torch.rand(8, 3, 32, 32) * 0.5 + 0.5, torch.ones(8, dtype=torch.long)
        phase = method.estimator.policy_phase(method, images, labels, torch.tensor(0.0))
        optimizer.zero_grad()
        phase.loss.backward()
        optimizer.step()
    p = method.estimator.probabilities(agent(images[:1]))[0, 0]  # (32, 32), constant per 8 x 8 cell
    assert p[:, :8].mean() > 2 * p[:, 8:].mean()
    keep = method.keep_mask(p.view(1, 1, 32, 32))
    assert keep[..., :, :8].sum() == keep.sum()  # the deterministic mask lies in the left quarter
