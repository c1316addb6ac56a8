"""Killed runs resume to exactly the same result; non-finite losses stop one run cleanly."""
from __future__ import annotations

import signal
import subprocess
import time

import pandas as pd
import pytest
import torch

from apga.training.checkpoint import load_checkpoint
from apga.data import prepare_run_data
from apga.errors import NonFiniteError
from apga.methods.base import Method
from apga.models import build_classifier
from apga.training.loop import Precision, Stage, fit
from cli_helpers import cli_command, environment, run_cli

FLAGS = ["--train-cutout", "0", "--train-gradcam", "0", "--train-end2end", "0", "--train-random", "0",
         "--epochs", "3", "--finetune-epochs", "4", "--patience", "10", "--gallery", "off"]


def _comparable(out):
    table = pd.read_csv(out / "results.csv").set_index("method")
    metrics = ["accuracy", "accuracy_tta", "auroc", "kappa", "study_kappa", "mask_iou", "best_epoch"]
    history = pd.read_csv(out / "elbow-all-val" / "seed89" / "apga" / "metrics.csv").drop(columns="seconds")
    return table[[m for m in metrics if m in table.columns]], history


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_result(tiny_data, tmp_path):
    """Under bf16 autocast (`--amp 1`, what CUDA runs by default) and whatever --num-workers (0; the
    paper preset's 2 when killed; 4 when resumed), a run killed with SIGKILL and resumed ends where an
    uninterrupted one does, epoch by epoch. (The tiny data is decoded in process whatever the
    workers: test_user_path shows that decoding workers write the same cache.)"""
    flags = [*FLAGS, "--amp", "1"]
    uninterrupted = tmp_path / "a" / "runs"
    assert run_cli(tiny_data, uninterrupted, *flags, "--num-workers", "0").returncode == 0

    killed = tmp_path / "b" / "runs"
    process = subprocess.Popen(cli_command(tiny_data, killed, *flags, "--num-workers", "2"), env=environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    apga_history = killed / "elbow-all-val" / "seed89" / "apga" / "metrics.csv"
    deadline = time.time() + 240
    while time.time() < deadline and not apga_history.is_file():  # APGA has finished its first epoch
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert apga_history.is_file() and not (apga_history.parent / "result.json").exists()

    resumed = run_cli(tiny_data, killed, *flags, "--num-workers", "4")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout
    table = pd.read_csv(killed / "results.csv")
    assert set(table.loc[table["method"] != "floor", "precision"]) == {"bf16"}
    expected, expected_history = _comparable(uninterrupted)
    got, got_history = _comparable(killed)
    pd.testing.assert_frame_equal(got, expected)
    pd.testing.assert_frame_equal(got_history, expected_history)


class _Diverging(Method):
    """A baseline whose loss turns NaN in its second epoch."""
    name = "diverging"
    fine_tuned = False
    calls = 0

    def networks(self):
        return {"classifier": (self.classifier, 1e-3)}

    def phases(self, batch):
        phase = self.classifier_phase(batch["image"], batch["label"], "loss")
        _Diverging.calls += 1
        if _Diverging.calls > 2:
            phase.loss = phase.loss * float("nan")
        yield phase


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_config, tmp_path):
    config = tiny_config(batch_size=16, epochs=4, patience=10)
    data = prepare_run_data(config, seed=1)
    steps_per_epoch = -(-len(data.train.index) // 16)
    assert steps_per_epoch == 2  # the NaN starts in epoch 2
    method = _Diverging(config, build_classifier(config.classifier))
    stage = Stage(tmp_path / "run", 1, torch.device("cpu"), Precision("cpu", None), config, progress=False)
    with pytest.raises(NonFiniteError, match="became nan.*last good checkpoint"):
        fit(method, data, stage)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["progress"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["classifier"].values() if v.is_floating_point())


class _Overflowing(Method):
    """A baseline whose weights overflow in the optimizer step of its second epoch (the loss it
    logged was finite): only the evaluation can see it."""

    name = "overflowing"
    fine_tuned = False
    calls = 0

    def networks(self):
        return {"classifier": (self.classifier, 1e-3)}

    def phases(self, batch):
        yield self.classifier_phase(batch["image"], batch["label"], "loss")
        _Overflowing.calls += 1
        if _Overflowing.calls == 4:  # after the last step of epoch 2: weights no loss has seen
            with torch.no_grad():
                next(self.classifier.parameters()).fill_(float("inf"))


def test_weights_that_overflow_stop_at_the_evaluation_with_the_last_good_checkpoint(tiny_config, tmp_path):
    config = tiny_config(batch_size=16, epochs=4, patience=10)
    data = prepare_run_data(config, seed=1)
    stage = Stage(tmp_path / "run", 1, torch.device("cpu"), Precision("cpu", None), config, progress=False)
    with pytest.raises(NonFiniteError, match="selection evaluation at epoch 2: the classifier's outputs are not "
                                             "finite.*last good checkpoint .*last.pt is kept"):
        fit(_Overflowing(config, build_classifier(config.classifier)), data, stage)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["progress"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["classifier"].values() if v.is_floating_point())


def test_runner_goes_on_after_a_diverging_method(tiny_data, tmp_path):
    out = tmp_path / "runs"
    done = run_cli(tiny_data, out, "--train-cutout", "0", "--train-gradcam", "0", "--train-random", "0",
                   "--agent-lr", "1e30", "--finetune-lr", "1e30")
    assert done.returncode == 2, done.stderr[-2000:]  # the command says that runs failed ...
    table = pd.read_csv(out / "results.csv")
    assert "baseline" in set(table["method"])  # ... after finishing the others
    failed = {"end2end", "apga"} - set(table["method"])
    assert failed and all(f"error: {name}" in done.stderr for name in failed)
    assert "run(s) stopped" in done.stderr.strip().splitlines()[-1] and "| elbow | all | val |" in done.stdout
