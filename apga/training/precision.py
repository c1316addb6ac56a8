"""Mixed precision: which autocast dtype a device gets, and the gradient scaler fp16 needs."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass
class Precision:
    """Autocast dtype (None: full precision) and whether fp16 needs a gradient scaler."""
    device_type: str
    dtype: torch.dtype | None

    @classmethod
    def for_device(cls, device: torch.device, amp: bool | None) -> "Precision":
        """--amp: by default on for CUDA (bf16 where supported, else fp16) and off on the CPU,
        where `--amp 1` asks for bf16 autocast (slower than fp32 on CPUs without bf16 units)."""
        if amp is False or (amp is None and device.type != "cuda"):
            return cls(device.type, None)
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return cls(device.type, torch.float16)
        return cls(device.type, torch.bfloat16)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.dtype == torch.float16)
