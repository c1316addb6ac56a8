"""The loop's selection logic: early stopping, the selected checkpoint, how often it validates, RNG restore."""
from __future__ import annotations

import copy

import torch

from apga import train
from apga.checkpoint import load_checkpoint, save_checkpoint
from apga.data import prepare_run_data
from apga.methods import METHODS
from apga.models import build_classifier
from apga.train import Precision, Stage, fit, restore_rng


def _scripted_evaluate(accuracies, snapshots, reported):
    """Selection accuracies in the given order; records the classifier at every evaluation."""
    scores = iter(accuracies)

    def evaluate(method, split, device, **kwargs):
        state = copy.deepcopy(method.classifier.state_dict())
        if kwargs.get("mask_quality"):  # the final evaluation on the report split
            reported.append(state)
            return {"accuracy": 0.5}
        snapshots.append(state)
        return {"accuracy": next(scores)}
    return evaluate


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_and_the_selected_checkpoint(tiny_config, tmp_path, monkeypatch):
    snapshots, reported = [], []
    monkeypatch.setattr(train, "evaluate", _scripted_evaluate([0.5, 0.7, 0.6, 0.65, 0.4, 0.99], snapshots, reported))
    config = tiny_config(epochs=10, patience=2, gallery="off")
    torch.manual_seed(0)
    method = METHODS["baseline"](config, build_classifier(config.classifier))
    stage = Stage(tmp_path / "run", 1, torch.device("cpu"), Precision("cpu", None), config, progress=False)
    result = fit(method, prepare_run_data(config, seed=1), stage)
    # best at epoch 2 (0.7); epochs 3 and 4 do not beat it; patience 2 stops before epoch 5 (whose 0.99 is never seen)
    assert (result["best_epoch"], result["epochs_trained"], result["selection_accuracy"]) == (2.0, 4, 0.7)
    assert result["selection_evaluations"] == 4 and len(snapshots) == 4
    assert not _same(snapshots[1], snapshots[3])  # training went on after the best epoch
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["epoch"] == 2.0 and _same(best["classifier"], snapshots[1])
    assert len(reported) == 1 and _same(reported[0], snapshots[1])  # the report evaluates the selected checkpoint


def test_selection_evaluations_follow_the_cadence(tiny_config, tmp_path):
    counts = {}
    for cadence in ("paper", "equal"):
        config = tiny_config(epochs=1, val_every=1, val_cadence=cadence, gallery="off")
        data = prepare_run_data(config, seed=1)
        method = METHODS["baseline"](config, build_classifier(config.classifier))
        stage = Stage(tmp_path / cadence, 1, torch.device("cpu"), Precision("cpu", None), config, progress=False)
        counts[cadence] = fit(method, data, stage)["selection_evaluations"]
    steps = -(-len(data.train.index) // 8)
    assert counts == {"paper": 1, "equal": steps}  # the paper's baseline validates at epoch end only
    assert METHODS["apga"](tiny_config(), None).validates_mid_epoch  # APGA does under either cadence


def test_cuda_rng_states_are_restored(monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    cpu_state = torch.get_rng_state()
    torch.rand(3)
    cuda_states = [torch.arange(5, dtype=torch.uint8), torch.arange(7, dtype=torch.uint8)]  # saved on 2 GPUs
    restore_rng({"torch": cpu_state, "cuda": cuda_states})
    assert torch.equal(torch.get_rng_state(), cpu_state)
    assert len(restored) == 1 and torch.equal(restored[0][0], cuda_states[0]) and restored[0][1] == 0


def test_resume_agrees_with_a_best_checkpoint_written_by_a_killed_epoch(tiny_config, tmp_path, monkeypatch):
    """A mid-epoch validation wrote best.pt, then the run was killed before its epoch ended: on
    resume, the recorded best is that checkpoint's, so the report does not pair its weights with
    an older epoch's selection accuracy."""
    config = tiny_config(epochs=2, patience=5, gallery="off")
    data = prepare_run_data(config, seed=1)
    stage = Stage(tmp_path / "run", 1, torch.device("cpu"), Precision("cpu", None), config, progress=False)
    monkeypatch.setattr(train, "evaluate", _scripted_evaluate([0.6, 0.8], [], []))
    fit(METHODS["baseline"](config, build_classifier(config.classifier)), data, stage)
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    last["progress"].update(epoch=1, best_accuracy=0.6, best_epoch=1.0, epochs_since_best=0)  # the state after epoch 1
    save_checkpoint(tmp_path / "run" / "last.pt", last)
    (tmp_path / "run" / "result.json").unlink()
    reported = []
    monkeypatch.setattr(train, "evaluate", _scripted_evaluate([0.5], [], reported))  # the rerun epoch does worse
    result = fit(METHODS["baseline"](config, build_classifier(config.classifier)), data, stage)
    assert (result["selection_accuracy"], result["best_epoch"]) == (0.8, 2.0)
    assert _same(reported[0], load_checkpoint(tmp_path / "run" / "best.pt")["classifier"])
