"""Mixed precision: which autocast dtype a device gets, and the gradient scaler fp16 needs.

Autocast covers the training steps only: evaluation, mask quality, the floors and the rewards
that are differences of losses run in float32 whatever `--amp` says (`apga.utils.full_precision`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from apga.errors import ConfigError

NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass
class Precision:
    """Autocast dtype (None: full precision) and whether fp16 needs a gradient scaler."""
    device_type: str
    dtype: torch.dtype | None

    @classmethod
    def for_device(cls, device: torch.device, amp: bool | str | None) -> "Precision":
        """--amp: by default on for CUDA (bf16 where supported, else fp16) and off on the CPU,
        where `--amp 1` asks for bf16 autocast (slower than fp32 on CPUs without bf16 units).
        `--amp bf16` or `fp16` asks for that type on any device (fp16 with a gradient scaler).
        Raises ConfigError for bf16 on a GPU without it."""
        if amp is False or (amp is None and device.type != "cuda"):
            return cls(device.type, None)
        if amp == "fp16" or (amp in (None, True) and device.type == "cuda" and not torch.cuda.is_bf16_supported()):
            return cls(device.type, torch.float16)
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("--amp bf16: this GPU has no bfloat16; use --amp fp16 (with a gradient scaler) or --amp 0")
        return cls(device.type, torch.bfloat16)

    @property
    def name(self) -> str:
        """'fp32', 'bf16' or 'fp16': the precision of the training steps, as results rows record it."""
        return NAMES[self.dtype]

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.dtype == torch.float16)
