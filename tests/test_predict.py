"""`python -m apga.predict`: a trained run applied to a study folder, a folder of PNGs and a CSV."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from apga.data import mura
from apga.training.checkpoint import load_checkpoint, save_checkpoint
from apga.data import prepare_run_data
from apga.evaluation.evaluate import predict
from apga.predict import load_run, run_prediction
from apga.experiment import run
from cli_helpers import ROOT, environment


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    from apga.config import make_config
    from conftest import TINY

    folder = tmp_path_factory.mktemp("trained")
    config = make_config(**{**TINY, "data_root": str(tiny_data), "out_dir": str(folder / "runs"),
                            "cache_dir": str(folder / "cache"), "estimator": "rloo", "train_cutout": 0,
                            "train_end2end": 0, "train_random": 0})
    run(config)
    return config, folder / "runs" / "elbow-all-val" / "seed89"


def test_predictions_on_a_csv_equal_the_runs_own_evaluation(trained, tiny_data, tmp_path, capsys):
    config, seed_dir = trained
    data = prepare_run_data(config, seed=89)
    csv = tmp_path / "valid.csv"
    pd.DataFrame({"path": [str(tiny_data / p) for p in data.report.index["path"]],
                  "study": data.report.index["study"], "label": data.report.index["label"]}).to_csv(csv, index=False)
    path = run_prediction(str(seed_dir / "apga-rloo"), str(csv), out=str(tmp_path / "out"), max_overlays=3)
    predictions = pd.read_csv(path, keep_default_na=False, na_values=[""])
    method, _ = load_run(seed_dir / "apga-rloo", torch.device("cpu"))
    expected, _ = predict(method, data.report, torch.device("cpu"), batch_size=8,
                          channels_last=config.channels_last)
    np.testing.assert_allclose(predictions["probability"], expected["p"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(predictions["probability_tta"], expected["p_tta"], rtol=1e-4, atol=1e-6)
    studies = predictions.groupby("study")["probability"].mean()
    np.testing.assert_allclose(predictions["study_probability"], predictions["study"].map(studies))
    assert predictions["kept_area"].round(4).eq(round(round(0.1 * 64) / 64, 4)).all()
    overlays = sorted((tmp_path / "out" / "overlays").glob("*.png"))
    assert len(overlays) == 3 and Image.open(overlays[0]).size[0] > 2 * 256
    assert sorted(predictions["overlay"].dropna()) == [f"overlays/{p.name}" for p in overlays]
    # the labels are known: the run's own metrics on its report split, image and study level
    row = json.loads((seed_dir / "apga-rloo" / "result.json").read_text())
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for name in ("accuracy", "auroc", "kappa", "study_accuracy", "study_auroc", "study_kappa"):
        assert metrics[name] == pytest.approx(row[name], abs=1e-6), name
    assert f"accuracy {row['accuracy']:.3f}, AUROC {row['auroc']:.3f}, Cohen's κ {row['kappa']:.3f}" in capsys.readouterr().out


def test_a_study_folder_and_a_plain_folder_in_a_real_process(trained, tiny_data, tmp_path):
    _, seed_dir = trained
    valid = mura.select_body_part(mura.load_split(tiny_data, "valid"), "elbow")
    study = tiny_data / valid["study"].iloc[0]
    done = subprocess.run([sys.executable, "-m", "apga.predict", str(seed_dir / "gradcam"), str(study),
                           "--out", str(tmp_path / "study")], capture_output=True, text=True, env=environment(),
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    predictions = pd.read_csv(tmp_path / "study" / "predictions.csv")
    assert len(predictions) == (valid["study"] == valid["study"].iloc[0]).sum()
    assert predictions["study"].nunique() == 1 and predictions["study_probability"].nunique() == 1
    assert predictions["label"].eq(valid["label"].iloc[0]).all() and predictions["probability"].between(0, 1).all()
    accuracy = ((predictions["probability"] > 0.5) == predictions["label"]).mean()  # the folder names the label
    assert (f"{len(predictions)} labelled image(s), {int(predictions['label'].sum())} abnormal: accuracy {accuracy:.3f}; "
            f"AUROC and κ undefined (one class)") in done.stdout
    written = json.loads((tmp_path / "study" / "metrics.json").read_text())
    assert written["auroc"] is None and written["kappa"] is None and written["study_kappa"] is None  # as printed

    plain = tmp_path / "plain"
    plain.mkdir()
    for i, file in enumerate(sorted(study.glob("*.png"))):
        (plain / f"x{i}.png").write_bytes(file.read_bytes())
    run_prediction(str(seed_dir / "baseline"), str(plain), out=str(tmp_path / "plain-out"))
    predictions = pd.read_csv(tmp_path / "plain-out" / "predictions.csv", keep_default_na=False, na_values=[""])
    assert predictions["study_probability"].isna().all() and "probability_tta" not in predictions.columns
    assert not (tmp_path / "plain-out" / "overlays").exists()  # the baseline has no masks


def test_refuses_another_version_and_a_corrupted_checkpoint(trained, tmp_path, capsys):
    from apga.predict import main

    _, seed_dir = trained
    copy = tmp_path / "seed" / "baseline"
    copy.mkdir(parents=True)
    state = load_checkpoint(seed_dir / "baseline" / "best.pt")
    state["format"] = 1
    torch.save(state, copy / "best.pt")
    for broken, message in ((False, "another version of apga"), (True, "corrupted or unreadable")):
        if broken:
            (copy / "best.pt").write_bytes((copy / "best.pt").read_bytes()[:200])
        with pytest.raises(SystemExit) as exit_:
            main(str(copy), str(tmp_path))
        assert exit_.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()  # (a notice that CUDA is absent may come first)
        assert lines[-1].startswith("error: ") and message in lines[-1] and "Traceback" not in "".join(lines)
    save_checkpoint(copy / "best.pt", {"nothing": torch.zeros(1)})
    with pytest.raises(SystemExit):
        main(str(copy), str(tmp_path))
    assert "another version" in capsys.readouterr().err


def test_gradcam_refuses_a_baseline_that_was_trained_again(trained, tmp_path, capsys):
    import shutil

    from apga.predict import main

    _, seed_dir = trained
    copy = tmp_path / "seed"
    shutil.copytree(seed_dir / "gradcam", copy / "gradcam")
    shutil.copytree(seed_dir / "baseline", copy / "baseline")
    state = load_checkpoint(copy / "baseline" / "best.pt")
    state["classifier"] = {k: v * 2 if v.is_floating_point() else v for k, v in state["classifier"].items()}
    save_checkpoint(copy / "baseline" / "best.pt", state)
    with pytest.raises(SystemExit):
        main(str(copy / "gradcam"), str(tmp_path))
    assert "is not the baseline gradcam was fine-tuned from" in capsys.readouterr().err


def test_a_folder_scan_finds_dicom_files_by_their_content_whatever_their_name(tmp_path):
    """Hospital exports name DICOM files by their UID (a dotted number whose last part looks like a
    suffix) or give them no suffix; the DICOMDIR index and other files are not images."""
    import shutil

    import pydicom
    from pydicom.data import get_testdata_file

    from apga.predict import image_table

    source = get_testdata_file("CT_small.dcm")
    study = str(pydicom.dcmread(source, stop_before_pixels=True).StudyInstanceUID)
    shutil.copy(source, tmp_path / "1.2.840.113619.2.55.3.320")
    shutil.copy(source, tmp_path / "IM0001")
    shutil.copy(source, tmp_path / "DICOMDIR")
    shutil.copy(get_testdata_file("rtplan.dcm"), tmp_path / "1.2.840.113619.2.55.3.481")  # a plan: no pixels
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "scan.v2").write_bytes(b"\x00" * 200)
    table = image_table(tmp_path)
    assert sorted(table["image"]) == ["1.2.840.113619.2.55.3.320", "IM0001"]
    assert (table["study"] == study).all()


def _valid_pngs(tiny_data, count: int) -> list[bytes]:
    return [path.read_bytes() for path in sorted((tiny_data / "MURA-v1.1" / "valid").rglob("*.png"))[:count]]


def test_overlays_of_images_whose_names_differ_only_in_letters_or_suffix_never_collide(trained, tiny_data, tmp_path):
    """Case 24 of the real-world cases: names that differ only in non-ASCII letters, in the suffix or
    in characters a file name cannot hold, and one near the file system's limit on a name's length:
    one overlay per image, named in predictions.csv."""
    _, seed_dir = trained
    folder = tmp_path / "study"
    folder.mkdir()
    names = ["左肘.png", "右肘.png", "Röntgen.png", "Rüntgen.png", "image1.png", "image1.bmp", "image 2.png",
             "image_2.png", "x" * 250 + ".png"]
    for name, data in zip(names, _valid_pngs(tiny_data, len(names))):
        Image.open(__import__("io").BytesIO(data)).save(folder / name)
    run_prediction(str(seed_dir / "apga-rloo"), str(folder), out=str(tmp_path / "out"), max_overlays=len(names))
    predictions = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert sorted(predictions["image"]) == sorted(names)
    overlays = predictions["overlay"]
    assert overlays.is_unique and all((tmp_path / "out" / path).is_file() for path in overlays)
    assert len(list((tmp_path / "out" / "overlays").iterdir())) == len(names)
    assert max(len(os.fsencode(path.split("/")[-1])) for path in overlays) <= 255


def test_a_file_name_that_is_not_utf8_is_predicted_and_written_escaped(trained, tiny_data, tmp_path, capsys):
    """Case 21: a Latin-1 file name (b'R\\xf6ntgen_1.png'): predictions.csv is written, in UTF-8, with
    the undecodable byte as \\xf6, and a warning says so."""
    _, seed_dir = trained
    folder = tmp_path / "study"
    folder.mkdir()
    first, second = _valid_pngs(tiny_data, 2)
    (folder / "image0.png").write_bytes(first)
    with open(os.fsencode(folder) + b"/R\xf6ntgen_1.png", "wb") as handle:
        handle.write(second)
    path = run_prediction(str(seed_dir / "apga-rloo"), str(folder), out=str(tmp_path / "out"))
    predictions = pd.read_csv(path, encoding="utf-8")
    assert sorted(predictions["image"]) == ["R\\xf6ntgen_1.png", "image0.png"]
    assert predictions["probability"].between(0, 1).all() and len(list((tmp_path / "out" / "overlays").iterdir())) == 2
    assert "1 file name(s) are not UTF-8 (e.g. R\\xf6ntgen_1.png" in capsys.readouterr().err


def _with_read_only(folder, script: str) -> list[str] | None:
    """A command that runs the shell `script` with `folder` read-only: a read-only bind mount in a
    private mount namespace (unshare); None where this machine allows none."""
    unshare = shutil.which("unshare")
    mount = f"mount --bind '{folder}' '{folder}' && mount -o remount,bind,ro '{folder}' '{folder}'"
    if unshare is None or subprocess.run([unshare, "-rm", "sh", "-c", mount], capture_output=True).returncode:
        return None
    return [unshare, "-rm", "sh", "-c", f"{mount} && {{ {script}; }}"]


def test_a_run_on_read_only_storage_predicts_with_out_and_reports_what_it_cannot_write(trained, tiny_data, tmp_path):
    """Case 23: the out-dir on read-only storage. apga.predict says in one line to pass --out (before
    any work); apga.report prints the tables and says what it could not write. Both commands run in
    one process in a mount namespace where the out-dir is read-only."""
    _, seed_dir = trained
    runs = tmp_path / "runs"
    shutil.copytree(seed_dir.parent.parent, runs)
    study = tmp_path / "new_study" / "study1_positive"
    study.mkdir(parents=True)
    for i, data in enumerate(_valid_pngs(tiny_data, 2)):
        (study / f"image{i + 1}.png").write_bytes(data)
    commands = tmp_path / "commands.py"
    commands.write_text(
        "from apga.predict import entry_point as predict\nfrom apga.report import entry_point as report\n"
        f"for name, command, argv in (('predict', predict, [{str(runs / 'elbow-all-val/seed89/apga-rloo')!r}, "
        f"{str(study.parent)!r}]), ('report', report, [{str(runs)!r}])):\n"
        "    try:\n        command(argv)\n        code = 0\n    except SystemExit as exit_:\n        code = exit_.code\n"
        "    print(f'{name} rc={code}', flush=True)\n")
    command = _with_read_only(runs, f"{sys.executable} {commands}")
    if command is None:  # never skipped in CI (its machines allow it), only where a user's machine does not
        (pytest.fail if os.environ.get("CI") else pytest.skip)("no read-only bind mount on this machine (unshare -rm)")
    done = subprocess.run(command, capture_output=True, text=True, env=environment(), cwd=ROOT, timeout=300)
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "predict rc=2" in done.stdout and "report rc=0" in done.stdout, (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    refused = [line for line in lines if line.startswith("error: ")]
    assert len(refused) == 1 and "cannot write the predictions into the run folder" in refused[0], done.stderr
    assert "Read-only file system" in refused[0] and "pass --out" in refused[0]
    assert "| elbow | all | val | apga[rloo] |" in done.stdout and not (runs / "elbow-all-val/seed89/apga-rloo/predictions").exists()
    assert any(line.startswith("warning: could not write into") and "results.csv (Read-only file system)" in line
               for line in lines), done.stderr


def test_a_csvs_labels_are_0_1_or_blank_and_a_missing_path_says_so(trained, tiny_data, tmp_path):
    """A CSV's label column for apga.predict: `abnormal` was read as unknown (its images left out of
    the metrics without a word) and `2` as a class; both are refused naming the line, as training
    refuses them. A blank label is unknown; 1.0 is 1. A path that does not exist says so (it was
    'neither a folder of images, an image nor a CSV file')."""
    from apga.errors import DataError
    from apga.predict import image_table

    _, seed_dir = trained
    files = sorted(tiny_data.rglob("*.png"))[:3]
    csv = tmp_path / "labels.csv"
    for labels, fragment in [(["1", "abnormal", "0"], "line 3: label 'abnormal' must be 0 (normal) or 1 (abnormal), or blank"),
                             (["1", "0", "2"], "line 4: label '2' must be 0")]:
        pd.DataFrame({"path": [str(f) for f in files], "label": labels}).to_csv(csv, index=False)
        with pytest.raises(DataError, match=re.escape(fragment)):
            image_table(csv)
    pd.DataFrame({"path": [str(f) for f in files], "label": ["1.0", "", "0"]}).to_csv(csv, index=False)
    assert image_table(csv)["label"].tolist()[::2] == [1.0, 0.0] and np.isnan(image_table(csv)["label"][1])
    with pytest.raises(DataError, match="nowhere.png does not exist"):
        run_prediction(str(seed_dir / "apga-rloo"), str(tmp_path / "nowhere.png"), out=str(tmp_path / "out"))
