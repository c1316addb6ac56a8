"""The real command line, end to end on generated data."""
from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from cli_helpers import run_cli

ALL_METHODS = {"baseline", "cutout", "gradcam", "end2end", "apga", "random"}
FLOORS = {"random-pixels", "random-boxes", "brightest", "gradcam"}


@pytest.mark.slow
def test_cli_runs_every_method_and_collects_seeds(tiny_data, tmp_path):
    out = tmp_path / "runs"
    done = run_cli(tiny_data, out)
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(out / "results.csv", keep_default_na=False, na_values=[""])
    floors, table = table[table["method"] == "floor"], table[table["method"] != "floor"]
    assert set(table["method"]) == ALL_METHODS and len(table) == 6 and set(floors["variant"]) == FLOORS
    assert set(table["seed"]) == {89} and set(table["body_part"]) == {"elbow"}
    assert table["accuracy"].between(0, 1).all() and table["best_epoch"].notna().all()
    assert floors["accuracy"].isna().all() and floors["bone_precision_10"].between(0, 1).all()
    apga = table.set_index("method").loc["apga"]
    assert 0 <= apga["accuracy_tta"] <= 1 and 0 <= apga["mask_iou"] <= 1 and apga["estimator"] == "greedy"
    assert {"auroc", "kappa", "study_accuracy", "study_auroc", "study_kappa", "model_selection"} <= set(table.columns)
    masking = table[table["method"].isin(["gradcam", "end2end", "apga", "random"])]
    for column in ("bone_precision_10", "bone_precision_30", "finding_cover_10", "pointing_hit", "bone_auroc",
                   "finding_auroc", "location_gap_10", "mask_sd", "occlusion_agreement_10"):
        assert masking[column].notna().all(), column
    learned = masking["method"] != "random"  # random boxes are given, not learned: they cannot collapse
    assert masking.loc[learned, "collapsed"].notna().all() and masking.loc[~learned, "collapsed"].isna().all()
    for method, collapsed in masking.loc[learned].set_index("method")["collapsed"].items():  # said on the console
        assert (f"warning: {method}'s policy collapsed" in done.stderr) == bool(collapsed), (method, done.stderr[-2000:])
    assert table[table["method"].isin(["baseline", "cutout"])]["location_gap_10"].isna().all()
    assert table["selection_evaluations"].ge(1).all() and table["data_fingerprint"].nunique() == 1
    gallery = out / "elbow-all-val" / "seed89" / "apga" / "gallery" / "final.png"
    assert Image.open(gallery).size[0] == 4 * 128
    assert (out / "elbow-all-val" / "seed89" / "baseline" / "metrics.csv").is_file()
    assert "| elbow | all | val | apga |" in done.stdout and (out / "summary.md").is_file()
    assert "| elbow | all | val | floor[random-boxes] |" in (out / "summary.md").read_text()
    for picture in ("accuracy_vs_shots-elbow.png", "paired_differences-elbow.png", "mask_quality-elbow-val.png",
                    "elbow-all-val/seed89/apga/curves.png", "elbow-all-val/seed89/baseline/curves.png"):
        assert Image.open(out / picture).size[0] > 300, picture

    again = run_cli(tiny_data, out, "--n-runs", "2", "--train-cutout", "0", "--train-gradcam", "0",
                    "--train-end2end", "0", "--train-random", "0")
    assert again.returncode == 0, again.stderr[-2000:]
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 6 + 4 + 2 + 4  # seed 89 was finished and is not redone; seed 90 adds baseline, apga, floors
    assert sorted(table[table["seed"] == 90]["method"]) == ["apga", "baseline"] + ["floor"] * 4


def test_k_shot_holdout_and_rloo_estimator(tiny_data, tmp_path):
    out = tmp_path / "runs"
    done = run_cli(tiny_data, out, "--n-shot", "4", "--model-selection", "holdout", "--estimator", "rloo",
                   "--fill", "blur", "--train-cutout", "0", "--train-gradcam", "0", "--train-end2end", "0")
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(out / "results.csv", dtype={"n_shot": str})
    assert set(table["n_shot"]) == {"4"} and set(table["model_selection"]) == {"holdout"}
    rows = table.set_index("method")
    assert rows.loc["apga", "variant"] == rows.loc["random", "variant"] == "rloo-blurfill"
    assert rows.loc["apga", "mask_area"] == pytest.approx(round(0.1 * 64) / 64)  # the top-rho cells of an 8 x 8 grid
    assert rows.loc["random", "keep_area"] == rows.loc["apga", "selection_mask_area"]
    assert (out / "elbow-4-holdout" / "seed89" / "apga-rloo-blurfill" / "result.json").is_file()


def test_help_lists_every_flag():
    from apga.config import field_help
    import subprocess, sys
    from cli_helpers import ROOT, environment

    shown = subprocess.run([sys.executable, str(ROOT / "apga_mura.py"), "--help"], capture_output=True, text=True,
                           env={**environment(), "COLUMNS": "100"}, cwd=ROOT)
    assert shown.returncode == 0 and not shown.stderr
    for name, help_text in field_help().items():
        assert f"--{name.replace('_', '-')} " in shown.stdout and help_text[:30] in shown.stdout, name
    assert "_" not in " ".join(w for w in shown.stdout.split() if w.startswith("--"))  # flags as typed: kebab-case
    assert "Optional" not in shown.stdout and len(shown.stdout.splitlines()) < 120  # no pager needed


@pytest.mark.parametrize("where", ["end", "middle", "short"])
def test_help_anywhere_prints_help_and_trains_nothing(tiny_data, tmp_path, capsys, where):
    from cli_helpers import run_cli_here

    flags = {"end": ["--n-runs", "2", "--help"], "middle": ["--help", "--n-runs", "2"], "short": ["--n-runs", "2", "-h"]}
    done = run_cli_here(capsys, tiny_data, tmp_path / "runs", *flags[where])
    assert done.returncode == 0 and "usage: python apga_mura.py" in done.stdout and "--holdout-fraction" in done.stdout
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flags, message", [
    (["elbow", "--demo"], "unexpected argument 'elbow'"),
    (["--n-shot", "25", "50"], "unexpected argument '50' after --n-shot 25: a flag takes one value"),
    (["--bodypart", "elbow"], "unknown flag(s) --bodypart (did you mean --body-part?)"),
    (["--n-shots", "25"], "unknown flag(s) --n-shots (did you mean --n-shot?)"),
    (["-b", "elbow"], "unknown flag -b: flags are spelled out with two dashes"),
])
def test_a_command_line_fire_would_misread_is_refused_before_anything_runs(tiny_data, tmp_path, capsys, flags,
                                                                           message):
    from cli_helpers import run_cli_here

    done = run_cli_here(capsys, tiny_data, tmp_path / "runs", *flags)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message}")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compile_compiles_the_networks_and_computes_what_eager_does(tiny_config, monkeypatch, backend):
    """--compile 1: the networks go through torch.compile (graphs are captured, not skipped) and three
    training steps give the eager steps' losses up to rounding. `aot_eager` traces
    forward and backward as inductor does, without generating code (seconds); inductor, the
    default backend, compiles for about a minute on the CPU."""
    import torch
    import torch._dynamo

    from apga.data import make_loader, prepare_run_data, to_model_input
    from apga.methods import build_method
    from apga.training.loop import Precision, make_optimizers, run_step

    compiled = []
    original_compile = torch.nn.Module.compile

    def compile_with_backend(module, *args, **kwargs):
        compiled.append(type(module).__name__)
        return original_compile(module, *args, **{**kwargs, "backend": backend})

    monkeypatch.setattr(torch.nn.Module, "compile", compile_with_backend)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    config = tiny_config(body_part="elbow")
    batch = next(iter(make_loader(prepare_run_data(config, 1).train.dataset, 8, shuffle=False)))
    images, labels = to_model_input(batch["image"], config.channels_last), batch["label"]
    trained = {}
    for compile_ in (False, True):
        torch.manual_seed(0)
        method = build_method("baseline", tiny_config(body_part="elbow", compile=compile_), torch.device("cpu"))
        optimizers = make_optimizers(method)
        scaler = Precision("cpu", None).scaler()
        losses = [next(iter(run_step(method, {"image": images, "label": labels}, optimizers, scaler, Precision("cpu", None))))["loss"]
                  for _ in range(3)]
        trained[compile_] = torch.stack(losses)
    assert compiled == ["DenseNet"]  # only the compiled run asked for it
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # and dynamo captured graphs
    torch.testing.assert_close(trained[True], trained[False], rtol=1e-3, atol=1e-4)


def test_the_demo_writes_to_its_own_out_dir():
    from apga.config import make_config

    assert make_config(demo=True).out_dir == "runs/demo" and make_config(demo=True).preset == "demo"
    assert make_config(demo=True, out_dir="elsewhere").out_dir == "elsewhere" and make_config().out_dir == "runs"


def _module_command(module: str, argv: list[str], monkeypatch, capsys):
    """`python -m module argv...` in this process (runpy): its exit code, stdout and stderr."""
    import runpy
    import sys
    import warnings

    monkeypatch.setattr(sys, "argv", [module, *argv])
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the module is imported already: run again as __main__
        with pytest.raises(SystemExit) as exit_:
            runpy.run_module(module, run_name="__main__")
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


@pytest.mark.parametrize("module, argv, message", [
    ("apga.predict", [], "missing RUN_DIR and IMAGES: usage: python -m apga.predict RUN_DIR IMAGES"),
    ("apga.predict", ["runs/demo/elbow-all-val/seed89/apga"], "missing IMAGES: usage:"),
    ("apga.predict", ["run", "images", "--out"], "--out needs a value: --out "),
    ("apga.predict", ["run", "images", "--batchsize", "4"], "unknown flag(s) --batchsize (did you mean --batch-size?)"),
    ("apga.data.synthetic", ["--train-patient", "2"], "unknown flag(s) --train-patient (did you mean --train-patients?)"),
    ("apga.data.synthetic", ["datasets/x"], "unexpected argument 'datasets/x': settings are flags"),
    ("apga.data.export", ["datasets/synthetic"], "missing OUT: usage: python -m apga.data.export SOURCE OUT"),
])
def test_every_command_line_refuses_what_it_cannot_run_in_one_line(module, argv, message, monkeypatch, capsys):
    """apga-predict and the data tools answer as apga-mura does: one line, kebab-case flags, exit 2,
    nothing of Fire's."""
    code, out, err = _module_command(module, argv, monkeypatch, capsys)
    assert code == 2 and not out and err.strip().splitlines() == [f"error: {err.strip()[7:]}"], (out, err)
    assert err.startswith(f"error: {message}"), err


@pytest.mark.parametrize("module", ["apga.predict", "apga.report", "apga.data.synthetic", "apga.data.export"])
def test_every_command_line_has_the_same_help(module, monkeypatch, capsys):
    code, out, err = _module_command(module, ["--help"], monkeypatch, capsys)
    assert code == 0 and not err and out.startswith(f"usage: python -m {module}")
    flags = [word for word in out.split() if word.startswith("--") and word != "--flag"]
    assert all("_" not in flag for flag in flags) and "NAME" not in out and "{" not in out  # no Fire, no JSON
