"""Batched Grad-CAM against the pytorch-grad-cam package, and its side effects."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM

from apga.methods.gradcam import grad_cam
from apga.models import build_classifier


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_pytorch_grad_cam(seed):
    torch.manual_seed(seed)
    model = build_classifier("densenet-small").eval()
    images = torch.rand(4, 3, 64, 64)
    ours = grad_cam(model, images, "features.norm5")
    with GradCAM(model=model, target_layers=[model.features.norm5]) as reference:
        expected = reference(input_tensor=images, targets=None)
    assert ours.shape == (4, 1, 64, 64)
    np.testing.assert_allclose(ours[:, 0].numpy(), expected, atol=1e-5)
    assert ours.min() >= 0 and ours.max() <= 1


def test_leaves_mode_gradients_and_hooks_untouched():
    torch.manual_seed(0)
    model = build_classifier("densenet-small").train()
    layer = model.get_submodule("features.norm5")
    grad_cam(model, torch.rand(2, 3, 32, 32))
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert not layer._forward_hooks and not layer._backward_hooks
    with torch.no_grad():  # works inside no_grad too
        assert grad_cam(model, torch.rand(2, 3, 32, 32)).shape == (2, 1, 32, 32)
