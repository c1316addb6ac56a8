"""Where the output goes: file systems without locks.

Rebuilt from tox-dev/filelock#67 and BOINC/boinc#1563 (Lustre mounted without `-o flock` answers
flock() with ENOSYS, 'Function not implemented'), SModelS/smodels#37 (an HPC file system), and
NFS without its lock daemon (ENOLCK)."""
from __future__ import annotations

import errno
import json
import fcntl
import os

import pytest

from apga import utils
from apga.errors import CheckpointError, StorageError
from apga.reporting.results import rebuild
from apga.training.loop import run_folder_lock


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP])
def test_a_file_system_without_locks_goes_on_with_one_warning(tmp_path, monkeypatch, capsys, code):
    """Case 22: the run-folder lock and the results lock go on without a lock; one warning for the
    file system, naming its mount and what is not guarded; no traceback."""
    def no_locks(handle, operation):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    monkeypatch.setattr(utils, "_UNLOCKED_DEVICES", set())
    capsys.readouterr()
    for seed in ("seed89", "seed90"):
        with run_folder_lock(tmp_path / "runs" / "elbow-all-val" / seed / "baseline"):
            (tmp_path / "runs" / "elbow-all-val" / seed / "baseline" / "result.json").write_text(
                json.dumps({"run_id": f"elbow-all-val/{seed}/baseline", "method": "baseline", "accuracy": 0.5}))
    assert len(rebuild(tmp_path / "runs")) == 2 and (tmp_path / "runs" / "results.csv").is_file()
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, warnings
    assert f"has no file locks (flock: {os.strerror(code)}); going on without them" in warnings[0]
    assert "each run folder is not guarded" in warnings[0] and "mounted at /" in warnings[0]


def test_locks_still_keep_two_trainings_of_one_folder_apart(tmp_path, monkeypatch):
    """Where flock works, a second holder of a run folder stops in one line; any other flock failure
    (not 'no locks') is a one-line StorageError, not a traceback."""
    run_dir = tmp_path / "run"
    with run_folder_lock(run_dir):
        with pytest.raises(CheckpointError, match="another process is training"):
            with run_folder_lock(run_dir):
                pass

    def broken(handle, operation):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(fcntl, "flock", broken)
    with pytest.raises(StorageError, match=r"cannot write .*\.lock \(Input/output error\)"):
        with run_folder_lock(run_dir):
            pass
