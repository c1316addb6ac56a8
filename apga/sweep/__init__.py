"""The paper's whole table as one command: every (body part, n_shot, protocol, seed) cell as a job.

    python -m apga.sweep --out-dir runs/table --body-part all --n-shot all,25,50,100 --seeds 5 \\
        --executor slurm --partition gpu --gpus-per-job 1 --timeout-min 720 --parallel 16 [training flags]
    python -m apga.sweep --out-dir runs/table ... --executor local --workers 2
    python -m apga.sweep --status runs/table

Scheduling is submitit's (Slurm job arrays; its local executor otherwise, `--workers` at a time).
Before anything is submitted, every cell's settings are validated, the image cache of every body
part is built, and the cells whose runs are all finished are left out: a rerun submits only what
is unfinished. A cell writes only inside its own run folders; results.csv, summary.md and the
plots are rebuilt from them by the sweep at the end and by `--status`.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from apga.cli import Command, Flag, config_flags
from apga.errors import APGAError, ConfigError
from apga.sweep.grid import REFUSED, SET_BY_THE_SWEEP, Cell, make_cells
from apga.sweep.jobs import ACTIVE
from apga.sweep.status import cell_states, grid_file, has_sweep, status_text
from apga.utils import atomic_write_json, error

EXECUTORS = ("local", "slurm")


def sweep(out_dir: str, body_part="all", n_shot="all", seeds=5, selections="val", executor: str = "local",
          workers: int = 1, partition: str | None = None, gpus_per_job: int = 1, cpus_per_job: int = 8,
          timeout_min: int = 720, parallel: int = 16, mem_gb: float | None = None, threads_per_job: int | None = None,
          force: bool = False, **training) -> dict[str, str]:
    """Run (local) or submit (slurm) every unfinished cell that no job is working on (with `force`,
    also those whose job cannot be checked from here); returns cell -> error of failed local cells."""
    from tqdm import tqdm

    from apga.experiment import unfinished_runs
    from apga.reporting import summary
    from apga.reporting.results import rebuild
    from apga.sweep.jobs import planned_runtime, run_local, submit_slurm

    if executor not in EXECUTORS:
        raise ConfigError(f"unknown --executor {executor!r}; choose local or slurm")
    for name, value in (("workers", workers), ("parallel", parallel), ("timeout_min", timeout_min),
                        ("cpus_per_job", cpus_per_job), ("threads_per_job", threads_per_job or 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
    if not isinstance(gpus_per_job, int) or isinstance(gpus_per_job, bool) or gpus_per_job not in (0, 1):
        raise ConfigError(f"--gpus-per-job takes 0 (CPU only) or 1, got {gpus_per_job!r}: a cell is one process on one "
                          f"GPU; for one run on several GPUs use torchrun (docs/many-runs.md)")
    if mem_gb is not None and (isinstance(mem_gb, bool) or not isinstance(mem_gb, (int, float)) or not mem_gb > 0):
        raise ConfigError(f"--mem-gb must be a positive number, got {mem_gb!r}")
    if executor == "slurm":
        from apga.sweep.jobs import require_slurm

        require_slurm()  # before the cells' data are checked and their caches built
    cells = make_cells(out_dir, body_part, n_shot, seeds, selections, training)
    pending = []
    for cell in tqdm(cells, desc="checking cells (and building image caches)", leave=False):
        config = cell.config()
        if unfinished_runs(config, cell.seed, planned_runtime(config, executor, gpus_per_job)):
            pending.append(cell)
    finished = len(cells) - len(pending)
    busy = {name: kind for name, kind, detail in cell_states(out_dir, [cell.name for cell in pending])
            if kind in ACTIVE and not (force and "cannot be checked" in detail)}
    pending = [cell for cell in pending if cell.name not in busy]
    _remember(out_dir, cells, training, executor)
    print(f"{len(cells)} cells (seeds {', '.join(map(str, sorted({cell.seed for cell in cells})))}): {finished} finished, "
          f"{len(busy)} still queued or running, {len(pending)} to run")
    if busy:
        print(f"the cells still queued or running are left to their jobs: {', '.join(sorted(busy))} "
              f"(--status {out_dir}; --force 1 resubmits those whose job cannot be checked from here)")
    failed: dict[str, str] = {}
    if pending and executor == "slurm":
        jobs = submit_slurm(pending, out_dir, partition=partition, gpus_per_job=gpus_per_job,
                            cpus_per_job=cpus_per_job, timeout_min=timeout_min, parallel=parallel, mem_gb=mem_gb)
        submitted = (f"job array {str(jobs[0].job_id).split('_')[0]} ({len(jobs)} jobs, at most {parallel} at once)"
                     if len(jobs) > 1 else f"job {jobs[0].job_id} (1 cell)")
        print(f"submitted Slurm {submitted}; follow it with: python -m apga.sweep --status {out_dir}")
        return failed
    if pending:
        with tqdm(total=len(pending), desc=f"cells ({workers} at a time)") as bar:
            def progress(cell: Cell, error: str | None) -> None:
                bar.update(1)
                if error:
                    bar.write(f"failed: {cell.name}: {error}")
            failed = run_local(pending, out_dir, workers=workers, timeout_min=timeout_min, threads=threads_per_job,
                               progress=progress)
    table = rebuild(out_dir)
    summary.write(table, out_dir)
    print(status_text(out_dir))
    print(f"results: {Path(out_dir) / 'results.csv'}; summary: {Path(out_dir) / summary.SUMMARY_FILE}")
    return failed


def _remember(out_dir: str, cells: list[Cell], training: dict, executor: str) -> None:
    """The sweep's cells for --status: added to those of earlier sweeps into the same folder."""
    path = grid_file(out_dir)
    known = json.loads(path.read_text())["cells"] if path.is_file() else []
    names = known + [cell.name for cell in cells if cell.name not in known]
    atomic_write_json(path, {"cells": names, "last_flags": training, "last_executor": executor})


def show_status(out_dir: str) -> None:
    from apga.reporting import summary
    from apga.reporting.results import rebuild

    if not has_sweep(out_dir):
        raise ConfigError(f"no sweep in {out_dir} (no {grid_file(out_dir)}); pass the --out-dir of a sweep")
    print(status_text(out_dir))
    table = rebuild(out_dir)
    if not table.empty:
        summary.write(table, out_dir)
        print(f"\n{summary.render(table)}")


def main(out_dir: str | None = None, status: str | None = None, body_part="all", n_shot="all", seeds=5,
         selections="val", executor: str = "local", workers: int = 1, partition: str | None = None,
         gpus_per_job: int = 1, cpus_per_job: int = 8, timeout_min: int = 720, parallel: int = 16,
         mem_gb: float | None = None, threads_per_job: int | None = None, force: bool = False, **training) -> None:
    try:
        if status is not None:
            show_status(status)
            return
        if not out_dir:
            raise ConfigError("--out-dir is required: the folder the sweep's runs and results go to")
        failed = sweep(out_dir, body_part, n_shot, seeds, selections, executor, workers, partition, gpus_per_job,
                       cpus_per_job, timeout_min, parallel, mem_gb, threads_per_job, force, **training)
    except APGAError as problem:
        error(str(problem))
        sys.exit(2)
    if failed:
        error(f"{len(failed)} cell(s) failed ({', '.join(sorted(failed))}); see --status {out_dir} for their errors and "
              f"logs, fix, and rerun the same command")
        sys.exit(2)


SWEEP_FLAGS = [
    Flag("out_dir", None, "the sweep's folder: run folders, results.csv, summary.md, plots, sweep/ (state, logs)",
         "DIR", "The sweep"),
    Flag("status", None, "print one line per cell of the sweep in DIR (done, running, failed, ...) and the summary",
         "DIR", "The sweep"),
    Flag("body_part", "all", "a comma list of body parts, or all (left out with --data-csv)", "LIST", "The sweep"),
    Flag("n_shot", "all", "a comma list of k per class, with all for every image (e.g. all,25,50,100)", "LIST",
         "The sweep"),
    Flag("seeds", 5, "a count (the paper's seeds 89, 90, ...) or a comma list of seeds", "N|LIST", "The sweep"),
    Flag("selections", "val", "a comma list of model-selection protocols: val, holdout, last", "LIST", "The sweep"),
    Flag("executor", "local", "local (this machine) or slurm (one job array through submitit)", "NAME", "The sweep"),
    Flag("workers", 1, "local: cells at once, each on its own GPU (or its share of the CPU cores)", "N", "The sweep"),
    Flag("threads_per_job", None, "local, on the CPU: torch threads of each job (default: the cores divided among "
         "the workers; results depend on it at the rounding level)", "N", "The sweep"),
    Flag("partition", None, "slurm: the partition", "NAME", "The sweep"),
    Flag("gpus_per_job", 1, "slurm: GPUs per job, 0 (a CPU-only partition) or 1", "N", "The sweep"),
    Flag("cpus_per_job", 8, "slurm: CPU cores per job (and its torch threads)", "N", "The sweep"),
    Flag("timeout_min", 720, "a job's time limit in minutes; a job past it is requeued and resumes", "N", "The sweep"),
    Flag("parallel", 16, "slurm: at most this many jobs of the array at once", "N", "The sweep"),
    Flag("mem_gb", None, "slurm: memory per job in GB (default: the partition's memory per core times "
         "--cpus-per-job, so that the jobs of an array share a node)", "X", "The sweep"),
    Flag("force", False, "also submit cells whose earlier job cannot be checked from here (cancel it first)", "0|1",
         "The sweep"),
]
TRAINING_FLAGS = [Flag(f.name, f.default, f.help, f.metavar, f"apga_mura.py's flags, {f.section[0].lower() + f.section[1:]}")
                  for f in config_flags() if f.name not in SET_BY_THE_SWEEP and f.name not in REFUSED]
SWEEP = Command(
    usage="python -m apga.sweep --out-dir DIR [--flag VALUE ...]   or   python -m apga.sweep --status DIR",
    summary="Train every (body part, n_shot, protocol, seed) cell of a grid, each cell a job (its baseline, the "
            "methods fine-tuned from it and the floors): on this machine (--executor local, --workers at a time) or "
            "as one Slurm job array (--executor slurm). Finished cells are skipped, so rerunning the command submits "
            "only what is unfinished. Every training flag of apga_mura.py passes through.",
    flags=SWEEP_FLAGS + TRAINING_FLAGS,
    unlisted=tuple(REFUSED),
)


def entry_point(argv: list[str] | None = None) -> None:
    """`python -m apga.sweep` and the `apga-sweep` console script."""
    SWEEP.run(main, sys.argv[1:] if argv is None else list(argv))


__all__ = ["sweep", "main", "entry_point", "show_status"]
