"""`python -m apga.sweep --status DIR`: one line per cell of the last sweep into DIR, and a count."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from apga.sweep.jobs import cell_file, job_is_alive, state_dir

GRID_FILE = "grid.json"


def cell_states(out_dir) -> list[tuple[str, str, str]]:
    """(cell, state, detail) for every cell of the last sweep: state is done, running, submitted,
    requeued, failed or not started; detail is the error line and log of a failed cell."""
    grid = json.loads((state_dir(out_dir) / GRID_FILE).read_text())
    states = []
    for name in grid["cells"]:
        path = cell_file(out_dir, name)
        if not path.is_file():
            states.append((name, "not started", ""))
            continue
        state = json.loads(path.read_text())
        kind, detail = state.get("state", "not started"), ""
        if kind in ("submitted", "running", "requeued") and job_is_alive(state) is False:
            kind, state["error"] = "failed", "the job stopped without a word (killed, or out of memory)"
        if kind == "failed":
            detail = f"{state.get('error', '')}" + (f"  (log: {state['log']})" if state.get("log") else "")
        elif kind == "running" and state.get("host"):
            detail = f"on {state['host']}" + (f", pid {state['pid']}" if state.get("pid") else "")
        elif kind == "submitted" and state.get("job_id"):
            detail = f"{state.get('executor', '')} job {state['job_id']}"
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
