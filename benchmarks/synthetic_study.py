"""The whole comparison on the generated data, over seeds and shot counts, on the CPU.

    python benchmarks/synthetic_study.py                     # elbow, k in {25, 100, all}, 3 seeds
    python benchmarks/synthetic_study.py --shots 25,all --seeds 5 --out-dir runs/study

For every (k, seed): the baseline and every method with `--preset cpu`, then two APGA variants
(Bernoulli-sampled REINFORCE, and the half-size agent). Everything collects into
<out-dir>/results.csv; the summary (means, standard deviations, wins over the baseline, TTA,
study kappa, mask IoU) is printed and written to <out-dir>/summary.md. Resumable: rerunning
skips what is finished.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apga import report  # noqa: E402
from apga.config import make_config  # noqa: E402
from apga.results import read_results  # noqa: E402
from apga.runner import run  # noqa: E402

APGA_VARIANTS = ({"estimator": "sample"}, {"agent_scale": 0.5})
ONLY_APGA = dict(train_cutout=0, train_gradcam=0, train_end2end=0, train_random=0)


def main(body_part: str = "elbow", shots: str = "25,100,all", seeds: int = 3, out_dir: str = "runs/study",
         model_selection: str = "val", data_root: str = "datasets") -> None:
    """Run the study and print its summary table."""
    start = time.perf_counter()
    shot_list = str(shots).split(",") if isinstance(shots, (str, int)) else list(shots)  # fire: "a,b" -> tuple
    shot_values = [None if str(s) == "all" else int(s) for s in shot_list]
    common = dict(demo=True, body_part=body_part, n_runs=seeds, out_dir=out_dir, data_root=data_root,
                  model_selection=model_selection, gallery="end")
    for n_shot in shot_values:
        run(make_config(**common, n_shot=n_shot))
        for variant in APGA_VARIANTS:
            run(make_config(**common, n_shot=n_shot, **ONLY_APGA, **variant))
    summary = report.summarize(read_results(Path(out_dir)))
    report.write(summary, out_dir)
    print(f"\n{report.to_markdown(summary)}\n\nstudy took {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
