"""Jobs of a sweep through submitit: one job per cell, on this machine or as a Slurm job array.

Each job writes its state to `<out-dir>/sweep/cells/<cell>.json` (running, done, failed; atomic)
and its runs into their own folders; nothing else. submitit keeps each job's pickled call and its
stdout/stderr in `<out-dir>/sweep/logs/`. A job killed by Slurm for its time limit or preempted is
requeued by submitit (`checkpoint`), and its runs resume from their `last.pt`.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import time
import traceback
from pathlib import Path

import submitit

from apga.errors import APGAError, ConfigError
from apga.sweep import slurm
from apga.sweep.grid import Cell
from apga.utils import atomic_write_json, configure_logging, notice

STATE_DIR = "sweep"
MAX_REQUEUES = 3  # past its time limit, a job is requeued this many times (submitit's max_num_timeout)


def state_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / STATE_DIR


def cell_file(out_dir, cell_name: str) -> Path:
    return state_dir(out_dir) / "cells" / f"{cell_name.replace('/', '-')}.json"


def submission_file(out_dir, cell_name: str) -> Path:
    return cell_file(out_dir, cell_name).with_suffix(".submitted.json")


def write_state(out_dir, cell_name: str, **state) -> None:
    """The cell's state as its job records it (only the job writes this file)."""
    path = cell_file(out_dir, cell_name)
    previous = json.loads(path.read_text()) if path.is_file() else {}
    atomic_write_json(path, {**previous, **state, "cell": cell_name, "updated": time.time()})


def read_state(out_dir, cell_name: str) -> dict | None:
    """The cell's latest state: its job's record, or its submission when that is newer (a job
    submitted again, not started yet); the submission's job id and log either way. The sweep and
    the job write separate files, so neither overwrites what the other wrote."""
    files = cell_file(out_dir, cell_name), submission_file(out_dir, cell_name)
    job, submission = (json.loads(f.read_text()) if f.is_file() else None for f in files)
    if job is None or submission is None:
        return job or submission
    same_job = bool(job.get("job_id")) and job.get("job_id") == submission.get("job_id")  # Slurm: the job's own id
    if not same_job and submission["updated"] > job.get("updated", 0):  # clocks compared only across jobs
        return submission
    return {key: submission[key] for key in ("executor", "job_id", "log") if key in submission} | job


class CellJob(submitit.helpers.Checkpointable):
    """The call a job runs: train one cell (its baseline, methods and floors), record its state."""

    def __call__(self, overrides: dict, cell_name: str, threads: int = 0) -> list[str]:
        import torch

        from apga.config import make_config
        from apga.experiment import run

        configure_logging()  # a job is its own process
        out_dir = overrides["out_dir"]
        if threads:
            torch.set_num_threads(threads)
        environment = submitit.JobEnvironment() if "SUBMITIT_EXECUTOR" in os.environ else None
        write_state(out_dir, cell_name, state="running", host=socket.gethostname(), pid=os.getpid(),
                    job_id=environment.job_id if environment else "", error="")
        try:
            failures = run(make_config(**overrides), write_index=False)
        except SystemExit:
            raise  # submitit requeues the job (preemption, time limit): its state says so already
        except BaseException as error:
            if isinstance(error, submitit.core.utils.UncompletedJobError) and "timed-out" in str(error):
                # submitit stops requeueing a job past its time limit after max_num_timeout requeues
                write_state(out_dir, cell_name, state="timed out", error=f"reached its time limit {MAX_REQUEUES + 1} "
                            f"times (requeued {MAX_REQUEUES} times); rerun the command to resume it, or raise "
                            f"--timeout-min")
                raise
            line = str(error).splitlines()[0] if str(error) else type(error).__name__
            if not isinstance(error, APGAError):
                traceback.print_exc()
            write_state(out_dir, cell_name, state="failed", error=f"{type(error).__name__}: {line}"[:500])
            raise
        if failures:
            write_state(out_dir, cell_name, state="failed", error=f"{len(failures)} run(s) stopped: {'; '.join(failures)}")
        else:
            write_state(out_dir, cell_name, state="done", error="")
        return failures

    def checkpoint(self, overrides: dict, cell_name: str, threads: int = 0):
        """Slurm's time limit or a preemption: requeue the same call; its runs resume from last.pt."""
        write_state(overrides["out_dir"], cell_name, state="requeued")
        return submitit.helpers.DelayedSubmission(self, overrides, cell_name, threads)


def _submitted(cells: list[Cell], jobs, out_dir, executor: str, since: float) -> None:
    """Record each cell's submission (`since`: the time just before submitting, so that a job that
    has already started or finished stays newer than its submission)."""
    for cell, job in zip(cells, jobs):
        atomic_write_json(submission_file(out_dir, cell.name),
                          dict(cell=cell.name, state="submitted", executor=executor, job_id=str(job.job_id),
                               log=str(job.paths.stderr), host=socket.gethostname(), pid=0, error="", updated=since))


def require_slurm() -> None:
    missing = slurm.missing_commands()
    if missing:
        raise ConfigError(f"--executor slurm needs Slurm's commands ({', '.join(missing)} missing on this machine); run "
                          f"the sweep on the cluster's login node, start a one-node cluster here with "
                          f"scripts/local_slurm.sh, or use --executor local")


def submit_slurm(cells: list[Cell], out_dir, *, partition: str | None, gpus_per_job: int, cpus_per_job: int,
                 timeout_min: int, parallel: int, mem_gb: float | None = None) -> list:
    """One Slurm job array of the cells, at most `parallel` of them running at once. Without
    `mem_gb`, each job asks for the node's memory per core times its cores (a job that asks for
    none gets the whole node's memory where the cluster sets no default, and so runs alone)."""
    require_slurm()
    logs = state_dir(out_dir) / "logs"
    executor = submitit.AutoExecutor(folder=logs, cluster="slurm", slurm_max_num_timeout=MAX_REQUEUES)
    # Slurm signals a job (submitit checkpoints and requeues it) at its first time-limit check, made
    # every 30 s, that is within signal_s + 30 s of the limit: a short limit's signal must not come in
    # the job's first 30 s, before submitit has set its handler (the default action of USR2 kills)
    signal_s = min(90, max(1, 60 * timeout_min - 60))
    parameters = dict(name="apga-sweep", timeout_min=timeout_min, tasks_per_node=1, cpus_per_task=cpus_per_job,
                      slurm_array_parallelism=parallel, slurm_signal_delay_s=signal_s)
    if gpus_per_job:  # a CPU-only partition may know no GPUs at all: ask for none rather than for 0
        parameters["gpus_per_node"] = gpus_per_job
    if partition:
        parameters["slurm_partition"] = partition
    if not mem_gb and (per_core := slurm.memory_per_core_mb(partition)):
        mem_gb = per_core * cpus_per_job / 1024
    if mem_gb:
        parameters["mem_gb"] = mem_gb
    executor.update_parameters(**parameters)
    since = time.time()
    before = set(logs.iterdir()) if logs.is_dir() else set()
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's error; it is in the one line
            jobs = executor.map_array(CellJob(), [cell.overrides() for cell in cells], [cell.name for cell in cells],
                                      [cpus_per_job] * len(cells))
    except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError) as error:
        for path in set(logs.iterdir()) - before:  # the calls submitit pickled for the refused array
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        raise ConfigError(f"Slurm refused the job array: {slurm.refusal(error)}; nothing was submitted (see "
                          f"--partition, --cpus-per-job, --gpus-per-job, --mem-gb, --timeout-min)") from None
    _submitted(cells, jobs, out_dir, "slurm", since)
    return jobs


def planned_runtime(config, executor: str, gpus_per_job: int) -> dict:
    """What a cell's job will train under, as far as it is known where the sweep runs (the runtime
    keys of a run's identity, `training.loop.runtime_values`): one process, so its batch is
    `--batch-size`; the precision `--amp` resolves to on the job's device, left out where that
    depends on a GPU this machine does not have (`--amp 1` or the default on a Slurm GPU: bf16
    where the GPU has it, else fp16). A finished run of another precision or number of processes
    then stops the sweep in one line before anything is submitted, as it would stop the job."""
    import torch

    from apga.training.precision import Precision

    runtime = {"world_size": 1, "effective_batch": config.batch_size}
    on_gpu = torch.cuda.is_available() if executor == "local" else bool(gpus_per_job)
    if on_gpu and executor != "local" and config.amp in (None, True):
        return runtime
    device = torch.device("cuda" if on_gpu else "cpu")
    if on_gpu and executor != "local":  # an explicit --amp bf16, fp16 or 0: the same on any GPU that runs it
        return runtime | {"precision": {False: "fp32", "bf16": "bf16", "fp16": "fp16"}[config.amp]}
    return runtime | {"precision": Precision.for_device(device, config.amp).name}


def local_gpus() -> list[int]:
    """The GPUs this process may use, as indices the jobs' CUDA_VISIBLE_DEVICES take: the parent's
    own CUDA_VISIBLE_DEVICES where it is set (so 2,3 stays 2 and 3), else every GPU."""
    import torch

    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not count:
        return []
    if not visible:
        return list(range(count))
    try:
        return [int(entry) for entry in visible.split(",") if entry.strip()][:count]
    except ValueError:
        raise ConfigError(f"CUDA_VISIBLE_DEVICES={visible} names GPUs by UUID; give their indices for the sweep's "
                          f"local executor") from None


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, which containers and Slurm set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_local(cells: list[Cell], out_dir, *, workers: int, timeout_min: int, threads: int | None = None,
              progress=None) -> dict[str, str]:
    """The cells as local jobs, `workers` at a time: each on its own GPU when there are GPUs
    (CUDA_VISIBLE_DEVICES; at most one job per GPU), with `threads` torch threads (default: the
    cores divided among the workers). Returns cell -> error for the cells that failed (a job that
    raised, or runs that stopped on non-finite values). Waits for them all."""
    executor = submitit.LocalExecutor(folder=state_dir(out_dir) / "logs")
    gpus = local_gpus()
    if gpus and workers > len(gpus):
        notice(f"{len(gpus)} GPU(s) for {workers} workers: running {len(gpus)} cells at once, one per GPU")
        workers = len(gpus)
    threads = threads or max(1, usable_cores() // workers)
    queue, running, failed = list(cells), {}, {}
    while queue or running:
        while queue and len(running) < workers:
            cell = queue.pop(0)
            gpu = gpus.pop(0) if gpus else None
            executor.update_parameters(timeout_min=timeout_min, gpus_per_node=0 if gpu is None else 1,
                                       visible_gpus=() if gpu is None else (gpu,))
            since = time.time()
            job = executor.submit(CellJob(), cell.overrides(), cell.name, threads)
            _submitted([cell], [job], out_dir, "local", since)
            running[job] = (cell, gpu)
        time.sleep(0.5)
        for job in [job for job in running if job.done()]:
            cell, gpu = running.pop(job)
            if gpu is not None:
                gpus.append(gpu)
            try:
                stopped = job.result()
                if stopped:
                    failed[cell.name] = f"{len(stopped)} run(s) stopped: {'; '.join(stopped)}"
            except Exception as error:  # noqa: BLE001 - the job's own error, kept in its log and state
                state = read_state(out_dir, cell.name) or {}
                failed[cell.name] = (state.get("error") or _last_line(error)) + f"  (log: {job.paths.stderr})"
            if progress is not None:
                progress(cell, failed.get(cell.name))
    return failed


def _last_line(error: Exception) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__


ACTIVE = ("submitted", "pending", "running", "requeued")


def local_alive(state: dict) -> bool | None:
    """Whether a local job's process lives; None when it ran on another host."""
    if state.get("host") != socket.gethostname():
        return None
    # a running cell: its own process; a submitted one: submitit's controller (its job id is that pid)
    pid = state.get("pid") if state.get("state") == "running" else state.get("job_id")
    try:
        os.kill(int(pid), 0)
        return True
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
