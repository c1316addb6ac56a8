"""`python -m apga.sweep --status DIR`: one line per cell of the last sweep into DIR, and a count.

A cell's state is what its job recorded (running, requeued, done, failed, timed out), read
against what the scheduler says of that job: Slurm's own state for a Slurm job (pending,
running, cancelled, timed out, failed, ...), whether the process lives for a local one.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from apga.sweep import slurm
from apga.sweep.jobs import ACTIVE, local_alive, read_state, state_dir

GRID_FILE = "grid.json"
ORDER = ("done", "running", "pending", "submitted", "requeued", "cancelled", "timed out", "failed", "not started")
SILENT = "the job stopped without a word (killed, or out of memory)"


def cell_states(out_dir, names: list[str] | None = None) -> list[tuple[str, str, str]]:
    """(cell, state, detail) for the cells `names` (default: every cell of the sweeps into DIR):
    state is one of ORDER; detail says which job, where, or why it stopped and where its log is.
    A queued or running cell whose job is gone is failed."""
    if names is None:
        names = json.loads(grid_file(out_dir).read_text())["cells"]
    saved = {name: state for name in names if (state := read_state(out_dir, name)) is not None}
    on_slurm = [state["job_id"] for state in saved.values() if state.get("executor") == "slurm" and state.get("job_id")]
    said = slurm.job_states(on_slurm) if on_slurm else {}
    states = []
    for name in names:
        state = saved.get(name)
        if state is None:
            states.append((name, "not started", ""))
        elif state.get("executor") == "slurm" and state.get("job_id"):
            states.append((name, *_slurm_cell(state, said.get(state["job_id"]))))
        else:
            states.append((name, *_local_cell(state)))
    return states


def _log(state: dict) -> str:
    return f"  (log: {state['log']})" if state.get("log") else ""


def _local_cell(state: dict) -> tuple[str, str]:
    kind = state.get("state", "not started")
    alive = local_alive(state) if kind in ACTIVE else None
    if alive is False:
        kind, state["error"] = "failed", SILENT
    if kind in ("failed", "timed out"):
        return kind, f"{state.get('error', '')}{_log(state)}"
    if kind == "running" and state.get("host"):
        return kind, f"on {state['host']}" + (f", pid {state['pid']}" if state.get("pid") else "")
    if kind in ("submitted", "requeued") and state.get("job_id"):
        return kind, f"{state.get('executor', '')} job {state['job_id']}" + (
            "" if alive else " (its state cannot be checked from here)")
    return kind, ""


def _slurm_cell(state: dict, said: tuple[str, str] | None) -> tuple[str, str]:
    """The job's own record read against Slurm's state of it (None: Slurm does not know the job)."""
    recorded, job = state.get("state", "submitted"), f"slurm job {state['job_id']}"
    if recorded == "done":
        return "done", ""
    if said is None:
        if recorded in ACTIVE:
            return recorded, f"{job} (its state cannot be checked from here)"
        return recorded, f"{state.get('error', '')}{_log(state)}"
    slurm_state, reason = said
    if slurm_state in slurm.WAITING:
        kind = "requeued" if recorded in ("running", "requeued") else "pending"
        return kind, f"{job}, {slurm_state.lower()}" + (f" ({reason})" if reason else "")
    if slurm_state in slurm.RUNNING:
        where = f" on {state['host']}" if recorded == "running" and state.get("host") else ""
        return "running", f"{job}{where}" + (f", {slurm_state.lower()}" if slurm_state != "RUNNING" else "")
    if slurm_state == "CANCELLED":
        return "cancelled", f"{job} was cancelled; rerun the command to resume it{_log(state)}"
    if slurm_state == "TIMEOUT" or recorded == "timed out":
        why = state.get("error") if recorded == "timed out" else "Slurm stopped it at its time limit (--timeout-min)"
        return "timed out", f"{job}: {why}{_log(state)}"
    if recorded == "failed":
        return "failed", f"{state.get('error', '')}{_log(state)}"
    if slurm_state == "OUT_OF_MEMORY":
        return "failed", f"{job} ran out of memory (raise --mem-gb){_log(state)}"
    if slurm_state == "COMPLETED":
        return "failed", f"{job} ended without recording its end{_log(state)}"
    return "failed", f"{job} {slurm_state.lower()}: {SILENT}{_log(state)}"


def status_text(out_dir) -> str:
    states = cell_states(out_dir)
    width = max((len(name) for name, _, _ in states), default=10)
    lines = [f"{name:<{width}}  {kind:<11}  {detail}".rstrip() for name, kind, detail in states]
    counts = Counter(kind for _, kind, _ in states)
    lines.append(f"{len(states)} cells: " + ", ".join(f"{counts[k]} {k}" for k in ORDER if counts[k]))
    return "\n".join(lines)


def has_sweep(out_dir) -> bool:
    return (state_dir(out_dir) / GRID_FILE).is_file()


def grid_file(out_dir) -> Path:
    return state_dir(out_dir) / GRID_FILE
