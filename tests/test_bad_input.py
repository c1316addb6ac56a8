"""Every bad input: one line naming the problem and the fix, a non-zero exit, no traceback.

The command line is parsed by Fire in this process (`run_cli_here`), which is what the script
does, without a new interpreter per case; one test runs the real script in a subprocess.
"""
from __future__ import annotations

import shutil
import subprocess

import pytest
import torch

from apga.errors import ConfigError
from apga.utils import resolve_device
from cli_helpers import run_cli, run_cli_here


def _fails_cleanly(done, *fragments):
    assert done.returncode not in (0, None)
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    for fragment in fragments:
        assert fragment in last, last


@pytest.mark.parametrize("flags, fragments", [
    (["--body-part", "knee"], ["unknown --body-part 'knee'", "elbow"]),
    (["--n-shot", "0"], ["--n-shot must be a positive integer"]),
    (["--n-shot", "-3"], ["--n-shot must be a positive integer"]),
    (["--n-shot", "5000"], ["--n-shot 5000 is larger than"]),
    (["--n-runs", "0"], ["--n-runs must be a positive integer"]),
    (["--image-size", "16"], ["at least 32 px"]),
    (["--image-size", "64", "--agent-scale", "0.25"], ["gives the UNet11 agent 16 px"]),
    (["--estimator", "magic"], ["unknown --estimator"]),
    (["--preset", "huge"], ["unknown --preset"]),
    (["--fill", "noise"], ["unknown --fill"]),
    (["--val-cadence", "often"], ["unknown --val-cadence"]),
    (["--policy-samples", "1"], ["--policy-samples must be an integer >= 2"]),
    (["--mask-area", "1.5"], ["--mask-area must be in (0, 1)"]),
    (["--mask-cell", "5"], ["--mask-cell must divide --image-size 32"]),
    (["--prior-weight", "-1"], ["--prior-weight must be a number >= 0"]),
    (["--holdout-fraction", "20%"], ["--holdout-fraction must be a number", "20% is 0.2"]),  # a TypeError before
    (["--lr", "1e-3,"], ["--lr must be a number", "(0.001,)", "write the value alone"]),
    (["--preset", "[cpu]"], ["unknown --preset ['cpu']"]),  # unhashable: a TypeError before
    (["--fill", "[zero]"], ["--fill takes one value", "write the value alone"]),
    (["--batch-size", "1"], ["--batch-size must be at least 2", "batch norm"]),  # BatchNorm's ValueError before
    (["--out-dir", ""], ["--out-dir is empty", "'.' for the current folder"]),  # wrote into the working folder
    (["--cache-dir", " "], ["--cache-dir is empty"]),
    (["--out-dir", "-runs"], ["--out-dir needs a value", "--out-dir=-runs"]),
])
def test_bad_flags(tiny_data, tmp_path, flags, fragments, capsys):
    _fails_cleanly(run_cli_here(capsys, tiny_data, tmp_path / "runs", *flags), *fragments)


def test_every_setting_of_another_kind_is_one_line_naming_its_flag():
    """The kind, not the cases: every setting but the paths, given a list, a tuple, a dict or a
    percentage (what Fire makes of `[a]`, `a,`, `{a: 1}`, `20%`), is refused by a `ConfigError` that
    names its flag, never a TypeError from a comparison further on."""
    import dataclasses

    from apga.config import PATH_FIELDS, Config, make_config

    for item in dataclasses.fields(Config):
        if item.name in PATH_FIELDS:
            continue
        for bad in (["x"], (0.2,), {"a": 1}, "20%"):
            with pytest.raises(ConfigError, match=f"--{item.name.replace('_', '-')}"):
                make_config(**{"preset": "cpu", item.name: bad} if item.name != "preset" else {item.name: bad})


def test_missing_data_root_in_a_real_process(tmp_path):
    done = run_cli(tmp_path / "nowhere", tmp_path / "runs")
    assert isinstance(done, subprocess.CompletedProcess) and done.returncode == 2
    _fails_cleanly(done, "no MURA data at", "--demo")


@pytest.fixture
def data_copy(tiny_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    return root


def test_missing_and_malformed_csv(data_copy, tmp_path, capsys):
    csv = data_copy / "MURA-v1.1" / "valid_image_paths.csv"
    csv.write_text("one,two\nthree,four\n")
    _fails_cleanly(run_cli_here(capsys, data_copy, tmp_path / "runs"), "unknown column layout")
    csv.unlink()
    _fails_cleanly(run_cli_here(capsys, data_copy, tmp_path / "runs"), "missing CSV file")


def test_csv_path_outside_root(data_copy, tmp_path, capsys):
    csv = data_copy / "MURA-v1.1" / "train_image_paths.csv"
    lines = csv.read_text().splitlines()
    lines[0] = lines[0].replace("MURA-v1.1/train/XR_", "MURA-v1.1/train/../../../XR_")
    csv.write_text("\n".join(lines) + "\n")
    _fails_cleanly(run_cli_here(capsys, data_copy, tmp_path / "runs"), "does not follow the MURA-v1.1 layout")


def test_unreadable_png_stops_or_is_skipped(data_copy, tmp_path, capsys):
    csv = (data_copy / "MURA-v1.1" / "train_image_paths.csv").read_text().splitlines()
    elbow = next(p for p in csv if "XR_ELBOW" in p)
    (data_copy / elbow).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    _fails_cleanly(run_cli_here(capsys, data_copy, tmp_path / "runs"), "cannot read image", "--skip-bad-images")
    skipped = run_cli_here(capsys, data_copy, tmp_path / "runs2", "--skip-bad-images", "1", "--train-cutout", "0",
                      "--train-gradcam", "0", "--train-end2end", "0", "--train-apga", "0", "--train-random", "0")
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert "skipped 1 unreadable image" in skipped.stderr


def test_out_dir_that_cannot_be_written(tiny_data, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _fails_cleanly(run_cli_here(capsys, tiny_data, blocker / "runs"), "cannot write to --out-dir")


def _baseline_only(*extra):
    return ["--train-cutout", "0", "--train-gradcam", "0", "--train-end2end", "0", "--train-apga", "0",
            "--train-random", "0", *extra]


def test_checkpoint_from_other_settings_and_corrupted(tiny_data, tmp_path, capsys):
    out = tmp_path / "runs"
    assert run_cli_here(capsys, tiny_data, out, *_baseline_only()).returncode == 0
    run_dir = out / "elbow-all-val" / "seed89" / "baseline"
    _fails_cleanly(run_cli_here(capsys, tiny_data, out, *_baseline_only("--lr", "0.5")), "other settings", "lr",
                   f"delete {run_dir} to train that run alone anew (the runs fine-tuned from it follow it",
                   "--resume 0 would train every run of the command anew, each seed's baseline included")
    # settings the baseline cannot depend on do not block it
    same = run_cli_here(capsys, tiny_data, out, *_baseline_only("--estimator", "rloo", "--agent-lr", "0.1",
                                                                "--fill", "blur", "--mask-area", "0.2"))
    assert same.returncode == 0, same.stderr[-2000:]
    (run_dir / "result.json").unlink()
    (run_dir / "last.pt").write_bytes((run_dir / "last.pt").read_bytes()[:100])
    _fails_cleanly(run_cli_here(capsys, tiny_data, out, *_baseline_only()), "corrupted", "--resume 0")
    assert run_cli_here(capsys, tiny_data, out, *_baseline_only("--resume", "0")).returncode == 0


def test_gpu_that_does_not_exist(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="--gpu-id 3 does not exist"):
        resolve_device(3)


def test_unknown_flag_is_refused_before_anything_runs(tiny_data, tmp_path, capsys):
    for flag in ("--bogus-flag", "--bogus_flag=1", "--nobogus"):
        done = run_cli_here(capsys, tiny_data, tmp_path / "runs", flag, "1")
        _fails_cleanly(done, f"unknown flag(s) {flag.split('=')[0]}")
        assert not (tmp_path / "runs").exists()  # refused before any training
    assert run_cli_here(capsys, tiny_data, tmp_path / "runs", "--nodemo", "--train_apga=0", "--train-cutout", "0",
                        "--train-gradcam", "0", "--train-end2end", "0", "--train-random", "0").returncode == 0
