"""The one training loop every method runs on.

It owns: optimizers, zero_grad/backward/step, AMP, the epoch order, validation (each epoch,
and every `val_every` iterations for APGA and end-to-end), early stopping, checkpoints
(`last.pt` each epoch, `best.pt` on improvement, both atomic), resume, the per-epoch
metrics file, the progress bar, and under torchrun the split of work between ranks (rank 0
evaluates and writes; its decisions are broadcast). A method only says what its phases are (methods/base.py).

Reproducible resume: the epoch's data order and the methods' random masks come from
generators reseeded from (seed, method, epoch), and everything else that changes (networks,
optimizers, scaler, reward baseline, early-stopping state, RNG states) is in `last.pt`.

A run's identity (`config.json`, and the config inside every checkpoint) is its training
settings, the fingerprint of its data (data.data_fingerprint) and its inputs (the digest of the
baseline checkpoint it was fine-tuned from; the random floor's kept area). A run is resumed or
reused only under the same identity: other settings or other data stop the command with a
one-line message; other inputs (the baseline was retrained, APGA's area changed) make it stale,
and it is trained anew with a notice.
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from tqdm import tqdm

from apga.training.checkpoint import check_same_config, load_checkpoint, save_checkpoint
from apga.config import config_dict
from apga.data import RunData, make_loader, to_model_input
from apga.distributed import Dist, plain_networks, unwrap
from apga.errors import CheckpointError, NonFiniteError
from apga.evaluation.evaluate import evaluate
from apga.reporting.gallery import save_gallery
from apga.reporting.plots import plot_curves
from apga.utils import atomic_write_bytes, atomic_write_json, code_version, derive_seed

GALLERY_IMAGES = 8


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


@dataclass
class Stage:
    """Everything `fit` needs besides the method and the data."""
    run_dir: Path
    seed: int
    device: torch.device
    precision: Precision
    config: object
    progress: bool = True
    dist: Dist = Dist()
    inputs: dict = field(default_factory=dict)  # what the run starts from: part of its identity
    on_fresh: Callable[[], None] | None = None  # called (rank 0) when the run is trained anew


class _Logs:
    """Sums of detached per-phase scalars on the device; synced only when read."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, logs: dict[str, torch.Tensor]) -> None:
        for key, value in logs.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value

    def means(self, dist: Dist = Dist()) -> dict[str, float]:
        """Means over the steps so far (and over ranks, under torchrun)."""
        if not self.sums:
            return {}
        values = dist.mean(torch.stack(list(self.sums.values()))).cpu() / max(self.count, 1)  # one host sync
        return dict(zip(self.sums, values.tolist()))


def _check_finite(means: dict[str, float], where: str, last_checkpoint: Path) -> None:
    bad = {k: v for k, v in means.items() if not math.isfinite(v)}
    if bad:
        name, value = next(iter(bad.items()))
        kept = f"the last good checkpoint {last_checkpoint} is kept" if last_checkpoint.exists() else "no checkpoint was written"
        raise NonFiniteError(f"{where}: {name} became {value}; {kept}. Lower the learning rate (--finetune-lr, "
                             f"--agent-lr, --lr) or turn AMP off (--amp 0)")


def _state_of(model):
    return None if model is None else unwrap(model).state_dict()


def _save_state(path: Path, method, optimizers, scaler, progress: dict, config_values: dict, history: list) -> None:
    save_checkpoint(path, {
        "classifier": _state_of(method.classifier),
        "agent": _state_of(method.agent),
        "method": method.state_dict(),
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
    """The torch RNG states saved by `_save_state` (CPU, and every CUDA device both machines have)."""
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        for index, cuda_state in enumerate(cuda_states[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), index)


def load_networks(method, state: dict) -> None:
    unwrap(method.classifier).load_state_dict(state["classifier"])
    if method.agent is not None and state.get("agent") is not None:
        unwrap(method.agent).load_state_dict(state["agent"])
    method.load_state_dict(state.get("method", {}))


def _write_history(path: Path, history: list[dict]) -> None:
    atomic_write_bytes(path, pd.DataFrame(history).to_csv(index=False).encode())


def make_optimizers(method) -> dict[str, torch.optim.Optimizer]:
    """One Adam per network the method trains, with its learning rate.

    Adam's fused kernel (one kernel over all parameters) where the device has one: the same
    update as the per-parameter loop up to rounding, a step 3-5x faster on the CPU (DenseNet-169
    52 -> 18 ms, UNet11 91 -> 20 ms), and with fp16 the scaler's inf check needs no host sync.
    """
    return {name: torch.optim.Adam(net.parameters(), lr=lr, fused=_has_fused_adam(net))
            for name, (net, lr) in method.networks().items()}


def _has_fused_adam(net) -> bool:
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in net.parameters())


def run_step(method, images, labels, optimizers, scaler, precision: Precision, warmup: bool = False):
    """One training step: each of the method's phases (its warm-up phases if `warmup`), then its
    optimizers' steps. Yields their logs."""
    phases = method.warmup_phases(images, labels) if warmup else method.phases(images, labels)
    while True:
        with precision.autocast():
            phase = next(phases, None)
        if phase is None:
            return
        for name in phase.networks:
            optimizers[name].zero_grad(set_to_none=True)
        scaler.scale(phase.loss).backward()
        for name in phase.networks:
            scaler.step(optimizers[name])
        scaler.update()
        yield phase.logs


def train_one_epoch(method, loader, optimizers, scaler, stage: Stage, *, desc: str, on_iteration=None,
                    max_steps: int | None = None, warmup: bool = False, logs: _Logs | None = None) -> dict[str, float]:
    """Run the method's phases (or its warm-up phases) on every batch; return the mean logs (of
    this epoch, or of everything added to `logs`)."""
    logs = _Logs() if logs is None else logs
    for name, (net, _) in method.networks().items():
        net.train(not (warmup and name == "classifier"))  # the warm-up does not train the classifier
    total = len(loader) if max_steps is None else min(max_steps, len(loader))
    bar = tqdm(total=total, desc=desc, leave=False, disable=None if stage.progress else True, dynamic_ncols=True)
    log_every = stage.config.log_every
    for step, batch in enumerate(loader, start=1):
        if max_steps is not None and step > max_steps:
            break
        images = to_model_input(batch["image"].to(stage.device, non_blocking=True), stage.config.channels_last)
        labels = batch["label"].to(stage.device, non_blocking=True)
        for phase_logs in run_step(method, images, labels, optimizers, scaler, stage.precision, warmup):
            logs.add(phase_logs)
        logs.count += 1
        bar.update(1)
        if step % log_every == 0 or step == total:
            means = logs.means(stage.dist)  # the only host sync of a training step, every `log_every` steps
            _check_finite(means, f"{method.name}, {desc}, iteration {step}", stage.run_dir / "last.pt")
            bar.set_postfix({k: f"{v:.3g}" for k, v in means.items()})
        if on_iteration is not None:
            on_iteration(step)
    bar.close()
    means = logs.means(stage.dist)
    _check_finite(means, f"{method.name}, {desc}", stage.run_dir / "last.pt")
    return means


def fit(method, data: RunData, stage: Stage) -> dict:
    """Train until early stopping, then evaluate the selected checkpoint on the report split.

    Returns the report metrics (with the mask-quality columns for masking methods) plus
    `best_epoch`, `epochs_trained`, `selection_accuracy`, `selection_evaluations` (how many
    times the selection split was evaluated), `selection_mask_area` (the kept area on the
    selection split at the selected checkpoint), `data_fingerprint` and `code_version`.
    A finished run of the same identity (its `result.json` exists) is not redone when resuming.
    """
    config, run_dir, device = stage.config, stage.run_dir, stage.device
    result_file, last_file, best_file = run_dir / "result.json", run_dir / "last.pt", run_dir / "best.pt"
    config_file = run_dir / "config.json"
    config_values = {**config_dict(config), "data_fingerprint": data.fingerprint, "inputs": stage.inputs}
    fresh = not config.resume
    if config.resume and config_file.is_file():
        try:
            saved = json.loads(config_file.read_text())
        except json.JSONDecodeError:
            raise CheckpointError(f"{config_file} is corrupted; delete it, or pass --resume 0") from None
        check_same_config(config_file, saved, config_values, method.ignored_settings())
        if saved.get("inputs", {}) != stage.inputs:
            fresh = True
            if stage.dist.is_main:
                print(f"notice: {run_dir} started from other inputs ({_difference(saved.get('inputs', {}), stage.inputs)}); "
                      f"training it anew")
        elif result_file.is_file():
            return json.loads(result_file.read_text())  # finished: not redone
    main = stage.dist.is_main
    if main:
        if fresh:
            for stale in (result_file, last_file, best_file, run_dir / "metrics.csv", run_dir / "curves.png"):
                stale.unlink(missing_ok=True)
            shutil.rmtree(run_dir / "gallery", ignore_errors=True)
            if stage.on_fresh is not None:
                stage.on_fresh()
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(config_file, config_values)
    stage.dist.barrier()

    optimizers = make_optimizers(method)
    scaler = stage.precision.scaler()
    progress = {"epoch": 0, "best_accuracy": -1.0, "best_epoch": 0.0, "epochs_since_best": 0,
                "selection_evaluations": 0, "selection_mask_area": math.nan, "warmed_up": False}
    history: list[dict] = []
    if not fresh and last_file.is_file():
        state = load_checkpoint(last_file, device)
        check_same_config(last_file, state["config"], config_values, method.ignored_settings())
        load_networks(method, state)
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        scaler.load_state_dict(state["scaler"])
        progress, history = {**progress, **state["progress"]}, state["history"]
        restore_rng(state["rng"])
        if best_file.is_file():  # a best.pt written by mid-epoch validations of a killed epoch is still the best
            selection = load_checkpoint(best_file, "cpu").get("selection", {})
            if selection.get("best_accuracy", -1.0) > progress["best_accuracy"]:
                progress.update(selection)
        if main:
            print(f"resuming {run_dir} after epoch {progress['epoch']}")

    eval_kwargs = dict(batch_size=config.batch_size, autocast=stage.precision.autocast,
                       channels_last=config.channels_last, num_workers=0)
    sampler = None
    if stage.dist.enabled:  # each rank its shard of the same (seed, method, epoch) order
        sampler = torch.utils.data.DistributedSampler(data.train.dataset, stage.dist.world_size, stage.dist.rank,
                                                      shuffle=True, seed=derive_seed(stage.seed, method.name) % 2**31)
    loader = make_loader(data.train.dataset, config.batch_size, shuffle=True, num_workers=config.num_workers,
                         pin_memory=device.type == "cuda", sampler=sampler)
    gallery_images = data.select.dataset.__getitems__(list(range(min(GALLERY_IMAGES, len(data.select.dataset)))))["image"]
    method.generator = torch.Generator(device)

    def validate(epoch_position: float) -> dict:
        """Rank 0 evaluates and keeps the best checkpoint; every rank gets its metrics."""
        metrics = None
        if main:
            with plain_networks(method):
                metrics = evaluate(method, data.select, device, **eval_kwargs)
            if metrics["accuracy"] > progress["best_accuracy"]:
                metrics["improved"] = 1.0
                save_checkpoint(best_file, {"classifier": _state_of(method.classifier), "agent": _state_of(method.agent),
                                            "method": method.state_dict(), "method_name": method.name,
                                            "epoch": epoch_position, "selection": _selection_of(metrics, epoch_position),
                                            "config": config_values, "code_version": code_version()})
        metrics = stage.dist.from_main(metrics)
        progress["selection_evaluations"] += 1
        if metrics.get("improved"):
            progress.update(_selection_of(metrics, epoch_position))
        return metrics

    def seed_pass(epoch: int) -> None:
        """The data order and the method's random draws of one pass over the training set."""
        if sampler is not None:
            sampler.set_epoch(epoch)
        else:
            loader.generator.manual_seed(derive_seed(stage.seed, method.name, epoch, "order"))
        ranks = (stage.dist.rank,) if stage.dist.enabled else ()  # each rank its own draws for its own images
        method.generator.manual_seed(derive_seed(stage.seed, method.name, epoch, "masks", *ranks))

    max_epochs = config.finetune_epochs if method.fine_tuned and config.finetune_epochs else config.epochs
    start = time.perf_counter()
    if method.warmup_steps and not progress["warmed_up"] and progress["epoch"] == 0:
        history.append(warm_up(method, loader, optimizers, scaler, stage, seed_pass))
        progress["warmed_up"] = True
        if main:  # a run killed in epoch 1 resumes after the warm-up
            _save_state(last_file, method, optimizers, scaler, progress, config_values, history)
    for epoch in range(progress["epoch"] + 1, max_epochs + 1):
        if progress["epochs_since_best"] >= config.patience:
            break
        seed_pass(epoch)
        best_before = progress["best_accuracy"]
        steps = len(loader) if config.steps_per_epoch is None else min(config.steps_per_epoch, len(loader))

        def mid_epoch(step: int) -> None:
            if method.validates_mid_epoch and config.val_every and step % config.val_every == 0 and step < steps:
                checked = validate(epoch - 1 + step / steps)
                history.append({"epoch": epoch - 1 + step / steps, "iteration": step,
                                **{f"val_{k}": v for k, v in checked.items()}})

        train_logs = train_one_epoch(method, loader, optimizers, scaler, stage, desc=f"{method.name} epoch {epoch}",
                                     on_iteration=mid_epoch, max_steps=config.steps_per_epoch)
        val = validate(float(epoch))
        improved = progress["best_accuracy"] > best_before
        progress.update(epoch=epoch, epochs_since_best=0 if improved else progress["epochs_since_best"] + 1)
        history.append({"epoch": float(epoch), "iteration": steps, **{f"train_{k}": v for k, v in train_logs.items()},
                        **{f"val_{k}": v for k, v in val.items()}, "seconds": time.perf_counter() - start})
        if main:
            _save_state(last_file, method, optimizers, scaler, progress, config_values, history)
            _write_history(run_dir / "metrics.csv", history)
            if config.gallery == "epoch":
                with plain_networks(method):
                    save_gallery(method, gallery_images, run_dir / "gallery" / f"epoch{epoch:03d}.png", device)
        if stage.progress:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in train_logs.items() if k.endswith("loss"))
            print(f"  {method.name} epoch {epoch}: {shown}; selection accuracy {val['accuracy']:.3f}"
                  f"{' (best)' if improved else ''}")

    if not stage.dist.from_main(best_file.is_file()):  # no epoch ran (e.g. --epochs reached on resume)
        validate(float(progress["epoch"]))
    result = None
    if main:
        load_networks(method, load_checkpoint(best_file, device))
        with plain_networks(method):
            if config.gallery != "off":
                save_gallery(method, gallery_images, run_dir / "gallery" / "final.png", device)
            result = evaluate(method, data.report, device, mask_quality=True, seed=stage.seed, **eval_kwargs)
        if history:
            plot_curves(run_dir / "metrics.csv", run_dir / "curves.png",
                        title="/".join(run_dir.parts[-3:]))  # e.g. elbow-all-val/seed89/apga
        result.update(best_epoch=progress["best_epoch"], epochs_trained=progress["epoch"],
                      selection_accuracy=progress["best_accuracy"],
                      selection_evaluations=progress["selection_evaluations"],
                      selection_mask_area=progress["selection_mask_area"], train_seconds=time.perf_counter() - start,
                      data_fingerprint=data.fingerprint, code_version=code_version(), device=str(device))
        atomic_write_json(result_file, result)
    return stage.dist.from_main(result)


def warm_up(method, loader, optimizers, scaler, stage: Stage, seed_pass) -> dict:
    """`--agent-warmup`: `method.warmup_steps` steps of its warm-up phases (APGA: the agent alone)
    before fine-tuning, in passes over the training set (seeded as epochs 0, -1, ...). The
    classifier is not stepped and stays in eval mode, so its batch-norm statistics do not move
    either. Returns the history row (epoch 0) of the warm-up's mean logs."""
    logs, steps, number = _Logs(), method.warmup_steps, 0
    while logs.count < steps:
        if not len(loader):
            raise ValueError(f"{method.name} warm-up: the training set has no batch")
        seed_pass(-number)
        means = train_one_epoch(method, loader, optimizers, scaler, stage, desc=f"{method.name} warm-up {number + 1}",
                                max_steps=steps - logs.count, warmup=True, logs=logs)
        number += 1
    if stage.progress:
        shown = ", ".join(f"{k} {v:.3f}" for k, v in means.items() if k.endswith("loss"))
        print(f"  {method.name} warm-up: {steps} agent steps against the frozen classifier; {shown}")
    return {"epoch": 0.0, "iteration": steps, **{f"train_{k}": v for k, v in means.items()}}


def _selection_of(metrics: dict, epoch_position: float) -> dict:
    """What `progress` (and best.pt) record of a selected checkpoint's evaluation."""
    return {"best_accuracy": metrics["accuracy"], "best_epoch": epoch_position,
            "selection_mask_area": metrics.get("mask_area", math.nan)}


def _difference(old: dict, new: dict) -> str:
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)
