"""Any binary image task from a CSV: the same results as the MURA layout, and bad rows named by line."""
from __future__ import annotations

import pandas as pd
import pytest

from apga.data import mura
from apga.data.csv_index import read_csv_index
from apga.data import prepare_run_data
from apga.errors import DataError
from apga.reporting.results import read_results
from apga.experiment import run
from cli_helpers import run_cli_here

COMPARED = ["accuracy", "auroc", "kappa", "study_accuracy", "study_kappa", "accuracy_tta", "bone_precision_10",
            "location_gap_10", "mask_area", "selection_accuracy", "best_epoch", "data_fingerprint"]


def _write_csv(path, root, seed: int):
    """The generated elbow images re-indexed as a CSV in `root`, rows shuffled by `seed`."""
    rows = pd.concat([mura.select_body_part(mura.load_split(root, split), "elbow") for split in ("train", "valid")])
    rows = rows[["path", "label", "split", "study", "patient"]].sample(frac=1, random_state=seed)
    rows.to_csv(path, index=False)
    return path


def test_a_csv_task_gives_the_results_of_the_mura_layout_whatever_its_row_order(tiny_data, tiny_config):
    csv = _write_csv(tiny_data / "elbow-as-csv.csv", tiny_data, seed=0)
    flags = dict(n_shot=4, model_selection="holdout", holdout_fraction=0.3, train_cutout=0, train_gradcam=0,
                 train_end2end=0, train_random=0, estimator="rloo")
    mura_config = tiny_config(**flags)
    csv_config = tiny_config(**flags, data_csv=str(csv), body_part=None, out_dir=mura_config.out_dir + "-csv")
    run(mura_config)
    run(csv_config)
    expected = read_results(mura_config.out_dir).set_index(["method", "variant"])[COMPARED].sort_index()
    got = read_results(csv_config.out_dir)
    assert set(got["body_part"]) == {"elbow-as-csv"}
    pd.testing.assert_frame_equal(got.set_index(["method", "variant"])[COMPARED].sort_index(), expected)
    # another order of the rows is the same data: the same splits, subsets and fingerprint
    reordered = _write_csv(tiny_data / "elbow-as-csv-2.csv", tiny_data, seed=1)
    assert reordered.read_text() != csv.read_text()
    first = prepare_run_data(csv_config, seed=89)
    second = prepare_run_data(tiny_config(**flags, data_csv=str(reordered), body_part=None), seed=89)
    assert first.fingerprint == second.fingerprint
    for split in ("train", "select", "report"):
        assert getattr(first, split).index["path"].tolist() == getattr(second, split).index["path"].tolist()


def _table(tmp_path, rows: list[str], header: str = "path,label,split,patient") -> str:
    for name in ("a.png", "b.png", "c.png", "d.png"):
        (tmp_path / name).write_bytes(b"")
    csv = tmp_path / "task.csv"
    csv.write_text("\n".join([header, *rows]) + "\n")
    return csv


GOOD = ["a.png,0,train,p1", "b.png,1,train,p2", "c.png,0,valid,p3", "d.png,1,valid,p4"]


@pytest.mark.parametrize("rows, header, message", [
    (GOOD[:1] + ["missing.png,1,train,p2"] + GOOD[2:], None, "line 3: image 'missing.png' does not exist"),
    (GOOD[:3] + ["d.png,2,valid,p4"], None, "line 5: label '2' must be 0 (normal) or 1 (abnormal)"),
    (GOOD[:3] + ["d.png,1,test,p4"], None, "line 5: split 'test' must be train or valid"),
    (GOOD[:3] + ["d.png,1,valid,p2"], None, "patient 'p2' is in both splits (lines 3, 5)"),
    (GOOD[:2], None, "has no valid rows"),
    (["a.png,0,train,p1", "b.png,0,train,p2"] + GOOD[2:], None, "the train rows of"),
    (GOOD[:1] + ["a.png,1,train,p2"] + GOOD[2:], None, "line 3: image 'a.png' is listed twice"),
    (["a.png,0", "c.png,1"], "path,label", "has no column split"),
])
def test_bad_rows_are_named_by_line(tmp_path, rows, header, message):
    csv = _table(tmp_path, rows, header or "path,label,split,patient")
    with pytest.raises(DataError, match=None) as error:
        read_csv_index(csv)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_good_table_and_the_command_lines_error(tmp_path, capsys):
    index = read_csv_index(_table(tmp_path, GOOD))
    assert index["label"].tolist() == [0, 1, 0, 1] and index["study"].tolist() == index["path"].tolist()
    assert index["patient"].tolist() == ["p1", "p2", "p3", "p4"] and set(index["body_part"]) == {"task"}
    _table(tmp_path, GOOD[:3] + ["d.png,1,valid,p2"])
    done = run_cli_here(capsys, tmp_path / "unused", tmp_path / "runs", "--data-csv", str(tmp_path / "task.csv"))
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "in both splits" in done.stderr
