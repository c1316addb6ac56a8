"""Classifier and agent shapes and settings."""
from __future__ import annotations

import pytest
import torch

from apga.errors import ConfigError
from apga.models import build_agent, build_classifier


@pytest.mark.parametrize("name", ["densenet-small", "densenet121", "densenet169"])
def test_classifier_is_two_way_with_norm5(name):
    net = build_classifier(name).eval()
    assert net(torch.rand(2, 3, 64, 64)).shape == (2, 2)
    assert isinstance(net.get_submodule("features.norm5"), torch.nn.BatchNorm2d)


@pytest.mark.parametrize("scale, side", [(1.0, 64), (0.5, 64), (1.0, 96)])
def test_agent_gives_full_size_logits(scale, side):
    agent = build_agent(width=2, input_scale=scale)
    assert agent(torch.rand(2, 3, side, side)).shape == (2, 1, side, side)


def test_agent_width_32_is_vgg11_sized():
    agent = build_agent(width=32)
    assert [agent.conv1.out_channels, agent.conv2.out_channels, agent.conv5.out_channels] == [64, 128, 512]


def test_agent_pads_sides_that_are_not_multiples_of_32():
    torch.manual_seed(0)
    agent = build_agent(width=2)
    images = torch.rand(1, 3, 48, 40)
    logits = agent(images)
    assert logits.shape == (1, 1, 48, 40)
    padded = torch.nn.functional.pad(images, (0, 24, 0, 16))  # what the agent does inside
    assert torch.allclose(logits, agent(padded)[..., :48, :40], atol=1e-6)
    assert build_agent(width=2, input_scale=0.5)(torch.rand(1, 3, 224, 224)).shape == (1, 1, 224, 224)  # 112 px


def test_agent_rejects_sides_below_32():
    with pytest.raises(ConfigError, match="at least 32 px"):
        build_agent(width=2)(torch.rand(1, 3, 16, 64))


def test_pretrained_options_are_checked_before_any_download():
    with pytest.raises(ConfigError, match="densenet-small"):
        build_classifier("densenet-small", pretrained=True)
    with pytest.raises(ConfigError, match="agent-width 32"):
        build_agent(width=4, pretrained=True)
