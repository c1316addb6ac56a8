"""Small shared utilities: seeding, device, modes, atomic file writes."""
from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from apga.errors import ConfigError, StorageError


LOG = logging.getLogger("apga")


class _CurrentStderr(logging.StreamHandler):
    """A handler that writes to whatever sys.stderr is when a message comes (a redirect, a test's capture)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure_logging(level: int = logging.INFO) -> None:
    """How the command lines show messages: one line each on stderr, 'notice: ...', 'warning: ...',
    'error: ...'. Called by every entry point; a library user configures the 'apga' logger as they like."""
    if not any(isinstance(handler, _CurrentStderr) for handler in LOG.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        LOG.addHandler(handler)
    LOG.setLevel(level)
    LOG.propagate = False


def notice(message: str) -> None:
    """Something the user should know that needs no action (a cache rebuilt, a run trained anew)."""
    LOG.info("notice: %s", message)


def warn(message: str) -> None:
    """Something that may make a result other than the user expects (images skipped, one class)."""
    LOG.warning("warning: %s", message)


def error(message: str) -> None:
    """Why a command (or one of its runs) stopped: one line, what is wrong and how to fix it."""
    LOG.error("error: %s", message)


def shown_path(path) -> str:
    """A path as text that any UTF-8 output (a CSV, the console, a picture) can hold: the bytes of a
    name that are not UTF-8 (from a Latin-1 or cp1252 system; Python holds them as lone surrogates)
    as \\xNN escapes, everything else unchanged."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch together."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*parts) -> int:
    """A stable 63-bit seed from any printable parts (seed, epoch, purpose...)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def resolve_device(gpu_id: int) -> torch.device:
    """CUDA device `gpu_id`, or the CPU with a notice when CUDA is absent."""
    if not torch.cuda.is_available():
        notice("CUDA is not available; running on the CPU")
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if gpu_id >= count:
        raise ConfigError(f"--gpu-id {gpu_id} does not exist: this machine has {count} GPU(s) (0..{count - 1})")
    return torch.device("cuda", gpu_id)


def memory_format(channels_last: bool) -> torch.memory_format:
    """The memory format of networks and batches: channels_last (NHWC) or the contiguous NCHW."""
    return torch.channels_last if channels_last else torch.contiguous_format


@contextlib.contextmanager
def eval_mode(*models: torch.nn.Module):
    """Put models in eval mode for the block, then restore each one's previous mode."""
    previous = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        yield
    finally:
        for m, was_training in zip(models, previous):
            m.train(was_training)


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (short hex): identifies the checkpoint a run started from."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync it, rename it over `path`, fsync the folder.

    A reader sees the old file or the new one, never half of one; after a crash or power cut the
    new one is whole. Raises `StorageError` (one line: the file, the cause, the free space) when
    the folder cannot be written; the old file is then left as it was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # a short temporary name: a file whose own name is near the file system's limit is written too
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:40]}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 would outlive the rename
    except OSError as error:
        raise storage_error(path, error) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(error, OSError):
            raise storage_error(path, error) from None
        raise


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def private_folder(parent: Path, prefix: str) -> Path:
    """A new, uniquely named folder in `parent` (for work that is renamed into place), with the
    permissions the umask gives new folders (mkdtemp's 0700 would outlive the rename)."""
    folder = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    folder.chmod(0o777 & ~current_umask())
    return folder


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def storage_error(path: Path, error: OSError) -> StorageError:
    """The one-line error for a file that could not be written: which file, why, how much space is
    left there, and what to do."""
    cause = error.strerror or type(error).__name__
    if error.errno in _FULL:
        folder = next((p for p in Path(path).absolute().parents if p.exists()), Path("/"))
        free = shutil.disk_usage(folder).free
        return StorageError(f"cannot write {path} ({cause}; {human_bytes(free)} free on that disk); free some space, "
                            f"or choose another folder (--out-dir, --cache-dir), then rerun the same command: "
                            f"finished runs and the last checkpoints are kept", cause)
    return StorageError(f"cannot write {path} ({cause}); choose a writable folder (--out-dir, --cache-dir) and rerun "
                        f"the same command", cause)


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of the package's checkout (with '+dirty'), or the package version.

    Read once per process, on first use (when it starts training): the code it runs, even if
    the checkout changes while it runs."""
    from apga import __version__

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return __version__
