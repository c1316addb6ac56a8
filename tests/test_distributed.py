"""Data-parallel training: torchrun with 2 CPU processes (gloo) on generated data."""
from __future__ import annotations

import pytest

import subprocess
import sys

import pandas as pd
import torch

from cli_helpers import ROOT, TINY_FLAGS, environment


def _command(tiny_data, tmp_path, processes: int, *flags) -> list[str]:
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)] if processes > 1 else []
    return [sys.executable, *launcher, str(ROOT / "apga_mura.py"), "--data-root", str(tiny_data), "--out-dir",
            str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"), *TINY_FLAGS,
            "--train-cutout", "0", "--train-gradcam", "0", "--train-random", "0", *flags]


def _run(command) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**environment(), "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_torchrun_two_processes_write_one_set_of_results(tiny_data, tmp_path):
    """Two processes write one row per run, which records them; --val-every and --agent-warmup count
    the images of one process's iterations; a 1-process command does not reuse (or resume) their runs."""
    out = tmp_path / "runs"
    flags = ["--val-every", "2", "--agent-warmup", "4"]
    done = _run(_command(tiny_data, tmp_path, 2, *flags))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "x 2 ranks" in done.stdout
    assert done.stdout.count("APGA on elbow") == 1  # only rank 0 prints
    table = pd.read_csv(out / "results.csv")
    assert sorted(table["method"]) == ["apga", "baseline", "end2end"] + ["floor"] * 4  # one row each, not one per rank
    trained = table[table["method"] != "floor"]
    assert trained["accuracy"].between(0, 1).all()
    assert set(trained["world_size"]) == {2} and set(trained["effective_batch"]) == {16}
    floors = table[table["method"] == "floor"]  # measured by rank 0 alone, in float32
    assert set(floors["world_size"]) == {1} and set(floors["precision"]) == {"fp32"}
    history = pd.read_csv(out / "elbow-all-val" / "seed89" / "apga-warmup4" / "metrics.csv")
    warm_up, history = history[history["epoch"] == 0], history[history["epoch"] > 0]
    assert warm_up["iteration"].tolist() == [2]  # 4 steps of 8 images: 2 steps of 2 x 8
    epoch_ends = history[history["epoch"] == history["epoch"].round()]
    assert len(epoch_ends) == 1 and epoch_ends["train_reward"].notna().all()
    # --val-every 2 is two iterations of 8 images: with 2 processes of 8, every step validates
    steps = int(history["iteration"].max())
    assert history["iteration"].tolist() == list(range(1, steps + 1)) and steps >= 2

    alone = _run(_command(tiny_data, tmp_path, 1, *flags))
    assert alone.returncode == 2 and "world_size: 2 -> 1" in alone.stderr and "Traceback" not in alone.stderr
    assert pd.read_csv(out / "results.csv").equals(table)  # nothing replaced

    synced = _run(_command(tiny_data, tmp_path, 2, "--sync-bn", "1"))
    assert synced.returncode != 0 and "error: --sync-bn 1 needs GPUs" in synced.stderr
    assert "exitcode  : 2" in synced.stderr  # each rank's one-line refusal (torchrun then reports its own failure)


class _Classifier(torch.nn.Module):
    """Small and without batch norm, so that two half batches are one full batch."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.AdaptiveAvgPool2d(4))
        self.classifier = torch.nn.Linear(64, 2)

    def forward(self, images):
        return self.classifier(self.features(images).flatten(1))


def _apga_after_one_step(rank: int, world_size: int, store: str, out: str) -> None:
    """One APGA step (greedy estimator) of rank `rank`'s share of a fixed batch, under DDP with
    `world_size` processes (1: no process group); the trained parameters are saved to `out`."""
    from apga.config import make_config
    from apga.distributed import Dist, wrap
    from apga.methods.apga import APGA
    from apga.models import build_agent
    from apga.training.loop import Precision, make_optimizers, run_step

    torch.set_num_threads(1)
    if world_size > 1:
        torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    images, labels = torch.rand(8, 3, 32, 32), torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    classifier, agent = _Classifier(), build_agent(width=2)
    dist = Dist(rank, world_size)
    method = APGA(make_config(preset="cpu", image_size=32, finetune_lr=1e-2, agent_lr=1e-2), classifier, agent)
    cpu = torch.device("cpu")
    method.classifier, method.agent, method.dist = wrap(classifier, dist, cpu), wrap(agent, dist, cpu), dist
    method.estimator.reward_baseline = torch.tensor(0.0)
    share = slice(rank * 8 // world_size, (rank + 1) * 8 // world_size)
    optimizers = make_optimizers(method)
    logs = list(run_step(method, {"image": images[share], "label": labels[share]}, optimizers, torch.amp.GradScaler("cpu", enabled=False),
                         Precision("cpu", None)))
    torch.save({"classifier": classifier.state_dict(), "agent": agent.state_dict(), "reward": logs[1]["reward"]}, out)
    if world_size > 1:
        torch.distributed.destroy_process_group()


def _spawned(rank, store, folder):
    _apga_after_one_step(rank, 2, store, f"{folder}/rank{rank}.pt")


def test_two_processes_take_the_step_of_one_process_on_the_whole_batch(tmp_path):
    """DDP averages gradients and APGA averages its reward over ranks: with equal shares and no
    batch norm, two processes on half a batch each end where one process on the whole batch does."""
    _apga_after_one_step(0, 1, "", str(tmp_path / "single.pt"))
    torch.multiprocessing.spawn(_spawned, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    single = torch.load(tmp_path / "single.pt")
    for rank in (0, 1):
        ranked = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.allclose(ranked["reward"], single["reward"], atol=1e-6)
        for network in ("classifier", "agent"):
            for name, value in single[network].items():
                torch.testing.assert_close(ranked[network][name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_the_process_group_waits_as_long_as_dist_timeout_min(monkeypatch):
    """Rank 0 evaluates alone while the others wait in a collective: the group's timeout is
    --dist-timeout-min, not gloo's or NCCL's default of 10 or 30 minutes."""
    import datetime

    from apga import distributed

    joined = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, timeout: joined.update(
        backend=backend, timeout=timeout))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    assert distributed.setup(0, 240) == (distributed.Dist(1, 2), torch.device("cpu"))
    assert joined == {"backend": "gloo", "timeout": datetime.timedelta(minutes=240)}
