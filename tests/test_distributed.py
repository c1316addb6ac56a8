"""Data-parallel training: torchrun with 2 CPU processes (gloo) on generated data."""
from __future__ import annotations

import subprocess
import sys

import pandas as pd

from cli_helpers import ROOT, TINY_FLAGS, environment


def test_torchrun_two_processes_write_one_set_of_results(tiny_data, tmp_path):
    out = tmp_path / "runs"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(ROOT / "apga_mura.py"), "--data-root", str(tiny_data), "--out-dir", str(out),
               "--cache-dir", str(tmp_path / "cache"), *TINY_FLAGS,
               "--train-cutout", "0", "--train-gradcam", "0", "--train-random", "0"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**environment(), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "x 2 ranks" in done.stdout
    assert done.stdout.count("APGA on elbow") == 1  # only rank 0 prints
    table = pd.read_csv(out / "results.csv")
    assert sorted(table["method"]) == ["apga", "baseline", "end2end"]  # one row each, not one per rank
    assert table["accuracy"].between(0, 1).all()
    history = pd.read_csv(out / "elbow-all-val" / "seed89" / "apga" / "metrics.csv")
    assert history["train_reward"].notna().all()
