"""The whole comparison on the generated data, over seeds, shot counts and both protocols, on the CPU.

    python benchmarks/synthetic_study.py                     # elbow, k in {25, 100, all}, 5 seeds, val and holdout
    python benchmarks/synthetic_study.py --shots all --seeds 3 --selections val --out-dir runs/study-small

A thin call of the sweep (`python -m apga.sweep`, apga/sweep/): its cells are the (protocol, k,
seed) of the grid. First every method with `--preset cpu` (APGA with the paper's greedy
estimator, and the random floor at its area), then APGA with each extra variant (`--variants`,
default the rloo estimator with the paper's kept-region batch norm and with it frozen; also
`rloo-warmup300-frozenbn`, `sample`, `scale0.5`) with the random floor at that variant's area, as
further sweeps over the same cells. The mask-quality floors come with each baseline. Everything
collects into <out-dir>/results.csv; the summary (accuracy with paired differences from the
baseline and their 95 % intervals, and mask quality beside the floors) is printed and written to
<out-dir>/summary.md, with its plots. Resumable: rerunning skips the finished cells. `--workers N`
runs N cells at once (on the CPU each gets its share of the cores).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apga.cli import script_command  # noqa: E402
from apga.experiment import generated_root  # noqa: E402
from apga.reporting import summary as report  # noqa: E402
from apga.reporting.results import rebuild  # noqa: E402
from apga.sweep import sweep  # noqa: E402
from apga.sweep.grid import as_list  # noqa: E402

VARIANTS = {"rloo": {"estimator": "rloo"}, "rloo-frozenbn": {"estimator": "rloo", "kept_norm": "frozen"},
            "rloo-warmup300-frozenbn": {"estimator": "rloo", "kept_norm": "frozen", "agent_warmup": 300},
            "sample": {"estimator": "sample"}, "scale0.5": {"agent_scale": 0.5}}
APGA_AND_FLOOR = dict(train_cutout=0, train_gradcam=0, train_end2end=0)


def main(body_part: str = "elbow", shots: str = "25,100,all", seeds: int = 5, out_dir: str = "runs/study",
         selections: str = "val,holdout", variants: str = "rloo,rloo-frozenbn", data_root: str = "datasets",
         workers: int = 1, epochs: int | None = None, finetune_epochs: int | None = None,
         image_size: int | None = None) -> None:
    """Run the study and print its summary tables. `epochs`, `finetune_epochs`, `image_size`: other
    than the CPU preset's (a quicker try)."""
    start = time.perf_counter()
    unknown = sorted(set(as_list(variants)) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"error: unknown --variants {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    grid = dict(body_part=body_part, n_shot=shots, seeds=seeds, selections=selections, executor="local",
                workers=workers)
    shorter = {k: v for k, v in dict(epochs=epochs, finetune_epochs=finetune_epochs, image_size=image_size).items()
               if v is not None}
    common = dict(preset="cpu", data_root=str(generated_root(data_root)), gallery="end", **shorter)
    failed = sweep(out_dir, **grid, **common)
    for variant in as_list(variants):
        failed |= sweep(out_dir, **grid, **common, **APGA_AND_FLOOR, **VARIANTS[variant])
    table = rebuild(out_dir)
    report.write(table, out_dir)
    print(f"\n{report.render(table)}\nstudy took {(time.perf_counter() - start) / 60:.1f} min with --workers {workers}"
          + (f"; failed cells: {', '.join(sorted(failed))}" if failed else ""))


COMMAND = script_command(main, "python benchmarks/synthetic_study.py [--flag VALUE ...]", paths=('out_dir', 'data_root'))

if __name__ == "__main__":
    COMMAND.run(main, sys.argv[1:])
