"""The data path at MURA's size: cache build, warm start, batches per second, memory, sweep planning.

    python -m apga.data.synthetic --out datasets/synthetic-mura --size mura   # once: MURA-size generated data
    python benchmarks/bench_data.py --data-root datasets/synthetic-mura        # 224 px, every body part

Prints measured figures (not a test), each beside what a GPU training step consumes:
- the cold cache build (every image decoded and resized once, `--num-workers` processes), images/s;
- the warm start: `prepare_run_data` with every cache built (what every run and every sweep cell
  pays before training), seconds;
- the first pass of a process, which checks every row against its CRC as it reads it;
- then batches read per second by the training loader (apga/data/batches.py: in the training
  process, a thread reading ahead), with and without reading ahead, against torch's DataLoader over
  the same cache with 0, 2 and 4 worker processes (the loader of versions before 0.3), two passes each;
- the memory: the process's own (anonymous), its peak resident set, and how much of the caches
  (their size on disk) it has mapped in;
- the planning of a sweep of `--cells` cells (apga/sweep: every cell's runs checked for being
  finished, which prepares each cell's data), seconds.
The demand: timm's published training throughput of DenseNet-169 at 224 px with AMP and
channels_last on an RTX 3090, 752.5 images/s at batch 256
(huggingface/pytorch-image-models, results/benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv);
newer GPUs train several times faster. APGA's step needs fewer images per second than that (it
runs the classifier twice and the agent once per image). Figures a GPU measured with
benchmarks/bench_step.py go beside it when docs/speed.md has them.
"""
from __future__ import annotations

import dataclasses
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apga.cli import script_command  # noqa: E402
from apga.config import make_config  # noqa: E402
from apga.data import prepare_run_data  # noqa: E402
from apga.data.batches import make_loader  # noqa: E402
from apga.data.cache import keep_as_list  # noqa: E402
from apga.sweep.grid import as_list  # noqa: E402
from apga.errors import APGAError  # noqa: E402
from apga.utils import configure_logging, error  # noqa: E402

TIMM_DENSENET169_3090 = 752.5  # images/s, training, AMP, channels_last, batch 256, 224 px (module docstring)


def _images_per_second(loader, epochs: int = 2) -> list[float]:
    """Images per second of each pass over `loader` (its batches are dicts with "image")."""
    rates = []
    for epoch in range(1, epochs + 1):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        start, count = time.perf_counter(), 0
        for batch in loader:
            count += len(batch["image"])
        rates.append(count / (time.perf_counter() - start))
    return rates


def _dataloader(dataset, batch_size: int, workers: int, pin_memory: bool = False):
    """torch's DataLoader over the same cached dataset (whole batches per read), as before 0.3."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=keep_as_list,
                                       num_workers=workers, persistent_workers=workers > 0, pin_memory=pin_memory,
                                       generator=torch.Generator().manual_seed(0))


def _mapped_mib(folder: str) -> tuple[float, float]:
    """MiB of this process's own (anonymous) memory, and of the pages of files under `folder` (the
    memory-mapped caches) it has resident: /proc/self/smaps (Linux; NaN elsewhere). The caches' pages
    are the page cache's, shared by every process that maps them."""
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
        anonymous = int(next(line for line in Path("/proc/self/status").read_text().splitlines()
                             if line.startswith("RssAnon:")).split()[1])
    except (OSError, StopIteration, ValueError, IndexError):
        return float("nan"), float("nan")
    root, in_cache, cached = str(Path(folder).resolve()), False, 0
    for line in lines:
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5:  # a mapping's header: address perms offset dev inode [path]
            in_cache = len(fields) >= 6 and fields[5].startswith(root)
        elif in_cache and fields[:1] == ["Rss:"]:
            cached += int(fields[1])
    return anonymous / 1024, cached / 1024


def _sweep_planning(config, cells: int, shots: str, out_dir: Path) -> tuple[float, int]:
    """Seconds to check `cells` cells of a sweep of the body part(s) and `shots` for unfinished runs
    (nothing trained), and the cells."""
    from apga.experiment import unfinished_runs
    from apga.sweep.grid import body_parts, make_cells

    per_seed = len(body_parts(config.body_part)) * len(as_list(shots))
    grid = make_cells(str(out_dir), config.body_part, shots, max(1, -(-cells // per_seed)), "val",
                      {"data_root": config.data_root, "image_size": config.image_size,
                       "cache_dir": config.cache_dir, "num_workers": config.num_workers})[:cells]
    start = time.perf_counter()
    for cell in grid:
        unfinished_runs(cell.config(), cell.seed)
    return time.perf_counter() - start, len(grid)


def main(data_root: str = "datasets/synthetic-mura", image_size: int = 224, batch_size: int = 25,
         body_part: str = "all", cache_dir: str | None = None, num_workers: int = 2, workers: str = "0,2,4",
         cells: int = 100, shots: str = "all,25,50,100", repeats: int = 3) -> None:
    """Print the data path's figures (module docstring). `cache_dir`: where the caches go (default: a
    fresh temporary folder, so that the build is cold; a folder with caches gives a warm first start);
    `workers`: the DataLoader worker counts to compare; `cells`: the sweep to plan, over the body
    part(s) and `shots` (0: skip)."""
    configure_logging()
    temporary = None
    if cache_dir is None:
        temporary = cache_dir = tempfile.mkdtemp(prefix="apga-bench-data-")
    config = make_config(data_root=data_root, body_part=body_part, image_size=image_size, batch_size=batch_size,
                         cache_dir=cache_dir, num_workers=num_workers)
    try:
        _measure(config, cache_dir, data_root, workers, cells, shots, repeats)
    except APGAError as problem:
        error(str(problem))
        sys.exit(2)
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


def _measure(config, cache_dir: str, data_root: str, workers: str, cells: int, shots: str, repeats: int) -> None:
    """The figures of `main`, printed as one table."""
    body_part, image_size, batch_size, num_workers = config.body_part, config.image_size, config.batch_size, config.num_workers
    print(f"data: {data_root} ({body_part}), {image_size} px, batch {batch_size}; torch threads "
          f"{torch.get_num_threads()}, --num-workers {num_workers}")
    cold = not any(Path(cache_dir).glob("*.u8"))
    start = time.perf_counter()
    data = prepare_run_data(config, seed=89)
    build = time.perf_counter() - start
    images = len(data.train.index) + len(data.report.index)
    warm = []
    for _ in range(repeats):
        start = time.perf_counter()
        data = prepare_run_data(config, seed=89)
        warm.append(time.perf_counter() - start)
    dataset = data.train.dataset
    cache_bytes = sum(f.stat().st_size for f in Path(cache_dir).glob("*.u8"))
    rows = [("cold cache build" if cold else "first start (cache as found)", f"{images / build:,.0f} images/s",
             f"{build:.1f} s for {images:,} images"),
            ("warm start (median of {})".format(repeats), f"{statistics.median(warm):.2f} s",
             f"{statistics.median(warm) / images * 1e3:.3f} ms per image; target <= 5 s at MURA's 40,005 images")]

    # every row is checked against its CRC the first time this process reads it (cache.CheckedRows):
    # one pass pays that, and the loaders compared after it all read checked rows
    checking = make_loader(dataset, batch_size, shuffle=True, seed=(89, "baseline"))
    rate = _images_per_second(checking, epochs=1)[0]
    rows.append(("first pass of a process (each row's CRC checked as it is read)", f"{rate:,.0f} images/s",
                 f"{rate / TIMM_DENSENET169_3090:.1f}x the 3090's DenseNet-169 step"))
    loader = make_loader(dataset, batch_size, shuffle=True, seed=(89, "baseline"))
    rates = _images_per_second(loader)
    rows.append(("training loader (in process, reading ahead), passes 2 and 3",
                 f"{rates[0]:,.0f} / {rates[1]:,.0f} images/s",
                 f"{min(rates) / TIMM_DENSENET169_3090:.1f}x the 3090's DenseNet-169 step; target >= 5,000"))
    in_step = make_loader(dataset, batch_size, shuffle=True, seed=(89, "baseline"), prefetch=0)
    rates = _images_per_second(in_step)
    rows.append(("the same, without reading ahead", f"{rates[0]:,.0f} / {rates[1]:,.0f} images/s", ""))
    for count in (int(w) for w in as_list(workers)):
        rates = _images_per_second(_dataloader(dataset, batch_size, count))
        rows.append((f"torch DataLoader, {count} workers (before 0.3)", f"{rates[0]:,.0f} / {rates[1]:,.0f} images/s",
                     f"{min(rates) / TIMM_DENSENET169_3090:.1f}x the 3090's step"))
    if torch.cuda.is_available():
        pinned = make_loader(dataset, batch_size, shuffle=True, seed=(89, "baseline"), pin_memory=True)
        rates = _images_per_second(pinned)
        rows.append(("training loader, pinned memory", f"{rates[0]:,.0f} / {rates[1]:,.0f} images/s", ""))
    else:
        rows.append(("training loader, pinned memory", "n/a", "no GPU here: pinning needs one"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    private, mapped = _mapped_mib(cache_dir)
    rows.append(("memory: the process's own (anonymous) memory now", f"{private:,.0f} MiB",
                 f"peak resident set {peak:,.0f} MiB (libraries and mapped files included); the caches: "
                 f"{cache_bytes / 2**20:,.0f} MiB on disk, {mapped:,.0f} MiB of them mapped in now, page cache "
                 f"shared with every process that reads them"))
    if cells:
        with tempfile.TemporaryDirectory(prefix="apga-bench-sweep-") as out:
            seconds, planned = _sweep_planning(dataclasses.replace(config), cells, shots, Path(out))
        rows.append((f"sweep planning, {planned} cells", f"{seconds:.1f} s",
                     f"{seconds / max(planned, 1):.2f} s per cell (each prepares its data: a warm start)"))
    print("\n| measure | value | note |\n|---|---|---|")
    for name, value, note in rows:
        print(f"| {name} | {value} | {note} |")
    print(f"\nGPU demand: DenseNet-169 trains at {TIMM_DENSENET169_3090} images/s on an RTX 3090 with AMP "
          f"(timm's published figure); no GPU figure of this project's own step yet (docs/speed.md)")


COMMAND = script_command(main, "python benchmarks/bench_data.py [--flag VALUE ...]", paths=("data_root", "cache_dir"))


if __name__ == "__main__":
    COMMAND.run(main, sys.argv[1:])
