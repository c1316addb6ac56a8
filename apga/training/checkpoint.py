"""Checkpoints: one dict per file, written atomically, loaded with `weights_only=True`.

`last.pt` (each epoch) holds everything a resumed run needs: networks, method state (APGA's
reward baseline), optimizers, scaler, progress (epoch, selection, early stopping), history and
RNG states. `best.pt` holds the selected networks and their selection record. Every checkpoint
carries `format`: bump CHECKPOINT_FORMAT when what a checkpoint holds, or how it is read,
changes; `apga.predict` refuses other formats with a one-line message.
"""
from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import torch

from apga.config import defaults, training_fields
from apga.distributed import unwrap
from apga.errors import CheckpointError
from apga.utils import atomic_write_bytes, code_version


CHECKPOINT_FORMAT = 2  # 2: method_name, estimator state, run identity (data fingerprint, inputs) in "config"
PREDICTIONS_DIR = "predictions"  # where apga.predict writes inside a run folder (a retrained run clears it)


def retrain_hint(run_dir: Path) -> str:
    """What to do about a run folder that cannot be resumed, and what each choice retrains."""
    follow = " (the runs fine-tuned from it follow it: they are trained anew too)" if Path(run_dir).name == "baseline" else ""
    return (f"delete {run_dir} to train that run alone anew{follow}, or use another --out-dir; --resume 0 would "
            f"train every run of the command anew, each seed's baseline included")


def save_checkpoint(path: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, device=None, hint: str | None = None) -> dict:
    """A checkpoint's dict; a `CheckpointError` saying what to do (`hint`, by default
    `retrain_hint` of its folder) when it cannot be read."""
    hint = retrain_hint(Path(path).parent) if hint is None else hint
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise CheckpointError(f"checkpoint {path} is corrupted or unreadable ({reason}); {hint}") from None


# What a run trains under besides its settings (training.loop.runtime_values): compared only where both
# sides record them, since a run written before they were recorded, or a command that only plans
# runs (the sweep's, on a machine that will not train them), does not know them.
RUNTIME_KEYS = ("precision", "world_size", "effective_batch")
# What runs written before a key existed did: their inputs were never standardised.
LEGACY = {"input_normalization": "none"}


def check_same_config(path: Path, saved: dict, current: dict, ignored: set[str] = frozenset()) -> None:
    """A checkpoint may only be resumed (and a finished run reused) by a run of the same training
    settings (but `ignored`), data and runtime (precision, number of processes)."""
    # a setting added after the checkpoint was written counts as its default there: every setting's
    # default must be what the code did before the setting existed (the paper's behaviour)
    before = {**training_fields(defaults()), **LEGACY}
    old = {**{k: v for k, v in before.items() if k in current}, **training_fields(saved)}
    new = training_fields(current)
    unknown = {k for k in RUNTIME_KEYS if k not in old or k not in new}
    if "precision" not in unknown:  # what --amp resolved to is compared, not how it was spelled (1 or bf16)
        ignored = {*ignored, "amp"}
    differing = sorted(k for k in old.keys() | new.keys()
                       if old.get(k) != new.get(k) and k not in ignored and k not in unknown)
    if "data_fingerprint" in differing:
        raise CheckpointError(f"{path} was trained on other data (fingerprint {old.get('data_fingerprint')} -> "
                              f"{new.get('data_fingerprint')}: other images, labels or splits, or an older version of "
                              f"this code); {retrain_hint(Path(path).parent)}")
    if differing:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differing[:4])
        raise CheckpointError(f"{path} was written with other settings ({detail}); {retrain_hint(Path(path).parent)}")


def network_states(method) -> dict:
    """The method's networks (without DDP wrappers) and its own state, as a checkpoint holds them."""
    return {"classifier": _state_of(method.classifier), "agent": _state_of(method.agent),
            "method": method.state_dict()}


def _state_of(model):
    return None if model is None else unwrap(model).state_dict()


def save_state(path: Path, method, optimizers, scaler, progress: dict, config_values: dict, history: list) -> None:
    """`last.pt`: everything a resumed run continues from."""
    save_checkpoint(path, {
        **network_states(method),
        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
        "scaler": scaler.state_dict(),
        "progress": progress,
        "history": history,
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "config": config_values,
        "code_version": code_version(),
    })


def restore_rng(state: dict) -> None:
    """The torch RNG states saved by `save_state` (CPU, and every CUDA device both machines have)."""
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        for index, cuda_state in enumerate(cuda_states[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), index)


def load_networks(method, state: dict) -> None:
    """The networks and method state of a checkpoint (or of `network_states`) into `method`."""
    unwrap(method.classifier).load_state_dict(state["classifier"])
    if method.agent is not None and state.get("agent") is not None:
        unwrap(method.agent).load_state_dict(state["agent"])
    method.load_state_dict(state.get("method", {}))
