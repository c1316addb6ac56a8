"""The real command line, end to end on generated data."""
from __future__ import annotations

import pandas as pd
from PIL import Image

from cli_helpers import run_cli

ALL_METHODS = {"baseline", "cutout", "gradcam", "end2end", "apga", "random"}


def test_cli_runs_every_method_and_collects_seeds(tiny_data, tmp_path):
    out = tmp_path / "runs"
    done = run_cli(tiny_data, out)
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(out / "results.csv")
    assert set(table["method"]) == ALL_METHODS and len(table) == 6
    assert set(table["seed"]) == {89} and set(table["body_part"]) == {"elbow"}
    assert table["accuracy"].between(0, 1).all() and table["best_epoch"].notna().all()
    apga = table.set_index("method").loc["apga"]
    assert 0 <= apga["accuracy_tta"] <= 1 and 0 <= apga["mask_iou"] <= 1 and apga["estimator"] == "greedy"
    assert {"auroc", "kappa", "study_accuracy", "study_auroc", "study_kappa", "model_selection"} <= set(table.columns)
    gallery = out / "elbow-all-val" / "seed89" / "apga" / "gallery" / "final.png"
    assert Image.open(gallery).size[0] == 4 * 96
    assert (out / "elbow-all-val" / "seed89" / "baseline" / "metrics.csv").is_file()
    assert "| elbow | all | val | apga |" in done.stdout and (out / "summary.md").is_file()

    again = run_cli(tiny_data, out, "--n-runs", "2", "--train-cutout", "0", "--train-gradcam", "0",
                    "--train-end2end", "0", "--train-random", "0")
    assert again.returncode == 0, again.stderr[-2000:]
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 8  # seed 89 was finished and is not redone; seed 90 adds baseline and apga
    assert sorted(table[table["seed"] == 90]["method"]) == ["apga", "baseline"]


def test_k_shot_holdout_and_sampled_estimator(tiny_data, tmp_path):
    out = tmp_path / "runs"
    done = run_cli(tiny_data, out, "--n-shot", "4", "--model-selection", "holdout", "--estimator", "sample",
                   "--train-cutout", "0", "--train-gradcam", "0", "--train-end2end", "0", "--train-random", "0")
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(out / "results.csv", dtype={"n_shot": str})
    assert set(table["n_shot"]) == {"4"} and set(table["model_selection"]) == {"holdout"}
    assert table.set_index("method").loc["apga", "variant"] == "sample"
    assert (out / "elbow-4-holdout" / "seed89" / "apga-sample" / "result.json").is_file()


def test_help_lists_every_flag():
    from apga.config import field_help
    import subprocess, sys
    from cli_helpers import ROOT, environment

    shown = subprocess.run([sys.executable, str(ROOT / "apga_mura.py"), "--help"], capture_output=True, text=True,
                           env={**environment(), "PAGER": "cat"}, cwd=ROOT)
    text = shown.stdout + shown.stderr
    for name, help_text in field_help().items():
        assert f"--{name}" in text and help_text[:30] in text, name


def test_readme_documents_every_flag():
    from apga.config import defaults, field_help
    from cli_helpers import ROOT

    readme = (ROOT / "README.md").read_text()
    for name, help_text in field_help().items():
        assert f"| `--{name.replace('_', '-')}` | `{defaults()[name]!r}` | {help_text} |" in readme, name


def test_compiled_baseline_computes_what_the_eager_one_does(tiny_data, tmp_path):
    """--compile 1 (torch.compile, inductor on the CPU; about 2 minutes of compiling on a fresh
    machine) trains, checkpoints and evaluates like the eager run, up to rounding."""
    baseline_only = ("--epochs", "1", "--train-cutout", "0", "--train-gradcam", "0", "--train-end2end", "0",
                     "--train-random", "0", "--train-apga", "0", "--gallery", "off")
    histories = {}
    for compiled in ("0", "1"):
        out = tmp_path / f"compile{compiled}" / "runs"
        done = run_cli(tiny_data, out, *baseline_only, "--compile", compiled, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        histories[compiled] = pd.read_csv(out / "elbow-all-val" / "seed89" / "baseline" / "metrics.csv")
    eager, compiled = histories["0"], histories["1"]
    assert abs(compiled["train_loss"].item() - eager["train_loss"].item()) < 1e-4
    assert compiled["val_accuracy"].item() == eager["val_accuracy"].item()
    assert abs(compiled["val_auroc"].item() - eager["val_auroc"].item()) < 1e-6
