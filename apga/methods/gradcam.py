"""Batched Grad-CAM (Selvaraju et al. 2017) at a named layer, entirely in torch on the device.

Used by the Grad-CAM masking method (docs/method.md) with a frozen copy of the baseline.
The model's parameters get no gradient and its train/eval mode is restored afterwards: the
gradient is taken with `torch.autograd.grad` with respect to the layer's output alone.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from apga.methods.masks import scale_to_unit


@contextlib.contextmanager
def capture_layer_output(module: nn.Module):
    """Replace the module's output by a leaf that requires grad; hooks always removed.

    Yields a dict whose "activation" is that leaf once the model has run. The model goes on
    with a copy of it, so in-place ops downstream (DenseNet's ReLU) leave the leaf intact.
    """
    captured = {}

    def hook(_module, _inputs, output):
        leaf = output.detach().requires_grad_(True)
        captured["activation"] = leaf
        return leaf.clone()

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def grad_cam(model: nn.Module, images: torch.Tensor, target_layer: str = "features.norm5",
             targets: torch.Tensor | None = None) -> torch.Tensor:
    """Grad-CAM of each image for its top-1 class (or `targets`), (B, 1, H, W) in [0, 1].

    For the layer's activations A (B, C, h, w) and the class score y: channel weights are
    the spatial mean of dy/dA, the map is ReLU(sum_c w_c A_c), scaled to [0, 1] per image,
    upsampled bilinearly to the image size and scaled to [0, 1] again (pytorch-grad-cam's
    convention, which the tests compare against). A is taken after DenseNet's final ReLU,
    which is what the classifier head sees.
    """
    layer = model.get_submodule(target_layer)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), capture_layer_output(layer) as captured:
            logits = model(images)
            classes = logits.argmax(1) if targets is None else targets
            score = logits.gather(1, classes.view(-1, 1)).sum()
            (gradient,) = torch.autograd.grad(score, captured["activation"])
    finally:
        model.train(was_training)
    activation = F.relu(captured["activation"].detach())  # (B, C, h, w)
    weights = gradient.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
    cam = F.relu((weights * activation).sum(1, keepdim=True))  # (B, 1, h, w)
    cam = F.interpolate(scale_to_unit(cam), size=images.shape[-2:], mode="bilinear", align_corners=False)
    return scale_to_unit(cam).clamp_(0, 1)  # (B, 1, H, W)
