"""How often a finished run's kept mask keeps the `--spurious` marker (the shortcut of the generated data).

    python benchmarks/marker_kept.py runs/ceiling-spurious-ft20/elbow-all-val apga-rloo-warmup300-frozenbn-swapbg-noclean \
        --data-root datasets/cond-spurious

For each seed folder under the first argument, loads the named method's selected checkpoint
(`apga.predict.load_run`), computes its deterministic kept mask on the training images, and
prints the share of images whose mask keeps the marker's core: the 2 x 2 pixels at rows 1-2,
columns side-3 to side-2 of the resized image, which the marker covers at every generated size
(`apga.data.radiograph.render_image` draws a square of min(h, w) // 16 px one pixel in from the top
right of an image of 80-128 px a side; the cache resizes it to a square). A mask that keeps a
fraction F of the image at random keeps it about F of the time. A masking method that keeps the
corner keeps the shortcut in its kept-region step.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apga.cli import script_command  # noqa: E402
from apga.data import make_loader, prepare_run_data  # noqa: E402
from apga.predict import load_run  # noqa: E402
from apga.training.loop import model_batch  # noqa: E402


@torch.no_grad()
def marker_kept(run_dir: Path, data_root: str, seed: int) -> float:
    method, config = load_run(run_dir, torch.device("cpu"))[:2]
    data = prepare_run_data(dataclasses.replace(config, data_root=data_root), seed)
    side = config.image_size
    kept, total = 0, 0
    for batch in make_loader(data.train.dataset, 64, shuffle=False):
        batch = model_batch(batch, "cpu")  # with its relevance region: the oracle's mask
        keep = method.keep_mask(method.mask_probabilities(batch["image"], batch))
        kept += (keep[:, 0, 1:3, side - 3:side - 1].mean((1, 2)) > 0.5).sum().item()
        total += len(keep)
    return kept / total


def main(seeds_dir: str, method_dir: str, data_root: str = "datasets/cond-spurious") -> None:
    shares = {int(d.name.removeprefix("seed")): marker_kept(d / method_dir, data_root, int(d.name.removeprefix("seed")))
              for d in sorted(Path(seeds_dir).glob("seed*")) if (d / method_dir / "best.pt").is_file()}
    print(f"{method_dir}: share of training images whose kept mask keeps the marker, by seed: "
          + " ".join(f"{seed}: {share:.2f}" for seed, share in shares.items()))


COMMAND = script_command(main, "python benchmarks/marker_kept.py SEEDS_DIR METHOD_DIR [--data-root PATH]",
                         paths=("seeds_dir", "method_dir", "data_root"))

if __name__ == "__main__":
    COMMAND.run(main, sys.argv[1:])
