"""The one training loop every method runs on.

It owns: optimizers, zero_grad/backward/step, AMP, the epoch order, validation (each epoch,
and every `val_every` iterations for APGA and end-to-end), early stopping, checkpoints
(`last.pt` each epoch, `best.pt` when the selection improved, both atomic), resume, the
per-epoch metrics file, the progress bar, and under torchrun the split of work between ranks
(rank 0 evaluates and writes; its decisions are broadcast). A method only says what its phases
are (methods/base.py).

Checkpoints are written at epoch ends only: a selection found by a mid-epoch validation is held
in memory and written to `best.pt` at the end of its epoch, just before `last.pt`. A run killed
mid-epoch therefore resumes from a consistent pair and repeats that epoch exactly (its
validations included), so it selects what an uninterrupted run selects.

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
import copy
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

from apga.config import config_dict
from apga.models import input_normalization
from apga.data import RunData, make_loader, to_model_input
from apga.distributed import Dist, plain_networks
from apga.errors import CheckpointError, NonFiniteError
from apga.evaluation.evaluate import REPORT_PREDICTIONS_FILE, evaluate
from apga.reporting.board import BOARD_DIR, RunBoard
from apga.reporting.gallery import save_gallery
from apga.reporting.plots import plot_curves
from apga.reporting.results import RESULT_FILE, read_result, run_row
from apga.training.checkpoint import (PREDICTIONS_DIR, check_same_config, load_checkpoint, load_networks,
                                      network_states, restore_rng, retrain_hint, save_checkpoint, save_state)
from apga.training.precision import Precision
from apga.utils import (atomic_write_bytes, atomic_write_json, code_version, derive_seed, file_digest, file_lock,
                        notice)

GALLERY_IMAGES = 8


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
    identity: dict = field(default_factory=dict)  # its results row's identity (reporting.results.run_row)

    def per_process(self, steps: int | None) -> int | None:
        """Iterations of one process that read the training images of `steps` iterations of a single
        process (--steps-per-epoch, --agent-warmup): under torchrun each iteration reads
        `world_size` batches, so the counts mean the same images whatever the number of processes."""
        return None if steps is None else -(-steps // self.dist.world_size)


def identity_values(config, fingerprint: str, inputs: dict, runtime: dict | None = None) -> dict:
    """A run's identity as its config.json (and every checkpoint) records it: its settings, how its
    inputs are normalised (`models.input_normalization`), the fingerprint of its data, its inputs,
    and, from a process that trains it, the `runtime_values` it trains under (a command that
    only plans runs, such as the sweep's, leaves them out: they are compared where both sides
    have them, `checkpoint.RUNTIME_KEYS`)."""
    return {**config_dict(config), "input_normalization": input_normalization(config), **(runtime or {}),
            "data_fingerprint": fingerprint, "inputs": inputs}


def runtime_values(stage: "Stage") -> dict:
    """What a run trains under besides its settings: the training steps' precision (`--amp`
    resolved on its device), the number of processes, and the batch they step on together."""
    return {"precision": stage.precision.name, "world_size": stage.dist.world_size,
            "effective_batch": stage.config.batch_size * stage.dist.world_size}


def run_state(run_dir: Path, values: dict, ignored: set[str]) -> tuple[str, dict | None]:
    """What `run_dir` holds for a run of identity `values`: ("new", None) nothing yet, ("stale", None)
    a run of other inputs (it is trained anew), ("unfinished", None) a run to resume, or
    ("finished", result). Raises `CheckpointError` for a run of other settings or data."""
    config_file, result_file = run_dir / "config.json", run_dir / RESULT_FILE
    if not config_file.is_file():
        return "new", None
    try:
        saved = json.loads(config_file.read_text())
    except (json.JSONDecodeError, OSError):
        raise CheckpointError(f"{config_file} is corrupted; {retrain_hint(run_dir)}") from None
    check_same_config(config_file, saved, values, ignored)
    if saved.get("inputs", {}) != values["inputs"]:
        return "stale", None
    result = read_result(result_file)  # missing, or damaged: the run resumes from last.pt and writes it again
    return ("finished", result) if result is not None else ("unfinished", None)


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
        raise _diverged(where, f"{name} became {value}", last_checkpoint)


def _diverged(where: str, what: str, last_checkpoint: Path) -> NonFiniteError:
    kept = f"the last good checkpoint {last_checkpoint} is kept" if last_checkpoint.exists() else "no checkpoint was written"
    return NonFiniteError(f"{where}: {what}; {kept}. Lower the learning rate (--finetune-lr, --agent-lr, --lr) or "
                          f"turn AMP off (--amp 0)")


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


def model_batch(batch: dict, device, channels_last: bool = False) -> dict[str, torch.Tensor]:
    """A loader's batch on the device, as methods take it: "image" (B, 3, S, S) float in [0, 1],
    "label" (B,), and the relevance region "bone" (B, 1, S, S) in {0, 1} where the data has it."""
    out = {"image": to_model_input(batch["image"].to(device, non_blocking=True), channels_last),
           "label": batch["label"].to(device, non_blocking=True)}
    if "bone" in batch:
        out["bone"] = batch["bone"].to(device, non_blocking=True).unsqueeze(1).float()
    return out


def run_step(method, batch: dict, optimizers, scaler, precision: Precision, warmup: bool = False):
    """One training step on a `model_batch`: each of the method's phases (its warm-up phases if
    `warmup`), then its optimizers' steps. Yields their logs."""
    phases = method.warmup_phases(batch) if warmup else method.phases(batch)
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
        for phase_logs in run_step(method, model_batch(batch, stage.device, stage.config.channels_last), optimizers,
                                   scaler, stage.precision, warmup):
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
    run = _Run(method, data, stage)
    with run_folder_lock(stage.run_dir, stage.dist.is_main):
        finished = run.open()
        if finished is not None:
            return finished
        run.restore()
        if method.warmup_steps and not run.progress["warmed_up"] and run.progress["epoch"] == 0:
            run.warm_up()
        config = stage.config
        max_epochs = config.finetune_epochs if method.fine_tuned and config.finetune_epochs else config.epochs
        for epoch in range(run.progress["epoch"] + 1, max_epochs + 1):
            if config.model_selection != "last" and run.progress["epochs_since_best"] >= config.patience:
                break  # early stopping; `last` trains every epoch
            run.epoch(epoch)
        return run.finish()


@contextlib.contextmanager
def run_folder_lock(run_dir: Path, take: bool = True):
    """An exclusive lock on a run folder while it trains: a second process (a sweep resubmitted while
    its jobs still run, a shell loop) stops with one line instead of writing the same checkpoints.
    Where the file system has no locks, the run goes on without one (apga.utils.file_lock warns once)."""
    if not take:
        yield
        return
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(file_lock(run_dir / ".lock", blocking=False, guards="each run folder"))
        except BlockingIOError:
            raise CheckpointError(f"another process is training {run_dir} (it holds {run_dir / '.lock'}); wait for "
                                  f"it to finish, or stop it and rerun") from None
        yield


class _Run:
    """One run of `fit`: its files, optimizers, progress and history, in the order `fit` uses them."""

    def __init__(self, method, data: RunData, stage: Stage):
        self.method, self.data, self.stage, self.config = method, data, stage, stage.config
        self.main = stage.dist.is_main
        run_dir = stage.run_dir
        self.files = {"config": run_dir / "config.json", "last": run_dir / "last.pt", "best": run_dir / "best.pt",
                      "result": run_dir / RESULT_FILE, "history": run_dir / "metrics.csv"}
        self.config_values = identity_values(self.config, data.fingerprint, stage.inputs, runtime_values(stage))
        self.progress = {"epoch": 0, "best_accuracy": -1.0, "best_epoch": 0.0, "epochs_since_best": 0,
                         "selection_evaluations": 0, "selection_mask_area": math.nan, "warmed_up": False,
                         "code_versions": [code_version()]}  # one per segment: a resumed run lists each
        self.history: list[dict] = []
        self.pending_best: dict | None = None  # a selection not yet written to best.pt (until its epoch ends)
        self.start = time.perf_counter()

    # --- identity, resume ----------------------------------------------------------------------
    def open(self) -> dict | None:
        """Check the run folder's identity; return the result of a finished run of the same identity,
        or prepare the folder (cleared when the run is trained anew) and return None."""
        config, stage, files = self.config, self.stage, self.files
        self.fresh = not config.resume
        if config.resume:
            state, result = run_state(stage.run_dir, self.config_values, self.method.ignored_settings())
            if state == "finished":
                if stage.identity and "run_id" not in result and self.main:  # finished by a version before 0.2
                    saved = json.loads(files["config"].read_text())
                    result = run_row(stage.identity, saved, stage.inputs, result)
                    atomic_write_json(files["result"], result)
                return result  # not redone
            if state == "stale":
                self.fresh = True
                if self.main:
                    saved = json.loads(files["config"].read_text()).get("inputs", {})
                    notice(f"{stage.run_dir} started from other inputs ({_difference(saved, stage.inputs)}); "
                           f"training it anew")
        if self.main:
            if self.fresh:
                for name in ("result", "last", "best", "history"):
                    files[name].unlink(missing_ok=True)
                for stale in ("curves.png", REPORT_PREDICTIONS_FILE):
                    (stage.run_dir / stale).unlink(missing_ok=True)
                for folder in ("gallery", BOARD_DIR, PREDICTIONS_DIR):  # nothing of the old run stays beside the new
                    shutil.rmtree(stage.run_dir / folder, ignore_errors=True)
                if stage.on_fresh is not None:
                    stage.on_fresh()
            stage.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(files["config"], self.config_values)
        stage.dist.barrier()
        return None

    def restore(self) -> None:
        """Optimizers, scaler and loader; with a `last.pt` (and not fresh), everything it holds."""
        method, stage, files = self.method, self.stage, self.files
        self.optimizers = make_optimizers(method)
        self.scaler = stage.precision.scaler()
        if not self.fresh and files["last"].is_file():
            state = load_checkpoint(files["last"], stage.device)
            check_same_config(files["last"], state["config"], self.config_values, method.ignored_settings())
            load_networks(method, state)
            for name, optimizer in self.optimizers.items():
                optimizer.load_state_dict(state["optimizers"][name])
            self.scaler.load_state_dict(state["scaler"])
            segments = state["progress"].get("code_versions") or [state.get("code_version", "unknown")]
            self.progress, self.history = {**self.progress, **state["progress"]}, state["history"]
            self.progress["code_versions"] = segments + ([code_version()] if code_version() != segments[-1] else [])
            if self.main and code_version() != segments[-1]:
                notice(f"{stage.run_dir} was trained so far by code version {segments[-1]} and goes on under "
                       f"{code_version()}; its results row lists both")
            restore_rng(state["rng"])
            if files["best"].is_file():  # killed between writing best.pt and last.pt: best.pt is the newer
                selection = load_checkpoint(files["best"], "cpu").get("selection", {})
                if selection.get("best_epoch", 0.0) > self.progress["best_epoch"]:
                    self.progress.update(selection)
            if self.main:
                print(f"resuming {stage.run_dir} after epoch {self.progress['epoch']}")
        # the order of every pass is a function of (seed, method, epoch); each rank reads its shard of it
        self.loader = make_loader(self.data.train.dataset, self.config.batch_size, shuffle=True,
                                  seed=(stage.seed, method.name), rank=stage.dist.rank,
                                  world_size=stage.dist.world_size, pin_memory=stage.device.type == "cuda")
        select = self.data.select.dataset
        self.gallery_batch = select.__getitems__(list(range(min(GALLERY_IMAGES, len(select)))))
        method.generator = torch.Generator(stage.device)
        self.max_steps = stage.per_process(self.config.steps_per_epoch)  # None: the whole training set
        steps = len(self.loader) if self.max_steps is None else min(self.max_steps, len(self.loader))
        self.board = RunBoard(stage.run_dir, steps) if self.config.tensorboard and self.main else None
        self.logged = len(self.history)  # rows already on the board (a resumed run's earlier epochs)

    # --- training ---------------------------------------------------------------------------------
    def seed_pass(self, epoch: int) -> None:
        """The data order and the method's random draws of one pass over the training set."""
        stage = self.stage
        self.loader.set_epoch(epoch)
        ranks = (stage.dist.rank,) if stage.dist.enabled else ()  # each rank its own draws for its own images
        self.method.generator.manual_seed(derive_seed(stage.seed, self.method.name, epoch, "masks", *ranks))

    def warm_up(self) -> None:
        self.history.append(warm_up(self.method, self.loader, self.optimizers, self.scaler, self.stage,
                                    self.seed_pass))
        self.to_board()
        self.progress["warmed_up"] = True
        if self.main:  # a run killed in epoch 1 resumes after the warm-up
            save_state(self.files["last"], self.method, self.optimizers, self.scaler, self.progress,
                       self.config_values, self.history)

    def epoch(self, epoch: int) -> None:
        """One pass over the training set with its validations, then the epoch's checkpoints."""
        method, config, stage = self.method, self.config, self.stage
        self.seed_pass(epoch)
        steps = len(self.loader) if self.max_steps is None else min(self.max_steps, len(self.loader))

        world = stage.dist.world_size

        def crossed(step: int) -> bool:
            """--val-every counts one process's iterations: under torchrun a step reads `world` of them."""
            return step * world // config.val_every > (step - 1) * world // config.val_every

        def mid_epoch(step: int) -> None:
            if method.validates_mid_epoch and config.val_every and crossed(step) and step < steps:
                checked = self.validate(epoch - 1 + step / steps)
                self.history.append({"epoch": epoch - 1 + step / steps, "iteration": step,
                                     **{f"val_{k}": v for k, v in checked.items()}})

        train_logs = train_one_epoch(method, self.loader, self.optimizers, self.scaler, stage,
                                     desc=f"{method.name} epoch {epoch}", on_iteration=mid_epoch,
                                     max_steps=self.max_steps)
        val = self.validate(float(epoch), epoch_end=True)
        improved = self.progress["best_epoch"] > epoch - 1  # selected in this epoch (or in its killed first try)
        self.progress.update(epoch=epoch, epochs_since_best=0 if improved else self.progress["epochs_since_best"] + 1)
        self.history.append({"epoch": float(epoch), "iteration": steps,
                             **{f"train_{k}": v for k, v in train_logs.items()},
                             **{f"val_{k}": v for k, v in val.items()}, "seconds": time.perf_counter() - self.start})
        if self.main:
            self.write_best()
            save_state(self.files["last"], method, self.optimizers, self.scaler, self.progress, self.config_values,
                       self.history)
            atomic_write_bytes(self.files["history"], pd.DataFrame(self.history).to_csv(index=False).encode())
            self.to_board()
            if config.gallery == "epoch":
                with plain_networks(method):
                    picture = save_gallery(method, self.gallery_batch,
                                           stage.run_dir / "gallery" / f"epoch{epoch:03d}.png", stage.device)
                if picture is not None and self.board is not None:
                    self.board.picture(picture, epoch)
        if stage.progress:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in train_logs.items() if k.endswith("loss"))
            print(f"  {method.name} epoch {epoch}: {shown}; selection accuracy {val['accuracy']:.3f}"
                  f"{' (best)' if improved and config.model_selection != 'last' else ''}")

    def to_board(self) -> None:
        """The history rows not yet on the TensorBoard log (--tensorboard 1)."""
        if self.board is not None:
            for row in self.history[self.logged:]:
                self.board.scalars(row)
        self.logged = len(self.history)

    # --- selection --------------------------------------------------------------------------------
    def validate(self, epoch_position: float, epoch_end: bool = False, chosen: bool = False) -> dict:
        """Rank 0 evaluates the selection split and keeps a better selection in memory (under
        `--model-selection last`, the checkpoint of every epoch end, whatever its accuracy: no
        selection; with `chosen`, these weights whatever their accuracy); every rank gets its
        metrics (and stops alike when the outputs are not finite)."""
        method, stage = self.method, self.stage
        metrics = None
        if self.main:
            with plain_networks(method):
                try:
                    metrics = evaluate(method, self.data.select, stage.device, **self.eval_kwargs())
                except NonFiniteError as error:
                    metrics = {"non_finite": str(error)}
            chosen = chosen or (epoch_end if self.config.model_selection == "last"
                                else metrics.get("accuracy", -1.0) > self.progress["best_accuracy"])
            if "non_finite" not in metrics and chosen:
                metrics["improved"] = 1.0
                self.pending_best = {**_on_cpu(network_states(method)), "method_name": method.name,
                                     "epoch": epoch_position, "selection": _selection_of(metrics, epoch_position),
                                     "config": self.config_values, "code_version": code_version()}
        metrics = stage.dist.from_main(metrics)
        if "non_finite" in metrics:
            raise _diverged(f"{method.name}, selection evaluation at epoch {epoch_position:g}", metrics["non_finite"],
                            self.files["last"])
        self.progress["selection_evaluations"] += 1
        if metrics.get("improved"):
            self.progress.update(_selection_of(metrics, epoch_position))
        return metrics

    def write_best(self) -> None:
        if self.pending_best is not None:
            save_checkpoint(self.files["best"], self.pending_best)
            self.pending_best = None

    def eval_kwargs(self) -> dict:
        return dict(batch_size=self.config.batch_size, channels_last=self.config.channels_last)

    # --- the selected checkpoint on the report split ----------------------------------------------
    def finish(self) -> dict:
        method, config, stage, files = self.method, self.config, self.stage, self.files
        if not stage.dist.from_main(files["best"].is_file()):  # no epoch ran (e.g. --epochs reached on resume)
            self.validate(float(self.progress["epoch"]), epoch_end=True, chosen=True)  # the only weights left
            if self.main:
                self.write_best()
        result = None
        if self.main:
            load_networks(method, load_checkpoint(files["best"], stage.device))
            with plain_networks(method):
                if config.gallery != "off":
                    picture = save_gallery(method, self.gallery_batch, stage.run_dir / "gallery" / "final.png",
                                           stage.device)
                    if picture is not None and self.board is not None:
                        self.board.picture(picture, self.progress["best_epoch"], "masks/selected")
                result = evaluate(method, self.data.report, stage.device, mask_quality=True, seed=stage.seed,
                                  predictions_file=stage.run_dir / REPORT_PREDICTIONS_FILE, **self.eval_kwargs())
            if self.history:
                plot_curves(files["history"], stage.run_dir / "curves.png",
                            title="/".join(stage.run_dir.parts[-3:]))  # e.g. elbow-all-val/seed89/apga
            progress = self.progress
            result.update(best_epoch=progress["best_epoch"], epochs_trained=progress["epoch"],
                          selection_accuracy=progress["best_accuracy"],
                          selection_evaluations=progress["selection_evaluations"],
                          selection_mask_area=progress["selection_mask_area"],
                          train_seconds=time.perf_counter() - self.start, data_fingerprint=self.data.fingerprint,
                          code_version=", ".join(progress["code_versions"]), device=str(stage.device),
                          threads=torch.get_num_threads(),
                          checkpoint_digest=file_digest(files["best"]))
            if stage.identity:  # the whole results row: results.csv is rebuilt from these files
                result = run_row(stage.identity, self.config_values, stage.inputs, result)
            atomic_write_json(files["result"], result)
            if self.board is not None:
                self.board.close()
        return stage.dist.from_main(result)


def warm_up(method, loader, optimizers, scaler, stage: Stage, seed_pass) -> dict:
    """`--agent-warmup`: `method.warmup_steps` steps of its warm-up phases (APGA: the agent alone;
    under torchrun, `Stage.per_process` of them in each process) before fine-tuning, in passes over the training set (seeded as epochs 0, -1, ...). The
    classifier is not stepped and stays in eval mode, so its batch-norm statistics do not move
    either. Returns the history row (epoch 0) of the warm-up's mean logs."""
    logs, steps, number = _Logs(), stage.per_process(method.warmup_steps), 0
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


def _on_cpu(state):
    """A copy of a (nested) state with every tensor on the CPU: a selection held until its epoch ends."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return type(state)((key, _on_cpu(value)) for key, value in state.items())
    if isinstance(state, (list, tuple)):
        return type(state)(_on_cpu(value) for value in state)
    return copy.deepcopy(state)


def _selection_of(metrics: dict, epoch_position: float) -> dict:
    """What `progress` (and best.pt) record of a selected checkpoint's evaluation."""
    return {"best_accuracy": metrics["accuracy"], "best_epoch": epoch_position,
            "selection_mask_area": metrics.get("mask_area", math.nan)}


def _difference(old: dict, new: dict) -> str:
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)
