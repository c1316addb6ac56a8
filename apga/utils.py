"""Small shared utilities: seeding, device, modes, atomic file writes."""
from __future__ import annotations

import contextlib
import errno
import fcntl
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
    'error: ...'. Called by every entry point; a library user configures the 'apga' logger as they like.

    Output that the terminal's encoding cannot show (a Latin-1 or ASCII locale, as some clusters set
    it: yadayada/acd_cli#168, projecthamster/hamster#94) is written with backslash escapes instead of
    stopping the command with UnicodeEncodeError after its work is done."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
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


def expand_path(value, flag: str = "a path") -> str:
    """A path flag's value as the path it names, as text: `~` and `~user` expanded, as a shell would
    (it does not after `--flag=`, inside quotes, or in a launcher's script); any other character kept.

    Raises `ConfigError` naming `flag` for a `~user` whose user this machine does not know (a folder
    named `~user` would otherwise be made in the working folder)."""
    text = os.fsdecode(value) if isinstance(value, (bytes, os.PathLike)) else str(value)
    if not text.strip():
        raise ConfigError(f"{flag} is empty ({text!r} names no file or folder: an unset shell variable?); give the "
                          f"path, '.' for the current folder")
    if not text.startswith("~"):
        return text
    expanded = os.path.expanduser(text)
    if expanded.startswith("~"):
        user = text[1:].split("/", 1)[0]
        whose = f"no user {user!r} on this machine" if user else "no home folder (HOME is not set)"
        raise ConfigError(f"{flag} {text}: there is {whose} to expand ~{user} to; write the folder out in full")
    return expanded


NAME_LIMIT = 100  # bytes of a file name derived from an input (file systems allow 255; room for suffixes)


def file_name(name: str, portable: bool = False) -> str:
    """A file or folder name derived from an input's name (a CSV's stem, a data set in a plot's name):
    `name` itself when it fits; else its first characters and 8 hex digits of its SHA-256, so that
    it stays under `NAME_LIMIT` bytes (a file system refuses names over 255) and two names never give
    one file. `portable`: characters other than letters, digits, '-', '_' and '.' become '_' (with
    the digest, so that `a b` and `a_b` stay two files)."""
    text = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) if portable else name
    if text == name and len(name.encode("utf-8", "surrogateescape")) <= NAME_LIMIT:
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    head = text.encode("utf-8", "surrogateescape")[:NAME_LIMIT - 9].decode("utf-8", "ignore")
    return f"{head}-{digest}"


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


def deterministic_algorithms() -> None:
    """`--deterministic 1`: cuDNN's deterministic algorithms (no benchmark search), torch's
    deterministic implementations where they exist (a warning where an op has none), and the
    cuBLAS workspace setting that makes its matrix products repeatable. Call it before CUDA starts."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


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


def full_precision(device) -> contextlib.AbstractContextManager:
    """A block computed in float32 even inside autocast (`--amp`): measurements, and rewards that
    are differences of nearly equal losses, whose size is below bf16's resolution. Inputs made
    under autocast must be cast with `.float()` inside the block."""
    return torch.autocast(torch.device(device).type, enabled=False)


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
    if error.errno == errno.ENAMETOOLONG:
        return StorageError(f"cannot write {path} ({cause}: a file system allows 255 bytes a name and 4096 a path); "
                            f"choose a shorter folder (--out-dir, --cache-dir) or file name, and rerun the same command")
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


NO_LOCKS = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP)  # flock's answers where there are no locks
_UNLOCKED_DEVICES: set[int] = set()  # file systems already warned about, once per process


@contextlib.contextmanager
def file_lock(path: Path, blocking: bool = True, guards: str = "this folder"):
    """An exclusive flock on the file `path` (made if missing) for the block; it also ends with the
    process. Raises `BlockingIOError` when `blocking` is False and another process holds it, and
    `StorageError` when the file cannot be made. Where the file system has no locks (Lustre mounted
    without `-o flock` and some FUSE mounts answer ENOSYS or EOPNOTSUPP, NFS without its lock daemon
    ENOLCK), the block runs unlocked, after a warning (once per file system) naming the mount and
    what is then not guarded (`guards`)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
    except OSError as error:
        raise storage_error(path, error) from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            raise
        except OSError as error:
            if error.errno not in NO_LOCKS:
                raise storage_error(path, error) from None
            _warn_unlocked(path, error, guards)
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _warn_unlocked(path: Path, error: OSError, guards: str) -> None:
    device = os.stat(path).st_dev
    if device in _UNLOCKED_DEVICES:
        return
    _UNLOCKED_DEVICES.add(device)
    mount = Path(path).resolve().parent
    while mount.parent != mount and os.stat(mount.parent).st_dev == device:
        mount = mount.parent
    warn(f"the file system mounted at {mount} has no file locks (flock: {error.strerror or error}); going on without "
         f"them, so {guards} is not guarded against two commands writing it at once (run one at a time there, or "
         f"mount it with locks, e.g. Lustre's -o flock)")


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
