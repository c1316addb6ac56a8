"""The classifier (torchvision DenseNet, 2-way head) and the agent (TernausNet UNet11)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from apga.errors import ConfigError


def _weights(name: str):
    """torchvision's default ImageNet weights of architecture `name` (their metadata; nothing is downloaded)."""
    return models.get_model_weights(name).DEFAULT


def weights_mean_std(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and std the ImageNet weights of `name` were trained with (torchvision's
    weight metadata: their preprocessing transform)."""
    transform = _weights(name).transforms()
    return tuple(transform.mean), tuple(transform.std)


def input_normalization(config) -> str:
    """How the networks standardise their [0, 1] input, as a run's identity records it: 'none', or
    the mean and std of the ImageNet weights they start from (`--pretrained 1`)."""
    if not config.pretrained:
        return "none"
    mean, std = weights_mean_std(config.classifier)
    return f"mean {','.join(f'{m:g}' for m in mean)} std {','.join(f'{s:g}' for s in std)}"


def standardize_inputs(net: nn.Module, mean, std) -> nn.Module:
    """Make `net` standardise its input, (x - mean) / std per channel, as its first step (a forward
    pre-hook on the network, so its state dict and module names stay torchvision's). Images,
    masks and fills stay in [0, 1] outside the network: a zero fill is still black."""
    net.register_buffer("input_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
    net.register_buffer("input_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
    net.register_forward_pre_hook(_standardized)
    return net


def _standardized(module: nn.Module, args: tuple) -> tuple:
    images, *rest = args
    return ((images - module.input_mean) / module.input_std, *rest)


def build_classifier(name: str = "densenet169", pretrained: bool = False, load_weights: bool = True) -> nn.Module:
    """DenseNet with a 2-way linear head. `densenet-small` is a few-block net for CPU runs.
    With `pretrained`, torchvision's ImageNet weights (from its cache, else downloaded), and the
    input standardised with their own mean and std (`standardize_inputs`); with `load_weights`
    False, the standardisation alone, for a network whose weights come from a checkpoint of a
    pretrained run (nothing is read or downloaded).

    Every variant keeps torchvision's module names, so `features.norm5` (Grad-CAM's layer) exists.
    """
    if name == "densenet-small":
        if pretrained:
            raise ConfigError("no ImageNet weights exist for --classifier densenet-small; drop --pretrained")
        return models.DenseNet(growth_rate=12, block_config=(2, 2, 2, 2), num_init_features=24, bn_size=2,
                               num_classes=2)
    weights = _weights(name) if pretrained and load_weights else None
    net = imagenet(lambda: models.get_model(name, weights=weights), weights)
    net.classifier = nn.Linear(net.classifier.in_features, 2)
    return standardize_inputs(net, *weights_mean_std(name)) if pretrained else net


def imagenet(build, weights):
    """`build()`, a torchvision network made with ImageNet `weights` (None: none), which torchvision
    downloads once into torch.hub's folder. Raises `ConfigError`, in one line, where the download
    fails (a compute node without internet: pytorch/vision#1876, facebookresearch/pycls#133) or the
    downloaded file is damaged (an interrupted download), saying how to get the weights there."""
    if weights is None:
        return build()
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        return build()
    except (OSError, RuntimeError, EOFError) as error:  # urllib's URLError is an OSError
        reason = (str(error).splitlines() or [type(error).__name__])[0][:160]
        if cached.is_file():
            raise ConfigError(f"the downloaded ImageNet weights {cached} cannot be read ({reason}): an interrupted "
                              f"download? delete the file and rerun") from None
        raise ConfigError(f"cannot download the ImageNet weights {weights.url} ({reason}); on a machine without "
                          f"internet, copy {Path(weights.url).name} into {cached.parent} (TORCH_HOME) from one that "
                          f"has it, or pass --pretrained 0") from None


class _ConvRelu(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True))


class _DecoderBlock(nn.Sequential):
    """TernausNet's decoder block: conv-relu, then a stride-2 transposed conv (doubles the side)."""

    def __init__(self, in_channels: int, middle_channels: int, out_channels: int):
        super().__init__(
            _ConvRelu(in_channels, middle_channels),
            nn.ConvTranspose2d(middle_channels, out_channels, 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(inplace=True),
        )


class UNet11(nn.Module):
    """TernausNet UNet11: VGG11 encoder convs, transposed-conv decoder, one output channel.

    Sides that are not multiples of 32 are zero-padded to the next one and the logits cropped
    back. `width` is TernausNet's `num_filters`; at 32 the encoder is exactly VGG11 (64..512
    channels) and can take torchvision's ImageNet VGG11 weights. `input_scale` < 1 makes the
    cheaper agent: it sees the image at that fraction of its side and its logits are
    upsampled bilinearly to full size. With `pretrained`, its input is standardised with the
    VGG11 weights' mean and std (with `load_weights` False, the standardisation alone: the weights
    come from a checkpoint). Returns logits (B, 1, H, W); the mask probability is their sigmoid.
    """

    def __init__(self, width: int = 32, pretrained: bool = False, input_scale: float = 1.0, load_weights: bool = True):
        super().__init__()
        w = width
        self.input_scale = input_scale
        self.conv1 = nn.Conv2d(3, w * 2, 3, padding=1)
        self.conv2 = nn.Conv2d(w * 2, w * 4, 3, padding=1)
        self.conv3s = nn.Conv2d(w * 4, w * 8, 3, padding=1)
        self.conv3 = nn.Conv2d(w * 8, w * 8, 3, padding=1)
        self.conv4s = nn.Conv2d(w * 8, w * 16, 3, padding=1)
        self.conv4 = nn.Conv2d(w * 16, w * 16, 3, padding=1)
        self.conv5s = nn.Conv2d(w * 16, w * 16, 3, padding=1)
        self.conv5 = nn.Conv2d(w * 16, w * 16, 3, padding=1)
        self.center = _DecoderBlock(w * 16, w * 16, w * 8)
        self.dec5 = _DecoderBlock(w * (16 + 8), w * 16, w * 8)
        self.dec4 = _DecoderBlock(w * (16 + 8), w * 16, w * 4)
        self.dec3 = _DecoderBlock(w * (8 + 4), w * 8, w * 2)
        self.dec2 = _DecoderBlock(w * (4 + 2), w * 4, w)
        self.dec1 = _ConvRelu(w * (2 + 1), w)
        self.final = nn.Conv2d(w, 1, 1)
        self._init_weights()
        if pretrained:
            if load_weights:
                self._load_vgg11_encoder(width)
            standardize_inputs(self, *weights_mean_std("vgg11"))

    def _init_weights(self) -> None:
        """He init, zero biases: unlike PyTorch's default init (whose logits come out almost
        constant across pixels, so a thresholded mask is all or nothing), the random agent's
        first masks then depend on the image and cover about half of it."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.final.weight, std=(1.0 / self.final.in_channels) ** 0.5)

    _ENCODER = ("conv1", "conv2", "conv3s", "conv3", "conv4s", "conv4", "conv5s", "conv5")

    def _load_vgg11_encoder(self, width: int) -> None:
        if width != 32:
            raise ConfigError(f"ImageNet VGG11 weights need --agent-width 32 (got {width}); drop --pretrained "
                              f"or use width 32")
        weights = models.VGG11_Weights.IMAGENET1K_V1
        vgg = imagenet(lambda: models.vgg11(weights=weights), weights).features
        convs = [m for m in vgg if isinstance(m, nn.Conv2d)]
        for name, source in zip(self._ENCODER, convs):
            getattr(self, name).load_state_dict(source.state_dict())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        full_size = images.shape[-2:]
        x = images
        if self.input_scale != 1.0:
            small = [max(1, round(side * self.input_scale)) for side in full_size]
            x = F.interpolate(x, size=small, mode="bilinear", align_corners=False, antialias=True)
        height, width = x.shape[-2:]
        if min(height, width) < 32:
            raise ConfigError(f"the UNet11 agent needs sides of at least 32 px, got {height}x{width}; "
                              f"use a larger --image-size or --agent-scale")
        # Five 2x poolings: pad with zeros to a multiple of 32, crop the logits back afterwards.
        x = F.pad(x, (0, -width % 32, 0, -height % 32))
        relu, pool = F.relu, F.max_pool2d
        conv1 = relu(self.conv1(x))
        conv2 = relu(self.conv2(pool(conv1, 2)))
        conv3 = relu(self.conv3(relu(self.conv3s(pool(conv2, 2)))))
        conv4 = relu(self.conv4(relu(self.conv4s(pool(conv3, 2)))))
        conv5 = relu(self.conv5(relu(self.conv5s(pool(conv4, 2)))))
        center = self.center(pool(conv5, 2))
        dec5 = self.dec5(torch.cat([center, conv5], 1))
        dec4 = self.dec4(torch.cat([dec5, conv4], 1))
        dec3 = self.dec3(torch.cat([dec4, conv3], 1))
        dec2 = self.dec2(torch.cat([dec3, conv2], 1))
        logits = self.final(self.dec1(torch.cat([dec2, conv1], 1)))[..., :height, :width]  # (B, 1, h, w)
        if logits.shape[-2:] != full_size:
            logits = F.interpolate(logits, size=full_size, mode="bilinear", align_corners=False)
        return logits


def build_agent(width: int = 32, pretrained: bool = False, input_scale: float = 1.0, load_weights: bool = True) -> UNet11:
    return UNet11(width=width, pretrained=pretrained, input_scale=input_scale, load_weights=load_weights)
