"""Shared fixtures: a tiny generated MURA-layout data set and small CPU configurations."""
from __future__ import annotations

import pytest
import torch

from apga.config import make_config
from apga.data.synthetic import generate

torch.set_num_threads(2)

TINY = dict(preset="cpu", image_size=32, batch_size=8, epochs=2, finetune_epochs=1, patience=2,
            agent_width=2, gallery="end", log_every=2)


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
