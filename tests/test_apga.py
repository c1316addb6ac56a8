"""APGA's maths: known answers, and the batched step against a per-image reference."""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from apga.methods.apga import APGA, policy_loss, update_reward_baseline
from apga.models import build_agent, build_classifier
from apga.train import make_optimizers
from reference_apga import reference_policy_step


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


class _Config:
    estimator, agent_scale, finetune_lr, agent_lr = "greedy", 1.0, 1e-3, 1e-3


def test_batched_step_equals_per_image_reference():
    torch.manual_seed(0)
    classifier, agent = build_classifier("densenet-small"), build_agent(width=2)
    images, labels = torch.rand(6, 3, 32, 32), torch.tensor([0, 1, 0, 1, 1, 0])
    method = APGA(_Config(), classifier, agent)
    method.reward_baseline = torch.tensor(0.3)
    # the reference gets its own copies: a train-mode forward updates BatchNorm's running statistics
    reference_classifier = copy.deepcopy(classifier)
    clean_loss = F.cross_entropy(reference_classifier(images), labels).item()
    expected_actions, reward, baseline, loss = reference_policy_step(reference_classifier, agent, images, labels,
                                                                     clean_loss, 0.3)
    loss = loss.item()
    phases = method.phases(images, labels)
    next(phases)  # clean phase: compare on the same, un-stepped networks
    policy = next(phases)
    actions = method.choose_action(torch.sigmoid(agent(images)))
    assert torch.equal(actions, expected_actions)
    assert np.isclose(policy.logs["reward"].item(), reward, atol=1e-5)
    assert np.isclose(method.reward_baseline.item(), baseline, atol=1e-5)
    assert np.isclose(policy.loss.item(), loss, rtol=1e-4, atol=1e-6)
    assert np.isclose(policy.logs["mask_area"].item(), expected_actions.mean().item())


def test_one_step_changes_both_networks_with_a_detached_reward():
    torch.manual_seed(0)
    classifier, agent = build_classifier("densenet-small"), build_agent(width=2)
    method = APGA(_Config(), classifier, agent)
    method.reward_baseline = torch.tensor(0.0)  # on the very first batch the advantage is 0 by definition
    optimizers = make_optimizers(method)
    before = {name: [p.detach().clone() for p in net.parameters()] for name, (net, _) in method.networks().items()}
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 1, 0])
    for phase in method.phases(images, labels):
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
    config = _Config()
    config.estimator = "sample"
    method = APGA(config, build_classifier("densenet-small"), build_agent(width=2))
    method.generator = torch.Generator().manual_seed(0)
    p = torch.full((1, 1, 64, 64), 0.3)
    actions = method.choose_action(p)
    assert set(actions.unique().tolist()) == {0.0, 1.0} and abs(actions.mean().item() - 0.3) < 0.03
    assert method.variant == "sample"
