"""What Slurm says, through its own commands: whether they are here, the state of a sweep's jobs,
a node's memory per core, and why it refused a submission.

Job states come from `sacct` where the cluster keeps accounting; where it does not (`sacct`:
"accounting storage is disabled", as on scripts/local_slurm.sh's cluster), from `squeue --states
all`, which knows the jobs the controller still holds (finished ones for MinJobAge seconds).
"""
from __future__ import annotations

import os
import shutil
import subprocess

COMMANDS = ("sbatch", "srun")
WAITING = ("PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "SPECIAL_EXIT", "RESV_DEL_HOLD")
RUNNING = ("RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING", "STAGE_OUT")


def missing_commands() -> list[str]:
    """Slurm's commands the sweep needs that are not on this machine's PATH."""
    return [name for name in COMMANDS if shutil.which(name) is None]


def _ask(command: list[str]) -> str | None:
    """A Slurm command's output, or None where it failed or is missing."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=os.environ)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def job_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """Slurm's state of each job it knows, job id (e.g. 4242_3) -> (STATE, reason): one sacct call,
    or one squeue call where accounting is not kept. A job neither knows is left out."""
    from submitit.slurm.slurm import read_job_id  # sacct's ids, array ranges (4242_[2-5%2]) included

    arrays = sorted({str(job_id).split("_")[0] for job_id in job_ids})
    if not arrays:
        return {}
    states: dict[str, tuple[str, str]] = {}
    accounted = _ask(["sacct", "-X", "--parsable2", "--noheader", "-o", "JobID,State", "-j", ",".join(arrays)])
    if accounted is not None:
        for line in accounted.splitlines():
            job, _, state = line.partition("|")
            try:
                parts = read_job_id(job.strip())
            except ValueError:
                continue
            for main, *task in parts:
                tasks = range(int(task[0]), int(task[-1]) + 1) if task else [None]
                for index in tasks:
                    states[main if index is None else f"{main}_{index}"] = (state.split(" ")[0].upper(), "")
        return states
    queued = _ask(["squeue", "--noheader", "--array", "--states=all", "-o", "%i|%T|%r", "-j", ",".join(arrays)])
    for line in (queued or "").splitlines():
        job, state, reason = (line.split("|") + ["", ""])[:3]
        states[job.strip()] = (state.strip().upper(), "" if reason.strip() in ("None", "(null)") else reason.strip())
    return states


def memory_per_core_mb(partition: str | None) -> int | None:
    """The smallest memory per CPU core among the partition's nodes (the default partition's
    without one), in MB; None where sinfo cannot say."""
    shown = _ask(["sinfo", "--noheader", "--Node", "-o", "%m|%c", *(["-p", partition] if partition else [])])
    shares = []
    for line in (shown or "").splitlines():
        memory, _, cpus = line.replace("+", "").partition("|")
        if memory.strip().isdigit() and cpus.strip().isdigit() and int(cpus) > 0:
            shares.append(int(memory) // int(cpus))
    return min(shares) if shares else None


def refusal(error: Exception) -> str:
    """Slurm's own reason from a failed sbatch, as submitit hands it over (its stderr)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    said = [line for line in lines if "error:" in line] or lines or [type(error).__name__]
    return said[-1].split("error:", 1)[-1].strip()
