"""The configuration users run on a GPU, exercised where the CPU allows: the data order whatever the
loader, training precision (bf16 autocast, fp16 with a gradient scaler) against float32
measurements, ImageNet-normalised pretrained inputs, determinism, and what a run records about how
it was trained. Several processes: tests/test_distributed.py."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from apga.config import make_config
from apga.data import prepare_run_data
from apga.data.batches import BatchLoader, BatchOrder, CachedImages, make_loader
from apga.errors import DataError
from apga.evaluation.evaluate import evaluate
from apga.methods import build_method
from apga.models import build_agent, build_classifier, input_normalization
from apga.training import loop
from apga.training.checkpoint import load_checkpoint, load_networks
from apga.training.loop import Precision, Stage, fit
from cli_helpers import run_cli_here
from conftest import TINY

ONLY = ["--train-cutout", "0", "--train-gradcam", "0", "--train-end2end", "0", "--train-random", "0"]


# --- the data order -------------------------------------------------------------------------------
def _passes(order: BatchOrder, epochs) -> list[list[list[int]]]:
    passes = []
    for epoch in epochs:
        order.set_epoch(epoch)
        passes.append(list(order))
    return passes


def test_a_pass_is_a_function_of_seed_and_epoch_alone():
    """Pass 3 is the same whether passes 1 and 2 came before it in this process (an uninterrupted
    run) or not (a resumed one); other epochs and other seeds give other orders."""
    uninterrupted = _passes(BatchOrder(50, 8, seed=(89, "apga")), [1, 2, 3])
    resumed = _passes(BatchOrder(50, 8, seed=(89, "apga")), [3])
    assert resumed[0] == uninterrupted[2]
    assert uninterrupted[0] != uninterrupted[1] != uninterrupted[2]
    assert _passes(BatchOrder(50, 8, seed=(90, "apga")), [3])[0] != resumed[0]
    assert sorted(sum(resumed[0], [])) == list(range(50))  # every image once


@pytest.mark.parametrize("workers", [2, 4])
def test_the_decode_workers_write_the_cache_one_process_writes(tiny_data, tmp_path, monkeypatch, workers):
    """--num-workers only says how many processes decode a cache (of 256 images or more; here the
    threshold is lowered to the tiny data's size): the same bytes, row checksums and description."""
    from apga.data import cache
    from apga.data.mura import load_split

    files = [str(tiny_data / path) for path in load_split(tiny_data, "train")["path"]]
    monkeypatch.setattr(cache, "PARALLEL_DECODE", len(files))
    built = {}
    for count in (0, workers):
        started = []
        real = cache.torch.utils.data.DataLoader

        def loader(*args, **kwargs):
            started.append(kwargs["num_workers"])
            return real(*args, **kwargs)
        monkeypatch.setattr(cache.torch.utils.data, "DataLoader", loader)
        cache.cached_array(files, 32, tmp_path / str(count), num_workers=count)
        monkeypatch.setattr(cache.torch.utils.data, "DataLoader", real)
        assert started == [count]
        built[count] = {path.suffix: path.read_bytes() for path in (tmp_path / str(count)).iterdir()}
    assert built[0] == built[workers] and set(built[0]) == {".u8", ".json"}


def test_reading_ahead_and_reading_in_step_give_the_same_batches():
    images = np.random.default_rng(0).integers(0, 255, (37, 4, 4), dtype=np.uint8)
    dataset = CachedImages(images, np.arange(37), np.arange(37) % 2)
    batches = {}
    for prefetch in (0, 1, 3):
        loader = BatchLoader(dataset, BatchOrder(37, 5, seed=(1,)), prefetch=prefetch)
        loader.set_epoch(2)
        batches[prefetch] = [batch["image"] for batch in loader]
    for prefetch in (1, 3):
        assert all(torch.equal(a, b) for a, b in zip(batches[0], batches[prefetch], strict=True))


def test_ranks_read_shards_of_one_order():
    """Under data parallelism the ranks' shards of a pass, together, are the one-process order
    (padded to a multiple of the world size, as DistributedSampler pads)."""
    whole = BatchOrder(21, 4, seed=(7, "apga"), merge_single=False)
    whole.set_epoch(5)
    shards = []
    for rank in range(2):
        shard = BatchOrder(21, 4, seed=(7, "apga"), rank=rank, world_size=2)
        shard.set_epoch(5)
        shards.append(shard.positions())
    assert len(shards[0]) == len(shards[1]) == 11
    interleaved = np.stack(shards, 1).reshape(-1)
    assert interleaved[:21].tolist() == whole.positions().tolist() and interleaved[21] == whole.positions()[0]


@pytest.mark.parametrize("size,batch", [(9, 4), (17, 8), (5, 2)])
def test_a_last_batch_of_one_joins_the_batch_before_it(size, batch):
    order = BatchOrder(size, batch, seed=(0,))
    sizes = [len(b) for b in order]
    assert min(sizes) >= 2 and sum(sizes) == size and len(sizes) == len(order)
    evaluation = BatchOrder(size, batch, merge_single=False)
    assert [len(b) for b in evaluation][-1] == 1  # evaluation keeps it: batch norm does not train there


def test_a_training_set_of_one_image_is_refused_in_one_line():
    with pytest.raises(DataError, match="training set has 1 image"):
        BatchOrder(1, 8, seed=(0,))


def test_a_shuffled_loader_needs_its_seed():
    with pytest.raises(ValueError, match="needs a seed"):
        make_loader(CachedImages(np.zeros((3, 2, 2), np.uint8), np.arange(3), np.zeros(3)), 2, shuffle=True)


class _Interrupted(Exception):
    """A kill in the middle of an epoch."""


def _fit(config, data, run_dir, precision, *, stop_after_steps: int | None = None, monkeypatch=None):
    """Train the baseline; with `stop_after_steps`, die after that many steps (mid-epoch)."""
    torch.manual_seed(0)
    method = build_method("baseline", config, torch.device("cpu"))
    stage = Stage(run_dir, 1, torch.device("cpu"), precision, config, progress=False)
    if stop_after_steps is None:
        return fit(method, data, stage)
    steps, real_step = [0], loop.run_step

    def dying_step(*args, **kwargs):
        steps[0] += 1
        if steps[0] > stop_after_steps:
            raise _Interrupted
        yield from real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "run_step", dying_step)
    with pytest.raises(_Interrupted):
        fit(method, data, stage)
    monkeypatch.setattr(loop, "run_step", real_step)


@pytest.mark.parametrize("amp", ["fp16", 1])
def test_mixed_precision_resumes_to_the_uninterrupted_run(tiny_config, tmp_path, monkeypatch, amp):
    """--amp 1 (bf16 autocast, the default on CUDA) and --amp fp16 (GPUs without bf16) on the CPU,
    interrupted mid-epoch: fp16's gradient scaler scales, skips and is restored."""
    config = tiny_config(batch_size=6, epochs=3, patience=10, gallery="off", amp=amp)
    data = prepare_run_data(config, seed=1)
    precision = Precision.for_device(torch.device("cpu"), config.amp)
    assert precision.name == {"fp16": "fp16", 1: "bf16"}[amp] and precision.scaler().is_enabled() == (amp == "fp16")
    expected = _fit(config, data, tmp_path / "a", precision)
    steps = -(-len(data.train.index) // 6)
    _fit(config, data, tmp_path / "b", precision, stop_after_steps=steps + 1, monkeypatch=monkeypatch)  # in epoch 2
    if amp == "fp16":  # it skipped steps and backed off
        assert load_checkpoint(tmp_path / "b" / "last.pt")["scaler"]["scale"] < 65536.0
    resumed = _fit(config, data, tmp_path / "b", precision)
    for key in ("accuracy", "auroc", "selection_accuracy", "best_epoch", "checkpoint_digest"):
        assert resumed[key] == expected[key], key
    assert pd.read_csv(tmp_path / "b" / "metrics.csv").drop(columns="seconds").equals(
        pd.read_csv(tmp_path / "a" / "metrics.csv").drop(columns="seconds"))


# --- precision: training under autocast, measurements in float32 ----------------------------------
def test_a_bf16_run_records_its_precision_and_measures_in_float32(tiny_config, tmp_path):
    """`--amp 1` on the CPU trains under bf16 autocast; its identity says so, and every number it
    reports is what a float32 evaluation of its selected checkpoint gives, to the last digit, also
    when the caller is under autocast."""
    config = tiny_config(estimator="rloo", amp=True, finetune_epochs=1, gallery="off")
    data = prepare_run_data(config, seed=1)
    bf16 = Precision.for_device(torch.device("cpu"), config.amp)
    torch.manual_seed(0)
    method = build_method("apga", config, torch.device("cpu"))
    result = fit(method, data, Stage(tmp_path / "run", 1, torch.device("cpu"), bf16, config, progress=False))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["precision"] == "bf16"
    load_networks(method, load_checkpoint(tmp_path / "run" / "best.pt"))
    measure = dict(batch_size=config.batch_size, mask_quality=True, seed=1)
    float32 = evaluate(method, data.report, torch.device("cpu"), **measure)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = evaluate(method, data.report, torch.device("cpu"), **measure)
    for key in ("accuracy", "auroc", "accuracy_tta", "kept_accuracy", "location_gap_10", "swap_gap_10",
                "occlusion_agreement_10", "mask_sd", "bone_precision_10"):
        assert result[key] == float32[key] == under_autocast[key], key


class _FixedAgent(torch.nn.Module):
    """An agent whose logits are a parameter: the same in float32 and under autocast."""

    def __init__(self, batch: int, side: int):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.randn(batch, 1, side, side))

    def forward(self, images):
        return self.logits


@pytest.mark.parametrize("estimator", ["greedy", "rloo"])
def test_rewards_are_float32_inside_a_bf16_step(estimator):
    """The agent's reward is a difference of nearly equal losses: inside the bf16 training step
    its classifier losses are those of a float32 forward."""
    config = make_config(preset="cpu", image_size=32, agent_width=2, estimator=estimator)
    torch.manual_seed(0)
    method = build_method("apga", config, torch.device("cpu"))
    method.agent = _FixedAgent(4, 32)  # the same masks under either precision: only the rewards can differ
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    clean = torch.nn.functional.cross_entropy(method.classifier(images), labels).detach()
    logs = {}
    for name, context in (("bf16", torch.autocast("cpu", dtype=torch.bfloat16)), ("fp32", torch.autocast("cpu", enabled=False))):
        method.generator = torch.Generator().manual_seed(3)
        if estimator == "greedy":
            method.estimator.reward_baseline = None  # each context starts from the same state
        with context:
            logs[name] = method.estimator.policy_phase(method, images, labels, clean).logs
    assert logs["bf16"]["adversarial_loss"].dtype == torch.float32
    assert logs["bf16"]["adversarial_loss"].item() == logs["fp32"]["adversarial_loss"].item()
    assert logs["bf16"]["reward"].item() == logs["fp32"]["reward"].item()


def test_the_greedy_rewards_clean_term_is_float32_inside_a_bf16_step():
    """With the clean step (the paper's scheme), the greedy reward's clean term is that step's loss:
    under bf16 autocast it is computed in float32, from the same network in training mode, and the
    extra forward leaves the batch-norm statistics to the clean step alone."""
    import copy

    config = make_config(preset="cpu", image_size=32, agent_width=2, estimator="greedy")
    torch.manual_seed(0)
    method = build_method("apga", config, torch.device("cpu"))
    method.agent = _FixedAgent(4, 32)
    method.generator = torch.Generator().manual_seed(3)
    method.classifier.train()
    batch = {"image": torch.rand(4, 3, 32, 32), "label": torch.tensor([0, 1, 0, 1])}
    reference = copy.deepcopy(method.classifier)
    with torch.no_grad():
        expected_clean = torch.nn.functional.cross_entropy(copy.deepcopy(reference)(batch["image"]), batch["label"])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reference(batch["image"])  # what the clean step alone does to the running statistics
    with torch.autocast("cpu", dtype=torch.bfloat16):
        phases = method.phases(batch)
        clean, policy = next(phases), next(phases)
    assert clean.loss.item() != expected_clean.item()  # bf16 rounding: the size of the reward
    assert policy.logs["reward"].item() == (policy.logs["adversarial_loss"] - expected_clean).item()
    for (name, ours), theirs in zip(method.classifier.named_buffers(), reference.buffers()):
        assert torch.equal(ours, theirs), name


# --- pretrained weights: their own input normalisation ---------------------------------------------
def test_pretrained_weights_see_inputs_normalised_as_in_their_training(tmp_path, monkeypatch):
    """torchvision's ImageNet weights expect (x - mean) / std with their own mean and std; a file
    where torchvision's cache looks ($TORCH_HOME/hub/checkpoints) stands for the download."""
    from torchvision import models

    weights = models.DenseNet121_Weights.DEFAULT
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(models.densenet121().state_dict(), cache / weights.url.rsplit("/", 1)[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("a download was attempted"))
    net = build_classifier("densenet121", pretrained=True).eval()
    plain = models.densenet121()
    plain.classifier = torch.nn.Linear(plain.classifier.in_features, 2)
    plain.load_state_dict(net.state_dict())  # the same weights, without the normalisation
    images = torch.rand(2, 3, 64, 64)
    mean, std = torch.tensor(weights.transforms().mean), torch.tensor(weights.transforms().std)
    with torch.no_grad():
        expected = plain.eval()(((images - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)))
        torch.testing.assert_close(net(images), expected, rtol=0, atol=0)
        assert not torch.allclose(net(images), plain(images))
    assert set(net.state_dict()) == set(plain.state_dict())  # checkpoints keep torchvision's names
    assert input_normalization(make_config(pretrained=1, classifier="densenet121")) == \
        "mean 0.485,0.456,0.406 std 0.229,0.224,0.225"
    assert input_normalization(make_config()) == "none"
    monkeypatch.setattr(type(build_agent(2)), "_load_vgg11_encoder", lambda self, width: None)
    agent = build_agent(32, pretrained=True)
    assert torch.equal(agent.input_mean.flatten(), mean) and torch.equal(agent.input_std.flatten(), std)


def test_a_pretrained_run_is_predicted_and_floored_on_inputs_normalised_as_it_was_trained(tmp_path, monkeypatch):
    """apga.predict and the floors rebuild a `--pretrained 1` run's networks from its checkpoint: with
    the input standardisation it trained with, and without reading or downloading ImageNet weights."""
    from apga.experiment import baseline_classifier
    from apga.predict import load_run
    from apga.training.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
    from apga.models import weights_mean_std
    from apga.training.loop import identity_values

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-weights-here"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("a download was attempted"))
    config = make_config(classifier="densenet121", pretrained=1, agent_width=2)
    torch.manual_seed(0)
    trained = build_classifier("densenet121", pretrained=True, load_weights=False).eval()
    run_dir = tmp_path / "seed89" / "baseline"
    run_dir.mkdir(parents=True)
    save_checkpoint(run_dir / "best.pt", {"classifier": trained.state_dict(), "agent": None, "method": {},
                                          "method_name": "baseline", "config": identity_values(config, "f", {})})
    assert CHECKPOINT_FORMAT == load_checkpoint(run_dir / "best.pt")["format"]
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = trained(images)
        method, _ = load_run(run_dir, torch.device("cpu"))
        torch.testing.assert_close(method.classifier.eval()(images), expected)  # channels_last: rounding apart
        floors = baseline_classifier(config, tmp_path / "seed89", torch.device("cpu")).eval()
        torch.testing.assert_close(floors(images.contiguous(memory_format=torch.channels_last)), expected)
        plain = build_classifier("densenet121")
        plain.load_state_dict(trained.state_dict())
        assert not torch.allclose(plain.eval()(images), expected)  # the standardisation matters
    agent = build_agent(32, pretrained=True, load_weights=False)
    assert torch.equal(agent.input_mean.flatten(), torch.tensor(weights_mean_std("vgg11")[0]))


def test_a_run_from_other_input_normalisation_is_not_resumed(tmp_path):
    from apga.errors import CheckpointError
    from apga.training.checkpoint import check_same_config
    from apga.training.loop import identity_values

    old = identity_values(make_config(classifier="densenet121"), "f", {})
    old.pop("input_normalization")  # written before it was recorded: nothing was normalised
    check_same_config(tmp_path / "config.json", old, identity_values(make_config(classifier="densenet121"), "f", {}))
    pretrained = identity_values(make_config(classifier="densenet121", pretrained=1), "f", {})
    with pytest.raises(CheckpointError, match="input_normalization: 'none' -> 'mean 0.485"):
        check_same_config(tmp_path / "config.json", {**old, "pretrained": True}, pretrained)


# --- what a run records: precision, processes, determinism, code versions ---------------------------
def test_another_precision_or_world_size_is_another_run(tmp_path):
    from apga.errors import CheckpointError
    from apga.training.checkpoint import check_same_config
    from apga.training.loop import identity_values

    config = make_config(preset="cpu")
    one = identity_values(config, "f", {}, {"precision": "fp32", "world_size": 1, "effective_batch": 32})
    for key, value in (("precision", "bf16"), ("world_size", 4)):
        with pytest.raises(CheckpointError, match=f"{key}: "):
            check_same_config(tmp_path / "last.pt", one, {**one, key: value})
    planned = identity_values(config, "f", {})  # the sweep plans without knowing where a cell will run
    check_same_config(tmp_path / "last.pt", one, planned)
    bf16 = {"precision": "bf16", "world_size": 1, "effective_batch": 32}
    spelled = [identity_values(make_config(preset="cpu", amp=amp), "f", {}, bf16) for amp in (1, "bf16")]
    check_same_config(tmp_path / "last.pt", *spelled)  # --amp 1 on the CPU is bf16: the same run
    with pytest.raises(CheckpointError, match="amp: True -> 'bf16'"):  # where the precision is not known, the flag
        check_same_config(tmp_path / "last.pt", spelled[0], identity_values(make_config(preset="cpu", amp="bf16"), "f", {}))


@pytest.fixture
def restores_determinism(monkeypatch):
    """Torch's determinism switches as they were before the test, and no CUBLAS_WORKSPACE_CONFIG of
    this machine's (the command sets its own)."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # recorded: afterwards this machine's value (or none) is back
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]


def test_deterministic_1_turns_on_deterministic_algorithms_and_is_recorded(tiny_data, tmp_path, capsys,
                                                                          restores_determinism):
    out = tmp_path / "runs"
    done = run_cli_here(capsys, tiny_data, out, *ONLY, "--train-apga", "0", "--deterministic", "1", "--epochs", "1")
    assert done.returncode == 0, done.stderr
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    row = pd.read_csv(out / "results.csv").query("method == 'baseline'").iloc[0]
    assert bool(row["deterministic"]) and row["precision"] == "fp32" and row["effective_batch"] == 8


def test_sync_bn_converts_the_networks_and_needs_torchrun(tiny_data, tmp_path, capsys, monkeypatch):
    """--sync-bn 1 is refused in one line where it would do nothing (one process; torchrun on the CPU:
    test_distributed), and where it is used, batch norm of both networks is SyncBatchNorm."""
    from apga import experiment
    from apga.training.checkpoint import save_checkpoint

    done = run_cli_here(capsys, tiny_data, tmp_path / "runs", *ONLY, "--sync-bn", "1")
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == (
        "error: --sync-bn 1 synchronises batch norm across torchrun's processes, and this command is one process "
        "(nothing to synchronise); start it with torchrun --nproc-per-node N, or drop --sync-bn")
    trained = []
    monkeypatch.setattr(experiment, "fit", lambda method, data, stage: trained.append(method) or {})
    config = make_config(**{**TINY, "data_root": str(tiny_data), "out_dir": str(tmp_path / "runs"),
                            "cache_dir": str(tmp_path / "cache"), "sync_bn": 1})
    data = prepare_run_data(config, 89)
    (tmp_path / "runs" / "seed89" / "baseline").mkdir(parents=True)
    save_checkpoint(tmp_path / "runs" / "seed89" / "baseline" / "best.pt",
                    {"classifier": build_classifier(config.classifier).state_dict()})
    experiment.run_stage("end2end", config, data, 89, tmp_path / "runs" / "seed89", torch.device("cpu"),
                         Precision("cpu", None), progress=False, write_index=False)
    norms = [type(m) for net in (trained[0].classifier, trained[0].agent) for m in net.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and set(norms) == {torch.nn.SyncBatchNorm}


def test_every_code_version_that_trained_a_run_is_in_its_row(tiny_config, tmp_path, monkeypatch, capsys):
    config = tiny_config(epochs=1, gallery="off")
    data = prepare_run_data(config, seed=1)
    monkeypatch.setattr(loop, "code_version", lambda: "aaaaaaa")
    _fit(config, data, tmp_path / "run", Precision("cpu", None))
    (tmp_path / "run" / "result.json").unlink()  # killed after its last checkpoint, before its row
    monkeypatch.setattr(loop, "code_version", lambda: "bbbbbbb")
    capsys.readouterr()
    resumed = _fit(config, data, tmp_path / "run", Precision("cpu", None))
    assert resumed["code_version"] == "aaaaaaa, bbbbbbb"
    assert "trained so far by code version aaaaaaa and goes on under bbbbbbb" in capsys.readouterr().err


def test_a_run_trained_anew_drops_the_predictions_of_the_old_one(tiny_config, tmp_path):
    config = tiny_config(epochs=1, gallery="off", resume=False)
    data = prepare_run_data(config, seed=1)
    old = tmp_path / "run" / "predictions" / "predictions.csv"
    old.parent.mkdir(parents=True)
    old.write_text("path,probability\nx.png,0.9\n")
    _fit(config, data, tmp_path / "run", Precision("cpu", None))
    assert not old.parent.exists()


def test_k_shot_with_an_odd_batch_trains_at_32_px(tiny_data, tmp_path, capsys):
    """k-shot's 2k images with an odd batch leave a last batch of one; at 32 px the classifier's
    last feature map is 1x1, where batch norm cannot train on one image (fastai/fastai#1352)."""
    done = run_cli_here(capsys, tiny_data, tmp_path / "runs", *ONLY, "--train-apga", "0", "--n-shot", "2",
                        "--batch-size", "3", "--epochs", "1")
    assert done.returncode == 0, done.stderr
    assert "Expected more than 1 value per channel" not in done.stderr
