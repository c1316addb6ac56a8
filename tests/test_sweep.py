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

from apga.reporting.results import RESULTS_FILE, read_results
from cli_helpers import ROOT, environment
from conftest import TINY
from sweep_helpers import COMPARED, GRID, ONLY_APGA, rows, run_sweep, sweep_flags

@pytest.mark.slow
def test_a_sweep_gives_the_rows_of_its_cells_run_one_by_one(tiny_data, tmp_path, one_by_one, capsys):
    out = tmp_path / "table"
    flags = [*GRID, *sweep_flags(tiny_data, tmp_path / "cache")]
    done = run_sweep(out, *flags)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 cells (seeds 89): 0 finished, 0 still queued or running, 4 to run" in done.stdout and "4 cells: 4 done" in done.stdout
    pd.testing.assert_frame_equal(rows(out), rows(one_by_one))
    assert len(read_results(out).query("method == 'floor'")) == 4 * 4
    again = run_sweep(out, *flags)  # everything is finished: nothing is submitted
    assert again.returncode == 0 and "4 cells (seeds 89): 4 finished, 0 still queued or running, 0 to run" in again.stdout
    assert len(list((out / "sweep" / "logs").glob("*_submitted.pkl"))) == 4
    from apga.sweep import entry_point

    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:  # the same cells in bf16 (what --amp bf16 trains on this CPU)
        entry_point(["--out-dir", str(out), *flags, "--amp", "bf16"])
    assert refused.value.code == 2 and "precision: 'fp32' -> 'bf16'" in capsys.readouterr().err
    index = (out / RESULTS_FILE).read_bytes()
    (out / RESULTS_FILE).unlink()
    from apga.reporting.summary import main as report

    report(str(out))  # python -m apga.report DIR
    assert (out / RESULTS_FILE).read_bytes() == index


def test_the_sweep_plans_each_cell_under_the_precision_and_processes_its_job_will_train_with(monkeypatch):
    from apga.config import make_config
    from apga.sweep.jobs import planned_runtime

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    one = {"world_size": 1, "effective_batch": 32}
    assert planned_runtime(make_config(preset="cpu"), "local", 1) == one | {"precision": "fp32"}
    assert planned_runtime(make_config(preset="cpu", amp=1), "local", 1) == one | {"precision": "bf16"}
    assert planned_runtime(make_config(preset="cpu"), "slurm", 0) == one | {"precision": "fp32"}
    assert planned_runtime(make_config(preset="cpu"), "slurm", 1) == one  # bf16 or fp16: the GPU decides
    assert planned_runtime(make_config(preset="cpu", amp="fp16"), "slurm", 1) == one | {"precision": "fp16"}
    assert planned_runtime(make_config(preset="cpu", amp=0), "slurm", 1) == one | {"precision": "fp32"}


@pytest.mark.slow
def test_a_killed_job_is_finished_by_rerunning_the_sweep(tiny_data, tmp_path, one_by_one):
    out = tmp_path / "table"
    flags = ["--body-part", "elbow", "--n-shot", "all", "--seeds", "1", "--threads-per-job", "1",
             *sweep_flags(tiny_data, tmp_path / "cache")]
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
    again = run_sweep(out, *flags)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 cells (seeds 89): 0 finished, 0 still queued or running, 1 to run" in again.stdout and "1 cells: 1 done" in again.stdout
    expected = rows(one_by_one)
    pd.testing.assert_frame_equal(rows(out), expected[expected.index.str.startswith("elbow-all-val/")])


def _stand_in_slurm(folder: Path, sbatch: str) -> str:
    """The PATH with stand-ins for sbatch (this shell script), srun and sinfo (a node of 16 cores
    and 64000 MB) in front."""
    folder.mkdir()
    for name, script in (("sbatch", sbatch), ("srun", "exit 0"), ("sinfo", "echo '64000|16'")):
        (folder / name).write_text(f"#!/bin/sh\n{script}\n")
        (folder / name).chmod((folder / name).stat().st_mode | stat.S_IEXEC)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"  # the test's PATH has no Slurm (no_slurm)


def test_the_slurm_submission_is_one_job_array_of_the_unfinished_cells(tiny_data, tmp_path, no_slurm):
    """Without Slurm: a stand-in `sbatch` records what submitit sends."""
    path = _stand_in_slurm(tmp_path / "bin", f"cp \"$1\" {tmp_path}/submitted.sh\necho 'Submitted batch job 4242'")
    out = tmp_path / "table"
    env = {**environment(), "PATH": path}
    done = subprocess.run([sys.executable, "-m", "apga.sweep", "--out-dir", str(out), *GRID, "--selections",
                           "val,holdout", "--executor", "slurm", "--partition", "gpu", "--gpus-per-job", "1",
                           "--timeout-min", "720", "--parallel", "3", *sweep_flags(tiny_data, tmp_path / "cache"),
                           "--holdout-fraction", "0.3"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "submitted Slurm job array 4242 (8 jobs, at most 3 at once)" in done.stdout
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --array=0-7%3", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --time=720", "#SBATCH --job-name=apga-sweep", "#SBATCH --signal=USR2@90",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32000MB"):  # the node's memory per core, times 8
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
    (["--executor", "slurm"], "--executor slurm needs Slurm's commands (sbatch, srun missing on this machine)"),
    (["--gpus-per-job", "2"], "--gpus-per-job takes 0 (CPU only) or 1, got 2"),
    (["--resume", "0"], "--resume does not go with a sweep: a sweep resumes"),
    (["--gpu-id", "1"], "--gpu-id does not go with a sweep"),
    (["--sync-bn", "1"], "--sync-bn does not go with a sweep: each cell is one process"),
])
def test_a_bad_setting_submits_nothing(tiny_data, tmp_path, capsys, no_slurm, flags, message):
    from apga.sweep import entry_point

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        entry_point(["--out-dir", str(tmp_path / "table"), "--body-part", "elbow",
                     *sweep_flags(tiny_data, tmp_path / "cache"), *flags])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and last.startswith("error: ") and message in last, last
    assert not list((tmp_path / "table").glob("sweep/logs/*"))


def test_a_submission_slurm_refuses_is_one_line_with_slurms_reason(tiny_data, tmp_path, capsys, no_slurm,
                                                                   monkeypatch):
    """sbatch's refusal (here a stand-in's, with Slurm's words) is the sweep's one-line error, with
    Slurm's reason; submitit's pickled calls for the refused array are not left behind; a CPU-only
    partition is asked for no GPU at all (--gpus-per-job 0)."""
    from apga.sweep import entry_point

    refused = "sbatch: error: Batch job submission failed: Requested node configuration is not available"
    monkeypatch.setenv("PATH", _stand_in_slurm(tmp_path / "bin", f"cp \"$1\" {tmp_path}/refused.sh\necho "
                                               f"'{refused}' >&2\nexit 1"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        entry_point(["--out-dir", str(tmp_path / "table"), "--body-part", "elbow", "--n-shot", "all,4",
                     "--executor", "slurm", "--gpus-per-job", "0", *sweep_flags(tiny_data, tmp_path / "cache")])
    err = capsys.readouterr().err.strip().splitlines()  # the progress bar of the cells' checks, then the error
    assert exit_.value.code == 2 and [line for line in err if "error" in line or "Traceback" in line] == err[-1:], err
    assert err[-1].startswith("error: Slurm refused the job array: Batch job submission failed: Requested node "
                             "configuration is not available; nothing was submitted"), err
    assert not list((tmp_path / "table").glob("sweep/logs/*"))
    assert "gpus" not in (tmp_path / "refused.sh").read_text()


@pytest.mark.slow
def test_a_preempted_job_is_requeued_by_submitit_and_resumes(tiny_data, tmp_path, one_by_one):
    """Slurm's preemption or time-limit signal (USR2, sent here to the job's process) makes the job
    checkpoint and requeue itself through submitit; the requeued job resumes the cell's runs from
    their last.pt and ends with the rows of an uninterrupted run."""
    import submitit

    from apga.sweep.grid import make_cells
    from apga.sweep.jobs import CellJob, cell_file

    out = tmp_path / "table"
    settings = {**TINY, **ONLY_APGA, "data_root": str(tiny_data), "cache_dir": str(tmp_path / "cache")}
    (cell,) = make_cells(str(out), "elbow", "all", 1, "val", settings)
    executor = submitit.LocalExecutor(folder=tmp_path / "logs")
    executor.update_parameters(timeout_min=30)
    job = executor.submit(CellJob(), cell.overrides(), cell.name, 1)
    history = out / "elbow-all-val" / "seed89" / "baseline" / "metrics.csv"
    deadline = time.time() + 300
    while time.time() < deadline and not history.is_file():
        time.sleep(0.02)
    import json

    pid = json.loads(cell_file(out, cell.name).read_text())["pid"]  # the process training the cell
    os.kill(pid, signal.SIGUSR2)  # what Slurm sends before a preemption or the time limit
    assert job.result() == []
    assert "Requeued" in Path(job.paths.stdout).read_text() + Path(job.paths.stderr).read_text()
    assert '"state": "done"' in cell_file(out, cell.name).read_text()
    expected = rows(one_by_one)
    pd.testing.assert_frame_equal(_rows_of_runs(out), expected[expected.index.str.startswith("elbow-all-val/")])


def _rows_of_runs(out) -> pd.DataFrame:
    from apga.reporting.results import rebuild

    return rebuild(out).set_index("run_id")[COMPARED].sort_index()


def test_local_jobs_get_one_gpu_each_of_those_this_process_may_use(monkeypatch, capsys):
    """CUDA_VISIBLE_DEVICES=2,3 stays GPUs 2 and 3; three workers run two cells at once, one per GPU."""
    import torch

    from apga.sweep import jobs
    from apga.sweep.grid import Cell

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert jobs.local_gpus() == [2, 3]
    submitted, running = [], set()

    class FakeJob:
        def __init__(self, gpu):
            self.gpu, self.polls, self.job_id = gpu, 0, str(len(submitted))
            self.paths = type("Paths", (), {"stderr": "log"})()

        def done(self):
            self.polls += 1
            if self.polls > 1:
                running.discard(self.gpu)
            return self.polls > 1

        def result(self):
            return []

    class FakeExecutor:
        def __init__(self, folder):
            self.parameters = {}

        def update_parameters(self, **parameters):
            self.parameters.update(parameters)

        def submit(self, function, overrides, name, threads):
            (gpu,) = self.parameters["visible_gpus"]
            assert gpu not in running and self.parameters["gpus_per_node"] == 1  # no GPU shared
            running.add(gpu)
            submitted.append((gpu, threads))
            return FakeJob(gpu)

    monkeypatch.setattr(jobs.submitit, "LocalExecutor", FakeExecutor)
    monkeypatch.setattr(jobs, "_submitted", lambda *args, **kwargs: None)
    monkeypatch.setattr(jobs.time, "sleep", lambda seconds: None)
    cells = [Cell("elbow", None, "val", seed, {"out_dir": "unused"}) for seed in range(89, 94)]
    assert jobs.run_local(cells, "unused", workers=3, timeout_min=10) == {}
    assert "2 GPU(s) for 3 workers: running 2 cells at once" in capsys.readouterr().err
    assert sorted(gpu for gpu, _ in submitted) == [2, 2, 2, 3, 3] or sorted(gpu for gpu, _ in submitted) == [2, 2, 3, 3, 3]


def test_cells_still_queued_or_running_are_not_submitted_again(tiny_data, tmp_path, capsys):
    """Rerunning the command while a job works on a cell leaves that cell to its job."""
    from apga.sweep import sweep
    from apga.sweep.grid import make_cells
    from apga.sweep.jobs import write_state

    out = str(tmp_path / "table")
    settings = {**TINY, **ONLY_APGA, "data_root": str(tiny_data), "cache_dir": str(tmp_path / "cache")}
    (cell,) = make_cells(out, "elbow", "all", 1, "val", settings)
    import socket

    write_state(out, cell.name, state="running", executor="local", host=socket.gethostname(), pid=os.getpid())
    assert sweep(out, "elbow", "all", 1, "val", **settings) == {}
    shown = capsys.readouterr().out
    assert "0 finished, 1 still queued or running, 0 to run" in shown and "elbow-all-val/seed89" in shown
    assert not (Path(out) / "elbow-all-val" / "seed89").exists()  # nothing trained


def test_a_submission_recorded_after_its_job_started_does_not_hide_the_jobs_state(tmp_path):
    """The sweep records a submission after submitit returns; a fast job may have started, or even
    finished, by then. The job's own record stays the cell's state; a later submission (a rerun)
    is the state until its job starts."""
    import time
    from types import SimpleNamespace

    from apga.sweep.jobs import _submitted, read_state, write_state
    from apga.sweep.status import cell_states

    name = "elbow-all-val/seed89"
    cell = SimpleNamespace(name=name)

    def job(number):
        return SimpleNamespace(job_id=str(number), paths=SimpleNamespace(stderr=tmp_path / f"{number}.err"))

    since = time.time()
    write_state(tmp_path, name, state="done", error="")  # the job finished before the sweep wrote its submission
    _submitted([cell], [job(123)], tmp_path, "local", since)
    assert read_state(tmp_path, name)["state"] == "done" and read_state(tmp_path, name)["job_id"] == "123"
    assert cell_states(tmp_path, [name]) == [(name, "done", "")]
    time.sleep(0.01)
    _submitted([cell], [job(124)], tmp_path, "local", time.time())  # submitted again: not started yet
    assert read_state(tmp_path, name)["state"] == "submitted"
    time.sleep(0.01)
    write_state(tmp_path, name, state="running", pid=1)
    assert read_state(tmp_path, name)["state"] == "running" and read_state(tmp_path, name)["job_id"] == "124"


def test_a_slurm_jobs_own_record_wins_over_its_submission_whatever_the_clocks(tmp_path):
    """On a cluster the job's node and the login node keep their own clocks: a job that records
    its own Slurm id is that submission's job, newer whatever the timestamps say."""
    import time
    from types import SimpleNamespace

    from apga.sweep.jobs import _submitted, read_state, write_state

    name = "elbow-all-val/seed89"
    write_state(tmp_path, name, state="done", job_id="4242_0", error="")  # a node whose clock is behind
    _submitted([SimpleNamespace(name=name)], [SimpleNamespace(job_id="4242_0", paths=SimpleNamespace(stderr="x"))],
               tmp_path, "slurm", time.time() + 3600)
    assert read_state(tmp_path, name)["state"] == "done"


@pytest.mark.parametrize("recorded, said, kind, detail", [
    ("submitted", ("PENDING", "JobArrayTaskLimit"), "pending", "slurm job 4242_0, pending (JobArrayTaskLimit)"),
    ("running", ("RUNNING", ""), "running", "slurm job 4242_0 on node7"),
    ("running", ("PENDING", "BeginTime"), "requeued", "slurm job 4242_0, pending (BeginTime)"),
    ("done", ("COMPLETED", ""), "done", ""),
    ("running", ("CANCELLED", ""), "cancelled", "slurm job 4242_0 was cancelled; rerun the command to resume it"),
    ("running", ("TIMEOUT", ""), "timed out", "Slurm stopped it at its time limit (--timeout-min)"),
    ("timed out", ("FAILED", ""), "timed out", "reached its time limit 4 times"),
    ("failed", ("FAILED", ""), "failed", "ValueError: bad"),
    ("running", ("FAILED", ""), "failed", "slurm job 4242_0 failed: the job stopped without a word"),
    ("running", ("OUT_OF_MEMORY", ""), "failed", "ran out of memory (raise --mem-gb)"),
    ("running", None, "running", "slurm job 4242_0 (its state cannot be checked from here)"),
])
def test_status_reads_a_slurm_jobs_record_against_what_slurm_says(tmp_path, monkeypatch, recorded, said, kind,
                                                                   detail):
    """The cell's own record against Slurm's state of its job (sacct's, or squeue's where there is no
    accounting): a job Slurm cancelled or timed out is not 'running' for ever."""
    from types import SimpleNamespace

    from apga.sweep import slurm
    from apga.sweep.jobs import _submitted, write_state
    from apga.sweep.status import cell_states

    name = "elbow-all-val/seed89"
    monkeypatch.setattr(slurm, "job_states", lambda ids: {} if said is None else {job: said for job in ids})
    _submitted([SimpleNamespace(name=name)], [SimpleNamespace(job_id="4242_0", paths=SimpleNamespace(stderr="x.err"))],
               tmp_path, "slurm", time.time())
    if recorded != "submitted":
        errors = {"failed": "ValueError: bad", "timed out": "reached its time limit 4 times (requeued 3 times)"}
        write_state(tmp_path, name, state=recorded, job_id="4242_0", host="node7", error=errors.get(recorded, ""))
    ((_, shown_kind, shown_detail),) = cell_states(tmp_path, [name])
    assert shown_kind == kind and detail in shown_detail, (shown_kind, shown_detail)
    assert kind in ("pending", "running", "requeued", "done") or "(log: x.err)" in shown_detail


def test_a_job_past_its_time_limit_too_often_records_that_it_timed_out(tmp_path, monkeypatch):
    """submitit stops requeueing a job that reached its time limit a fourth time (its error, raised
    in the job); the cell records 'timed out', which --status shows with what to do."""
    import submitit

    import apga.experiment
    from apga.sweep.jobs import CellJob, write_state
    from apga.sweep.status import cell_states

    def past_the_limit(config, write_index):
        raise submitit.core.utils.UncompletedJobError("Job not requeued because: timed-out too many times.")

    monkeypatch.setattr(apga.experiment, "run", past_the_limit)
    name = "elbow-all-val/seed89"
    with pytest.raises(submitit.core.utils.UncompletedJobError):
        CellJob()({"out_dir": str(tmp_path)}, name)
    write_state(tmp_path, name, log="x.err")
    ((_, kind, detail),) = cell_states(tmp_path, [name])
    assert kind == "timed out" and detail == ("reached its time limit 4 times (requeued 3 times); rerun the command "
                                              "to resume it, or raise --timeout-min  (log: x.err)"), detail


def test_the_sweep_takes_the_last_protocol_and_names_the_three():
    from apga.config import ConfigError
    from apga.sweep.grid import make_cells

    cells = make_cells("out", "elbow", "all", "89,90", "holdout,last", {"preset": "cpu"})
    assert [(c.model_selection, c.seed) for c in cells] == [("holdout", 89), ("holdout", 90), ("last", 89), ("last", 90)]
    assert cells[-1].config().model_selection == "last"
    with pytest.raises(ConfigError, match="give a comma list of val, holdout, last"):
        make_cells("out", "elbow", "all", "89", "best", {"preset": "cpu"})


def test_a_seed_count_that_reads_like_a_seed_says_what_it_means(capsys):
    from apga.sweep.grid import make_cells

    capsys.readouterr()
    assert [c.seed for c in make_cells("out", "elbow", "all", "96,", "val", {"preset": "cpu"})] == [96]
    assert capsys.readouterr().err == ""
    cells = make_cells("out", "elbow", "all", "96", "val", {"preset": "cpu"})
    assert len(cells) == 96 and cells[0].seed == 89
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["notice: --seeds 96 is a count: 96 seeds, 89 to 184; for seed 96 alone give --seeds 96,"]
    make_cells("out", "elbow", "all", "5", "val", {"preset": "cpu"})
    assert capsys.readouterr().err == ""
