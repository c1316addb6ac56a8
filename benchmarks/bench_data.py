"""The data path at MURA's size: cache build, warm start, batches per second, memory, sweep planning.

    python -m apga.data.synthetic --out datasets/synthetic-mura --size mura   # once: MURA-size generated data
    python benchmarks/bench_data.py --data-root datasets/synthetic-mura        # 224 px, every body part

Prints measured figures (not a test), each beside what a GPU training step consumes:
- the cold cache build (every image decoded and resized once, `--num-workers` processes), images/s;
- the warm start: `prepare_run_data` with every cache built (what every run and every sweep cell
  pays before training), seconds;
- batches read per second by the training loader (apga/data/batches.py: in the training process,
  a thread reading ahead), against torch's DataLoader over the same cache with 0, 2 and 4 worker
  processes (the loader of versions before 0.3), first and second pass;
- the memory the process holds (its peak resident set) and the cache's size on disk;
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
from apga.utils import configure_logging  # noqa: E402

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


def _sweep_planning(config, cells: int, out_dir: Path) -> tuple[float, int]:
    """Seconds to check `cells` cells of a sweep for unfinished runs (nothing trained), and the cells."""
    from apga.experiment import unfinished_runs
    from apga.sweep.grid import make_cells

    grid = make_cells(str(out_dir), "all", "all,25,50,100", max(1, -(-cells // 28)), "val",
                      {"data_root": config.data_root, "image_size": config.image_size,
                       "cache_dir": config.cache_dir, "num_workers": config.num_workers})[:cells]
    start = time.perf_counter()
    for cell in grid:
        unfinished_runs(cell.config(), cell.seed)
    return time.perf_counter() - start, len(grid)


def main(data_root: str = "datasets/synthetic-mura", image_size: int = 224, batch_size: int = 25,
         body_part: str = "all", cache_dir: str | None = None, num_workers: int = 2, workers: str = "0,2,4",
         cells: int = 100, cold: bool = True, repeats: int = 3) -> None:
    """Print the data path's figures (module docstring). `cache_dir`: where the caches go (default: a
    fresh temporary folder, so that the build is cold); `workers`: the DataLoader worker counts to
    compare; `cells`: the sweep to plan (0: skip)."""
    configure_logging()
    temporary = None
    if cache_dir is None:
        temporary = cache_dir = tempfile.mkdtemp(prefix="apga-bench-data-")
    config = make_config(data_root=data_root, body_part=body_part, image_size=image_size, batch_size=batch_size,
                         cache_dir=cache_dir, num_workers=num_workers)
    try:
        print(f"data: {data_root} ({body_part}), {image_size} px, batch {batch_size}; torch threads "
              f"{torch.get_num_threads()}, --num-workers {num_workers}")
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

        loader = make_loader(dataset, batch_size, shuffle=True, seed=(89, "baseline"))
        rates = _images_per_second(loader)
        rows.append(("training loader (in process, reading ahead)", f"{rates[0]:,.0f} / {rates[1]:,.0f} images/s",
                     f"{rates[1] / TIMM_DENSENET169_3090:.1f}x the 3090's DenseNet-169 step; target >= 5,000"))
        unchecked = make_loader(dataset, batch_size, shuffle=True, seed=(89, "baseline"), prefetch=0)
        rates = _images_per_second(unchecked)
        rows.append(("the same, without reading ahead", f"{rates[0]:,.0f} / {rates[1]:,.0f} images/s", ""))
        for count in (int(w) for w in str(workers).split(",") if str(w).strip()):
            rates = _images_per_second(_dataloader(dataset, batch_size, count))
            rows.append((f"torch DataLoader, {count} workers (before 0.3)", f"{rates[0]:,.0f} / {rates[1]:,.0f} images/s",
                         f"{rates[1] / TIMM_DENSENET169_3090:.1f}x the 3090's step"))
        if torch.cuda.is_available():
            pinned = make_loader(dataset, batch_size, shuffle=True, seed=(89, "baseline"), pin_memory=True)
            rates = _images_per_second(pinned)
            rows.append(("training loader, pinned memory", f"{rates[0]:,.0f} / {rates[1]:,.0f} images/s", ""))
        else:
            rows.append(("training loader, pinned memory", "n/a", "no GPU here: pinning needs one"))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append(("memory: peak resident set of this process", f"{peak:,.0f} MiB",
                     f"the caches on disk: {cache_bytes / 2**20:,.0f} MiB, memory-mapped (the page cache holds them)"))
        if cells:
            with tempfile.TemporaryDirectory(prefix="apga-bench-sweep-") as out:
                seconds, planned = _sweep_planning(dataclasses.replace(config), cells, Path(out))
            rows.append((f"sweep planning, {planned} cells", f"{seconds:.1f} s",
                         f"{seconds / max(planned, 1):.2f} s per cell (each prepares its data: a warm start)"))
        print("\n| measure | value | note |\n|---|---|---|")
        for name, value, note in rows:
            print(f"| {name} | {value} | {note} |")
        print(f"\nGPU demand: DenseNet-169 trains at {TIMM_DENSENET169_3090} images/s on an RTX 3090 with AMP "
              f"(timm's published figure); no GPU figure of this project's own step yet (docs/speed.md)")
        return None
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


COMMAND = script_command(main, "python benchmarks/bench_data.py [--flag VALUE ...]", paths=("data_root", "cache_dir"))


if __name__ == "__main__":
    COMMAND.run(main, sys.argv[1:])
