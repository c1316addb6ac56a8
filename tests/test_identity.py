"""A results row is true for the run and the data it names: reruns, other data, other inputs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from apga.training.checkpoint import load_checkpoint, save_checkpoint
from apga.errors import CheckpointError
from apga.reporting.results import read_results
from apga.experiment import run
from apga.data.synthetic import generate
from apga.utils import file_digest

ONLY = dict(train_cutout=0, train_gradcam=0, train_end2end=0, train_apga=0, train_random=0)


def _row(out, method):
    table = read_results(out)
    rows = table[table["method"] == method]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def _saved(out, run_id, name="result.json"):
    return json.loads((Path(out) / run_id / name).read_text())


def test_a_rerun_with_resume_0_replaces_the_row(tiny_config):
    config = tiny_config(**ONLY)
    run(config)
    first = _row(config.out_dir, "baseline")
    run(tiny_config(**ONLY, lr=0.3, resume=False))
    row = _row(config.out_dir, "baseline")  # still one row for the run id, now the new run's
    assert json.loads(row["config"])["lr"] == 0.3 and json.loads(first["config"])["lr"] != 0.3
    result = _saved(config.out_dir, row["run_id"])
    assert row["accuracy"] == result["accuracy"] and row["auroc"] == result["auroc"]
    assert _saved(config.out_dir, row["run_id"], "config.json")["lr"] == 0.3


def test_a_finished_run_is_not_reused_on_other_data(tiny_config, tmp_path, capsys):
    other = tmp_path / "other"
    generate(other, seed=4, train_patients=10, valid_patients=5, parts=("elbow",), min_side=40, max_side=56)
    config = tiny_config(**ONLY)
    run(config)
    before = _row(config.out_dir, "baseline")
    with pytest.raises(CheckpointError, match="trained on other data"):
        run(tiny_config(**ONLY, data_root=str(other)))
    run(tiny_config(**ONLY, data_root=str(other), resume=False))
    after = _row(config.out_dir, "baseline")
    assert after["data_fingerprint"] != before["data_fingerprint"]
    assert after["accuracy"] == _saved(config.out_dir, after["run_id"])["accuracy"]


def test_skipping_an_unreadable_image_changes_the_data_fingerprint(tiny_data, tiny_config, tmp_path):
    from apga.data import prepare_run_data

    copy = tmp_path / "data"
    shutil.copytree(tiny_data, copy)
    before = prepare_run_data(tiny_config(data_root=str(copy)), seed=1).fingerprint
    assert prepare_run_data(tiny_config(data_root=str(copy)), seed=1).fingerprint == before  # stable
    paths = (copy / "MURA-v1.1" / "train_image_paths.csv").read_text().split()
    (copy / next(p for p in paths if "XR_ELBOW" in p)).write_bytes(b"\x89PNG broken")
    after = prepare_run_data(tiny_config(data_root=str(copy), skip_bad_images=True), seed=1).fingerprint
    assert after != before


def test_an_image_replaced_in_place_changes_the_data_fingerprint_and_a_copy_does_not(tiny_data, tiny_config, tmp_path):
    from PIL import Image

    from apga.data import prepare_run_data

    copy = tmp_path / "data"
    shutil.copytree(tiny_data, copy)
    before = prepare_run_data(tiny_config(data_root=str(copy)), seed=1).fingerprint
    assert prepare_run_data(tiny_config(data_root=str(tiny_data)), seed=1).fingerprint == before  # another folder
    paths = (copy / "MURA-v1.1" / "valid_image_paths.csv").read_text().split()
    image = copy / next(p for p in paths if "XR_ELBOW" in p)
    Image.fromarray(255 - np.asarray(Image.open(image).convert("L"))).save(image)  # the same path, other pixels
    assert prepare_run_data(tiny_config(data_root=str(copy)), seed=1).fingerprint != before


def test_random_floor_takes_apgas_selection_area_and_is_retrained_when_it_changes(tiny_config, capsys):
    config = tiny_config(model_selection="holdout", holdout_fraction=0.3, train_cutout=0, train_gradcam=0,
                         train_end2end=0, train_apga=0)
    run(config)  # APGA off: the floor keeps half the image
    assert _row(config.out_dir, "random")["keep_area"] == 0.5
    capsys.readouterr()
    run(tiny_config(model_selection="holdout", holdout_fraction=0.3, train_cutout=0, train_gradcam=0, train_end2end=0))
    apga, floor = _row(config.out_dir, "apga"), _row(config.out_dir, "random")
    assert "training it anew" in capsys.readouterr().err  # a notice
    assert floor["keep_area"] == apga["selection_mask_area"] != 0.5  # from the selection split, not the report
    assert _saved(config.out_dir, floor["run_id"], "config.json")["inputs"]["keep_area"] == floor["keep_area"]


def test_a_fine_tuned_run_is_retrained_when_its_baseline_changed(tiny_config, capsys):
    config = tiny_config(train_gradcam=0, train_end2end=0, train_apga=0, train_random=0)
    run(config)
    out = Path(config.out_dir)
    cutout_before = _row(out, "cutout")
    inputs_before = _saved(out, cutout_before["run_id"], "config.json")["inputs"]
    best = out / _row(out, "baseline")["run_id"] / "best.pt"
    state = load_checkpoint(best)
    state["classifier"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in state["classifier"].items()}
    save_checkpoint(best, state)  # as if the baseline had been trained again
    capsys.readouterr()
    run(config)
    assert "training it anew" in capsys.readouterr().err  # a notice
    cutout_after = _row(out, "cutout")
    assert cutout_after["run_id"] == cutout_before["run_id"]
    assert cutout_after["accuracy"] == _saved(out, cutout_after["run_id"])["accuracy"]
    assert _saved(out, cutout_after["run_id"], "config.json")["inputs"] == {"baseline": file_digest(best)}
    assert inputs_before != {"baseline": file_digest(best)}


def test_rows_of_an_old_baseline_are_marked_superseded_and_left_out_of_the_report(tiny_config):
    from apga.reporting.summary import render

    config = tiny_config(train_cutout=1, train_gradcam=0, train_end2end=0, train_apga=0, train_random=1)
    run(config)
    assert read_results(config.out_dir)["superseded"].eq(0).all()
    run(tiny_config(**ONLY, lr=0.3, resume=False))  # only the baseline, trained again with other settings
    table = read_results(config.out_dir).set_index("method")
    assert table.loc["baseline", "superseded"] == 0
    assert table.loc["cutout", "superseded"] == 1 and table.loc["random", "superseded"] == 1
    assert table.loc["floor", "superseded"].eq(1).all()  # the floors came from the old baseline too
    text = render(read_results(config.out_dir))
    assert "| cutout |" not in text and "row(s) of results.csv are superseded" in text


def test_a_run_trained_anew_loses_its_old_row_before_it_starts(tiny_config, monkeypatch):
    from apga.training import loop as train

    config = tiny_config(**ONLY)
    run(config)
    assert len(read_results(config.out_dir)) == 1

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as if the new run were killed in its first epoch
    monkeypatch.setattr(train, "train_one_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(**ONLY, lr=0.3, resume=False))
    assert read_results(config.out_dir).empty  # the old numbers are not left as if they were this run's


def test_floors_are_recomputed_when_their_baseline_changes(tiny_config):
    config = tiny_config(train_cutout=0, train_gradcam=0, train_end2end=0, train_apga=0, train_random=1)
    run(config)
    out = Path(config.out_dir)
    floor = out / "elbow-all-val" / "seed89" / "floors" / "random-boxes" / "result.json"
    before = json.loads(floor.read_text())
    best = out / "elbow-all-val" / "seed89" / "baseline" / "best.pt"
    state = load_checkpoint(best)
    state["classifier"] = {k: v * 1.5 if v.is_floating_point() else v for k, v in state["classifier"].items()}
    save_checkpoint(best, state)
    run(config)
    after = json.loads(floor.read_text())
    assert after["inputs"]["baseline"] == file_digest(best) != before["inputs"]["baseline"]
    rows = read_results(out)
    assert rows[rows["method"] == "floor"]["baseline_digest"].eq(file_digest(best)).all()


def test_a_rerun_that_reuses_finished_runs_keeps_one_row_per_run(tiny_config):
    config = tiny_config(train_cutout=1, train_gradcam=0, train_end2end=0, train_apga=0, train_random=0)
    run(config)
    first = read_results(config.out_dir)
    run(config)  # everything is finished and reused
    again = read_results(config.out_dir)
    assert again["run_id"].is_unique and len(again) == len(first) == 2


def test_the_floors_area_is_apgas_on_the_selection_split_and_only_from_the_current_baseline(tmp_path):
    from apga.config import make_config
    from apga.experiment import apga_kept_area
    from apga.utils import atomic_write_json

    seed_dir = tmp_path / "seed89"
    save_checkpoint(seed_dir / "baseline" / "best.pt", {"classifier": {}})
    atomic_write_json(seed_dir / "apga" / "result.json", {"selection_mask_area": 0.37, "mask_area": 0.81})
    atomic_write_json(seed_dir / "apga" / "config.json", {"inputs": {"baseline": file_digest(seed_dir / "baseline" / "best.pt")}})
    config = make_config(preset="cpu")
    assert apga_kept_area(config, seed_dir) == 0.37  # the selection split's area, never the report's 0.81
    save_checkpoint(seed_dir / "baseline" / "best.pt", {"classifier": {"changed": torch.zeros(1)}})
    assert apga_kept_area(config, seed_dir) == 0.5  # APGA's run started from another baseline: not used
    assert apga_kept_area(make_config(preset="cpu", estimator="rloo"), seed_dir) == 0.5  # no apga-rloo run


def test_a_setting_added_later_counts_as_its_default_in_older_checkpoints(tmp_path):
    from apga.training.checkpoint import check_same_config
    from apga.config import config_dict, make_config

    current = config_dict(make_config(preset="cpu"))
    older = {k: v for k, v in current.items() if k != "agent_warmup"}  # written before the setting existed
    check_same_config(tmp_path / "config.json", older, current)  # resumes
    with pytest.raises(CheckpointError, match="agent_warmup: 0 -> 5"):
        check_same_config(tmp_path / "config.json", older, {**current, "agent_warmup": 5})
    with pytest.raises(CheckpointError, match="agent_warmup: 5 -> 0"):
        check_same_config(tmp_path / "config.json", {**older, "agent_warmup": 5}, current)


def test_a_run_is_the_same_whichever_seed_series_it_came_from(tiny_config, capsys):
    """`--seed 88 --n-runs 2` trains seeds 89 and 90; `--seed 89 --n-runs 1` is seed 90 again: reused."""
    run(tiny_config(**ONLY, seed=88, n_runs=2))
    out = Path(tiny_config().out_dir)
    before = read_results(out).set_index("seed")["accuracy"].to_dict()
    mtime = (out / "elbow-all-val" / "seed90" / "baseline" / "result.json").stat().st_mtime_ns
    capsys.readouterr()
    run(tiny_config(**ONLY, seed=89, n_runs=1))
    assert read_results(out).set_index("seed")["accuracy"].to_dict() == before
    assert (out / "elbow-all-val" / "seed90" / "baseline" / "result.json").stat().st_mtime_ns == mtime  # not retrained


def test_floors_of_another_fill_are_other_floors(tiny_config):
    """A blur-fill run in the same folder adds blur-fill floors beside the zero-fill ones and
    leaves those as they were: a zero-fill method is compared with zero-fill floors."""
    only_floors = dict(train_cutout=0, train_gradcam=0, train_end2end=0, train_apga=0, train_random=1)
    config = tiny_config(**only_floors)
    run(config)
    floors = Path(config.out_dir) / "elbow-all-val" / "seed89" / "floors"
    zero = read_results(config.out_dir).query("method == 'floor'").set_index("variant")
    run(tiny_config(**only_floors, fill="blur"))
    table = read_results(config.out_dir).query("method == 'floor'").set_index("variant")
    assert {"random-boxes", "random-boxes-blurfill"} <= set(table.index)
    assert (floors / "random-boxes" / "result.json").is_file() and (floors / "random-boxes-blurfill" / "result.json").is_file()
    for column in ("location_gap_10", "bone_precision_10", "swap_gap_10"):
        assert table.loc[zero.index, column].tolist() == zero[column].tolist()  # untouched by the blur run
    assert table.loc["random-boxes-blurfill", "location_gap_10"] != table.loc["random-boxes", "location_gap_10"]
