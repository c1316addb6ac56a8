"""Checkpoints: one dict per file, written atomically, loaded with `weights_only=True`.

Every checkpoint carries `format`: bump CHECKPOINT_FORMAT when what a checkpoint holds, or how it
is read, changes; `apga.predict` refuses other formats with a one-line message.
"""
from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import torch

from apga.config import defaults, training_fields
from apga.errors import CheckpointError
from apga.utils import atomic_write_bytes


CHECKPOINT_FORMAT = 2  # 2: method_name, estimator state, run identity (data fingerprint, inputs) in "config"
RESUME_HINT = "delete it, or pass --resume 0 to start that run fresh"


def save_checkpoint(path: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, device=None, hint: str = RESUME_HINT) -> dict:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise CheckpointError(f"checkpoint {path} is corrupted or unreadable ({reason}); {hint}") from None


def check_same_config(path: Path, saved: dict, current: dict, ignored: set[str] = frozenset()) -> None:
    """A checkpoint may only be resumed by a run of the same training settings (but `ignored`)."""
    # a setting added after the checkpoint was written counts as its default there: every setting's
    # default must be what the code did before the setting existed (the paper's behaviour)
    old = {**{k: v for k, v in training_fields(defaults()).items() if k in current}, **training_fields(saved)}
    new = training_fields(current)
    differing = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k not in ignored)
    if "data_fingerprint" in differing:
        raise CheckpointError(f"{path} was trained on other data (fingerprint {old.get('data_fingerprint')} -> "
                              f"{new.get('data_fingerprint')}: other images, labels or splits, or an older version of "
                              f"this code); use another --out-dir, or --resume 0 to train it anew on this data")
    if differing:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differing[:4])
        raise CheckpointError(f"{path} was written with other settings ({detail}); use another --out-dir, "
                              f"or --resume 0 to overwrite that run")
