"""`python -m apga.sweep`: cells as submitit jobs give the rows of the same cells run one by one;
finished cells are not submitted again; a killed job is finished by rerunning the sweep; the Slurm
submission is what submitit would send; results.csv is rebuilt from the run folders."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from apga.config import make_config
from apga.experiment import run
from apga.reporting.results import RESULTS_FILE, read_results
from cli_helpers import ROOT, environment
from conftest import TINY

GRID = ["--body-part", "elbow,wrist", "--n-shot", "all,4", "--seeds", "1", "--workers", "2", "--threads-per-job", "1"]
ONLY_APGA = dict(train_cutout=0, train_gradcam=0, train_end2end=0, train_random=0)
COMPARED = ["accuracy", "auroc", "kappa", "study_kappa", "accuracy_tta", "bone_precision_10", "location_gap_10",
            "swap_gap_10", "selection_accuracy", "best_epoch", "epochs_trained", "data_fingerprint", "superseded",
            "threads"]


def _flags(data_root, cache_dir) -> list[str]:
    settings = {**TINY, **ONLY_APGA, "data_root": str(data_root), "cache_dir": str(cache_dir)}
    return [part for name, value in settings.items() for part in (f"--{name.replace('_', '-')}", str(value))]


def _sweep(out_dir, *flags, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "apga.sweep", "--out-dir", str(out_dir), *flags],
                          capture_output=True, text=True, env=environment(), cwd=ROOT, timeout=600, **kwargs)


def _rows(out_dir) -> pd.DataFrame:
    return read_results(out_dir).set_index("run_id")[COMPARED].sort_index()


@pytest.fixture(scope="module")
def one_by_one(tiny_data, tmp_path_factory):
    """The grid's cells run one after another, as `python apga_mura.py` runs them, with the torch
    threads of the sweep's jobs (results depend on the thread count at the rounding level)."""
    import torch

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


def test_a_sweep_gives_the_rows_of_its_cells_run_one_by_one(tiny_data, tmp_path, one_by_one):
    out = tmp_path / "table"
    flags = [*GRID, *_flags(tiny_data, tmp_path / "cache")]
    done = _sweep(out, *flags)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 cells, 0 finished, 4 to run" in done.stdout and "4 cells: 4 done" in done.stdout
    pd.testing.assert_frame_equal(_rows(out), _rows(one_by_one))
    assert len(read_results(out).query("method == 'floor'")) == 4 * 4
    again = _sweep(out, *flags)  # everything is finished: nothing is submitted
    assert again.returncode == 0 and "4 cells, 4 finished, 0 to run" in again.stdout
    assert len(list((out / "sweep" / "logs").glob("*_submitted.pkl"))) == 4
    index = (out / RESULTS_FILE).read_bytes()
    (out / RESULTS_FILE).unlink()
    report = subprocess.run([sys.executable, "-m", "apga.report", str(out)], capture_output=True, text=True,
                            env=environment(), cwd=ROOT, timeout=120)
    assert report.returncode == 0 and (out / RESULTS_FILE).read_bytes() == index


def test_a_killed_job_is_finished_by_rerunning_the_sweep(tiny_data, tmp_path, one_by_one):
    out = tmp_path / "table"
    flags = ["--body-part", "elbow", "--n-shot", "all", "--seeds", "1", "--threads-per-job", "1",
             *_flags(tiny_data, tmp_path / "cache")]
    process = subprocess.Popen([sys.executable, "-m", "apga.sweep", "--out-dir", str(out), *flags],
                               env=environment(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    history = out / "elbow-all-val" / "seed89" / "baseline" / "metrics.csv"
    deadline = time.time() + 300
    while time.time() < deadline and not history.is_file():  # the baseline has finished its first epoch of two
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the sweep and its job
    process.wait()
    assert history.is_file() and not (out / "elbow-all-val" / "seed89" / "apga" / "result.json").exists()
    status = subprocess.run([sys.executable, "-m", "apga.sweep", "--status", str(out)], capture_output=True,
                            text=True, env=environment(), cwd=ROOT, timeout=120)
    assert "elbow-all-val/seed89  failed" in status.stdout and "stopped without a word" in status.stdout
    assert "log: " in status.stdout
    again = _sweep(out, *flags)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 cells, 0 finished, 1 to run" in again.stdout and "1 cells: 1 done" in again.stdout
    expected = _rows(one_by_one)
    pd.testing.assert_frame_equal(_rows(out), expected[expected.index.str.startswith("elbow-all-val/")])


def test_the_slurm_submission_is_one_job_array_of_the_unfinished_cells(tiny_data, tmp_path):
    """Without Slurm: a stand-in `sbatch` records what submitit sends."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f"#!/bin/sh\ncp \"$1\" {tmp_path}/submitted.sh\necho 'Submitted batch job 4242'\n")
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(sbatch.stat().st_mode)
    out = tmp_path / "table"
    env = {**environment(), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([sys.executable, "-m", "apga.sweep", "--out-dir", str(out), *GRID, "--selections",
                           "val,holdout", "--executor", "slurm", "--partition", "gpu", "--gpus-per-job", "1",
                           "--timeout-min", "720", "--parallel", "3", *_flags(tiny_data, tmp_path / "cache"),
                           "--holdout-fraction", "0.3"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "submitted Slurm job array 4242 (8 jobs, at most 3 at once)" in done.stdout
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --array=0-7%3", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --time=720", "#SBATCH --job-name=apga-sweep", "#SBATCH --signal=USR2@90"):
        assert line in script, line
    assert "-m submitit.core._submit" in script
    import cloudpickle  # submitit's own pickler: what each job of the array will call

    cells = []
    for pickled in sorted((out / "sweep" / "logs").glob("4242_*_submitted.pkl")):
        submission = cloudpickle.loads(pickled.read_bytes())
        overrides, name, _ = submission.args
        cells.append(name)
        assert overrides["out_dir"] == str(out) and overrides["n_runs"] == 1 and overrides["seed"] == 88
        assert overrides["train_cutout"] == 0 and overrides["holdout_fraction"] == 0.3
    assert sorted(cells) == sorted(f"{part}-{shot}-{selection}/seed89" for part in ("elbow", "wrist")
                                   for shot in ("all", "4") for selection in ("val", "holdout"))
    status = subprocess.run([sys.executable, "-m", "apga.sweep", "--status", str(out)], capture_output=True,
                            text=True, env=env, cwd=ROOT, timeout=120)
    assert status.returncode == 0 and "8 cells: 8 submitted" in status.stdout and "slurm job 4242_0" in status.stdout


@pytest.mark.parametrize("flags, message", [
    (["--lr", "-1"], "--lr must be a positive number"),
    (["--n-shot", "all,500"], "--n-shot 500 is larger than"),
    (["--seed", "3"], "unknown flag(s) --seed (did you mean --seeds?)"),  # the sweep sets each cell's
    (["--executor", "pbs"], "unknown --executor 'pbs'"),
    (["--body-part", "knee"], "unknown --body-part 'knee'"),
    (["--executor", "slurm"], "--executor slurm needs Slurm's commands (srun, sbatch) on this machine"),
])
def test_a_bad_setting_submits_nothing(tiny_data, tmp_path, capsys, flags, message):
    from apga.sweep import entry_point

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        entry_point(["--out-dir", str(tmp_path / "table"), "--body-part", "elbow",
                     *_flags(tiny_data, tmp_path / "cache"), *flags])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and last.startswith("error: ") and message in last, last
    assert not list((tmp_path / "table").glob("sweep/logs/*"))
