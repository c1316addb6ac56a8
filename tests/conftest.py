"""Shared fixtures: a tiny generated MURA-layout data set and small CPU configurations."""
from __future__ import annotations

import pytest
import torch

from apga.config import make_config
from apga.data.synthetic import generate

torch.set_num_threads(2)

TINY = dict(preset="cpu", image_size=32, batch_size=8, epochs=2, finetune_epochs=1, patience=2,
            agent_width=2, gallery="end", log_every=2)


def pytest_collection_modifyitems(items):
    """The Slurm tests first: they mostly wait (Slurm's time limits are whole minutes), so under
    `-n 2 --dist loadfile` (the README's command) the other process runs the rest meanwhile instead
    of the suite ending on them alone."""
    items.sort(key=lambda item: item.get_closest_marker("slurm") is None)


@pytest.fixture(autouse=True)
def command_line_messages():
    """Notices and warnings on stderr, as every entry point shows them."""
    from apga.utils import configure_logging

    configure_logging()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Two body parts, a few patients each, small images: generated once per test session."""
    root = tmp_path_factory.mktemp("data") / "synthetic"
    generate(root, seed=3, train_patients=10, valid_patients=5, parts=("elbow", "wrist"), min_side=40,
             max_side=56)
    return root


@pytest.fixture
def tiny_config(tiny_data, tmp_path):
    def make(**overrides):
        return make_config(**{**TINY, "data_root": str(tiny_data), "out_dir": str(tmp_path / "runs"),
                              "cache_dir": str(tmp_path / "cache"), **overrides})
    return make


@pytest.fixture(scope="session")
def one_by_one(tiny_data, tmp_path_factory):
    """The sweep tests' 2 x 2 grid (elbow and wrist, all images and 4 per class) run one cell after
    another, as `python apga_mura.py` runs them, with the torch threads of the sweep's jobs (results
    depend on the thread count at the rounding level)."""
    from apga.experiment import run
    from sweep_helpers import ONLY_APGA

    out = tmp_path_factory.mktemp("one-by-one") / "runs"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for part in ("elbow", "wrist"):
            for shot in (None, 4):
                run(make_config(**{**TINY, **ONLY_APGA, "data_root": str(tiny_data), "out_dir": str(out),
                                   "cache_dir": str(out.parent / "cache"), "body_part": part, "n_shot": shot}))
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="session")
def path_without_slurm(tmp_path_factory):
    """This machine's PATH with none of Slurm's commands on it."""
    from sweep_helpers import path_without_slurm

    return path_without_slurm(tmp_path_factory.mktemp("path-without-slurm"))


@pytest.fixture
def no_slurm(monkeypatch, path_without_slurm):
    """No Slurm for this test: none of its commands on PATH (for this process and the commands it
    starts), and no SLURM_CONF, whatever this machine has."""
    monkeypatch.setenv("PATH", path_without_slurm)
    monkeypatch.delenv("SLURM_CONF", raising=False)
