"""Jobs of a sweep through submitit: one job per cell, on this machine or as a Slurm job array.

Each job writes its state to `<out-dir>/sweep/cells/<cell>.json` (running, done, failed; atomic)
and its runs into their own folders; nothing else. submitit keeps each job's pickled call and its
stdout/stderr in `<out-dir>/sweep/logs/`. A job killed by Slurm for its time limit or preempted is
requeued by submitit (`checkpoint`), and its runs resume from their `last.pt`.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
import traceback
from pathlib import Path

import submitit

from apga.errors import APGAError, ConfigError
from apga.sweep.grid import Cell
from apga.utils import atomic_write_json, configure_logging, notice

STATE_DIR = "sweep"


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


def submit_slurm(cells: list[Cell], out_dir, *, partition: str | None, gpus_per_job: int, cpus_per_job: int,
                 timeout_min: int, parallel: int, mem_gb: int | None = None) -> list:
    """One Slurm job array of the cells, at most `parallel` of them running at once."""
    if shutil.which("srun") is None or shutil.which("sbatch") is None:
        raise ConfigError("--executor slurm needs Slurm's commands (srun, sbatch) on this machine; run the sweep on "
                          "the cluster's login node, or use --executor local")
    executor = submitit.AutoExecutor(folder=state_dir(out_dir) / "logs", cluster="slurm")
    parameters = dict(name="apga-sweep", timeout_min=timeout_min, gpus_per_node=gpus_per_job, tasks_per_node=1,
                      cpus_per_task=cpus_per_job, slurm_array_parallelism=parallel)
    if partition:
        parameters["slurm_partition"] = partition
    if mem_gb:
        parameters["mem_gb"] = mem_gb
    executor.update_parameters(**parameters)
    since = time.time()
    jobs = executor.map_array(CellJob(), [cell.overrides() for cell in cells], [cell.name for cell in cells],
                              [cpus_per_job] * len(cells))
    _submitted(cells, jobs, out_dir, "slurm", since)
    return jobs


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


ACTIVE = ("submitted", "running", "requeued")
SLURM_ALIVE = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING")


def jobs_alive(states: list[dict]) -> list[bool | None]:
    """For each cell state, whether the job behind it still lives; None when this machine cannot
    tell (another host's process, a cluster whose sacct is not reachable here). Slurm's states come
    from one sacct call for all jobs (submitit's watcher)."""
    quiet = logging.getLogger("submitit")
    level, quiet.level = quiet.level, logging.ERROR  # its sacct warnings are not this command's output
    try:
        slurm = {i: submitit.SlurmJob(folder=Path(state["log"]).parent, job_id=state["job_id"])
                 for i, state in enumerate(states) if state.get("executor") == "slurm" and state.get("job_id")}
        alive = []
        for i, state in enumerate(states):
            if i in slurm:
                try:
                    job_state = slurm[i].state
                except Exception:  # noqa: BLE001 - sacct failed: not known here
                    job_state = "UNKNOWN"
                alive.append(None if job_state == "UNKNOWN" else job_state in SLURM_ALIVE)
            else:
                alive.append(_local_alive(state))
        return alive
    finally:
        quiet.level = level


def _local_alive(state: dict) -> bool | None:
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
