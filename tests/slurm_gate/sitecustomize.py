"""A gate for the slurm tests, loaded by the jobs' Python only (tests/test_slurm.py puts this folder
first on their PYTHONPATH and names a gate folder in APGA_TEST_GATES).

A cell named by a file `<gate folder>/<cell>.hold` stops at its gate the first time it opens a file
of its baseline's run folder once that run has written its first epoch (metrics.csv): it creates
`<cell>.arrived` and sleeps while the hold file exists. It still runs its signal handlers there
(submitit's for the time limit), and only SIGKILL or removing the hold file ends the wait. So the
test cancels, preempts or times out a cell that is surely in the middle of its work, not one
that may have finished in the seconds Slurm takes to kill it. The gate opens once per cell: the
requeued job passes it.
"""
import os
import sys
import time

GATES = os.environ.get("APGA_TEST_GATES")


def _gate(event, args):
    if event != "open":
        return
    path = os.fspath(args[0]) if isinstance(args[0], (str, os.PathLike)) else None
    if not isinstance(path, str) or "/baseline/" not in path:
        return
    run_dir = path.rsplit("/baseline/", 1)[0]  # <out-dir>/<part>-<shot>-<selection>/seed<N>
    if not os.path.isfile(f"{run_dir}/baseline/metrics.csv"):
        return
    cell = "-".join(run_dir.split("/")[-2:])
    hold = os.path.join(GATES, f"{cell}.hold")
    if not os.path.exists(hold):
        return
    try:
        os.close(os.open(os.path.join(GATES, f"{cell}.arrived"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:  # this cell has been held once already
        return
    while os.path.exists(hold):
        time.sleep(0.05)


if GATES:
    sys.addaudithook(_gate)
