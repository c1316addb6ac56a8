"""Running the real command line in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY_FLAGS = ["--preset", "cpu", "--image-size", "32", "--batch-size", "8", "--epochs", "2", "--finetune-epochs", "1",
              "--patience", "2", "--agent-width", "2", "--gallery", "end"]  # the default body part: elbow


def cli_command(data_root, out_dir, *flags) -> list[str]:
    return [sys.executable, str(ROOT / "apga_mura.py"), "--data-root", str(data_root), "--out-dir", str(out_dir),
            "--cache-dir", str(Path(out_dir).parent / "cache"), *TINY_FLAGS, *flags]


def environment() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}


def run_cli(data_root, out_dir, *flags, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(data_root, out_dir, *flags), capture_output=True, text=True, timeout=timeout,
                          env=environment(), cwd=ROOT)


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


def run_cli_here(capsys, data_root, out_dir, *flags) -> Done:
    """The command line, parsed as apga_mura.py does, in this process (no interpreter start-up).
    Exceptions other than the CLI's exit propagate, so a traceback fails the test."""
    from apga.cli import entry_point

    capsys.readouterr()
    try:
        entry_point(cli_command(data_root, out_dir, *flags)[2:])
        code = 0
    except SystemExit as exit_:  # sys.exit(2) of the CLI, or Fire's own exit for an unknown flag
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return Done(code, captured.out, captured.err)
