"""TrivialAugment (Müller & Hutter, ICCV 2021): an extra classifier step on images that each went
through one random operation at a random strength, nothing tuned.

The operations, their strengths and the sampling are torchvision's `TrivialAugmentWide` (the "wide"
space: 14 operations, 31 strength bins, a random sign for the signed ones, nearest interpolation,
a zero fill), applied here to a whole batch at once on its device, each image with its own
operation and strength drawn from the method's generator. torchvision applies one draw to a whole
batch, so a per-image draw with it would be a Python loop per image; the tests compare every
operation here with torchvision's own kernel on the same draws. The geometric operations are one
`grid_sample` with a per-image inverse affine matrix (torchvision's `_get_inverse_affine_matrix` and
grid); the colour ones are per-image blends; `autocontrast` and `equalize` take no strength and are
torchvision's batched kernels. Translations are torchvision's absolute 0-32 px whatever the image
size. Images are (B, 3, H, W) float in [0, 1] (apga.data.to_model_input).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from apga.methods.base import Method

BINS = 31  # torchvision's num_magnitude_bins
OPERATIONS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
              "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")  # torchvision's order
SIGNED = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color", "contrast",
          "sharpness")
GEOMETRIC = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")


def magnitude_table() -> torch.Tensor:
    """(len(OPERATIONS), BINS) float64: each operation's strength per bin, as TrivialAugmentWide's space."""
    ramp = {"shear_x": torch.linspace(0.0, 0.99, BINS), "shear_y": torch.linspace(0.0, 0.99, BINS),
            "translate_x": torch.linspace(0.0, 32.0, BINS), "translate_y": torch.linspace(0.0, 32.0, BINS),
            "rotate": torch.linspace(0.0, 135.0, BINS), "brightness": torch.linspace(0.0, 0.99, BINS),
            "color": torch.linspace(0.0, 0.99, BINS), "contrast": torch.linspace(0.0, 0.99, BINS),
            "sharpness": torch.linspace(0.0, 0.99, BINS),
            "posterize": (8 - (torch.arange(BINS) / ((BINS - 1) / 6))).round().int(),
            "solarize": torch.linspace(1.0, 0.0, BINS)}
    return torch.stack([ramp[name].double() if name in ramp else torch.zeros(BINS, dtype=torch.float64)
                        for name in OPERATIONS])


@functools.lru_cache(maxsize=None)
def _constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The strength table, which operations are signed, and the sharpness kernel, on `device`: copied
    there once per process (a copy from the host waits for the device)."""
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    signed = torch.tensor([name in SIGNED for name in OPERATIONS])
    return magnitude_table().to(device), signed.to(device), kernel.to(device)


def draw(batch: int, generator: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's operation (B,) int64 (an index into OPERATIONS) and signed strength (B,) float64,
    drawn as TrivialAugmentWide draws them: an operation, a bin, then a sign for the signed ones."""
    operation = torch.randint(len(OPERATIONS), (batch,), generator=generator, device=device)
    bin_ = torch.randint(BINS, (batch,), generator=generator, device=device)
    flip = torch.rand(batch, generator=generator, device=device) <= 0.5
    table, is_signed, _ = _constants(torch.device(device))
    magnitude = table[operation, bin_]
    signed = is_signed[operation]
    return operation, torch.where(signed & flip, -magnitude, magnitude)


def _inverse_affine(angle_deg, translate_x, translate_y, shear_x_deg, shear_y_deg, centre_x, centre_y):
    """torchvision's `_get_inverse_affine_matrix` (scale 1) with every argument a (B,) float64 tensor: (B, 2, 3)."""
    rot, sx, sy = (value * (math.pi / 180.0) for value in (angle_deg, shear_x_deg, shear_y_deg))
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -torch.cos(rot - sy) * torch.tan(sx) / torch.cos(sy) - torch.sin(rot)
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = -torch.sin(rot - sy) * torch.tan(sx) / torch.cos(sy) + torch.cos(rot)
    m0, m1, m3, m4 = d, -b, -c, a
    m2 = m0 * (-centre_x - translate_x) + m1 * (-centre_y - translate_y) + centre_x
    m5 = m3 * (-centre_x - translate_x) + m4 * (-centre_y - translate_y) + centre_y
    return torch.stack([torch.stack([m0, m1, m2], 1), torch.stack([m3, m4, m5], 1)], 1)


def _warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """torchvision's affine grid and nearest `grid_sample` (zero fill), one (2, 3) matrix per image."""
    b, _, h, w = images.shape
    theta = theta.to(images.dtype)
    base = torch.empty(1, h, w, 3, dtype=images.dtype, device=images.device)
    base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=images.device))
    base[..., 1].copy_(torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h, device=images.device).unsqueeze(-1))
    base[..., 2].fill_(1)
    rescaled = theta.transpose(1, 2).clone()  # (B, 3, 2), divided by half the size as torchvision does
    rescaled[..., 0] /= 0.5 * w
    rescaled[..., 1] /= 0.5 * h
    grid = base.view(1, h * w, 3).expand(b, -1, -1).bmm(rescaled).view(b, h, w, 2)
    return F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def geometric(images: torch.Tensor, operation: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """Each image sheared, translated or rotated as its operation says (the others: untouched)."""
    b, _, h, w = images.shape
    is_ = {name: operation == OPERATIONS.index(name) for name in GEOMETRIC}
    zero = torch.zeros_like(magnitude)
    shear = torch.atan(magnitude) * (180.0 / math.pi)  # math.degrees(math.atan(m)), as torchvision passes it
    shear_x = torch.where(is_["shear_x"], shear, zero)
    shear_y = torch.where(is_["shear_y"], shear, zero)
    translate_x = torch.where(is_["translate_x"], magnitude.trunc(), zero)
    translate_y = torch.where(is_["translate_y"], magnitude.trunc(), zero)
    angle = torch.where(is_["rotate"], -torch.remainder(magnitude, 360.0), zero)  # rotate_image's -angle
    sheared = is_["shear_x"] | is_["shear_y"]  # sheared about the top-left corner (center=[0, 0])
    centre_x = torch.where(sheared, torch.full_like(magnitude, -w * 0.5), zero)
    centre_y = torch.where(sheared, torch.full_like(magnitude, -h * 0.5), zero)
    theta = _inverse_affine(angle, translate_x, translate_y, shear_x, shear_y, centre_x, centre_y)
    warped = _warp(images, theta)
    moved = torch.stack([is_[name] for name in GEOMETRIC]).any(0)
    return torch.where(moved.view(b, 1, 1, 1), warped, images)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (images * factor + other * (1.0 - factor)).clamp(0, 1)


def photometric(images: torch.Tensor, operation: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """Each image's colour operation at its strength (images whose operation is another: untouched).
    Every operation runs on the whole batch and each image takes its own result: elementwise work,
    small beside a network's step, and no host sync to split the batch by operation."""
    b = len(images)
    factor = (1.0 + magnitude).to(images.dtype).view(b, 1, 1, 1)
    grey = TF.rgb_to_grayscale(images)  # (B, 1, H, W)
    sharpened = images.clone()
    kernel = _constants(images.device)[2].to(images.dtype)
    blurred = F.conv2d(images, kernel.expand(3, 1, 3, 3), groups=3)
    inner = sharpened[..., 1:-1, 1:-1]
    inner.add_((blurred - inner) * (1.0 - factor))
    levels = torch.pow(2.0, magnitude.trunc()).to(images.dtype).view(b, 1, 1, 1)
    threshold = magnitude.to(images.dtype).view(b, 1, 1, 1)
    results = {
        "brightness": (images * factor).clamp(0, 1),
        "color": _blend(images, grey, factor),
        "contrast": _blend(images, grey.mean((1, 2, 3), keepdim=True), factor),
        "sharpness": sharpened.clamp(0, 1),
        "posterize": (images * levels).floor().clamp(min=0).minimum(levels - 1) * (1.0 / levels),
        "solarize": torch.where(images >= threshold, 1.0 - images, images),
        "autocontrast": TF.autocontrast(images),
        "equalize": TF.equalize(images),
    }
    out = images
    for name, result in results.items():
        out = torch.where((operation == OPERATIONS.index(name)).view(b, 1, 1, 1), result, out)
    return out


def trivial_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> the same shape: each image through one TrivialAugmentWide operation
    at one strength, drawn from `generator` (on the images' device)."""
    operation, magnitude = draw(len(images), generator, images.device)
    with torch.autocast(images.device.type, enabled=False):
        images = images.float()
        return photometric(geometric(images, operation, magnitude), operation, magnitude)


class TrivialAugment(Method):
    name = "trivialaugment"
    switch = 0
    about = "TrivialAugment (a random operation per image)"
    uses_fill = False  # its geometric operations fill with 0, as torchvision's; --fill does not apply

    def phases(self, batch):
        images, labels = batch["image"], batch["label"]
        yield from self.clean_phase(batch)
        yield self.classifier_phase(trivial_augment(images, self.generator), labels, "augment_loss")
