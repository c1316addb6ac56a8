"""Do results with and without mixed precision agree? (a measurement, not a test)

    python benchmarks/amp_agreement.py                                  # CPU: bf16 autocast, CPU preset
    python benchmarks/amp_agreement.py --preset paper --epochs 10 --finetune-epochs 3   # on a GPU

The same short runs (the baseline, then APGA fine-tuned from it, on the generated elbow data)
for `seeds` seeds, once with `--amp 0` and once with `--amp 1`. It prints, per method, the
accuracy and AUROC of both, their paired differences, and the seed-to-seed spread of the
full-precision runs: the noise that a difference has to be compared with. On a CUDA machine
`--amp 1` is bf16 (or fp16 with a gradient scaler); on the CPU it is bf16 autocast, several
times slower than fp32 there, so the CPU default is short. Resumable, like every run.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

from apga.cli import script_command  # noqa: E402
from apga.config import make_config  # noqa: E402
from apga.reporting.results import read_results  # noqa: E402
from apga.experiment import generated_root, run  # noqa: E402

METRICS = ("accuracy", "auroc")


def main(seeds: int = 3, epochs: int = 8, finetune_epochs: int = 2, preset: str = "cpu",
         out_dir: str = "runs/amp-agreement", data_root: str = "datasets") -> None:
    """Run both precisions and print the comparison."""
    start = time.perf_counter()
    tables, root = {}, str(generated_root(data_root))
    for amp in (False, True):
        folder = Path(out_dir) / ("amp" if amp else "fp32")
        run(make_config(preset=preset, body_part="elbow", n_runs=seeds, epochs=epochs,
                        finetune_epochs=finetune_epochs, amp=amp, train_cutout=0, train_gradcam=0,
                        train_end2end=0, train_random=0, gallery="off", out_dir=str(folder), data_root=root))
        table = read_results(folder)
        tables[amp] = table[table["method"] != "floor"].set_index(["seed", "method"])[list(METRICS)]
    both = tables[False].add_suffix("_fp32").join(tables[True].add_suffix("_amp"), how="inner")
    print(f"\n{len(both.index.unique('seed'))} seeds, preset {preset}, baseline {epochs} epochs, "
          f"APGA {finetune_epochs}; differences are AMP minus fp32, paired by seed\n")
    print("| method | metric | fp32 mean ± sd | AMP mean ± sd | difference mean ± se | max abs difference | verdict |")
    print("|---|---|---|---|---|---|---|")
    for method, rows in both.groupby(level="method", sort=False):
        for metric in METRICS:
            full, mixed = rows[f"{metric}_fp32"], rows[f"{metric}_amp"]
            difference = mixed - full
            se = difference.std(ddof=1) / math.sqrt(len(difference)) if len(difference) > 1 else float("nan")
            if math.isnan(se):
                verdict = "needs 2+ seeds"
            else:
                verdict = "within noise" if abs(difference.mean()) <= 2 * se else "differs: mean beyond 2 se"
            print(f"| {method} | {metric} | {full.mean():.3f} ± {full.std(ddof=1):.3f} | {mixed.mean():.3f} ± "
                  f"{mixed.std(ddof=1):.3f} | {difference.mean():+.3f} ± {se:.3f} | {difference.abs().max():.3f} "
                  f"| {verdict} |")
    pd.set_option("display.width", 200)
    print(f"\nper seed:\n{both.round(3).to_string()}\n\ntook {(time.perf_counter() - start) / 60:.1f} min")


COMMAND = script_command(main, "python benchmarks/amp_agreement.py [--flag VALUE ...]", paths=('out_dir', 'data_root'))

if __name__ == "__main__":
    COMMAND.run(main, sys.argv[1:])
