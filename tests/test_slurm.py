"""The sweep on a real Slurm cluster: the one-node cluster of scripts/local_slurm.sh, and no other.

Without it these tests skip, naming the script; with APGA_REQUIRE_SLURM=1 (CI) they fail instead.
One job array carries the scenarios, to keep the cluster's delays few: the 2 x 2 grid under a
one-minute limit, one cell held until Slurm signals that limit, one failing, one cancelled
(`scancel`), one preempted (`scontrol requeue`); then the rerun.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from cli_helpers import ROOT, environment
from sweep_helpers import rows, sweep_flags

pytestmark = pytest.mark.slurm
SCRIPT = "scripts/local_slurm.sh"
GATE_CODE = Path(__file__).parent / "slurm_gate"
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE")
CELLS = ["elbow-all-val/seed89", "elbow-4-val/seed89", "wrist-all-val/seed89", "wrist-4-val/seed89"]  # array order


def _local_cluster() -> tuple[str | None, str]:
    """The config of scripts/local_slurm.sh's cluster when it answers (else None, and why not). A
    SLURM_CONF of this machine's own is never used: no test submits to a cluster it did not start."""
    conf = Path(os.environ.get("APGA_SLURM_DIR", "/var/tmp/apga-slurm")) / "slurm.conf"
    if not conf.is_file() or "ClusterName=apga-local" not in conf.read_text():
        return None, f"no local Slurm cluster ({conf} is missing)"
    if shutil.which("sinfo") is None:
        return None, "Slurm's commands are not on PATH"
    shown = subprocess.run(["sinfo", "--noheader", "--Node", "-o", "%T"], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "SLURM_CONF": str(conf)})
    state = shown.stdout.split()[0] if shown.stdout.split() else shown.stderr.strip()[-200:]
    if shown.returncode or state not in ("idle", "mixed", "allocated"):
        return None, f"the local Slurm cluster does not answer (sinfo: {state or 'nothing'})"
    return str(conf), ""


@pytest.fixture(scope="session")
def slurm_conf() -> str:
    """The local cluster's config; without the cluster, a skip that names the script (a failure
    where APGA_REQUIRE_SLURM=1, as in CI). Asked for first, before the tests' slower fixtures."""
    conf, why = _local_cluster()
    if conf is None:
        message = f"{why}; start it with `{SCRIPT} start` (as root)"
        if os.environ.get("APGA_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return conf


@pytest.fixture
def gates(tmp_path) -> Path:
    """The folder of the jobs' gates: `<cell>.hold` stops a cell in its baseline's second epoch,
    `<cell>.arrived` says it got there (tests/slurm_gate/sitecustomize.py)."""
    folder = tmp_path / "gates"
    folder.mkdir()
    return folder


def _gate_file(folder: Path, cell: str, kind: str) -> Path:
    return folder / f"{cell.replace('/', '-')}.{kind}"


@pytest.fixture
def cluster(slurm_conf, gates, monkeypatch) -> dict:
    """The environment of commands run against the local cluster: this process's (the sweep runs
    in it) and its jobs' (they inherit it)."""
    conf = slurm_conf
    monkeypatch.setenv("SLURM_CONF", conf)
    # the jobs import apga, and pass the gates of tests/slurm_gate/sitecustomize.py
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(GATE_CODE), str(ROOT)]))
    monkeypatch.setenv("APGA_TEST_GATES", str(gates))
    return {**environment(), "SLURM_CONF": conf}


@pytest.fixture
def submitted(cluster):
    """The job arrays a test submits; whatever of them still runs when it ends is cancelled."""
    arrays: list[str] = []
    yield arrays
    if arrays:
        subprocess.run(["scancel", *arrays], env=cluster, capture_output=True, timeout=60)


def _sweep(capsys, *argv) -> tuple[int, str, str]:
    """`python -m apga.sweep ARGV` in this process: its exit status, stdout and stderr."""
    from apga.sweep import entry_point

    capsys.readouterr()
    try:
        entry_point([str(argument) for argument in argv])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    shown = capsys.readouterr()
    return code, shown.out, shown.err


def _slurm(*command: str, env: dict) -> str:
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, f"{' '.join(command)}: {done.stderr}"
    return done.stdout


def _kinds(out) -> dict[str, str]:
    from apga.sweep.status import cell_states

    return {name: kind for name, kind, _ in cell_states(out)}


def _record(out, cell: str) -> dict:
    from apga.sweep.jobs import cell_file

    path = cell_file(out, cell)
    return json.loads(path.read_text()) if path.is_file() else {}


def _all_final(array: str, count: int):
    from apga.sweep.slurm import job_states

    ids = [array] if count == 1 else [f"{array}_{i}" for i in range(count)]  # one cell is a plain job
    states = job_states(ids)
    return len(states) == count and all(state in FINAL for state, _ in states.values())


def _running(array: str) -> int:
    from apga.sweep.slurm import job_states

    return sum(state == "RUNNING" for state, _ in job_states([array]).values())


def _submitted_array(done: tuple[int, str, str], submitted: list[str]) -> str:
    code, out, err = done
    assert code == 0, err[-3000:]
    submitted.append(re.search(r"submitted Slurm job array (\d+)", out).group(1))
    return submitted[-1]


def _status_lines(capsys, out) -> tuple[dict[str, str], str]:
    code, shown, err = _sweep(capsys, "--status", out)
    assert code == 0, err[-3000:]
    return {line.split()[0]: line for line in shown.splitlines() if line.split() and line.split()[0] in CELLS}, shown


def _progress(cell_dir: Path) -> dict[str, tuple]:
    """Each run of a cell: (its result.json's mtime or None, the epochs in its metrics.csv)."""
    progress = {}
    for run_dir in sorted(path for path in cell_dir.iterdir() if path.is_dir()):
        result, history = run_dir / "result.json", run_dir / "metrics.csv"
        progress[run_dir.name] = (result.stat().st_mtime_ns if result.is_file() else None,
                                  int(pd.read_csv(history)["epoch"].max()) if history.is_file() else 0)
    return progress


def _no_epoch_twice(cell_dir: Path) -> None:
    for history in cell_dir.glob("*/metrics.csv"):
        epochs = pd.read_csv(history)["epoch"]
        assert epochs.is_unique and epochs.is_monotonic_increasing, (history, list(epochs))


def _resumed(cell_dir: Path, before: dict[str, tuple], log: str) -> None:
    """The runs finished before the interruption were not trained again, and the run it stopped
    resumed after its last saved epoch (or, stopped in its first, started over)."""
    after = _progress(cell_dir)
    assert any(epochs for _, epochs in before.values()), before  # something to resume
    for name, (finished, epochs) in before.items():
        if finished is not None:
            assert after[name][0] == finished, f"{name} was trained again"
        elif epochs:  # it may have saved one more epoch between the look and its end
            resumed = re.findall(rf"resuming {re.escape(str(cell_dir / name))} after epoch (\d+)", log)
            assert resumed and int(resumed[-1]) >= epochs, (name, epochs, log[-3000:])


def _follow(steps: list, timeout: float = 400) -> None:
    """Run each step's action once its condition holds, in any order, until all have run."""
    deadline, steps = time.time() + timeout, list(steps)
    while steps and time.time() < deadline:
        for step in [step for step in steps if step[1]()]:
            step[2]()
            steps.remove(step)
        time.sleep(0.1)
    assert not steps, f"waited {timeout} s for: {', '.join(step[0] for step in steps)}"


@pytest.mark.slow
def test_a_job_array_on_slurm_resumes_what_was_preempted_timed_out_cancelled_or_failed(
        slurm_conf, tiny_data, tmp_path, one_by_one, cluster, gates, submitted, capsys):
    """The 2 x 2 grid as one Slurm job array (1 core each, 2 at once, no GPU, a one-minute limit):
    elbow-all is held at its gate (in its baseline's second epoch) until Slurm signals its time limit,
    and submitit's checkpoint requeues it; elbow-4 fails (its baseline's folder is locked); wrist-all
    is cancelled (`scancel`) at its gate, while it runs; wrist-4 is requeued at its gate, as
    preemption does (`scontrol requeue`, its process killed at once). The gates
    (tests/slurm_gate/sitecustomize.py) make sure each is stopped mid-work, not after its last epoch. The requeued cells resume from last.pt. --status shows pending,
    running, requeued, done, cancelled and failed as Slurm reports them, with the logs. Rerunning the
    command submits only the cancelled and the failed cell; all rows then equal those of the cells
    run one by one, with no epoch trained twice, and a last run submits nothing."""
    from apga.reporting.results import rebuild

    out = tmp_path / "table"
    grid = ["--out-dir", out, "--body-part", "elbow,wrist", "--n-shot", "all,4", "--seeds", "1", "--executor", "slurm",
            "--cpus-per-job", "1", "--parallel", "2", *sweep_flags(tiny_data, tmp_path / "cache")]
    code, _, err = _sweep(capsys, *grid, "--gpus-per-job", "1")  # a partition without GPUs
    assert code == 2 and "Traceback" not in err and err.strip().splitlines()[-1] == (
        "error: Slurm refused the job array: Invalid generic resource (gres) specification; nothing was submitted "
        "(see --partition, --cpus-per-job, --gpus-per-job, --mem-gb, --timeout-min)"), err[-3000:]
    grid += ["--gpus-per-job", "0"]
    timed, failing, cancelled, preempted = (out / cell for cell in CELLS)
    (failing / "baseline").mkdir(parents=True)
    for cell in (CELLS[0], CELLS[2], CELLS[3]):  # each stops at its gate, in its baseline's second epoch
        _gate_file(gates, cell, "hold").touch()
    seen: dict = {}

    def at_gate(cell: str) -> bool:
        return _gate_file(gates, cell, "arrived").is_file()

    def hold() -> None:  # held at its gate until Slurm signals the time limit (submitit requeues it)
        assert _kinds(out)[CELLS[0]] == "running"
        seen["timed"] = _progress(timed)

    def cancel() -> None:
        assert _kinds(out)[CELLS[2]] == "running"
        _slurm("scancel", f"{array}_2", env=cluster)

    def preempt() -> None:
        seen["preempted"] = _progress(preempted)
        _slurm("scontrol", "requeue", f"{array}_3", env=cluster)
        os.kill(_record(out, CELLS[3])["pid"], signal.SIGKILL)  # preempted without grace time
        seen["preempt"] = True

    with open(failing / "baseline" / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process "trains" elbow-4's baseline
        array = _submitted_array(_sweep(capsys, *grid, "--timeout-min", "1"), submitted)
        kinds = _kinds(out)
        assert kinds[CELLS[2]] == kinds[CELLS[3]] == "pending", kinds  # 2 at once: the array's last two wait
        _follow([
            ("elbow-all at its gate", lambda: at_gate(CELLS[0]), hold),
            ("wrist-all at its gate", lambda: at_gate(CELLS[2]), cancel),
            ("wrist-4 at its gate", lambda: at_gate(CELLS[3]), preempt),
            ("wrist-4 requeued", lambda: "preempt" in seen and _kinds(out)[CELLS[3]] == "requeued",
             lambda: seen.update(requeued=True)),
            ("two jobs at once", lambda: _running(array) == 2, lambda: seen.update(two=True)),
            ("the array's end", lambda: "requeued" in seen and _all_final(array, 4),
             lambda: seen.get("two") or pytest.fail("the array's jobs never ran two at once (their --mem?)")),
        ])
    lines, shown = _status_lines(capsys, out)
    assert "4 cells: 2 done, 1 cancelled, 1 failed" in shown, shown
    assert lines[CELLS[0]].split()[1] == lines[CELLS[3]].split()[1] == "done", shown
    assert re.search(rf"failed .*another process is training .*\(log: .*{array}_1_0_log\.err\)", lines[CELLS[1]])
    assert re.search(rf"cancelled .*slurm job {array}_2 was cancelled.*\(log: .*{array}_2_0_log\.err\)",
                     lines[CELLS[2]]), lines[CELLS[2]]
    logs = out / "sweep" / "logs"
    timed_log = "".join((logs / f"{array}_0_0_log.{kind}").read_text() for kind in ("out", "err"))
    assert "this job is timed-out" in timed_log and f"Requeued job {array}_0" in timed_log, timed_log[-3000:]
    _resumed(timed, seen["timed"], timed_log)
    _resumed(preempted, seen["preempted"], (logs / f"{array}_3_0_log.out").read_text())

    code, shown, err = _sweep(capsys, *grid, "--timeout-min", "10")
    assert "4 cells (seeds 89): 2 finished, 0 still queued or running, 2 to run" in shown, shown + err
    rerun = _submitted_array((code, shown, err), submitted)
    _follow([("the rerun's end", lambda: _all_final(rerun, 2), lambda: None)])
    assert set(_kinds(out).values()) == {"done"}, _kinds(out)
    for cell in CELLS:
        _no_epoch_twice(out / cell)
    expected = rows(one_by_one)
    pd.testing.assert_frame_equal(rebuild(out).set_index("run_id")[expected.columns].sort_index(), expected)
    code, shown, err = _sweep(capsys, *grid, "--timeout-min", "10")
    assert code == 0 and "4 cells (seeds 89): 4 finished, 0 still queued or running, 0 to run" in shown, shown + err
    assert "submitted" not in shown
