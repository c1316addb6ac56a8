"""`python -m apga.sweep --status DIR`: one line per cell of the last sweep into DIR, and a count."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from apga.sweep.jobs import ACTIVE, jobs_alive, read_state, state_dir

GRID_FILE = "grid.json"


def cell_states(out_dir, names: list[str] | None = None) -> list[tuple[str, str, str]]:
    """(cell, state, detail) for the cells `names` (default: every cell of the sweeps into DIR):
    state is done, running, submitted, requeued, failed or not started; detail is the error line
    and log of a failed cell. A queued or running cell whose job is gone is failed."""
    if names is None:
        names = json.loads(grid_file(out_dir).read_text())["cells"]
    saved = {name: state for name in names if (state := read_state(out_dir, name)) is not None}
    active = [name for name, state in saved.items() if state.get("state") in ACTIVE]
    alive = dict(zip(active, jobs_alive([saved[name] for name in active])))
    states = []
    for name in names:
        state = saved.get(name)
        if state is None:
            states.append((name, "not started", ""))
            continue
        kind, detail = state.get("state", "not started"), ""
        if alive.get(name) is False:
            kind, state["error"] = "failed", "the job stopped without a word (killed, or out of memory)"
        if kind == "failed":
            detail = f"{state.get('error', '')}" + (f"  (log: {state['log']})" if state.get("log") else "")
        elif kind == "running" and state.get("host"):
            detail = f"on {state['host']}" + (f", pid {state['pid']}" if state.get("pid") else "")
        elif kind in ("submitted", "requeued") and state.get("job_id"):
            detail = f"{state.get('executor', '')} job {state['job_id']}" + (
                "" if alive.get(name) else " (its state cannot be checked from here)")
        states.append((name, kind, detail))
    return states


def status_text(out_dir) -> str:
    states = cell_states(out_dir)
    width = max((len(name) for name, _, _ in states), default=10)
    lines = [f"{name:<{width}}  {kind:<11}  {detail}".rstrip() for name, kind, detail in states]
    counts = Counter(kind for _, kind, _ in states)
    order = ("done", "running", "submitted", "requeued", "failed", "not started")
    lines.append(f"{len(states)} cells: " + ", ".join(f"{counts[k]} {k}" for k in order if counts[k]))
    return "\n".join(lines)


def has_sweep(out_dir) -> bool:
    return (state_dir(out_dir) / GRID_FILE).is_file()


def grid_file(out_dir) -> Path:
    return state_dir(out_dir) / GRID_FILE
