"""Kinds of faults users of similar tools reported in public, each rebuilt as a small input: the
right behaviour is a correct result, or one line naming the file, row or flag and the fix, exit
code 2, no traceback, and nothing already written lost."""
from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from apga.data import prepare_run_data
from apga.data.csv_index import read_csv_index
from apga.errors import DataError
from cli_helpers import ROOT, cli_command, environment, run_cli_here

BASELINE_ONLY = ["--train-cutout", "0", "--train-gradcam", "0", "--train-end2end", "0", "--train-apga", "0",
                 "--train-random", "0", "--gallery", "off"]


def _one_line_error(done, *fragments):
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), last
    for fragment in fragments:
        assert fragment in last, last
    return last


def _csv_task(root: Path, rows_per_split=(8, 4), size=40, seed=0) -> Path:
    """A --data-csv task of small grey PNGs: a bright 'bone', a spot on abnormal images."""
    rng = np.random.default_rng(seed)
    rows = []
    for split, count in zip(("train", "valid"), rows_per_split):
        for i in range(count):
            image = rng.normal(60, 15, (size, size))
            image[size // 5:-size // 5, size // 3:-size // 3] += 80
            if i % 2:
                image[size // 2 - 3:size // 2 + 3, size // 2 - 3:size // 2 + 3] = 255
            path = f"img/{split}_{i:03d}.png"
            (root / "img").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / path)
            rows.append({"path": path, "label": i % 2, "split": split, "study": f"{split}_s{i}",
                         "patient": f"{split}_p{i}"})
    pd.DataFrame(rows).to_csv(root / "task.csv", index=False)
    return root / "task.csv"


# --- 02: an image Pillow refuses to open ---------------------------------------------------------

def test_an_image_pillow_refuses_is_named_and_can_be_skipped(tmp_path, capsys, monkeypatch):
    """Case 02 (a 13,400 px image, above Pillow's decompression-bomb limit; the limit is lowered
    here so that a 64 px image stands for it): one line naming the file; skippable."""
    csv = _csv_task(tmp_path)
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(tmp_path / "img" / "train_big.png")
    table = pd.read_csv(csv)
    table.loc[len(table)] = ["img/train_big.png", 1, "train", "train_big", "train_pbig"]
    table.to_csv(csv, index=False)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40 px images pass, the 64 px one does not
    flags = ["--data-csv", str(csv), "--epochs", "1", *BASELINE_ONLY]
    done = run_cli_here(capsys, tmp_path, tmp_path / "runs", *flags)
    _one_line_error(done, "train_big.png: it is too large for Pillow", "--skip-bad-images 1")
    skipped = run_cli_here(capsys, tmp_path, tmp_path / "runs", *flags, "--skip-bad-images", "1")
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert "skipped 1 unreadable image(s)" in skipped.stderr and "train_big.png" in skipped.stderr

    from apga.predict import entry_point

    run_dir = tmp_path / "runs" / "task-all-val" / "seed89" / "baseline"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        entry_point([str(run_dir), str(tmp_path / "img")])
    assert exit_.value.code == 2 and "train_big.png: it is too large for Pillow" in capsys.readouterr().err
    entry_point([str(run_dir), str(tmp_path / "img"), "--skip-bad-images", "1", "--out", str(tmp_path / "pred")])
    predictions = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    assert len(predictions) == 12 and "train_big.png" not in set(predictions["image"])


# --- 03: high bit depth ------------------------------------------------------------------------

def test_a_12_bit_task_in_16_bit_pngs_trains_on_the_picture_of_its_8_bit_copy(tmp_path, tiny_config):
    """Case 03: the same pictures as 12-bit values in 16-bit PNGs and as 8-bit PNGs decode to the
    same cached arrays up to rounding (not to grey levels 0-16)."""
    csv8 = _csv_task(tmp_path / "eight")
    twelve = tmp_path / "twelve"
    shutil.copytree(tmp_path / "eight", twelve)
    for png in (twelve / "img").glob("*.png"):
        values = np.asarray(Image.open(png), dtype=np.float64)
        Image.fromarray(np.rint(values / 255 * 4095).astype(np.uint16)).save(png)
    arrays = {}
    for name, csv in (("8", csv8), ("12", twelve / "task.csv")):
        data = prepare_run_data(tiny_config(data_csv=str(csv), body_part=None, cache_dir=str(tmp_path / "cache")), 89)
        arrays[name] = data.train.dataset.images[data.train.dataset.rows].astype(int)
    assert np.abs(arrays["12"] - arrays["8"]).max() <= 1 and arrays["12"].max() > 200


# --- 05: a full disk or an unwritable folder while writing ------------------------------------

def _limited(limit_bytes: int):
    """A child process whose files cannot grow past `limit_bytes` (the kernel answers EFBIG, as a
    full disk answers ENOSPC): a disk that fills up, without root or a tmpfs."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return apply


@pytest.mark.parametrize("limit, where", [(8_000, "cache"), (200_000, "runs")])
def test_a_disk_that_fills_up_is_one_line_and_a_rerun_finishes(tiny_data, tmp_path, limit, where):
    """Case 05: the image cache (8 kB), then a checkpoint (200 kB) cannot be written: one line naming
    the file and the free space, exit 2; the same command with room finishes, nothing lost."""
    command = cli_command(tiny_data, tmp_path / "runs", *BASELINE_ONLY, "--epochs", "1")
    done = subprocess.run(command, capture_output=True, text=True, env=environment(), cwd=ROOT, timeout=300,
                          preexec_fn=_limited(limit))
    last = _one_line_error(done, "cannot write", "free on that disk", "rerun the same command")
    assert f"{tmp_path / where}" in last
    assert not list(tmp_path.rglob("*.partial")) and not list(tmp_path.rglob(".*.tmp"))  # no half-written file
    again = subprocess.run(command, capture_output=True, text=True, env=environment(), cwd=ROOT, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (tmp_path / "runs" / "elbow-all-val" / "seed89" / "baseline" / "result.json").is_file()


# --- 06: a validation split with one class ----------------------------------------------------

def test_a_mura_tree_whose_valid_split_has_one_class_is_refused(tiny_data, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    mura = root / "MURA-v1.1"
    paths = [p for p in (mura / "valid_image_paths.csv").read_text().splitlines() if "negative" in p]
    studies = [s for s in (mura / "valid_labeled_studies.csv").read_text().splitlines() if s.endswith(",0")]
    (mura / "valid_image_paths.csv").write_text("\n".join(paths) + "\n")
    (mura / "valid_labeled_studies.csv").write_text("\n".join(studies) + "\n")
    done = run_cli_here(capsys, root, tmp_path / "runs", *BASELINE_ONLY)
    _one_line_error(done, "the valid split of", "holds only normal (0) images", "need normal and abnormal images")


# --- 09: blank cells in a CSV's optional columns ----------------------------------------------

def _leak_task(root: Path) -> Path:
    csv = _csv_task(root)
    table = pd.read_csv(csv, dtype=str)
    table.loc[0, "patient"] = table.loc[8, "patient"] = "pA"  # a training and a validation image of one patient
    table.to_csv(root / "leak.csv", index=False)
    table.loc[3, "patient"] = ""  # another row's patient unknown
    table.to_csv(root / "leak_blank.csv", index=False)
    return root


def test_a_blank_patient_cell_does_not_disable_the_leak_check(tmp_path, capsys):
    root = _leak_task(tmp_path)
    for name in ("leak.csv", "leak_blank.csv"):
        with pytest.raises(DataError, match="patient 'pA' is in both splits"):
            read_csv_index(root / name)
    done = run_cli_here(capsys, tmp_path, tmp_path / "runs", "--data-csv", str(root / "leak_blank.csv"),
                        *BASELINE_ONLY)
    _one_line_error(done, "patient 'pA' is in both splits")


def test_blank_cells_apply_to_their_own_row(tmp_path, capsys):
    csv = _csv_task(tmp_path)
    table = pd.read_csv(csv, dtype=str)
    table.loc[1, ["study", "label"]] = table.loc[0, ["study", "label"]]  # two images of one study ...
    table.loc[1, "patient"] = ""  # ... the second with its patient cell blank
    table.loc[5, "study"] = ""  # an image without a study
    table.to_csv(csv, index=False)
    index = read_csv_index(csv).set_index("path")
    notices = capsys.readouterr().err
    assert "1 row(s) have no patient (the first on line 3)" in notices and "1 row(s) have no study" in notices
    assert index.loc["img/train_001.png", "patient"] == "train_p0"  # its study's patient
    assert index.loc["img/train_005.png", "study"] == "img/train_005.png"  # a study of its own
    assert index.loc["img/train_002.png", "patient"] == "train_p2"  # the column stays on for every other row
    assert index.loc["img/train_002.png", "study"] == "train_s2"


def test_a_study_that_names_two_patients_is_refused(tmp_path):
    csv = _csv_task(tmp_path)
    table = pd.read_csv(csv, dtype=str)
    table.loc[1, "study"], table.loc[1, "label"] = table.loc[0, "study"], table.loc[0, "label"]
    table.to_csv(csv, index=False)
    with pytest.raises(DataError, match="study 'train_s0' names more than one patient"):
        read_csv_index(csv)


# --- 16: non-finite values in evaluation ------------------------------------------------------

def _noise_mura_tree(root: Path, train: int = 8, valid: int = 4, size: int = 64) -> Path:
    """A small MURA-v1.1 tree (elbow) of noisy grey images: a bright 'bone', a spot on abnormal ones."""
    rng = np.random.default_rng(16)
    patient = 0
    for split, count in (("train", train), ("valid", valid)):
        paths, studies = [], []
        for k in range(count):
            patient += 1
            positive = k % 2
            study = f"MURA-v1.1/{split}/XR_ELBOW/patient{patient:05d}/study1_{'positive' if positive else 'negative'}"
            studies.append(f"{study}/,{positive}")
            for i in range(1, 1 + 1 + k % 2):
                image = rng.normal(0.24, 0.08, (size, size))
                image[size // 5:-size // 5, size // 3:-size // 3] += 0.3
                if positive:
                    image[30:36, 28:34] = 1.0
                (root / study).mkdir(parents=True, exist_ok=True)
                Image.fromarray((image.clip(0, 1) * 255).astype(np.uint8)).save(root / study / f"image{i}.png")
                paths.append(f"{study}/image{i}.png")
        (root / "MURA-v1.1" / f"{split}_image_paths.csv").write_text("\n".join(paths) + "\n")
        (root / "MURA-v1.1" / f"{split}_labeled_studies.csv").write_text("\n".join(studies) + "\n")
    return root


def test_weights_that_overflow_stop_the_run_with_the_one_line_message(tmp_path, capsys):
    """Case 16 (--lr 1e6): the classifier's outputs become NaN while the logged loss was finite; the
    evaluation says so in one line (not scikit-learn's traceback), and the command exits 2."""
    root = _noise_mura_tree(tmp_path / "data")
    done = run_cli_here(capsys, root, tmp_path / "runs", "--image-size", "64", "--batch-size", "32", "--lr", "1e6",
                        "--epochs", "3", "--train-cutout", "1", *BASELINE_ONLY[2:])
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "error: baseline, selection evaluation at epoch 1: the classifier's outputs are not finite" in done.stderr
    assert "Lower the learning rate" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: 1 run(s) stopped (baseline of seed 89)")


# --- 19: the commands from another folder -------------------------------------------------------

@pytest.mark.slow
def test_the_module_commands_work_from_any_folder(tiny_data, tmp_path):
    """Case 19: after the README's install (`pip install -e .`), `python -m apga.report` and
    `python -m apga.predict` run from any folder, and a --data-csv given relative to the current
    folder finds its images relative to the CSV."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    csv = _csv_task(project)
    elsewhere.mkdir()
    env = {k: v for k, v in environment().items() if k != "PYTHONPATH"}
    scripts = Path(sys.executable).parent
    train = subprocess.run([scripts / "apga-mura", "--data-csv", os.path.relpath(csv, elsewhere),
                            "--out-dir", "runs", *BASELINE_ONLY, "--preset", "cpu", "--epochs", "1",
                            "--image-size", "32", "--agent-width", "2"],
                           capture_output=True, text=True, env=env, cwd=elsewhere, timeout=300)
    assert train.returncode == 0, train.stderr[-2000:]
    report = subprocess.run([sys.executable, "-m", "apga.report", "runs"], capture_output=True, text=True, env=env,
                            cwd=elsewhere, timeout=120)
    assert report.returncode == 0 and "| task | all | val | baseline |" in report.stdout, report.stderr[-2000:]
    run_dir = elsewhere / "runs" / "task-all-val" / "seed89" / "baseline"
    predict = subprocess.run([sys.executable, "-m", "apga.predict", str(run_dir), os.path.relpath(csv, elsewhere)],
                             capture_output=True, text=True, env=env, cwd=elsewhere, timeout=120)
    assert predict.returncode == 0, predict.stderr[-2000:]
    assert len(pd.read_csv(run_dir / "predictions" / "predictions.csv")) == 12
    for script in ("apga-mura", "apga-predict", "apga-report"):
        assert (scripts / script).is_file(), f"{script} is not installed: pip install -e ."
    shown = subprocess.run([scripts / "apga-report", "--help"], capture_output=True, text=True, cwd=elsewhere,
                           env=env, timeout=60)
    assert shown.returncode == 0 and "usage: python -m apga.report" in shown.stdout
