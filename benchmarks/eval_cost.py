"""What evaluation costs beside training, at the paper's size, from FLOP counts (not a test).

    python benchmarks/eval_cost.py                          # the paper preset: 224 px, DenseNet-169, UNet11 32
    python benchmarks/eval_cost.py --preset cpu --sample 4  # the CPU preset (what the suite runs, smaller)

Every figure is counted by torch's FlopCounterMode (forward and backward) on this project's own
code, run on `--sample` images of the generated data at the preset's size:
- a training step of each method, per image (`run_step` on one batch of `--batch-size`);
- a selection evaluation, per image (`evaluate` on the selection split, as the loop runs it);
- the final evaluation with the mask-quality measures (its occlusion maps included), per image;
- a seed's floors: the baseline's occlusion maps (computed once) and each floor's evaluation.
They are then scaled by MURA's image counts (`--body-part`; MURA v1.1: 36,808 training and
3,197 validation images) and the schedule the settings give: an epoch is ceil(train / batch)
steps; APGA and end-to-end validate every `--val-every` steps and after each epoch, the others
after each epoch; under `--model-selection val` the selection split is MURA's validation split.
Early stopping decides how many epochs a run trains, so the per-epoch shares are exact and the
one-off costs (final evaluation, floors) are given in training epochs of the method.
"""
from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apga.cli import script_command  # noqa: E402
from apga.config import make_config  # noqa: E402
from apga.data import prepare_run_data  # noqa: E402
from apga.data.batches import CachedImages  # noqa: E402
from apga.data.splits import Split  # noqa: E402
from apga.evaluation.evaluate import evaluate, occlusion_maps  # noqa: E402
from apga.evaluation.floors import FLOORS, Floor  # noqa: E402
from apga.experiment import build_method, generated_root  # noqa: E402
from apga.models import build_classifier  # noqa: E402
from apga.training.checkpoint import save_checkpoint  # noqa: E402
from apga.training.loop import Precision, make_optimizers, model_batch, run_step  # noqa: E402

# MURA v1.1's images per body part, (train, valid) (Rajpurkar et al. 2017, Table 1)
MURA_IMAGES = {"elbow": (4931, 465), "finger": (5106, 461), "forearm": (1825, 301), "hand": (5543, 460),
               "humerus": (1272, 288), "shoulder": (8379, 563), "wrist": (9752, 659)}
STUDIED = ("baseline", "cutout", "gradcam", "end2end", "apga")  # the paper's five: the floors are counted apart


def counted(fn) -> float:
    """FLOPs of one call of `fn` (forward and backward, as torch counts them)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def first_images(split: Split, count: int) -> Split:
    """The first `count` images of `split`, as a split of their own."""
    data = split.dataset
    kept = slice(0, min(count, len(data)))
    patients = None if data.patients is None else data.patients[kept]
    return Split(split.index.iloc[kept], CachedImages(data.images, data.rows[kept], data.labels[kept], data.truths,
                                                       patients))


def main(preset: str = "paper", body_part: str = "elbow", sample: int = 8, batch_size: int | None = None,
         val_every: int | None = None, data_root: str = "datasets") -> None:
    """Print the FLOP shares of evaluation (module docstring). `sample`: how many images each count
    runs on (more: the same per-image figures, slower); `body_part`: MURA's counts to scale by, or all;
    `batch_size`, `val_every`: the preset's unless given."""
    overrides = {key: value for key, value in (("batch_size", batch_size), ("val_every", val_every))
                 if value is not None}
    root = generated_root(data_root)
    cache = tempfile.mkdtemp(prefix="apga-eval-cost-")
    config = make_config(preset=preset, data_root=str(root), cache_dir=cache, gallery="off", num_workers=0,
                         **overrides)
    device = torch.device("cpu")  # FLOPs do not depend on the device
    data = prepare_run_data(config, seed=0)
    select, report = first_images(data.select, sample), first_images(data.report, sample)
    checkpoint = Path(cache) / "baseline.pt"
    save_checkpoint(checkpoint, {"classifier": build_classifier(config.classifier).state_dict()})
    precision = Precision.for_device(device, False)
    batch = model_batch(data.train.dataset.__getitems__(list(range(min(config.batch_size, len(data.train.dataset))))),
                        device, config.channels_last)
    per_step_images = len(batch["image"])
    kwargs = dict(batch_size=config.batch_size, channels_last=config.channels_last)

    train, selection, final, mid_epoch = {}, {}, {}, {}
    for name in STUDIED:
        method = build_method(name, config, device, checkpoint)
        mid_epoch[name] = method.validates_mid_epoch
        method.generator = torch.Generator(device).manual_seed(0)
        optimizers = make_optimizers(method)
        scaler = precision.scaler()

        def step():
            for _ in run_step(method, batch, optimizers, scaler, precision):
                pass
        train[name] = counted(step) / per_step_images
        selection[name] = counted(lambda: evaluate(method, select, device, **kwargs)) / len(select.index)
        final[name] = counted(lambda: evaluate(method, report, device, mask_quality=True, seed=0, **kwargs)) \
            / len(report.index)
    classifier = build_method("baseline", config, device, checkpoint).classifier
    maps = {}
    occlusion_flops = counted(lambda: maps.setdefault("maps", occlusion_maps(classifier, report, device,
                                                                            fill=config.fill, **kwargs)))
    floor_flops = sum(counted(lambda kind=kind: evaluate(Floor(kind, classifier, config.fill, 0), report, device,
                                                         mask_quality=True, seed=0, occlusion=maps["maps"], **kwargs))
                      for kind in FLOORS)
    floors_per_image = (occlusion_flops + floor_flops) / len(report.index)

    parts = list(MURA_IMAGES) if body_part == "all" else [body_part]
    n_train = sum(MURA_IMAGES[p][0] for p in parts)
    n_valid = sum(MURA_IMAGES[p][1] for p in parts)
    steps = math.ceil(n_train / config.batch_size)
    print(f"preset {preset}: {config.image_size} px, {config.classifier}, UNet11 width {config.agent_width}, batch "
          f"{config.batch_size}, --val-every {config.val_every}; counted on {len(report.index)} generated images; "
          f"scaled to MURA {body_part}: {n_train:,} training, {n_valid:,} validation images ({steps:,} steps an epoch)")
    print("\n| method | training GFLOP / image | selection eval GFLOP / image | validations / epoch | selection "
          "share of an epoch | final evaluation (mask quality) GFLOP / image | final evaluation, in training epochs |")
    print("|---|---|---|---|---|---|---|")
    epoch_cost = {}
    for name in STUDIED:
        validations = 1 + ((steps - 1) // config.val_every if mid_epoch[name] and config.val_every else 0)
        training = steps * config.batch_size * train[name]
        selecting = validations * n_valid * selection[name]
        epoch_cost[name] = training + selecting
        share = selecting / (training + selecting)
        final_epochs = final[name] * n_valid / (training + selecting)
        print(f"| {name} | {train[name] / 1e9:.3g} | {selection[name] / 1e9:.3g} | {validations} | {share:.1%} | "
              f"{final[name] / 1e9:.3g} | {final_epochs:.3g} |")
    floors_total = floors_per_image * n_valid
    print(f"\nfloors of a seed ({', '.join(FLOORS)}; the baseline's occlusion maps once): "
          f"{floors_per_image / 1e9:.3g} GFLOP / validation image, {floors_total / 1e12:.3g} TFLOP, "
          f"{floors_total / epoch_cost['baseline']:.3g} baseline epochs")
    print(f"occlusion maps alone: {occlusion_flops / len(report.index) / 1e9:.3g} GFLOP / image "
          f"({occlusion_flops / len(report.index) / max(selection['baseline'], 1):.0f} classifier forwards)")


COMMAND = script_command(main, "python benchmarks/eval_cost.py [--flag VALUE ...]", paths=("data_root",))

if __name__ == "__main__":
    COMMAND.run(main, sys.argv[1:])
