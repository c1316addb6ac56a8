"""Every script in benchmarks/ at its smallest size: it finishes and prints its figures, so that a
change that breaks one fails here (bench_step.py once broke unnoticed when the oracle landed).
They run in this process, through their own command lines (each module's COMMAND)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

from cli_helpers import ROOT

BENCHMARKS = ROOT / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(capsys, name: str, *argv) -> str:
    """The script's output; a failure's exit fails the test with what it printed."""
    capsys.readouterr()
    try:
        _script(name).COMMAND.run(_script(name).main, [str(a) for a in argv])
    except SystemExit as exit_:
        shown = capsys.readouterr()
        pytest.fail(f"{name} exited with {exit_.code}: {shown.err[-2000:]}")
    return capsys.readouterr().out


SMOKED = {"bench_data", "bench_step", "amp_agreement", "synthetic_study", "marker_kept", "agent_probe", "finding_task",
          "eval_cost"}


def test_every_benchmark_script_is_run_here():
    assert {path.stem for path in BENCHMARKS.glob("*.py")} == SMOKED


def test_bench_data(tiny_data, tmp_path, capsys):
    out = _run(capsys, "bench_data", "--data-root", tiny_data, "--body-part", "elbow", "--image-size", 32, "--workers", "0", "--cells", 2,
               "--shots", "all", "--repeats", 1, "--cache-dir", tmp_path / "cache")
    for figure in ("cold cache build", "warm start", "first pass of a process", "training loader (in process",
                   "the same, without reading ahead", "torch DataLoader, 0 workers", "memory:", "sweep planning, 2 cells"):
        assert f"| {figure}" in out, figure
    warm = _run(capsys, "bench_data", "--data-root", tiny_data, "--body-part", "elbow", "--image-size", 32, "--workers", "0", "--cells", 0,
                "--repeats", 1, "--cache-dir", tmp_path / "cache")
    assert "| first start (cache as found)" in warm and "sweep planning" not in warm


def test_bench_step(capsys):
    out = _run(capsys, "bench_step", "--batch-size", 4, "--repeats", 1, "--warmup", 0, "--loader-images", 12)
    for name in ("baseline", "cutout", "gradcam", "end2end", "apga", "oracle", "random", "apga[scale0.5]", "apga[rloo]"):
        assert f"| {name} | " in out, name
    assert "APGA's required passes" in out and "summary: APGA" in out


def test_amp_agreement(tiny_data, tmp_path, capsys):
    out = _run(capsys, "amp_agreement", "--seeds", 1, "--epochs", 1, "--finetune-epochs", 1, "--data-root", tiny_data,
               "--out-dir", tmp_path / "amp")
    assert "| baseline | accuracy |" in out and "| apga | auroc |" in out and "needs 2+ seeds" in out


def test_synthetic_study_and_marker_kept(tiny_data, tmp_path, capsys):
    out = _run(capsys, "synthetic_study", "--shots", "all", "--seeds", 1, "--selections", "val", "--variants", "rloo",
               "--epochs", 1, "--finetune-epochs", 1, "--image-size", 32, "--data-root", tiny_data,
               "--out-dir", tmp_path / "study")
    assert "## Accuracy" in out and "| elbow | all | val | apga |" in out and "| elbow | all | val | apga[rloo] |" in out
    table = pd.read_csv(tmp_path / "study" / "results.csv")
    assert {"baseline", "cutout", "gradcam", "end2end", "apga", "random", "floor"} <= set(table["method"])
    out = _run(capsys, "marker_kept", tmp_path / "study" / "elbow-all-val", "apga-rloo", "--data-root", tiny_data)
    share = float(out.split("by seed: 89: ")[1].split()[0])
    assert out.startswith("apga-rloo: share of training images whose kept mask keeps the marker") and 0 <= share <= 1


def test_agent_probe(tiny_data, tmp_path, capsys):
    out = _run(capsys, "agent_probe", "--seeds", 0, "--estimators", "rloo", "--steps", 2, "--select-every", 1,
               "--epochs", 1, "--image-size", 32, "--data-root", tiny_data, "--out", tmp_path / "probe" / "probe.csv")
    assert "frozen baseline: accuracy" in out and "| rloo | 1 |" in out and "targets (rloo):" in out
    rows = pd.read_csv(tmp_path / "probe" / "probe.csv")
    assert set(rows["name"]) == {"rloo", "floor[random-pixels]", "floor[random-boxes]", "floor[brightest]",
                                 "floor[gradcam]"}


def test_finding_task(tiny_data, tmp_path, capsys):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    out = _run(capsys, "finding_task", root, "--body-part", "elbow")
    task = pd.read_csv(root / "elbow-finding.csv")
    assert f"{len(task)} images: {root / 'elbow-finding.csv'}" in out
    assert {"path", "label", "split", "mask"} <= set(task.columns) and task["mask"].str.contains("findings").all()


def test_eval_cost(tiny_data, capsys):
    out = _run(capsys, "eval_cost", "--preset", "cpu", "--sample", 2, "--batch-size", 4, "--val-every", 2,
               "--data-root", tiny_data)
    for name in ("baseline", "cutout", "gradcam", "end2end", "apga"):
        assert f"| {name} | " in out, name
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in out.splitlines() if line.startswith("| ")}
    assert float(rows["apga"][1]) > float(rows["baseline"][1]) > 0  # APGA's step trains two networks
    assert int(rows["apga"][3]) > 1 and rows["baseline"][3] == "1"  # APGA validates every --val-every steps too
    assert "floors of a seed" in out and "occlusion maps alone" in out
