"""The loop's selection logic: early stopping, the selected checkpoint, how often it validates, RNG restore."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import torch

from apga.training import loop as train
from apga.training.checkpoint import load_checkpoint, save_checkpoint
from apga.data import make_loader, prepare_run_data
from apga.methods import METHODS
from apga.models import build_agent, build_classifier
from apga.training.loop import Precision, Stage, fit, make_optimizers, restore_rng


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


def test_model_selection_last_trains_every_epoch_and_reports_the_last_checkpoint(tiny_config, tmp_path, monkeypatch):
    """`last`: no early stopping and no selection: the report evaluates the last epoch's weights even when
    an earlier epoch validated better, also with mid-epoch validations (APGA's cadence)."""
    snapshots, reported = [], []
    monkeypatch.setattr(train, "evaluate", _scripted_evaluate([0.9, 0.5, 0.4, 0.3, 0.2], snapshots, reported))
    config = tiny_config(epochs=4, patience=1, model_selection="last", gallery="off")
    torch.manual_seed(0)
    method = METHODS["baseline"](config, build_classifier(config.classifier))
    stage = Stage(tmp_path / "run", 1, torch.device("cpu"), Precision("cpu", None), config, progress=False)
    result = fit(method, prepare_run_data(config, seed=1), stage)
    assert (result["best_epoch"], result["epochs_trained"], result["selection_accuracy"]) == (4.0, 4, 0.3)
    assert len(snapshots) == 4 and len(reported) == 1 and _same(reported[0], snapshots[3])
    assert not _same(snapshots[0], snapshots[3])
    assert load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == 4.0

    snapshots.clear(), reported.clear()  # mid-epoch validations log, and never choose
    monkeypatch.setattr(train, "evaluate", _scripted_evaluate([0.99] * 2 + [0.1] * 20, snapshots, reported))
    config = tiny_config(epochs=1, model_selection="last", val_every=1, val_cadence="equal", gallery="off")
    method = METHODS["baseline"](config, build_classifier(config.classifier))
    stage = Stage(tmp_path / "mid", 1, torch.device("cpu"), Precision("cpu", None), config, progress=False)
    result = fit(method, prepare_run_data(config, seed=1), stage)
    assert result["selection_evaluations"] == len(snapshots) > 2 and result["best_epoch"] == 1.0
    assert _same(reported[0], snapshots[-1])


def _fit_baseline(config, stage):
    torch.manual_seed(0)
    return fit(METHODS["baseline"](config, build_classifier(config.classifier)), prepare_run_data(config, seed=1), stage)


@pytest.mark.parametrize("selection", ["last", "val"])
def test_a_rerun_after_every_epoch_reports_the_last_weights_or_the_recorded_selection(selection, tiny_config, tmp_path,
                                                                                    monkeypatch):
    """A finished run whose result.json is gone is evaluated again from its checkpoints: under `last`
    the last epoch's weights; and where best.pt is gone too, the weights last.pt holds (no crash)."""
    config = tiny_config(epochs=3, patience=5, model_selection=selection, gallery="off")
    stage = Stage(tmp_path / "run", 1, torch.device("cpu"), Precision("cpu", None), config, progress=False)
    monkeypatch.setattr(train, "evaluate", _scripted_evaluate([0.9, 0.5, 0.4], [], []))
    _fit_baseline(config, stage)
    (tmp_path / "run" / "result.json").unlink()
    reported = []
    monkeypatch.setattr(train, "evaluate", _scripted_evaluate([], [], reported))
    again = _fit_baseline(config, stage)
    assert again["best_epoch"] == (3.0 if selection == "last" else 1.0) and again["epochs_trained"] == 3
    if selection == "last":
        assert _same(reported[0], load_checkpoint(tmp_path / "run" / "last.pt")["classifier"])
    (tmp_path / "run" / "result.json").unlink()
    (tmp_path / "run" / "best.pt").unlink()
    reported.clear()
    monkeypatch.setattr(train, "evaluate", _scripted_evaluate([0.3], [], reported))
    left = _fit_baseline(config, stage)
    assert left["best_epoch"] == 3.0 and _same(reported[0], load_checkpoint(tmp_path / "run" / "last.pt")["classifier"])


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
    """The run was killed after writing epoch 2's best.pt and before writing its last.pt: on
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


def test_agent_warmup_trains_only_the_agent(tiny_config, tmp_path):
    """`--agent-warmup N`: N policy steps, over as many passes as they need, before fine-tuning; the
    classifier's weights and batch-norm statistics do not move, the agent's weights do."""
    config = tiny_config(estimator="rloo", gallery="off")
    data = prepare_run_data(config, seed=1)
    torch.manual_seed(0)
    method = METHODS["apga"](config, build_classifier(config.classifier), build_agent(config.agent_width))
    stage = Stage(tmp_path / "run", 1, torch.device("cpu"), Precision("cpu", None), config, progress=False)
    loader = make_loader(data.train.dataset, config.batch_size, shuffle=True, seed=(1, "apga"))
    steps = len(loader) + 2  # a second pass over the training set
    method.config = dataclasses.replace(config, agent_warmup=steps)
    method.generator = torch.Generator()
    classifier_before = copy.deepcopy(method.classifier.state_dict())
    agent_before = copy.deepcopy(method.agent.state_dict())
    optimizers = make_optimizers(method)
    passes = []

    def seed_pass(epoch):
        passes.append(epoch)
        loader.set_epoch(epoch)

    row = train.warm_up(method, loader, optimizers, torch.amp.GradScaler("cpu", enabled=False), stage, seed_pass)
    assert passes == [0, -1] and row["epoch"] == 0.0 and row["iteration"] == steps
    assert "train_policy_loss" in row and "train_clean_loss" not in row and "train_keep_loss" not in row
    assert _same(method.classifier.state_dict(), classifier_before)  # weights and running statistics
    assert not _same(method.agent.state_dict(), agent_before)
    assert {state["step"].item() for state in optimizers["agent"].state.values()} == {steps}
    assert not optimizers["classifier"].state  # never stepped


def test_agent_warmup_runs_once_before_the_first_epoch(tiny_config, tmp_path, monkeypatch):
    """A run killed in epoch 1 resumes after its warm-up, and ends as an uninterrupted run does."""
    calls = []
    original_warm_up, original_epoch = train.warm_up, train.train_one_epoch
    monkeypatch.setattr(train, "warm_up", lambda *args: calls.append(1) or original_warm_up(*args))

    def killed_in_epoch_1(*args, **kwargs):
        if not kwargs.get("warmup"):
            raise KeyboardInterrupt
        return original_epoch(*args, **kwargs)

    config = tiny_config(estimator="rloo", agent_warmup=2, finetune_epochs=2, gallery="off")
    data = prepare_run_data(config, seed=1)

    def fit_in(folder):
        torch.manual_seed(0)
        method = METHODS["apga"](config, build_classifier(config.classifier), build_agent(config.agent_width))
        stage = Stage(tmp_path / folder, 1, torch.device("cpu"), Precision("cpu", None), config, progress=False)
        return method, fit(method, data, stage)

    monkeypatch.setattr(train, "train_one_epoch", killed_in_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        fit_in("killed")
    monkeypatch.setattr(train, "train_one_epoch", original_epoch)
    method, resumed = fit_in("killed")
    assert calls == [1]  # not again on resume
    _, uninterrupted = fit_in("whole")
    assert calls == [1, 1] and resumed["accuracy"] == uninterrupted["accuracy"]
    assert _same(load_checkpoint(tmp_path / "killed" / "best.pt")["agent"],
                 load_checkpoint(tmp_path / "whole" / "best.pt")["agent"])
    history = pd.read_csv(tmp_path / "killed" / "metrics.csv")
    assert history["epoch"].tolist() == [0.0, 1.0, 2.0] and history["train_policy_loss"].notna().all()
    assert method.variant == "rloo-warmup2"
    assert METHODS["random"](config, None).variant == "rloo-warmup2"  # the floor of that variant
    assert "agent_warmup" in METHODS["cutout"](config, None).ignored_settings()


def _killed_after(accuracies, calls_before_kill):
    """Scripted selection accuracies; the call after `calls_before_kill` of them kills the run."""
    scores, count = iter(accuracies), [0]

    def evaluate(method, split, device, **kwargs):
        if kwargs.get("mask_quality"):
            return {"accuracy": 0.5}
        count[0] += 1
        if count[0] > calls_before_kill:
            raise KeyboardInterrupt
        return {"accuracy": next(scores)}
    return evaluate


def test_freeze_agent_keeps_the_warmed_up_agent_while_the_classifier_fine_tunes(tiny_config, tmp_path, monkeypatch):
    """`--freeze-agent 1`: the agent learns in its warm-up only; fine-tuning steps the classifier on
    the fixed agent's kept regions (no policy phase), and the variant says so."""
    warmed = {}
    original_warm_up = train.warm_up

    def warm_up_and_keep(method, *args):
        row = original_warm_up(method, *args)
        warmed["agent"] = copy.deepcopy(method.agent.state_dict())
        return row

    monkeypatch.setattr(train, "warm_up", warm_up_and_keep)
    config = tiny_config(estimator="rloo", agent_warmup=2, freeze_agent=True, finetune_epochs=2, gallery="off")
    data = prepare_run_data(config, seed=1)
    torch.manual_seed(0)
    classifier = build_classifier(config.classifier)
    start = copy.deepcopy(classifier.state_dict())
    method = METHODS["apga"](config, classifier, build_agent(config.agent_width))
    initial_agent = copy.deepcopy(method.agent.state_dict())  # after rloo set its last bias
    assert method.variant.startswith("rloo-warmup2-frozenagent")
    fit(method, data, Stage(tmp_path / "run", 1, torch.device("cpu"), Precision("cpu", None), config, progress=False))
    assert not _same(warmed["agent"], initial_agent)  # the warm-up trained it
    assert _same(method.agent.state_dict(), warmed["agent"])  # fine-tuning did not
    assert not _same(method.classifier.state_dict(), start)
    history = pd.read_csv(tmp_path / "run" / "metrics.csv")
    epochs = history[history["epoch"] >= 1]
    assert "train_keep_loss" in epochs and epochs["train_keep_loss"].notna().any()
    assert epochs["train_clean_loss"].notna().any()  # the clean step stays
    assert epochs["train_policy_loss"].isna().all()  # logged by the warm-up (epoch 0) only
    with pytest.raises(Exception, match="--freeze-agent 1 keeps the agent as its warm-up leaves it"):
        tiny_config(estimator="rloo", freeze_agent=True)


def test_a_run_killed_after_a_mid_epoch_improvement_selects_what_an_uninterrupted_run_selects(
        tiny_config, tmp_path, monkeypatch):
    """Epoch 2 improves at its mid-epoch validation and the run is killed before that epoch ends.
    Resumed, it repeats epoch 2 and goes on exactly as the uninterrupted run: the same selected
    epoch, accuracy and weights, the same early stop (patience 1 counts epoch 2 as improved)."""
    config = tiny_config(epochs=6, patience=1, val_every=1, val_cadence="equal", steps_per_epoch=2, gallery="off")
    data = prepare_run_data(config, seed=1)
    # per epoch: the mid-epoch validation (after step 1 of 2), then the epoch's end
    whole = [0.5, 0.5, 0.7, 0.6, 0.6, 0.65]

    def fit_in(folder, script):
        monkeypatch.setattr(train, "evaluate", script)
        torch.manual_seed(0)
        method = METHODS["baseline"](config, build_classifier(config.classifier))
        stage = Stage(tmp_path / folder, 1, torch.device("cpu"), Precision("cpu", None), config, progress=False)
        return fit(method, data, stage)

    uninterrupted = fit_in("whole", _killed_after(whole, len(whole)))
    assert (uninterrupted["best_epoch"], uninterrupted["epochs_trained"]) == (1.5, 3)
    with pytest.raises(KeyboardInterrupt):
        fit_in("killed", _killed_after(whole, 3))  # killed at epoch 2's end, after its mid-epoch best (0.7)
    resumed = fit_in("killed", _killed_after(whole[2:], 4))  # epoch 2 again, then epoch 3
    keys = ("best_epoch", "epochs_trained", "selection_accuracy", "selection_evaluations")
    assert {k: resumed[k] for k in keys} == {k: uninterrupted[k] for k in keys}
    assert _same(load_checkpoint(tmp_path / "killed" / "best.pt")["classifier"],
                 load_checkpoint(tmp_path / "whole" / "best.pt")["classifier"])


def test_tensorboard_shows_a_runs_metrics_and_masks(tiny_config, capsys):
    """--tensorboard 1: every metrics.csv column as a scalar at its iteration, and the gallery."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from apga.experiment import run

    config = tiny_config(train_cutout=0, train_gradcam=0, train_end2end=0, train_random=0, estimator="rloo",
                         tensorboard=True, gallery="epoch", finetune_epochs=2)
    run(config)
    run_dir = next(Path(config.out_dir).glob("*/seed89/apga-rloo"))
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    history = pd.read_csv(run_dir / "metrics.csv")
    for tag in ("train/clean_loss", "train/keep_loss", "train/reward", "train/policy_loss", "train/mask_area",
                "val/accuracy", "val/accuracy_tta"):
        assert tag in events.Tags()["scalars"], tag
    rewards = [event.value for event in events.Scalars("train/reward")]
    assert rewards == pytest.approx(history["train_reward"].dropna().tolist(), rel=1e-6)
    steps = [event.step for event in events.Scalars("val/accuracy")]
    assert steps == sorted(steps) and steps[-1] == 2 * steps[0]  # iterations: the end of epochs 1 and 2
    assert {"masks", "masks/selected"} <= set(events.Tags()["images"])
    assert len(events.Images("masks")) == 2  # one per epoch


def test_tensorboard_without_its_package_is_one_line(monkeypatch):
    import importlib.util

    from apga.config import make_config
    from apga.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match="--tensorboard 1 needs the tensorboard package: pip install tensorboard"):
        make_config(tensorboard=True)
