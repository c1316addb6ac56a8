"""What the sweep's tests share: the 2 x 2 grid of tiny cells, its flags, its rows, and a PATH
without Slurm."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from apga.reporting.results import read_results
from cli_helpers import ROOT, environment
from conftest import TINY

GRID = ["--body-part", "elbow,wrist", "--n-shot", "all,4", "--seeds", "1", "--workers", "2", "--threads-per-job", "1"]
ONLY_APGA = dict(train_cutout=0, train_gradcam=0, train_end2end=0, train_random=0)
COMPARED = ["accuracy", "auroc", "kappa", "study_kappa", "accuracy_tta", "bone_precision_10", "location_gap_10",
            "swap_gap_10", "selection_accuracy", "best_epoch", "epochs_trained", "data_fingerprint", "superseded",
            "threads"]
SLURM_COMMANDS = ("sbatch", "srun", "salloc", "squeue", "sacct", "sinfo", "scontrol", "scancel", "sattach", "sstat")


def sweep_flags(data_root, cache_dir, **settings) -> list[str]:
    settings = {**TINY, **ONLY_APGA, "data_root": str(data_root), "cache_dir": str(cache_dir), **settings}
    return [part for name, value in settings.items() for part in (f"--{name.replace('_', '-')}", str(value))]


def run_sweep(out_dir, *flags, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "apga.sweep", "--out-dir", str(out_dir), *flags], capture_output=True,
                          text=True, env=env or environment(), cwd=ROOT, timeout=600, **kwargs)


def rows(out_dir) -> pd.DataFrame:
    return read_results(out_dir).set_index("run_id")[COMPARED].sort_index()


def path_without_slurm(shadow: Path) -> str:
    """This PATH with Slurm's commands left out: each folder that holds one is replaced by a folder
    under `shadow` of links to everything else in it (so that sh, cp or git are still found)."""
    folders = []
    for number, folder in enumerate(os.environ.get("PATH", "").split(os.pathsep)):
        if folder and any(shutil.which(name, path=folder) for name in SLURM_COMMANDS):
            copy = shadow / str(number)
            copy.mkdir(parents=True, exist_ok=True)
            for entry in os.scandir(folder):
                if entry.name not in SLURM_COMMANDS and not (copy / entry.name).is_symlink():
                    (copy / entry.name).symlink_to(entry.path)
            folder = str(copy)
        folders.append(folder)
    return os.pathsep.join(folders)
